import numpy as np
import pytest
import torch

from samplernn_lab import audio
from samplernn_lab.audio import quantize, under_step_share
from samplernn_lab.errors import LabError
from signals import bell, tone


@pytest.mark.parametrize("method", ["linear", "mulaw"])
@pytest.mark.parametrize("q", [16, 256, 1024])
def test_codes_round_trip_exactly(method, q):
    codes = torch.arange(q)
    assert torch.equal(audio.quantize(audio.dequantize(codes, q, method), q, method), codes)


@pytest.mark.parametrize("method", ["linear", "mulaw"])
def test_quantiser_is_symmetric_so_no_dc(method):
    q = 256
    codes = torch.arange(q)
    x = audio.dequantize(codes, q, method)
    assert torch.allclose(x, -x.flip(0), atol=1e-7)
    assert float(x.mean()) == pytest.approx(0.0, abs=1e-7)
    # a zero-mean sine keeps its mean through the quantiser
    s = torch.from_numpy(tone(441.0, 44100, 1.0, 0.3))
    assert abs(float(audio.dequantize(audio.quantize(s, q, method), q, method).mean())) < 1e-3


@pytest.mark.parametrize("method,tol", [("linear", 1 / 256), ("mulaw", 0.02)])
def test_round_trip_error_within_a_bin(method, tol):
    x = torch.from_numpy(bell(16000, 1.0))
    y = audio.dequantize(audio.quantize(x, 256, method), 256, method)
    assert float((x - y).abs().max()) <= tol + 1e-6


def test_linear_uses_fixed_range_not_min_max():
    quiet = torch.tensor([-0.01, 0.0, 0.01])
    codes = audio.quantize(quiet, 256)
    assert codes.tolist() == [126, 128, 129]  # near the middle, not spread over 0..255


def test_mulaw_resolves_quiet_signals_better():
    x = torch.from_numpy(tone(300.0, 16000, 0.5, 0.01))
    err = {
        m: float((audio.dequantize(audio.quantize(x, 256, m), 256, m) - x).abs().mean()) for m in ("linear", "mulaw")
    }
    assert err["mulaw"] < err["linear"] / 3


def test_save_and_load_resamples(tmp_path):
    x = tone(440.0, 44100, 1.0)
    audio.save(tmp_path / "a.wav", x, 44100)
    y, sr = audio.load(tmp_path / "a.wav", 16000)
    assert sr == 16000 and y.dtype == np.float32 and len(y) == 16000
    spec = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spec) * 16000 / len(y) - 440.0) < 2.0


def test_load_stereo_flac_as_mono(tmp_path):
    import soundfile as sf

    st = np.stack([tone(440.0, 16000, 0.5), tone(440.0, 16000, 0.5)], axis=1)
    sf.write(tmp_path / "s.flac", st, 16000)
    y, sr = audio.load(tmp_path / "s.flac")
    assert y.shape == (8000,) and sr == 16000


@pytest.mark.parametrize(
    "content,problem",
    [(None, "no such file"), (b"", "empty"), (b"this is not audio at all" * 10, "not a readable audio file")],
)
def test_bad_files_name_the_file(tmp_path, content, problem):
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(LabError) as e:
        audio.load(path)
    assert str(path) in str(e.value) and problem in str(e.value)


def test_nan_samples_are_refused(make_wav):
    x = tone()
    x[100] = np.nan
    path = make_wav("nan.wav", x, subtype="FLOAT")
    with pytest.raises(LabError, match="NaN"):
        audio.load(path)


def test_under_step_share_counts_a_quiet_decay_not_a_loud_tone_or_digital_silence():
    sr, frame = 16000, 800
    t = np.arange(sr * 2) / sr
    rng = np.random.default_rng(0)
    # a strike decaying 90 dB a second from -9 dBFS (RMS) over a -90 dBFS noise floor
    decay = 0.5 * np.sin(2 * np.pi * 440 * t) * 10 ** (-4.5 * t) + 3e-5 * rng.standard_normal(len(t))
    loud = 0.3 * np.sin(2 * np.pi * 440 * t)
    silent = np.zeros_like(t)
    share = {
        name: under_step_share(quantize(x, 256, "linear"), 256, "linear", frame)
        for name, x in (("decay", decay), ("loud", loud), ("silent", silent))
    }
    # under one linear step (-42 dBFS) from about 0.37 s on, where the floor's sign flips the codes next to zero:
    # ~80% of the 2 s
    assert 0.75 < share["decay"] < 0.85 and share["loud"] == 0.0 and share["silent"] == 0.0, share
    # mu-law's step at zero is ~-75 dBFS: under it from about 0.73 s on, ~63%
    assert 0.55 < under_step_share(quantize(decay, 256, "mulaw"), 256, "mulaw", frame) < 0.7
    # chunks of 1.5 frames, a quiet one then a loud one: a frame each, 1/2; frames across the rows would give 1/3
    n = frame + frame // 2
    two = quantize(np.stack([decay[-n:], loud[:n]]), 256, "linear")
    assert under_step_share(two, 256, "linear", frame) == 0.5
    assert under_step_share(two[:, :10], 256, "linear", frame) == 0.0  # no whole frame
    assert under_step_share(two[:0], 256, "linear", frame) == 0.0  # no chunk
    with pytest.raises(LabError, match="frame"):
        under_step_share(two, 256, "linear", 0)
