"""diagnose / compare / diagnose_file / format_table on signals synthesised here (no files from the repo)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.signal

from samplernn_lab.analysis import (
    CATEGORIES,
    Diagnosis,
    compare,
    diagnose,
    diagnose_file,
)
from samplernn_lab.audio import dequantize, quantize, save
from samplernn_lab.cli import format_table
from samplernn_lab.errors import LabError
from samplernn_lab.frame_features import hiss_db
from samplernn_lab.resemblance import SourceProfile

RATES = [16000, 44100]


# --- signals ------------------------------------------------------------------------------------------


def _t(sr: int, dur: float) -> np.ndarray:
    return np.arange(int(sr * dur)) / sr


def sine(sr: int, dur: float = 4.0, f: float = 440.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * f * _t(sr, dur))).astype(np.float32)


def white(sr: int, dur: float = 4.0, dbfs: float = -20.0, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(int(sr * dur))
    return (x * 10 ** (dbfs / 20)).astype(np.float32)


def pink(sr: int, dur: float = 4.0, dbfs: float = -20.0, seed: int = 0) -> np.ndarray:
    n = int(sr * dur)
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    k = np.arange(len(spec), dtype=float)
    k[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(k), n)  # power ~ 1/f
    return (x / np.sqrt(np.mean(x**2)) * 10 ** (dbfs / 20)).astype(np.float32)


def textile_tone(sr: int, dur: float = 4.0) -> np.ndarray:
    """The study's failure on textile.wav: a high steady tone (3.5 kHz) with a quieter harmonic."""
    t = _t(sr, dur)
    return (0.4 * np.sin(2 * np.pi * 3520 * t) + 0.1 * np.sin(2 * np.pi * 7040 * t)).astype(np.float32)


def bells(sr: int, dur: float = 5.0, seed: int = 1, mallet: float = 0.0) -> np.ndarray:
    """Struck bells: inharmonic partial sets on five pitches, decaying, overlapping, 0.3-0.8 s apart; with
    ``mallet`` > 0 each strike starts with a 5 ms burst of white noise, ``mallet`` times as loud as the first partial
    (before the whole is normalised): a mallet's broadband attack, which strikes through hiss."""
    rng = np.random.default_rng(seed)
    hit = np.random.default_rng(seed + 100).standard_normal(int(0.02 * sr)) * np.exp(
        -np.arange(int(0.02 * sr)) / (0.005 * sr)
    )
    n = int(sr * dur)
    t = _t(sr, dur)
    out = np.zeros(n)
    ratios = [1.0, 2.76, 5.40, 8.93, 13.34]
    bases = [523.0, 659.0, 784.0, 1046.0, 880.0]
    strike, k = 0.0, 0
    while strike < max(dur - 0.2, 0.01):
        start = int(strike * sr)
        tt = t[: n - start]
        for j, r in enumerate(ratios):
            if bases[k % 5] * r < sr / 2 - 100:
                out[start:] += (
                    (0.6**j)
                    * np.sin(2 * np.pi * bases[k % 5] * r * tt + rng.uniform(0, 6))
                    * np.exp(-tt * (1.5 + 2 * j))
                )
        out[start : start + len(hit)] += mallet / 3 * hit[: n - start]
        strike += rng.uniform(0.3, 0.8)
        k += 1
    return (out / (1.25 * np.max(np.abs(out)))).astype(np.float32)


def clicks(sr: int, dur: float = 4.0, bpm: float = 120.0) -> np.ndarray:
    """A rhythmic pattern of short decaying clicks on an eighth-note grid."""
    n = int(sr * dur)
    x = np.zeros(n)
    pattern = [1.0, 0.0, 0.5, 0.3, 1.0, 0.0, 0.5, 0.0]
    for i, pos in enumerate(range(0, n, int(sr * 30 / bpm))):
        a = pattern[i % len(pattern)]
        length = min(int(0.004 * sr), n - pos)
        if a and length > 0:
            m = np.arange(length)
            x[pos : pos + length] += a * 0.8 * np.exp(-m / (0.0007 * sr)) * np.sign(np.sin(m * 1.3 + 0.3))
    return x.astype(np.float32)


def chirp(sr: int, method: str, dur: float = 4.0) -> np.ndarray:
    return (0.5 * scipy.signal.chirp(_t(sr, dur), 200.0, dur, 4000.0, method=method)).astype(np.float32)


def am_tone(sr: int, depth: float, dur: float = 4.0, f: float = 660.0, rate: float = 5.0) -> np.ndarray:
    t = _t(sr, dur)
    return (0.4 * (1 + depth * np.sin(2 * np.pi * rate * t)) * np.sin(2 * np.pi * f * t)).astype(np.float32)


def noise_bursts(sr: int, dur: float = 4.0, seed: int = 1) -> np.ndarray:
    """Noise struck four times a second: a rhythm with the timbre of white noise."""
    t = _t(sr, dur)
    return (white(sr, dur, -10, seed) * np.exp(-(t % 0.25) * 30)).astype(np.float32)


def phase_randomised(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Same long-term spectrum (timbre), rhythm smeared away."""
    spec = np.fft.rfft(x)
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, len(spec))
    return np.fft.irfft(np.abs(spec) * np.exp(1j * phase), len(x)).astype(np.float32)


# --- the three failures and the success ---------------------------------------------------------------


@pytest.mark.parametrize("sr", RATES)
def test_digital_silence(sr):
    d = diagnose(np.zeros(sr * 4, np.float32), sr)
    assert d.category == "silence"
    assert "silence" in d.sentence.lower()


@pytest.mark.parametrize("sr", RATES)
def test_near_silent_hiss_is_silence(sr):
    d = diagnose(white(sr, dbfs=-70), sr)
    assert abs(d.features["rms_dbfs"] + 70) < 1
    assert d.category == "silence"


@pytest.mark.parametrize("sr", RATES)
def test_sine_is_tone(sr):
    d = diagnose(sine(sr), sr)
    assert d.category == "tone"
    assert abs(d.features["dominant_hz"] - 440) < 2
    assert d.features["pitch_stability"] > 0.95
    assert d.features["tonal_dominance"] > 0.9


@pytest.mark.parametrize("sr", RATES)
def test_high_tone_with_harmonic_is_tone(sr):
    d = diagnose(textile_tone(sr), sr)
    assert d.category == "tone"
    assert abs(d.features["dominant_hz"] - 3520) < 5
    assert d.sentence.startswith("Steady tone at 3520 Hz")


@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("make", [white, pink])
def test_white_and_pink_noise_are_noise(sr, make):
    d = diagnose(make(sr), sr)
    assert d.category == "noise"
    assert d.features["noisiness"] > 0.45
    assert d.features["onset_rate"] < 0.5


def sparse_strikes(sr: int, dur: float = 20.0) -> np.ndarray:
    """Two bell strikes, each under the floor within a second and a half, over hiss at -82 dBFS: a faithful
    model of a one-strike source that waits long between strikes (mu-law's quietest hiss between them)."""
    t = _t(sr, dur)
    out = white(sr, dur, -82.0, seed=4)
    for start in (2.0, 13.0):
        after = np.clip(t - start, 0, None)
        env = np.where(t >= start, np.exp(-after * 7.0), 0.0)
        out += 0.1 * env * (np.sin(2 * np.pi * 880 * t) + 0.5 * np.sin(2 * np.pi * 2337 * t))
    return out.astype(np.float32)


@pytest.mark.parametrize("sr", RATES)
def test_a_few_strikes_over_a_quiet_floor_are_not_steady_noise(sr):
    # most frames are the hiss floor (the 90th percentile too), so the level spread and onset rate look steady;
    # the loud frames standing far over the floor say otherwise
    d = diagnose(sparse_strikes(sr), sr)
    assert d.features["level_spread_db"] < 10 and d.features["onset_rate"] <= 1.0 and d.features["noisiness"] > 0.35
    assert d.features["level_range_db"] > 20
    assert d.category == "varied"
    assert diagnose(white(sr, 20.0, -40.0), sr).features["level_range_db"] < 2  # steady hiss: ~0


@pytest.mark.parametrize("sr", RATES)
def test_bells_are_varied(sr):
    d = diagnose(bells(sr), sr)
    assert d.category == "varied"
    assert d.features["tonal_dominance"] > 0.8  # tonal, yet the pitch moves
    assert d.features["pitch_stability"] < 0.6
    assert d.features["onset_rate"] > 0.8


@pytest.mark.parametrize("sr", RATES)
def test_click_pattern_is_varied(sr):
    d = diagnose(clicks(sr), sr)
    assert d.category == "varied"
    assert d.features["onset_rate"] > 1.0


@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("method", ["linear", "logarithmic"])
def test_chirp_is_varied(sr, method):
    d = diagnose(chirp(sr, method), sr)
    assert d.category == "varied"
    assert d.features["pitch_stability"] < 0.3


# --- robustness --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sr", RATES)
def test_short_signals_work(sr):
    n = int(0.2 * sr)
    assert diagnose(np.zeros(n, np.float32), sr).category == "silence"
    assert diagnose(sine(sr, 0.2), sr).category == "tone"
    assert diagnose(white(sr, 0.2), sr).category == "noise"
    assert diagnose(bells(sr, 0.2), sr).category in CATEGORIES
    for length in (1, 50, 500):  # shorter than one frame: no crash
        assert diagnose(white(sr, length / sr), sr).category in CATEGORIES


def test_tone_with_noise_floor_is_tone():
    sr = 16000
    assert diagnose(sine(sr) + white(sr, dbfs=-45), sr).category == "tone"
    assert diagnose(sine(sr) + white(sr, dbfs=-25), sr).category == "tone"


@pytest.mark.parametrize("depth", [0.3, 0.5])
def test_tremolo_tone_is_still_tone(depth):
    sr = 16000
    d = diagnose(am_tone(sr, depth), sr)
    assert d.category == "tone"
    assert abs(d.features["dominant_hz"] - 660) < 3


def test_vibrato_tone_is_still_tone():
    sr = 16000
    t = _t(sr, 4.0)
    semis = 0.3 * np.sin(2 * np.pi * 5 * t)  # +-0.3 semitone at 5 Hz
    phase = 2 * np.pi * np.cumsum(880 * 2 ** (semis / 12)) / sr
    assert diagnose((0.4 * np.sin(phase)).astype(np.float32), sr).category == "tone"


def test_a_tone_of_a_steady_tone_source_is_its_own_kind_not_the_failure():
    from samplernn_lab.analysis import source_kind

    sr = 16000
    drone, peal = SourceProfile(am_tone(sr, 0.3, f=740.0), sr), SourceProfile(bells(sr), sr)
    assert source_kind(drone) == "tone" and source_kind(peal) == "varied"
    held = sine(sr, f=740.0)
    own, failure = diagnose(held, sr, drone), diagnose(held, sr, peal)
    assert own.category == failure.category == "tone"  # what the render is does not change
    assert "as its source is" in own.sentence and "failure" not in own.sentence
    assert "failure mode" in failure.sentence
    # noise of a tone source is still the noise failure
    assert "failure mode" in diagnose(white(sr), sr, drone).sentence
    # what any sentence notes, this one too
    assert "DC offset" in diagnose(held + 0.05, sr, drone).sentence


def test_dc_offset_does_not_change_the_category():
    sr = 16000
    for make, expected in [(sine, "tone"), (white, "noise"), (bells, "varied")]:
        d = diagnose(make(sr) + 0.05, sr)
        assert d.category == expected, make.__name__
        assert abs(d.features["dc_offset"] - 0.05) < 0.005
        assert "DC offset" in d.sentence
    assert diagnose(np.full(sr, 0.3, np.float32), sr).category == "silence"  # an offset alone is silent


def test_clipping_does_not_change_the_category():
    sr = 16000
    cases = [
        (np.clip(2.5 * sine(sr), -1, 1), "tone"),
        (np.clip(white(sr, dbfs=-6), -1, 1), "noise"),
        (np.clip(3.0 * bells(sr), -1, 1), "varied"),
        (np.clip(3.0 * clicks(sr), -1, 1), "varied"),
    ]
    for x, expected in cases:
        d = diagnose(x, sr)
        assert d.category == expected
        assert d.features["clipped_fraction"] > 0
    d = diagnose(cases[0][0], sr)
    assert d.features["clipped_fraction"] > 0.3
    assert "clipped" in d.sentence


def test_nan_samples_are_reported_not_fatal():
    sr = 16000
    x = sine(sr)
    x[::100] = np.nan
    d = diagnose(x, sr)
    assert d.category == "tone"
    assert d.features["nonfinite_fraction"] == pytest.approx(0.01, abs=1e-3)
    assert "NaN" in d.sentence


def test_features_and_to_dict_are_plain_json():
    d = diagnose(bells(16000, 2.0), 16000)
    assert isinstance(d, Diagnosis)
    for key in (
        "rms_dbfs",
        "peak_dbfs",
        "spectral_flatness",
        "tonal_dominance",
        "pitch_stability",
        "dominant_hz",
        "onset_rate",
        "dc_offset",
        "clipped_fraction",
        "level_spread_db",
        "level_range_db",
        "duration_s",
        "noisiness",
        "hiss_db",
    ):
        assert isinstance(d.features[key], float), key
        assert np.isfinite(d.features[key]), key
    assert 0 <= d.features["spectral_flatness"] <= 1
    assert 0 <= d.features["tonal_dominance"] <= 1
    assert 0 <= d.features["pitch_stability"] <= 1
    assert d.features["duration_s"] == pytest.approx(2.0)
    row = d.to_dict()
    assert row["category"] == d.category and row["sentence"] == d.sentence
    assert json.loads(json.dumps(row)) == row
    assert all(type(v) is float for k, v in row.items() if k not in ("category", "sentence"))


def test_bad_input_raises_laberror():
    with pytest.raises(LabError):
        diagnose(np.zeros(0, np.float32), 16000)
    with pytest.raises(LabError):
        diagnose(np.zeros((100, 2), np.float32), 16000)
    with pytest.raises(LabError):
        diagnose(np.zeros(100, np.float32), 0)


# --- compare -----------------------------------------------------------------------------------------


def test_compare_same_process_is_close():
    sr = 16000
    c = compare(white(sr, seed=1), white(sr, seed=2), sr)
    assert c["envelope_distance_db"] < 1.5
    assert c["onset_rate_ratio"] == pytest.approx(1.0, abs=0.3)
    assert abs(c["level_difference_db"]) < 0.5
    c = compare(noise_bursts(sr, seed=3), noise_bursts(sr, seed=4), sr)
    assert c["envelope_distance_db"] < 1.5
    assert 0.7 < c["onset_rate_ratio"] < 1.4
    assert "timbre and its rhythm" in c["sentence"]


def test_compare_sine_and_noise_are_far():
    sr = 16000
    c = compare(sine(sr), white(sr), sr)
    assert c["envelope_distance_db"] > 10
    assert c["timbre_match"] == 0.0
    assert "not reproduce the source's timbre" in c["sentence"]


def test_compare_timbre_without_rhythm():
    sr = 16000
    source = noise_bursts(sr)
    c = compare(phase_randomised(source), source, sr)
    assert c["envelope_distance_db"] < 1.0
    assert c["source_onset_rate"] > 2.0
    assert c["onset_rate_ratio"] < 0.2
    assert c["sentence"].startswith("It reproduced the source's timbre but not its rhythm")
    json.dumps(c)


def test_compare_silent_render_and_levels():
    sr = 16000
    c = compare(np.zeros(sr * 2, np.float32), bells(sr, 2.0), sr)
    assert c["sentence"].startswith("The render is silent")
    assert np.isfinite(c["level_difference_db"]) and c["level_difference_db"] < -60
    c = compare(white(sr, dbfs=-40), white(sr, dbfs=-20, seed=5), sr)
    assert c["level_difference_db"] == pytest.approx(-20, abs=0.5)
    assert "20 dB quieter" in c["sentence"]


# --- files and the table ------------------------------------------------------------------------------


def test_diagnose_file_and_format_table(tmp_path):
    sr = 16000
    tone_path = save(tmp_path / "tone.wav", textile_tone(sr, 2.0), sr)
    bell_path = save(tmp_path / "bells.wav", bells(sr, 2.0), sr)
    rows = [diagnose_file(tone_path), diagnose_file(bell_path)]
    assert rows[0]["file"] == str(tone_path)
    assert rows[0]["category"] == "tone" and rows[1]["category"] == "varied"
    json.dumps(rows)
    table = format_table(rows, sentence_width=30)
    lines = table.splitlines()
    assert len(lines) == 4
    for header in ("file", "category", "rms dBFS", "flatness", "dominance", "onsets/s", "sentence"):
        assert header in lines[0]
    assert "tone.wav" in lines[2] and "tone" in lines[2]
    assert "\u2026" in lines[2]  # sentence cut to 30 characters
    assert format_table([]).count("\n") == 1  # header and rule only


def test_diagnose_file_missing_names_the_file(tmp_path):
    with pytest.raises(LabError, match="nope.wav"):
        diagnose_file(tmp_path / "nope.wav")


def hiss_bed(sr: int, dur: float = 6.0) -> np.ndarray:
    """A quiet steady hiss carrying bell partials: what a model that never learned the strikes plays."""
    t = _t(sr, dur)
    partials = 0.02 * np.sin(2 * np.pi * 523 * t) + 0.01 * (np.sin(2 * np.pi * 784 * t) + np.sin(2 * np.pi * 1443 * t))
    return (white(sr, dur, -34.0, seed=3) + partials).astype(np.float32)


def test_a_hiss_bed_under_a_clean_source_is_noise():
    sr = 16000
    bed = hiss_bed(sr)
    alone = diagnose(bed, sr)
    assert alone.category == "varied"  # its partials keep it under the noise rule's flatness on its own
    d = diagnose(bed, sr, bells(sr, 6.0))
    assert d.features["resemblance"] < 1.0  # quiet and source-coloured: the measure alone would pass it
    assert d.category == "noise" and "partials" in d.sentence
    assert diagnose(bells(sr, 6.0, seed=2), sr, bells(sr, 6.0)).category == "varied"  # the source's own kind


def moving_drone(sr: int, hiss_dbfs: float | None, dur: float = 6.0) -> np.ndarray:
    """Steady bell partials that change set halfway (so the pitch moves: not a tone), over white hiss."""
    t = _t(sr, dur)
    a = 0.02 * np.sin(2 * np.pi * 523 * t) + 0.01 * (np.sin(2 * np.pi * 784 * t) + np.sin(2 * np.pi * 1443 * t))
    b = 0.02 * np.sin(2 * np.pi * 659 * t) + 0.01 * (np.sin(2 * np.pi * 1046 * t) + np.sin(2 * np.pi * 1819 * t))
    fade = np.clip((t - dur / 2 + 0.1) / 0.2, 0, 1)
    hiss = 0 if hiss_dbfs is None else white(sr, dur, hiss_dbfs, seed=3)
    return ((1 - fade) * a + fade * b + hiss).astype(np.float32)


def test_the_spectral_floor_reads_the_hiss_between_partials():
    sr = 16000
    floors = [diagnose(moving_drone(sr, h), sr).features["hiss_db"] for h in (None, -60.0, -50.0, -40.0)]
    assert floors[0] < -80  # clean partials: nothing between them
    assert floors[1] < floors[2] < floors[3] and floors[3] - floors[1] == pytest.approx(20, abs=3)  # dB for dB
    assert diagnose(white(sr, 4.0), sr).features["hiss_db"] == pytest.approx(-6.5, abs=1)  # 0.22 x the mean


def test_a_quieter_hiss_bed_under_moving_partials_is_noise_and_the_clean_drone_is_not():
    # the demo's renders: partials that move between the bells' notes over hiss some 10 dB under them
    # (noisiness 0.12-0.14, the bells 0.00), which the measure scores closer than the clean partials alone
    sr, src = 16000, bells(16000, 6.0)
    bed, clean = diagnose(moving_drone(sr, -40.0), sr, src), diagnose(moving_drone(sr, None), sr, src)
    assert 0.1 < bed.features["noisiness"] < 0.2 and bed.features["resemblance"] < clean.features["resemblance"] < 1
    assert bed.category == "noise" and "partials" in bed.sentence
    assert clean.category == "varied"
    assert diagnose(moving_drone(sr, -40.0), sr).category == "varied"  # without its source: no bar to judge by


def swelling(x: np.ndarray, sr: int, depth_db: float = 14.0, rate_hz: float = 0.25) -> np.ndarray:
    """``x`` swelling and falling by ``depth_db`` without an attack: a held drone's slow level changes."""
    t = _t(sr, len(x) / sr)
    return (x * 10 ** (-depth_db / 40 * (1 + np.sin(2 * np.pi * rate_hz * t)))).astype(np.float32)


@pytest.mark.parametrize("sr", RATES)
def test_held_partials_that_swell_over_hiss_are_a_hiss_bed(sr):
    # the demo's renders: held partials swelling by ~11 dB without an onset over hiss far quieter than the
    # partials (noisiness under 0.1): neither steady nor noisy enough for the noisiness clause
    bed, src = swelling(moving_drone(sr, -50.0), sr), bells(sr, 6.0)
    d = diagnose(bed, sr, src)
    f = d.features
    assert f["noisiness"] < 0.1 and f["level_spread_db"] > 10 and f["onset_rate"] == 0 and f["resemblance"] < 1
    assert d.category == "noise" and "held partials over a hiss" in d.sentence
    # a model of 16 levels leaves that much hiss on the bells themselves: not its failure
    coarse = diagnose(bed, sr, SourceProfile(src, sr, q_levels=16))
    assert "partials" not in coarse.sentence and coarse.features["hiss_db"] == f["hiss_db"]


def test_diagnose_cli_takes_a_renders_levels_from_its_sidecar(tmp_path, capsys):
    from samplernn_lab.cli import main

    sr = 16000
    save(tmp_path / "bed.wav", swelling(moving_drone(sr, -50.0), sr), sr)
    save(tmp_path / "src.wav", bells(sr, 6.0), sr)

    def row() -> dict:
        assert main(["diagnose", str(tmp_path / "bed.wav"), "--source", str(tmp_path / "src.wav"), "--json"]) == 0
        return json.loads(capsys.readouterr().out)[0]

    assert "held partials over a hiss" in row()["sentence"]  # no sidecar: 256 levels
    (tmp_path / "bed.json").write_text(json.dumps({"q_levels": 16, "seed": 0}))  # as generate writes it
    assert "partials" not in row()["sentence"]  # 16 levels leave that much hiss on the bells themselves
    for junk in ("not json", "[16]", json.dumps({"q_levels": "16"})):  # not a sidecar the lab wrote: 256 again
        (tmp_path / "bed.json").write_text(junk)
        assert "held partials over a hiss" in row()["sentence"]


@pytest.mark.parametrize("sr", RATES)
def test_the_hiss_the_levels_leave_is_not_a_hiss_bed(sr):
    # an unstruck source (a swelling drone, loud enough that 256 levels leave little hiss): only the hiss decides
    src = swelling(10 * moving_drone(sr, None, dur=8.0)[::-1].copy(), sr)  # another take: longer, backwards
    take = swelling(10 * moving_drone(sr, None), sr)
    profile = SourceProfile(src, sr)
    assert profile.played_hiss_db > profile.features["hiss_db"] + 40  # the levels raise a clean source's floor
    for method in ("linear", "mulaw"):  # a perfect 8-bit model of it
        played = dequantize(quantize(take, 256, method), 256, method).numpy()
        assert diagnose(played, sr, profile).category == "varied"
    hissy = diagnose((take + white(sr, 6.0, -50.0, seed=5)).astype(np.float32), sr, profile)
    assert hissy.features["hiss_db"] < profile.played_hiss_db + 8 and hissy.category == "varied"  # under the margin
    coarser = SourceProfile(src, sr, q_levels=64)
    assert coarser.played_hiss_db > profile.played_hiss_db + 8  # fewer levels, more hiss allowed


def test_hiss_db_alone_is_the_features_own():
    sr = 16000
    for x in (moving_drone(sr, -50.0), white(sr, 2.0), bells(sr, 2.0)):
        assert hiss_db(x, sr) == pytest.approx(diagnose(x, sr).features["hiss_db"])
    silent = np.zeros(sr, np.float32)
    assert hiss_db(silent, sr) == diagnose(silent, sr).features["hiss_db"] == -120.0  # no hiss at all


def test_a_steady_render_of_a_slightly_noisy_source_is_not_a_hiss_bed():
    # the lower floor's false positive to guard against: a drone recorded with some hiss (noisiness 0.08),
    # rendered with a little more (0.145), is the source's own sound; three times its noisiness is the bar
    sr = 16000
    render = moving_drone(sr, -40.0)
    hissy_src = moving_drone(sr, -43.0, dur=8.0)[::-1].copy()  # another take: longer, played backwards
    cleaner_src = moving_drone(sr, -46.0, dur=8.0)[::-1].copy()
    hissy, cleaner = (diagnose(x, sr).features["noisiness"] for x in (hissy_src, cleaner_src))
    assert 0.07 < hissy < 0.1 and 0.03 < cleaner < 0.05
    d = diagnose(render, sr, hissy_src)
    assert d.features["resemblance"] < 0.5 and 3 * cleaner < d.features["noisiness"] < 3 * hissy
    assert d.category == "varied"
    assert diagnose(render, sr, cleaner_src).category == "noise"  # 0.145 > 3 x 0.045: the same render is a hiss bed


def test_a_noisy_source_raises_the_hiss_bar():
    sr = 16000
    d = diagnose(hiss_bed(sr), sr, noise_bursts(sr, 6.0))
    assert "partials" not in d.sentence  # no noisier than such a source: not the hiss-bed failure


def pulsing(x: np.ndarray, sr: int, rate_hz: float = 2.5, gap_s: float = 0.08, depth_db: float = 25.0) -> np.ndarray:
    """``x`` dropping out by ``depth_db`` for ``gap_s`` ``rate_hz`` times a second and coming straight back: the
    demo's pulsing beds, whose returns count as onsets though nothing breaks through the hiss."""
    t = _t(sr, len(x) / sr)
    gap = (t * rate_hz) % 1.0 < gap_s * rate_hz
    env = scipy.signal.lfilter([0.02], [1, -0.98], np.where(gap, 10 ** (-depth_db / 20), 1.0))  # ~3 ms edges
    return (x * env).astype(np.float32)


@pytest.mark.parametrize("sr", RATES)
def test_strikes_break_through_the_hiss_and_pulses_do_not(sr):
    bed = diagnose(pulsing(moving_drone(sr, -40.0), sr), sr).features
    struck = diagnose((bells(sr, 6.0, seed=2, mallet=1.0) + white(sr, 6.0, -40.0, seed=5)).astype(np.float32), sr)
    struck = struck.features
    assert bed["onset_rate"] > 1.5 and bed["strike_rate"] < 0.5  # its returns are onsets, not strikes
    mostly_out = diagnose(pulsing(moving_drone(sr, -40.0), sr, gap_s=0.25, depth_db=60.0), sr).features
    assert mostly_out["onset_rate"] > 1.5 and mostly_out["strike_rate"] < 0.5  # dropped out 60% of the time
    assert struck["strike_rate"] > 1.0 and struck["onset_rate"] > 1.0
    assert diagnose(np.zeros(sr, np.float32), sr).features["strike_rate"] == 0.0


def test_a_varied_sentence_counts_the_strikes_among_its_onsets():
    # the demo's auto epoch: partials dropping out and coming back 2-3 times a second over hiss, varied by the rules;
    # its sentence says that none of its onsets break through the hiss, where the bells' all do
    sr, src = 16000, bells(16000, 6.0)
    pulses = diagnose(pulsing(moving_drone(sr, -50.0), sr), sr, src)
    struck = diagnose(bells(sr, 6.0, seed=2), sr, src)
    assert pulses.category == struck.category == "varied"
    assert "onsets per second of which 0.0 strike through the hiss" in pulses.sentence
    assert f"of which {struck.features['strike_rate']:.1f} strike through" in struck.sentence
    assert struck.features["strike_rate"] > 1.0
