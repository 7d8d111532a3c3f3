"""Nucleus (top-p) truncation: both backends sample only from each step's nucleus, as written."""

import json

import pytest
import torch
from scipy import stats
from tiny_models import sharp_model

from samplernn_lab.errors import LabError
from samplernn_lab.sampling import Sampler, generate, render
from samplernn_lab.sampling.kernels import nucleus

BACKENDS = ["numba", "torch"]


@pytest.fixture(scope="module")
def model():
    return sharp_model()


def sample(model, n, backend, batch_size=4, temperature=1.0, top_p=1.0, seed=0):
    s = Sampler(model, batch_size, temperature, seed, backend=backend, top_p=top_p)
    return torch.cat(list(s.run(n, block=37)), 1)


def test_nucleus_keeps_the_most_likely_codes_reaching_p():
    p = torch.tensor([[0.05, 0.4, 0.3, 0.25], [0.25, 0.25, 0.25, 0.25], [0.1, 0.6, 0.2, 0.1]])
    kept = nucleus(p, 0.6) > 0
    assert kept.tolist() == [
        [False, True, True, False],  # 0.4 + 0.3 reaches 0.6
        [True, True, True, True],  # ties at the cut stay
        [False, True, False, False],
    ]  # 0.6 alone
    assert (nucleus(p, 1.0) > 0).all() and torch.equal(nucleus(p, 1e-9) > 0, p == p.amax(1, keepdim=True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_p_is_greedy(model, backend):
    greedy = generate(model, 300, batch_size=3, temperature=0.0)
    assert torch.equal(sample(model, 300, backend, batch_size=3, temperature=1.0, top_p=1e-6), greedy)


@pytest.mark.parametrize("backend", BACKENDS)
def test_p_one_is_the_untruncated_sampler(model, backend):
    assert torch.equal(sample(model, 200, backend, top_p=1.0, seed=2), sample(model, 200, backend, seed=2))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_samples_stay_in_the_nucleus_and_follow_it(model, backend, temperature):
    top_p = 0.7
    codes = sample(model, 1500, backend, temperature=temperature, top_p=top_p, seed=11)
    p = torch.softmax(model.log_probs(codes).double() / temperature, -1)  # the tempered distribution per step
    kept = nucleus(p, top_p)
    at = codes.unsqueeze(-1)
    # never outside the nucleus (up to float round-off right at the cut)
    outside = kept.gather(-1, at).squeeze(-1) == 0
    cut = torch.where(kept > 0, kept, torch.ones_like(kept)).amin(-1)
    assert not outside.any() or float((cut - p.gather(-1, at).squeeze(-1))[outside].max()) < 1e-5
    assert float(1 - kept.sum(-1).mean()) > 0.05  # mass was cut off: the test is not vacuous
    assert float((codes != p.argmax(-1)).float().mean()) > 0.1  # and it is not greedy
    # inside the nucleus, the renormalised distribution: randomised probability integral transform
    q = kept / kept.sum(-1, keepdim=True)
    below = q.cumsum(-1).gather(-1, at).squeeze(-1) - q.gather(-1, at).squeeze(-1)
    u = torch.rand(codes.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    pit = (below + u * q.gather(-1, at).squeeze(-1)).flatten().numpy()
    assert stats.kstest(pit, "uniform").pvalue > 1e-3


def test_untruncated_samples_leave_the_nucleus(model):
    """The check above has power: without truncation, codes outside the 0.7 nucleus are drawn."""
    codes = sample(model, 1500, "numba", seed=11)
    kept = nucleus(torch.softmax(model.log_probs(codes).double(), -1), 0.7)
    assert float((kept.gather(-1, codes.unsqueeze(-1)) == 0).float().mean()) > 0.05


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan")])
def test_bad_top_p_is_one_line(model, bad):
    with pytest.raises(LabError, match="top-p"):
        Sampler(model, 1, top_p=bad)


def test_render_records_top_p(model, tmp_path):
    [path] = render(model, tmp_path, 0.01, 16000, top_p=0.9, progress=False)
    assert json.loads(path.with_suffix(".json").read_text())["top_p"] == 0.9
