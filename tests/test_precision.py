"""Sampling precisions: bf16 and int8 weights stay within a stated KL of the float32 model's distribution."""

import pytest
import torch
import torch.nn.functional as F

from samplernn_lab import ModelConfig, SampleRNN
from samplernn_lab.audio import quantize
from samplernn_lab.errors import LabError
from samplernn_lab.live import build, script
from samplernn_lab.precision import LowPrecisionDense, folded_log_probs, int8_rows
from samplernn_lab.sampling import Sampler, fold, generate
from signals import bell

# Mean KL divergence per sample (nats) from the float32 model's per-sample distribution, teacher-forced on
# the float32 model's own samples: the bounds these tests hold. Measured on this model: bf16 ~5e-5,
# int8 ~2e-4; weights off by one quantisation step per row give more than 0.01.
KL_BOUND = {"bf16": 1e-3, "int8": 2e-3}
CFG = ModelConfig(frame_sizes=(4, 2), dim=64, n_rnn=2, embed_size=16, q_levels=64)


@pytest.fixture(scope="module")
def model():
    """Briefly trained (80 Adam steps of teacher forcing on a bell): peaked distributions, as trained ones are."""
    torch.manual_seed(0)
    m = SampleRNN(CFG)
    codes = quantize(bell(16000, 1.0), CFG.q_levels)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    lb, n = m.lookback, 256
    gen = torch.Generator().manual_seed(0)
    for _ in range(80):
        starts = torch.randint(0, len(codes) - lb - n, (8,), generator=gen)
        x = torch.stack([codes[s : s + lb + n] for s in starts.tolist()])
        logits, _ = m(x)
        loss = F.cross_entropy(logits.reshape(-1, CFG.q_levels), x[:, lb:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 3.0  # it learned something: below log(64) = 4.16 nats
    return m.eval()


@pytest.fixture(scope="module")
def codes(model):
    return generate(model, 600, batch_size=2, temperature=1.0, seed=1)


def kl(model, codes, precision, rows=None):
    p32 = folded_log_probs(fold(model), codes)
    low = folded_log_probs(fold(model, rows=rows, precision=precision), codes)
    return float((p32.exp() * (p32 - low)).sum(-1).mean())


def test_folded_log_probs_are_the_models(model, codes):
    torch.testing.assert_close(folded_log_probs(fold(model), codes), model.log_probs(codes), rtol=0, atol=1e-4)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("rows", [None, 2])  # 2: the sampler's layers, bf16 packed for oneDNN where it can
def test_low_precision_within_kl_bound(model, codes, precision, rows):
    d = kl(model, codes, precision, rows)
    assert 0 < d < KL_BOUND[precision], d


def test_bf16_layers_run_on_onednn_where_it_is_there(model):
    from samplernn_lab.precision import pack

    f = fold(model, rows=2, precision="bf16")
    layers = [f.out, *f.hidden] + [d for t in f.tiers for d in (t.up, *t.ih, *t.hh)]
    can = pack(torch.zeros(8, 8, dtype=torch.bfloat16), 2) is not None
    assert all((layer.packed is not None) == can for layer in layers)
    x = torch.randn(3, f.out.w.shape[1])
    torch.testing.assert_close(f.out(x), x @ f.out.w.T + f.out.b, rtol=2e-2, atol=2e-2)


def test_kl_measure_detects_a_wrong_scale(model, codes):
    f = fold(model, precision="int8")
    layer = f.hidden[0]
    layer.s = (layer.s.float() * 1.1).to(torch.bfloat16)  # every scale 10% off
    p32 = folded_log_probs(fold(model), codes)
    assert float((p32.exp() * (p32 - folded_log_probs(f, codes))).sum(-1).mean()) > max(KL_BOUND.values())


def test_int8_rows_round_trip():
    w = torch.randn(5, 40) * torch.tensor([1.0, 0.01, 100.0, 0.0, 3.0])[:, None]
    q, s = int8_rows(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    err = (q.float() * s[:, None] - w).abs().amax(1)
    assert bool((err <= s / 2 + 1e-6).all())  # half a step per row at most


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_sampler_uses_the_precision(model, precision, backend):
    s = Sampler(model, 2, 1.0, seed=0, backend=backend, precision=precision)
    dense = [s.f.out, *s.f.hidden, *[d for t in s.f.tiers for d in (*t.ih, *t.hh, t.up)]]
    assert all(isinstance(d, LowPrecisionDense) and d.precision == precision for d in dense)
    out = torch.cat(list(s.run(200)), 1)
    assert out.shape == (2, 200) and int(out.min()) >= 0 and int(out.max()) < CFG.q_levels
    with pytest.raises(LabError, match="precision"):
        Sampler(model, 1, precision="fp16")


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_the_sampler_draws_from_the_distribution_the_kl_bound_holds_for(model, precision):
    """The sampler keeps the MLP's activations in bfloat16 between its layers, and so does the KL test's measure:
    both must be the same distribution. Greedy codes are the argmax of it at every step."""
    sampler = Sampler(model, 2, 0.0, seed=0, backend="torch", precision=precision)
    codes = torch.cat(list(sampler.run(160)), 1)
    lp = folded_log_probs(fold(model, rows=2, precision=precision), codes)
    assert torch.equal(lp.argmax(-1), codes)
    f32 = folded_log_probs(fold(model, rows=2), codes)
    assert not torch.equal(lp, f32)  # the low-precision weights were used


def test_int8_layers_the_kernel_cannot_take_keep_the_mlp_in_float32():
    """A width that is not a multiple of 16 leaves the MLP's layers float32 in int8: no bfloat16 between them."""
    torch.manual_seed(0)
    m = SampleRNN(ModelConfig(frame_sizes=(4, 2), dim=40, n_rnn=1, embed_size=16, q_levels=64)).eval()
    sampler = Sampler(m, 2, 0.0, seed=0, backend="torch", precision="int8")
    assert sampler.f.mlp_dtype == torch.float32
    codes = torch.cat(list(sampler.run(160)), 1)
    assert torch.equal(folded_log_probs(fold(m, rows=2, precision="int8"), codes).argmax(-1), codes)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_export_with_precision_plays(model, precision):
    m = script(build(model, 16000, 48000, precision))
    with torch.inference_mode():
        y = torch.cat([m(torch.ones(1, 1, 1024)) for _ in range(3)], 2)
    assert y.shape == (1, 1, 3072) and bool(torch.isfinite(y).all()) and float(y.abs().max()) > 0


def test_generate_cli_takes_precision_and_the_sidecar_records_it(model, tmp_path):
    from samplernn_lab.cli import build_parser
    from samplernn_lab.sampling import render

    assert build_parser().parse_args(["generate", "r", "--seconds", "1", "--out", "o"]).precision == "fp32"
    assert (
        build_parser().parse_args(["generate", "r", "--seconds", "1", "--out", "o", "--precision", "int8"]).precision
        == "int8"
    )
    [path] = render(model, tmp_path, 0.01, 16000, precision="int8", progress=False)
    import json

    assert json.loads(path.with_suffix(".json").read_text())["precision"] == "int8"


def test_int8_only_where_the_kernel_is_right():
    """The int8 kernel (torch's) is right for a multiple of 16 inputs (other counts give wrong products): such layers
    take int8, the others stay float32 and give F.linear's result."""
    g = torch.Generator().manual_seed(0)
    for k in (16, 48, 256):
        w, x = torch.randn(64, k, generator=g), torch.randn(2, k, generator=g)
        layer = LowPrecisionDense(w, None, "int8")
        assert layer.precision == "int8"
        ref = x @ layer.w.T  # the dequantised weights
        assert float((layer(x) - ref).abs().max() / ref.abs().max()) < 0.03
    for k in (8, 24, 40):
        w, x = torch.randn(64, k, generator=g), torch.randn(2, k, generator=g)
        layer = LowPrecisionDense(w, None, "int8")
        assert layer.precision == "fp32"
        torch.testing.assert_close(layer(x), x @ w.T)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_a_large_bias_does_not_take_the_products_bits(precision):
    """Float32 in and out: only the product is rounded to bfloat16, so the error scales with the product, not with
    a bias a thousand times larger (as a GRU gate's can be)."""
    torch.manual_seed(0)
    w, b, x = torch.randn(16, 64) * 1e-3, torch.full((16,), 4.0), torch.randn(2, 64)
    layer = LowPrecisionDense(w, b, precision, rows=2)
    exact = x @ layer.w.T + b  # the stored weights' own product, unrounded
    # bfloat16 inputs and products: a few parts in a thousand of the product; the bias inside the rounding gave 75%
    assert float((layer(x) - exact).abs().max()) < 2e-2 * float((x @ layer.w.T).abs().max())
