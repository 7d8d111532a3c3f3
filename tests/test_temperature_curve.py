"""Temperature over time: breakpoints parsed and interpolated, the sampler taking each sample's temperature
from the curve (both backends), renders, their sidecars and `generate --temperature-curve`."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy import stats
from tiny_models import CFG, sharp_model

from samplernn_lab import generate
from samplernn_lab.audio import quantize
from samplernn_lab.cli import main
from samplernn_lab.errors import LabError
from samplernn_lab.sampling import Sampler, render
from samplernn_lab.sampling.temperature import TemperatureCurve

BACKENDS = ["numba", "torch"]


@pytest.fixture(scope="module")
def model():
    return sharp_model()


def test_breakpoints_are_interpolated_linearly_and_hold_at_the_ends():
    c = TemperatureCurve.parse("0:1.0, 8:0.8, 20:1.1")
    assert c.points == ((0.0, 1.0), (8.0, 0.8), (20.0, 1.1)) and str(c) == "0:1,8:0.8,20:1.1"
    v = c.values(301, 10)  # 10 samples a second: v[10 s] is v[100]
    assert v.dtype == np.float32 and v.shape == (301,)
    np.testing.assert_allclose(v[[0, 40, 80, 140, 200, 300]], [1.0, 0.9, 0.8, 0.95, 1.1, 1.1], atol=1e-6)
    assert c.held_after(10) == 201  # from sample 201 on (20 s at 10 Hz) the last value holds
    late = TemperatureCurve.parse("2:0.5,4:1").values(60, 10)
    np.testing.assert_allclose(late[[0, 19, 20, 30, 40, 59]], [0.5, 0.5, 0.5, 0.75, 1.0, 1.0], atol=1e-6)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("0:1.0,abc", "'abc' is not seconds:temperature"),
        ("0:1.0,8", "'8' is not seconds:temperature"),
        ("0:1,0:2", "times must increase"),
        ("5:1,2:2", "times must increase"),
        ("-1:1", "seconds >= 0"),
        ("0:-0.5", "finite and >= 0"),
        ("0:nan", "finite and >= 0"),
    ],
)
def test_bad_curves_are_refused_naming_the_setting(spec, says):
    with pytest.raises(LabError, match="--temperature-curve") as err:
        TemperatureCurve.parse(spec)
    assert says in str(err.value)


def spy_temperatures(sampler):
    """Record the temperatures the sampler hands its backend, top-tier frame by frame."""
    seen = []
    real = sampler.kernel.set_temperatures

    def record(temps):
        seen.append(temps.clone())
        real(temps)

    sampler.kernel.set_temperatures = record
    return seen


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_sample_gets_the_temperature_the_curve_writes(model, backend):
    n, prime_len = 700, 13  # a prime ending inside a frame: sample 0 of the curve is the first after it
    curve = np.stack([np.linspace(0.2, 1.4, 500), np.linspace(1.0, 0.0, 500)]).astype(np.float32)
    s = Sampler(model, 2, seed=1, backend=backend, temperature_curve=curve)
    seen = spy_temperatures(s)
    s.prime(torch.randint(0, CFG.q_levels, (2, prime_len), generator=torch.Generator().manual_seed(0)))
    codes = torch.cat(list(s.run(n, block=64)), 1)
    assert codes.shape == (2, n)
    given = torch.cat(seen, 1)[:, prime_len : prime_len + n]  # per sample, prime included, from t = 0
    want = np.concatenate([curve, np.repeat(curve[:, -1:], n - 500, 1)], 1)  # the last value holds
    np.testing.assert_array_equal(given.numpy(), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_flat_curve_renders_what_its_temperatures_render(model, backend):
    """Same seed, same uniforms: per-sample temperatures equal to per-stream ones give the same codes."""
    flat = np.repeat(np.array([[0.7], [1.0], [0.0]], np.float32), 50, 1)  # shorter than the render: held
    by_curve = generate(model, 400, batch_size=3, seed=4, temperature_curve=flat, device="cpu")
    s = Sampler(model, 3, [0.7, 1.0, 0.0], seed=4, backend=backend)
    c = Sampler(model, 3, seed=4, backend=backend, temperature_curve=flat)
    a, b = torch.cat(list(s.run(400)), 1), torch.cat(list(c.run(400)), 1)
    assert torch.equal(a, b)
    assert by_curve.shape == (3, 400)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_step_to_greedy_makes_the_steps_after_it_greedy(model, backend):
    """T = 1 for 200 samples, then 0: the sampled start, then the argmax at every step."""
    curve = np.r_[np.ones(200), np.zeros(400)].astype(np.float32)
    s = Sampler(model, 2, seed=2, backend=backend, temperature_curve=curve)
    codes = torch.cat(list(s.run(600)), 1)
    lp = model.log_probs(codes)
    argmax = lp.argmax(-1) == codes
    assert argmax[:, 200:].float().mean() > 0.99
    assert argmax[:, :200].float().mean() < 0.9  # sampled: the argmax is not what T = 1 mostly draws


@pytest.mark.parametrize("backend", BACKENDS)
def test_samples_follow_each_steps_tempered_distribution(model, backend):
    """Randomised PIT against softmax(log p / T_t) with T_t from the curve: uniform when sampling is right."""
    n = 1500
    temps = np.linspace(0.5, 1.5, n).astype(np.float32)
    s = Sampler(model, 4, seed=11, backend=backend, temperature_curve=temps)
    codes = torch.cat(list(s.run(n)), 1)
    p = torch.softmax(model.log_probs(codes).double() / torch.as_tensor(temps, dtype=torch.float64)[:, None], -1)
    chosen = p.gather(-1, codes.unsqueeze(-1)).squeeze(-1)
    below = p.cumsum(-1).gather(-1, codes.unsqueeze(-1)).squeeze(-1) - chosen
    u = torch.rand(codes.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert stats.kstest((below + u * chosen).flatten().numpy(), "uniform").pvalue > 1e-3
    # and it has power: the first third (T from 0.5 to 0.83) judged at T = 1 fails
    p1 = torch.softmax(model.log_probs(codes).double(), -1)[:, : n // 3]
    first = codes[:, : n // 3].unsqueeze(-1)
    c1 = p1.gather(-1, first).squeeze(-1)
    b1 = p1.cumsum(-1).gather(-1, first).squeeze(-1) - c1
    assert stats.kstest((b1 + u[:, : n // 3] * c1).flatten().numpy(), "uniform").pvalue < 1e-3


def test_a_bad_curve_array_is_refused(model):
    with pytest.raises(LabError, match="temperature curve"):
        Sampler(model, 2, temperature_curve=np.ones((3, 10)))
    with pytest.raises(LabError, match="finite and >= 0"):
        Sampler(model, 1, temperature_curve=np.array([1.0, -1.0]))


def test_render_writes_one_file_per_curve_with_its_breakpoints(model, tmp_path):
    curves = ["0:1.0,0.05:0.0", "0:0.5"]
    paths = render(model, tmp_path, 0.1, 8000, batch_size=2, seed=3, temperature_curves=curves, progress=False)
    assert [p.name for p in paths] == [f"render_curve{k}_s3_{i}.wav" for k in (0, 1) for i in (0, 1)]
    side = json.loads(paths[0].with_suffix(".json").read_text())
    assert side["temperature_curve"] == {"spec": "0:1,0.05:0", "breakpoints": [[0.0, 1.0], [0.05, 0.0]]}
    assert side["temperature"] == pytest.approx(np.mean(TemperatureCurve.parse(curves[0]).values(800, 8000)))
    # the WAVs hold what generate() makes from the same per-sample temperatures and seed
    per_sample = np.stack([TemperatureCurve.parse(c).values(800, 8000) for c in curves for _ in range(2)])
    codes = generate(model, 800, batch_size=4, seed=3, temperature_curve=per_sample)
    data, _ = sf.read(paths[3], dtype="float32")
    assert torch.equal(quantize(data, CFG.q_levels), codes[3])
    plain = json.loads(render(model, tmp_path / "p", 0.01, 8000, progress=False)[0].with_suffix(".json").read_text())
    assert plain["temperature_curve"] is None and plain["temperature"] == 1.0


def test_generate_cli_takes_curves_and_refuses_bad_ones(model, tmp_path, capsys):
    from samplernn_lab import TrainConfig, train
    from samplernn_lab.dataset import DataConfig, prepare
    from signals import bell

    sf.write(tmp_path / "bell.wav", bell(8000, 1.0), 8000)
    ds = prepare(
        [tmp_path / "bell.wav"],
        tmp_path / "ds",
        DataConfig(sample_rate=8000, copies=1, chunk_seconds=0.25),
        progress=False,
    )
    run = tmp_path / "run"
    train(ds, run, CFG, TrainConfig(seq_len=64, batch_size=2, epochs=1, render_seconds=0), progress=False)
    out = tmp_path / "r"
    args = ["generate", str(run), "--checkpoint", "best", "--seconds", "0.05", "--out", str(out)]
    assert main([*args, "--temperature-curve", "0:1,0.02:0.5", "0:0"]) == 0
    assert sorted(p.name for p in out.glob("*.wav")) == ["best_curve0_s0_0.wav", "best_curve1_s0_0.wav"]
    assert json.loads((out / "best_curve0_s0_0.json").read_text())["temperature_curve"]["spec"] == "0:1,0.02:0.5"
    capsys.readouterr()
    assert main([*args, "--temperature-curve", "0:1,x"]) == 2
    err = capsys.readouterr().err
    assert "--temperature-curve" in err and "'x' is not seconds:temperature" in err and len(err.splitlines()) == 1
    assert main([*args, "--temperature", "1", "--temperature-curve", "0:1"]) == 2
    assert "give one of them" in capsys.readouterr().err
