"""The nn~ export: conventions, loading without the lab, carried state, rate conversion, greedy codes, follow."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch

from samplernn_lab import ModelConfig, TrainConfig, train
from samplernn_lab.audio import quantize
from samplernn_lab.checkpoint import load_model
from samplernn_lab.cli import main
from samplernn_lab.dataset import DataConfig, prepare
from samplernn_lab.live import build, script
from samplernn_lab.live.resample import StreamResampler
from samplernn_lab.sample import generate
from signals import bell, tone

SR = 16000
PRIME = 96  # a multiple of the bottom frame size


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny model trained for one short epoch on a bell: enough structure for greedy codes to be stable."""
    root = tmp_path_factory.mktemp("live")
    sf.write(root / "bell.wav", bell(SR, 2.0), SR)
    ds = prepare(
        [root / "bell.wav"], root / "ds", DataConfig(sample_rate=SR, copies=2, chunk_seconds=0.25), progress=False
    )
    train(
        ds,
        root / "run",
        ModelConfig(frame_sizes=(4, 2), dim=24, n_rnn=1, embed_size=8, q_levels=64),
        TrainConfig(seq_len=256, batch_size=4, epochs=1, render_seconds=0),
        progress=False,
    )
    return root / "run"


@pytest.fixture(scope="module")
def model(run):
    return load_model(run, "last")[0]


@pytest.fixture(scope="module")
def prime():
    return bell(SR, 0.5, seed=3)[4000 : 4000 + PRIME]


@pytest.fixture(scope="module")
def ts_file(model, prime, tmp_path_factory):
    path = tmp_path_factory.mktemp("ts") / "model.ts"
    script(build(model, SR, 48000, prime=prime)).save(str(path))
    return path


def fresh(path):
    return torch.jit.load(str(path))


def play(module, x, sizes, method="forward"):
    """Feed ``x`` (B, 1, N) in buffers of ``sizes`` (cycled), as nn~ does: under inference mode."""
    out, i, k = [], 0, 0
    call = getattr(module, method)
    # the profiling executor re-optimises for every new buffer size (nn~ keeps one): off in tests
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        while i < x.shape[2]:
            n = min(sizes[k % len(sizes)], x.shape[2] - i)
            out.append(call(x[:, :, i : i + n]))
            i, k = i + n, k + 1
    return torch.cat(out, 2)


LOADER = r"""
import json, sys
sys.modules["samplernn_lab"] = None  # importing it now fails: the file must stand alone
import torch
try:
    import samplernn_lab  # noqa
    raise SystemExit("samplernn_lab was importable")
except ImportError:
    pass
m = torch.jit.load(sys.argv[1])
m.set_sample_rate(44100)
res = {"methods": m.get_methods(), "attributes": m.get_attributes()}
for name in res["methods"]:
    res[name] = [getattr(m, name + "_params").tolist(), list(getattr(m, name + "_input_labels")),
                 list(getattr(m, name + "_output_labels"))]
    with torch.inference_mode():
        y = getattr(m, name)(torch.full((3, 1, 441), 0.5))
    res[name].append([list(y.shape), str(y.dtype), bool(torch.isfinite(y).all()), float(y.abs().sum())])
for name in res["attributes"]:
    res["attr_" + name] = [getattr(m, name + "_params").tolist(), getattr(m, "get_" + name)()]
print(json.dumps(res))
"""


def test_export_cli_file_loads_alone_and_follows_nn_tilde_conventions(run, tmp_path, capsys):
    out = tmp_path / "bells.ts"
    assert main(["export", str(run), "--out", str(out), "--sample-rate", "48000", "--checkpoint", "last"]) == 0
    said = capsys.readouterr().out
    assert "nn~ bells.ts forward" in said and "--precision int8" in said  # the faster choice, for fp32 files
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["methods"] == ["forward", "follow"]
    for name in res["methods"]:
        params, ins, outs, (shape, dtype, finite, total) = res[name]
        assert params == [1, 1, 1, 1]  # [in_channels, in_ratio, out_channels, out_ratio]
        assert len(ins) == 1 and len(outs) == 1 and all(isinstance(s, str) for s in ins + outs)
        assert shape == [3, 1, 441] and dtype == "torch.float32" and finite and total > 0
    assert res["attributes"] == ["temperature_offset", "temperature", "seed", "gate_db", "reset"]
    types = {"temperature_offset": [2], "temperature": [2], "seed": [1], "gate_db": [2], "reset": [0]}
    for name, ids in types.items():
        assert res["attr_" + name][0] == ids  # nn~'s type ids: 0 bool, 1 int, 2 float
        assert len(res["attr_" + name][1]) == 1


def test_setters_return_zero_and_getters_read_back(ts_file):
    m = fresh(ts_file)
    assert m.set_temperature_offset(0.25) == 0 and m.get_temperature_offset() == [0.25]
    assert m.set_temperature(0.7) == 0 and m.get_temperature() == [pytest.approx(0.7)]
    assert m.set_seed(12) == 0 and m.get_seed() == [12]
    assert m.set_gate_db(-30.0) == 0 and m.get_gate_db() == [-30.0]
    assert m.set_reset(True) == 0 and m.get_reset() == [False]
    assert m.set_sample_rate(44100) == 0 and m.get_sample_rate() == 44100
    assert m.set_temperature(-1.0) != 0 and m.get_temperature() == [pytest.approx(0.7)]


def test_a_non_cpu_input_gets_one_clear_error(ts_file):
    # nn~'s GPU switch moves the module and its inputs; the carried state stays on the CPU (meta stands in)
    m = fresh(ts_file)
    for method in (m.forward, m.follow):
        with pytest.raises(torch.jit.Error, match="runs on the CPU only"):
            method(torch.ones(1, 1, 64, device="meta"))
    assert m(torch.ones(1, 1, 64)).shape == (1, 1, 64)  # still plays on the CPU afterwards


def test_file_uses_only_long_standing_ops(ts_file):
    with zipfile.ZipFile(ts_file) as z:
        version = int(z.read(next(n for n in z.namelist() if n.endswith("/version"))))
    assert version <= 6  # libtorch >= 1.8 reads it
    m = fresh(ts_file)
    kinds = set()

    def walk(block):
        for node in block.nodes():
            kinds.add(node.kind())
            for b in node.blocks():
                walk(b)

    for name in ("forward", "follow", "reset", "set_sample_rate", "prime_with", "set_seed"):
        graph = getattr(m, name).graph
        torch._C._jit_pass_inline(graph)
        walk(graph)
    new = {k for k in kinds if k.startswith("aten::_") and not k.startswith("aten::__")}  # (dunders: builtins)
    assert not new, f"private (recent) aten ops in the export: {new}"


@pytest.mark.parametrize("sizes", [[2048], [300, 513, 7, 1024, 1]])
def test_consecutive_calls_equal_one_long_call(ts_file, sizes):
    x = torch.linspace(0.0, 1.2, 3000).repeat(2, 1, 1)  # temperature ramp, 2 streams (mc.nn~)
    x[1] *= 0.5
    whole = play(fresh(ts_file), x, [3000])
    parts = play(fresh(ts_file), x, sizes)
    assert whole.shape == (2, 1, 3000)
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-6)
    assert not torch.allclose(whole[0], whole[1])  # the streams are independent
    # no click where buffers join: the largest step is no larger than inside the buffers
    assert float(whole.diff(dim=2).abs().max()) < 2.0


@pytest.mark.parametrize("method", ["forward", "follow"])
def test_one_stream_loop_samples_as_the_batched_loop(ts_file, method):
    """nn~ plays one stream in its own loop (mc.nn~ several in the batched one): the same codes, sample for
    sample, also in `follow` while its input is quiet."""
    x = torch.linspace(0.2, 1.3, 2500).view(1, 1, -1)
    if method == "follow":
        x = 0.5 * torch.sin(torch.arange(2500.0) / 7).view(1, 1, -1) * (torch.arange(2500) < 800)
    batched = fresh(ts_file)
    batched.one_stream_loop = False
    one = play(fresh(ts_file), x, [512], method)
    torch.testing.assert_close(one, play(batched, x, [512], method), rtol=0, atol=0)
    assert float(one[..., 1500:].std()) > 0.01  # it plays: not silence


def test_greedy_export_equals_generate_before_rate_conversion(model, prime):
    live = script(build(model, SR, SR, prime=prime))  # host rate = model rate: no conversion
    audio = play(live, torch.zeros(1, 1, 1500), [256])  # temperature 0: greedy
    codes = quantize(audio[0, 0], model.config.q_levels, model.config.quantization)
    expected = generate(model, 1500, temperature=0.0, prime=torch.as_tensor(prime))
    assert torch.equal(codes, expected[0])
    assert len(torch.unique(codes)) > 1  # not a constant


def test_export_at_host_rate_is_model_rate_output_converted(model, prime):
    a = script(build(model, SR, 48000, prime=prime))
    b = script(build(model, SR, SR, prime=prime))
    temp = torch.full((1, 1, 6000), 0.9)
    host = play(a, temp, [2048])
    native = play(b, temp[:, :, :2000], [2000])
    rs = StreamResampler(SR, 48000)
    rs.reset(1)
    rs.prefill(torch.as_tensor(prime).reshape(1, -1))
    # the primed start's tail is what the module's converter starts from
    rs.reset(1)
    rs.prefill(quantized_tail(model, prime, rs))
    rs.push(native[:, 0])
    torch.testing.assert_close(host[:, 0, :5500], rs.pull(5500), rtol=0, atol=1e-5)


def quantized_tail(model, prime, rs):
    from samplernn_lab.audio import dequantize

    codes = quantize(torch.as_tensor(prime), model.config.q_levels, model.config.quantization)
    return dequantize(codes, model.config.q_levels, model.config.quantization)[-2 * rs.taps_half :].reshape(1, -1)


def test_resampler_keeps_pitch_and_filters_images():
    src, dst = 16000, 48000
    x = torch.as_tensor(tone(1000.0, src, 1.0, 0.5)).reshape(1, -1)
    rs = StreamResampler(src, dst)
    rs.reset(1)
    out = []
    for i in range(0, x.shape[1], 700):  # streamed in uneven pieces
        rs.push(x[:, i : i + 700])
        out.append(rs.pull(rs.available()))
    y = torch.cat(out, 1)[0].double().numpy()
    assert abs(len(y) - 3 * x.shape[1]) < 3 * rs.taps_half
    n = np.arange(len(y))
    delay = rs.taps_half - 1 + 1.0  # in source samples: the output is the input `half` samples earlier
    ideal = 0.5 * np.sin(2 * np.pi * 1000.0 * (n / dst - delay / src))
    steady = slice(4 * rs.taps_half * 3, len(y) - 10)
    assert np.max(np.abs(y[steady] - ideal[steady])) < 2e-3
    spec = np.abs(np.fft.rfft(y[steady] * np.hanning(len(y[steady]))))
    freqs = np.fft.rfftfreq(len(y[steady]), 1 / dst)
    peak = spec.max()
    assert freqs[spec.argmax()] == pytest.approx(1000.0, abs=5)
    images = spec[freqs > 8500].max()  # 1 kHz images at 15, 17, 31, 33 kHz without the filter
    assert 20 * np.log10(images / peak) < -70


def test_resampler_down_then_identity():
    x = torch.as_tensor(tone(500.0, 48000, 0.5, 0.5)).reshape(1, -1)
    rs = StreamResampler(48000, 16000)
    rs.reset(1)
    rs.push(x)
    y = rs.pull(rs.available())
    assert abs(y.shape[1] - x.shape[1] / 3) < 2 * rs.taps_half
    assert float(y[0, 200:].abs().max()) == pytest.approx(0.5, abs=0.01)
    same = StreamResampler(16000, 16000)
    same.reset(1)
    same.push(x[:, :100])
    assert torch.equal(same.pull(100), x[:, :100])


def test_reset_returns_to_the_primed_start_and_seed_matters(ts_file):
    m = fresh(ts_file)
    temp = torch.ones(1, 1, 3000)
    first = play(m, temp, [1000])
    m.reset()
    again = play(m, temp, [1000])
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    m.set_seed(5)
    m.set_reset(True)
    other = play(m, temp, [1000])
    assert not torch.allclose(first, other)


def test_follow_forces_loud_input_then_continues_it(model, prime):
    m = script(build(model, SR, 48000, prime=prime))
    m.set_temperature(1.0)
    loud = torch.as_tensor(bell(48000, 0.5, seed=1)).reshape(1, 1, -1) * 1.5
    quiet = torch.zeros(1, 1, 24000)
    y = play(m, torch.cat([loud, quiet], 2), [2048], "follow")[0, 0]
    xin = loud[0, 0]
    # while loud: the output is the input as the model heard it (quantised), some milliseconds late
    seg = y[4000:20000]
    lags = [float(torch.dot(seg, xin[4000 - d : 20000 - d])) for d in range(0, 400)]
    lag = int(np.argmax(lags))
    err = (seg - xin[4000 - lag : 20000 - lag]).abs().mean()
    assert err < 0.05, (err, lag)
    # after it falls quiet: the model goes on (not the silent input)
    assert float(y[24000 + 2000 :].abs().mean()) > 1e-3


def random_model(seed: int, **sizes):
    """An untrained SampleRNN with random biases too (a fresh model's are zero, which would hide a misplaced one)."""
    from samplernn_lab.model import SampleRNN

    torch.manual_seed(seed)
    net = SampleRNN(ModelConfig(**{"q_levels": 64, **sizes})).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.3)
    return net


@pytest.mark.parametrize(
    "sizes",
    [
        dict(frame_sizes=(2, 2, 2), dim=24, n_rnn=1, embed_size=8, mlp_hidden_layers=0),  # three tiers
        dict(frame_sizes=(4, 2), dim=24, n_rnn=2, rnn_type="lstm", embed_size=8, mlp_hidden_layers=2),
    ],
)
def test_greedy_export_equals_generate_other_shapes(prime, sizes):
    """Three tiers (a middle tier's folded input bias), LSTM cells, no or two hidden MLP layers: the export plays
    what the offline sampler does."""
    net = random_model(0, **sizes)
    live = script(build(net, SR, SR, prime=prime))
    audio = play(live, torch.zeros(1, 1, 600), [200])
    codes = quantize(audio[0, 0], 64, net.config.quantization)
    assert torch.equal(codes, generate(net, 600, temperature=0.0, prime=torch.as_tensor(prime))[0])
    assert len(torch.unique(codes)) > 1


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_export_carries_state_and_stays_near_float32(prime, precision):
    """bf16 / int8 weights (bfloat16 between the MLP's layers; width 32, so int8 applies): buffers join as one
    long call, and the stream keeps the float32 export's level (the codes themselves part ways within a few
    samples: the products round differently)."""
    net = random_model(1, frame_sizes=(4, 2), dim=32, n_rnn=1, embed_size=16)
    low = script(build(net, SR, SR, precision=precision, prime=prime))
    assert any(name.endswith(".s") or name.endswith(".b16") for name, _ in low.named_buffers())
    x = torch.full((1, 1, 1200), 0.8)
    whole = play(low, x, [1200])
    low.reset()
    torch.testing.assert_close(play(low, x, [300, 77, 823]), whole, rtol=0, atol=0)
    ref = play(script(build(net, SR, SR, prime=prime)), x, [1200])
    assert torch.isfinite(whole).all() and 0.5 < float(whole.std() / ref.std()) < 2.0
