import json

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy import stats
from tiny_models import CFG, sharp_model

from samplernn_lab import ModelConfig, SampleRNN, generate
from samplernn_lab.audio import dequantize, quantize
from samplernn_lab.sampling import Sampler, Tuning, render

# "onednn": the torch backend with the dense layers packed for oneDNN, as for big batches
BACKENDS = ["numba", "torch", "onednn"]


@pytest.fixture(scope="module")
def model():
    return sharp_model()


def make_sampler(model, backend, batch_size=1, temperature=1.0, seed=0):
    tuning = Tuning(pack_min_work=0 if backend == "onednn" else 2**62)
    s = Sampler(model, batch_size, temperature, seed, backend="numba" if backend == "numba" else "torch", tuning=tuning)
    packed = [d.packed is not None for d in [*s.f.hidden, s.f.out, s.f.tiers[0].up]]
    assert all(packed) if backend == "onednn" else not any(packed)
    return s


def sample(model, n, backend, **kw):
    s = make_sampler(model, backend, kw.pop("batch_size", 1), kw.pop("temperature", 1.0), kw.pop("seed", 0))
    if "prime" in kw:
        s.prime(kw.pop("prime"))
    return torch.cat(list(s.run(n, block=37)), 1)


def assert_greedy_matches(model, codes, lp):
    """Greedy codes are the argmax at every step (up to float round-off at near-ties)."""
    top = lp.argmax(-1)
    diff = top != codes
    if diff.any():
        gap = (lp.gather(-1, top.unsqueeze(-1)) - lp.gather(-1, codes.unsqueeze(-1))).squeeze(-1)[diff]
        assert float(gap.max()) < 1e-4
    assert diff.float().mean() < 0.01


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_equals_argmax_of_log_probs(model, backend):
    codes = sample(model, 300, backend, temperature=0.0, batch_size=3)
    assert codes.shape == (3, 300)
    assert_greedy_matches(model, codes, model.log_probs(codes))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_samples_follow_the_teacher_forced_distribution(model, backend, temperature):
    codes = sample(model, 1500, backend, temperature=temperature, batch_size=4, seed=11)
    lp = model.log_probs(codes).double() / temperature
    p = torch.softmax(lp, -1)  # the tempered distribution at every step
    cdf = p.cumsum(-1)
    below = cdf.gather(-1, codes.unsqueeze(-1)).squeeze(-1) - p.gather(-1, codes.unsqueeze(-1)).squeeze(-1)
    u = torch.rand(codes.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    pit = (below + u * p.gather(-1, codes.unsqueeze(-1)).squeeze(-1)).flatten().numpy()
    # randomised probability integral transform: uniform exactly when codes ~ p
    assert stats.kstest(pit, "uniform").pvalue > 1e-3
    # and the log-likelihood of what was drawn matches its expectation (-entropy)
    ll = torch.log(p.gather(-1, codes.unsqueeze(-1)).squeeze(-1))
    expected = (p * torch.log(p.clamp_min(1e-300))).sum(-1)
    var = (p * torch.log(p.clamp_min(1e-300)) ** 2).sum(-1) - expected**2
    z = float((ll - expected).sum() / var.sum().sqrt())
    assert abs(z) < 4.5


def test_wrong_distribution_is_detected(model):
    """The statistical test above has power: samples at T=1 fail it against T=0.5."""
    codes = sample(model, 1500, "numba", temperature=1.0, batch_size=4, seed=11)
    p = torch.softmax(model.log_probs(codes).double() / 0.5, -1)
    ll = torch.log(p.gather(-1, codes.unsqueeze(-1)).squeeze(-1))
    expected = (p * torch.log(p.clamp_min(1e-300))).sum(-1)
    var = (p * torch.log(p.clamp_min(1e-300)) ** 2).sum(-1) - expected**2
    assert abs(float((ll - expected).sum() / var.sum().sqrt())) > 6


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_codes(model, backend):
    a = sample(model, 200, backend, seed=3, batch_size=2)
    b = sample(model, 200, backend, seed=3, batch_size=2)
    c = sample(model, 200, backend, seed=4, batch_size=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_generate_api(model):
    out = generate(model, 100, batch_size=2, temperature=[0.0, 1.0], seed=1)
    assert out.dtype == torch.long and out.shape == (2, 100) and out.device.type == "cpu"
    assert int(out.min()) >= 0 and int(out.max()) < CFG.q_levels
    assert torch.equal(out, generate(model, 100, batch_size=2, temperature=[0.0, 1.0], seed=1))
    assert generate(model, 0).shape == (1, 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("prime_len", [40, 43])
def test_prime_equals_teacher_forcing_then_sampling(model, backend, prime_len):
    prime = torch.randint(0, CFG.q_levels, (prime_len,), generator=torch.Generator().manual_seed(9))
    cont = sample(model, 120, backend, temperature=0.0, batch_size=2, prime=prime)
    full = torch.cat([prime.expand(2, -1), cont], 1)
    lp = model.log_probs(full)[:, prime_len:]
    assert_greedy_matches(model, cont, lp)
    # and it differs from the unprimed continuation
    assert not torch.equal(cont, sample(model, 120, backend, temperature=0.0, batch_size=2))


def test_prime_with_audio_quantises_it(model):
    audio = np.sin(np.linspace(0, 40, 64)).astype(np.float32) * 0.5
    a = generate(model, 50, temperature=0.0, prime=audio)
    b = generate(model, 50, temperature=0.0, prime=quantize(audio, CFG.q_levels))
    assert torch.equal(a, b)


@pytest.mark.parametrize("batch_size", [1, 9])  # the numba kernel multiplies by BLAS from 8 rows on
def test_numba_and_torch_backends_agree_greedily(model, batch_size):
    # a different prime per stream, so that every row of the batch goes its own way
    prime = torch.randint(0, CFG.q_levels, (batch_size, 24), generator=torch.Generator().manual_seed(4))
    ref = sample(model, 200, "numba", temperature=0.0, batch_size=batch_size, prime=prime)
    assert len({tuple(row) for row in ref.tolist()}) == batch_size
    assert_greedy_matches(model, ref, model.log_probs(torch.cat([prime, ref], 1))[:, 24:])
    assert torch.equal(ref, sample(model, 200, "torch", temperature=0.0, batch_size=batch_size, prime=prime))
    assert torch.equal(ref, sample(model, 200, "onednn", temperature=0.0, batch_size=batch_size, prime=prime))


@pytest.mark.parametrize("rnn_type", ["gru", "lstm"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_layer_tiers_sample_as_the_model_predicts(rnn_type, backend):
    """The GRU/LSTM cells written out in the sampler match torch's recurrent layers, two layers deep."""
    torch.manual_seed(1)
    m = SampleRNN(ModelConfig(frame_sizes=(2, 2), dim=24, n_rnn=2, rnn_type=rnn_type, embed_size=8, q_levels=16)).eval()
    with torch.no_grad():  # a non-zero learned h0 and an output sharp enough to give varied argmaxes
        for tier in m.tiers:
            tier.h0.normal_(0, 0.5)
        m.mlp.output.parametrizations.weight.original0.mul_(4.0)
    codes = sample(m, 160, backend, temperature=0.0, batch_size=3)
    assert len(set(codes.flatten().tolist())) > 3
    assert_greedy_matches(m, codes, m.log_probs(codes))


@pytest.mark.parametrize("method", ["linear", "mulaw"])
def test_rendered_wav_reads_back_to_its_codes(tmp_path, method):
    torch.manual_seed(0)
    cfg = ModelConfig(frame_sizes=(4, 2), dim=16, n_rnn=1, embed_size=8, q_levels=256, quantization=method)
    m = SampleRNN(cfg).eval()
    paths = render(
        m, tmp_path, 0.05, 16000, batch_size=2, temperatures=[0.9, 1.0], seed=7, progress=False, block_seconds=0.01
    )
    assert [p.name for p in paths] == [
        "render_t0.9_s7_0.wav",
        "render_t0.9_s7_1.wav",
        "render_t1_s7_0.wav",
        "render_t1_s7_1.wav",
    ]
    codes = generate(m, 800, batch_size=4, temperature=[0.9, 0.9, 1.0, 1.0], seed=7)
    for i, p in enumerate(paths):
        data, sr = sf.read(p, dtype="float32")
        assert sr == 16000 and len(data) == 800
        assert torch.equal(quantize(data, 256, method), codes[i])
        np.testing.assert_allclose(data, dequantize(codes[i], 256, method).numpy(), atol=1 / 32768)
        side = json.loads(p.with_suffix(".json").read_text())
        assert side["seed"] == 7 and side["sample_rate"] == 16000
    assert not list(tmp_path.glob(".*tmp"))


def test_negative_length_is_refused(model):
    from samplernn_lab.errors import LabError

    with pytest.raises(LabError, match="negative"):
        generate(model, -5)


class _ReplayOnCPU:
    """Stands in for a captured CUDA graph on CPU: replay re-runs the captured steps on the same tensors
    (``extra`` more times, to play a graph that went wrong)."""

    def __init__(self, sampler, extra=0):
        self.sampler, self.extra, self.replays = sampler, extra, 0

    def replay(self):
        t = self.sampler.t  # a real graph does not advance the Python-side clock; _graph_frame does
        for _ in range(1 + self.extra):
            self.sampler._top_frame()
        self.sampler.t = t
        self.replays += 1


@pytest.fixture
def cpu_cuda(monkeypatch):
    """torch.cuda's streams and graph capture stood in for on CPU, so that Sampler._capture runs as is;
    returns a function that makes a sampler use the graph path with a given stand-in graph."""
    import contextlib

    class Stream:
        def __init__(self, *a):
            pass

        def wait_stream(self, other):
            pass

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "graph", lambda g: contextlib.nullcontext())

    def use_graph(sampler, make_graph):
        sampler.use_graph = True
        monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: make_graph(sampler))
        return sampler

    return use_graph


@pytest.mark.parametrize(("prime_len", "curve"), [(0, False), (43, False), (43, True)])
def test_graph_path_replays_the_same_codes(model, cpu_cuda, prime_len, curve):
    """The CUDA-graph path (replay emulated on CPU) equals eager sampling, from a frame boundary and
    after a prime that ends mid-frame (eager frames until the next boundary), and with a temperature curve
    (set before each replay)."""
    prime = torch.randint(0, CFG.q_levels, (prime_len,), generator=torch.Generator().manual_seed(2))
    temps = np.stack([np.linspace(1.2, 0.0, 150), np.full(150, 0.7), np.linspace(0.3, 1.0, 150)])

    def codes(graph: bool):
        if curve:
            s = Sampler(model, 3, seed=5, backend="torch", temperature_curve=temps)
        else:
            s = make_sampler(model, "torch", batch_size=3, temperature=[0.0, 0.7, 1.0], seed=5)
        if graph:
            cpu_cuda(s, _ReplayOnCPU)
        if prime_len:
            s.prime(prime)
        return torch.cat(list(s.run(150, block=64)), 1), s

    eager, _ = codes(False)
    replayed, s = codes(True)
    assert s.use_graph and s.graph.replays >= 150 // model.lookback - 1
    assert torch.equal(eager, replayed)


def test_graph_steps_touch_only_static_tensors(model):
    """What a CUDA graph needs: a top-tier frame of steps reads and writes the same tensors every time."""
    for rnn_type in ("gru", "lstm"):
        torch.manual_seed(0)
        m = SampleRNN(
            ModelConfig(frame_sizes=(4, 2), dim=16, n_rnn=2, rnn_type=rnn_type, embed_size=8, q_levels=32)
        ).eval()
        s = make_sampler(m, "torch", batch_size=2)
        static = s.static_tensors()
        ptrs = [x.data_ptr() for x in static]
        before = [x.clone() for x in static]
        s._draw()
        s._top_frame()
        assert [x.data_ptr() for x in s.static_tensors()] == ptrs
        assert all(not torch.equal(a, b) for a, b in zip(before, static))  # and every one was updated


@pytest.mark.parametrize("failure", ["capture", "replay"])
def test_graph_failure_falls_back_to_eager(model, cpu_cuda, failure):
    """A capture that fails, or a graph whose replay differs from the steps, leaves the state as it was
    and sampling goes on eagerly: the same codes as without graphs, and a warning."""

    def broken(sampler):
        if failure == "capture":
            raise RuntimeError("capture not supported here")
        return _ReplayOnCPU(sampler, extra=1)

    s = cpu_cuda(make_sampler(model, "torch", batch_size=2, seed=1), broken)
    match = "not supported" if failure == "capture" else "differs"
    with pytest.warns(UserWarning, match=f"CUDA graph capture failed.*{match}"):
        out = torch.cat(list(s.run(40)), 1)
    assert torch.equal(out, sample(model, 40, "torch", batch_size=2, seed=1))
    assert not s.use_graph and s.graph is None


def test_old_import_paths_still_work():
    """Code outside the repository imports the sampler from ``samplernn_lab.sample`` and the package root."""
    import samplernn_lab
    from samplernn_lab import sample, sampling

    for name in ("generate", "Sampler", "fold", "render", "render_checkpoint", "prime_codes"):
        assert getattr(sample, name) is getattr(sampling, name)
    assert samplernn_lab.generate is sampling.generate and samplernn_lab.render is sampling.render
