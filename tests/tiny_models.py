"""The tiny model the sampling tests share (test_sample, test_top_p, test_temperature_curve)."""

import torch

from samplernn_lab import ModelConfig, SampleRNN

CFG = ModelConfig(frame_sizes=(4, 2), dim=32, n_rnn=1, embed_size=8, q_levels=32)


def sharp_model() -> SampleRNN:
    """``CFG`` at seed 0, its output layer 3x sharper than at init, so that greedy and sampled streams differ,
    sampling has structure to follow and nuclei hold a few codes, not all."""
    torch.manual_seed(0)
    m = SampleRNN(CFG).eval()
    with torch.no_grad():
        m.mlp.output.parametrizations.weight.original0.mul_(3.0)
    return m
