"""``samplernn-lab export``: a run's checkpoint as a TorchScript file for nn~ (Max/MSP, PureData)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .. import audio as audio_io
from ..errors import LabError
from ..files import atomic_path
from ..model import SampleRNN, rescale_codes
from ..precision import check_precision, int8_fits
from ..rundir import LISTEN
from .layers import DENSE, Cell, DenseF32, Tier
from .module import LiveSampleRNN


@torch.no_grad()
def build(
    model: SampleRNN,
    model_rate: int,
    host_rate: int = 48000,
    precision: str = "fp32",
    prime: np.ndarray | torch.Tensor | None = None,
) -> LiveSampleRNN:
    """The live module of ``model`` (eager; :func:`script` makes it TorchScript).

    Parameters
    ----------
    model : a trained :class:`SampleRNN` (left untouched).
    model_rate : the rate the model was trained at, Hz.
    host_rate : the host's rate, Hz; nn~ sets it again after loading (``set_sample_rate``).
    precision : ``"fp32"``, ``"bf16"`` or ``"int8"``: the weights of the frame tiers and the MLP.
    prime : audio in [-1, 1] at ``model_rate`` (P,), or codes: teacher-forced to make the primed start
        that the module begins from and resets to. None: h0 and silence.
    """
    from ..sampling import fold

    check_precision(precision)
    if host_rate <= 0:
        raise LabError(f"--sample-rate must be a positive number of Hz, got {host_rate}")

    def dense(w: torch.Tensor, b: torch.Tensor) -> torch.nn.Module:
        unfit = precision == "int8" and not int8_fits(w.shape[1])
        return DENSE["fp32" if unfit else precision](w, b)

    model = model.float().cpu()
    f = fold(model, "cpu")
    cfg = model.config
    tiers, h0 = [], []
    # A tier's input layer reads codes as numbers: the rescaling to [-2, 2] (rescale_codes, affine) goes into
    # its weights and bias. Its output only feeds the first recurrent layer's input product, so both are one
    # product: the input layer maps the frame straight to that layer's gates. Below the top, the tier's input is
    # its frame plus the tier above's upsampled conditioning, so the tier above upsamples straight to these
    # gates too. Each tier's input product is gone: at the sketch's size 7% fewer multiply-adds per model
    # sample and one product fewer per frame (benchmarks/RESULTS.md, "Live").
    ends = rescale_codes(torch.tensor([0, 1]), cfg.q_levels)  # affine in the code: value = shift + scale * code
    shift, scale = float(ends[0]), float(ends[1] - ends[0])
    inp_w = [t.inp.w.double() * scale for t in f.tiers]  # float64 while folding, float32 when stored
    inp_b = [t.inp.b.double() + shift * t.inp.w.double().sum(1) for t in f.tiers]
    gates_w = [t.ih[0].w.double() for t in f.tiers]  # per tier: the first layer's input product (G, dim)
    gates_b = [t.ih[0].b.double() for t in f.tiers]
    for i, tier in enumerate(f.tiers):
        w = gates_w[i] @ inp_w[i]  # (G, frame_len)
        # the top tier's input bias and first-layer bias go into its input layer; below, into the tier above's
        b = gates_w[i] @ inp_b[i] + gates_b[i] if i == 0 else torch.zeros(w.shape[0], dtype=torch.float64)
        cells = [Cell(torch.nn.Identity(), dense(tier.hh[0].w, tier.hh[0].b), tier.lstm)]
        cells += [Cell(dense(ih.w, ih.b), dense(hh.w, hh.b), tier.lstm) for ih, hh in zip(tier.ih[1:], tier.hh[1:])]
        up_w = tier.up.w.double().reshape(tier.frame_size, -1, tier.up.w.shape[1])  # (positions, dim, dim above)
        up_b = tier.up.b.double().reshape(tier.frame_size, -1)
        if i + 1 < len(f.tiers):  # hand down the tier below's gates: its first layer applied to each position
            up_w = torch.einsum("gd,pde->pge", gates_w[i + 1], up_w)
            up_b = (up_b + inp_b[i + 1]) @ gates_w[i + 1].T + gates_b[i + 1]
        up = dense(up_w.reshape(-1, up_w.shape[2]).float(), up_b.reshape(-1).float())
        tiers.append(Tier(tier.frame_len, tier.frame_size, DenseF32(w.float(), b.float()), cells, up))
        for k in range(cfg.n_rnn):  # h0 (states, layers, 1, dim): per layer h, then c (zeros for a GRU)
            h0.append(tier.h0[0, k])
            h0.append(tier.h0[1, k] if tier.lstm else torch.zeros_like(tier.h0[0, k]))
    levels = audio_io.dequantize(torch.arange(cfg.q_levels), cfg.q_levels, cfg.quantization)
    live = LiveSampleRNN(
        tiers,
        f.lut,
        [dense(d.w, d.b) for d in f.hidden],
        dense(f.out.w, f.out.b),
        levels,
        h0,
        int(model_rate),
        int(host_rate),
        cfg.n_rnn,
        precision,
    )
    if prime is not None:
        from ..sampling import prime_codes

        codes = prime_codes(model, prime)
        live.prime_with(codes.reshape(1, -1))
    return live


def script(live: LiveSampleRNN) -> torch.jit.ScriptModule:
    """TorchScript of the live module, in eval mode."""
    return torch.jit.script(live.eval())


def export(
    run: str | os.PathLike,
    out: str | os.PathLike,
    which: str = LISTEN,
    host_rate: int = 48000,
    precision: str = "fp32",
    prime_seconds: float = 0.25,
    prime: str | os.PathLike | None = None,
    seed: int = 0,
) -> Path:
    """Write ``out`` (``.ts``): the checkpoint ``which`` of ``run`` as an nn~ module.

    The module starts from (and resets to) ``prime_seconds`` of the run's training audio, or the
    file ``prime`` (at the run's rate), teacher-forced; ``prime_seconds=0`` and no file: from silence.
    """
    from ..checkpoint import load_model

    if prime_seconds < 0:
        raise LabError(f"--prime-seconds must not be negative, got {prime_seconds:g}")
    out = Path(out)
    model, info = load_model(run, which)
    sr = int(info["config"]["sample_rate"])
    prime_audio = None
    if prime is not None:
        prime_audio, _ = audio_io.load(prime, sr)
    elif prime_seconds > 0:
        from ..dataset import excerpts

        dataset = Path(info["config"].get("dataset", ""))
        if not (dataset / "manifest.json").exists():
            dataset = Path(run) / "dataset"
        if not (dataset / "manifest.json").exists():  # a module that starts from silence would not say so
            raise LabError(
                f"{info['config'].get('dataset', run)}: the run's dataset is not there to prime from; give "
                "--prime FILE, or --prime-seconds 0 to start from silence"
            )
        prime_audio = excerpts(dataset, prime_seconds, 1, seed)[0]
    live = build(model, sr, host_rate, precision, prime_audio)
    live.set_seed(seed)
    scripted = script(live)
    with atomic_path(out) as tmp:
        scripted.save(tmp)
    return out
