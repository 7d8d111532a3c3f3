"""The trap watchdog (``generate --rescue``): trapped streams are re-primed, healthy ones never touched."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from samplernn_lab import ModelConfig, SampleRNN
from samplernn_lab.audio import load, quantize, silence_code
from samplernn_lab.errors import LabError
from samplernn_lab.pipeline import ROOT
from samplernn_lab.sampling import Sampler, generate, render
from samplernn_lab.sampling import backends as backends_mod
from samplernn_lab.sampling.rescue import Rescue, Watchdog, is_silent, is_steady_tone
from signals import bell, bell_peal, noise, tone

SR = 16000
CFG = ModelConfig(frame_sizes=(4, 2), dim=32, n_rnn=1, embed_size=8, q_levels=64)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = SampleRNN(CFG).eval()
    with torch.no_grad():
        m.mlp.output.parametrizations.weight.original0.mul_(3.0)
    return m


def test_detectors_on_synthesised_sounds():
    assert is_silent(np.zeros(3 * SR), SR)
    assert is_silent(noise(SR, 3.0, amp=1e-4) + 0.3, SR)  # -80 dBFS hiss on a DC offset
    assert not is_silent(bell(SR, 3.0), SR)
    assert is_steady_tone(tone(440, SR, 3.0), SR)
    assert is_steady_tone(tone(220, SR, 3.0) + noise(SR, 3.0, amp=0.01), SR)
    assert not is_steady_tone(bell(SR, 3.0), SR)  # decays and is re-struck
    assert not is_steady_tone(bell_peal(SR, 3.0), SR)
    assert not is_steady_tone(noise(SR, 3.0), SR)
    assert not is_steady_tone(np.zeros(3 * SR), SR)
    glide = 0.5 * np.sin(2 * np.pi * np.cumsum(np.geomspace(200, 1600, 3 * SR)) / SR)  # three octaves
    assert not is_steady_tone(glide, SR)


def watch(stream: np.ndarray, source: np.ndarray, sr: int = SR, noise: bool = True) -> Watchdog:
    """A watchdog (every rule on) fed ``stream`` (float, one stream) in 512-sample pieces, checking when due."""
    w = Watchdog(Rescue(source, sr, noise=noise), 1, 256, "linear", 64)
    codes = quantize(stream, 256)[None]
    for i in range(0, codes.shape[1], 512):
        w.observe(codes[:, i : i + 512])
        if w.due():
            w.check()
    return w


@pytest.mark.parametrize(
    "name", ["synth_glassbells", "loop_compus", "synth_steps", "synth_textile", "vinyl_hiss", "perc_till"]
)
def test_bundled_sounds_are_never_trapped(name):
    x, sr = load(ROOT / "media" / f"{name}.wav")
    looped = np.tile(x, int(np.ceil(12 * sr / len(x))))
    assert watch(looped, x, sr).events == [[]]


def test_silence_and_tone_are_trapped_after_three_seconds():
    src = bell_peal(SR, 6.0)
    stream = np.concatenate([bell_peal(SR, 2.0, seed=1), np.zeros(4 * SR, np.float32)])
    assert [e["reason"] for e in watch(stream, src).events[0]] == ["silence"]
    ev = watch(np.concatenate([bell_peal(SR, 2.0, seed=1), tone(660, SR, 4.0)]), src).events[0]
    assert [e["reason"] for e in ev] == ["tone"] and ev[0]["seconds"] >= ev[0]["since"] + 3.0 >= 5.0


def test_a_stream_turned_to_noise_is_trapped_unless_noise_is_off():
    src = bell_peal(SR, 6.0)
    stream = np.concatenate([bell_peal(SR, 2.0, seed=1), noise(SR, 4.0, amp=0.3)])
    ev = watch(stream, src).events[0]
    # looked at every second: caught once the noise fills enough of the last 3 s to read further than the limit
    assert [e["reason"] for e in ev] == ["noise"] and 2.0 < ev[0]["seconds"] <= 5.1
    w = Watchdog(Rescue(src, SR), 1, 256, "linear", 64)  # the default: the noise rule off
    w.observe(quantize(stream, 256)[None])
    assert w.check() == [] and w.noise_limit is None and w.settings()["noise_seconds"] is None
    # another peal of the same bells, never noise
    assert watch(bell_peal(SR, 8.0, seed=7), src).events == [[]]


def test_a_steady_tone_source_makes_tones_no_trap_but_silence_still_is():
    # a tone that swells (as a rubbed glass does: the fine test's 1.5 s windows see its level move)
    t = np.arange(4 * SR) / SR
    src = (0.5 * (0.6 + 0.4 * np.sin(2 * np.pi * 0.4 * t)) * np.sin(2 * np.pi * 740 * t)).astype(np.float32)
    w = watch(tone(740, SR, 10.0), src, noise=False)
    assert w.tone_seconds == np.inf and w.settings()["tone_seconds"] is None and w.events == [[]]
    w = watch(np.concatenate([tone(740, SR, 2.0), np.zeros(4 * SR, np.float32)]), src, noise=False)
    assert [e["reason"] for e in w.events[0]] == ["silence"]
    # a source that only holds a tone for a while keeps the rule
    assert np.isfinite(watch(tone(740, SR, 1.0), np.concatenate([bell_peal(SR, 4.0), src[: 2 * SR]])).tone_seconds)


def test_a_known_kind_is_taken_not_measured_again():
    # a dataset's kind, measured when it was prepared, decides the tone rule whatever the audio at hand says
    peal = bell_peal(SR, 6.0)
    assert np.isfinite(Watchdog(Rescue(peal, SR), 1, 256, "linear", 64).tone_seconds)
    assert Watchdog(Rescue(peal, SR, kind="tone"), 1, 256, "linear", 64).tone_seconds == np.inf
    assert np.isfinite(Watchdog(Rescue(tone(740, SR, 6.0), SR, kind="varied"), 1, 256, "linear", 64).tone_seconds)
    with pytest.raises(LabError, match="rescue: kind must be one of silence, tone, noise, varied or None, got 'Tone'"):
        Rescue(peal, SR, kind="Tone")


def test_a_source_with_long_pauses_makes_pauses_no_trap():
    src = np.concatenate([bell(SR, 1.0), np.zeros(4 * SR, np.float32), bell(SR, 1.0, seed=2)])
    w = watch(np.concatenate([bell(SR, 1.0), np.zeros(5 * SR, np.float32)]), src)
    assert w.silence_seconds >= 1.5 * 4.0 and w.events == [[]]
    w = watch(np.concatenate([bell(SR, 1.0), np.zeros(8 * SR, np.float32)]), src)
    assert [e["reason"] for e in w.events[0]] == ["silence"]


class StandIn:
    """A stand-in backend: plays a bell peal, except stream 1, which at 1 s is driven into silence and then
    stays silent for as long as the codes it continues are silent (a trap); a prime of the source gets it
    out. Forced codes (priming) are taken as given."""

    name, torch_threads, graphable = "standin", 1, False  # one thread: a loaded machine
    bell = quantize(bell_peal(SR, 30.0), CFG.q_levels).numpy()

    def __init__(self, f, batch_size, temps, seed, device, **options):
        self.fs = f.frame_size
        self.played = np.zeros(batch_size, np.int64)  # sampled codes per stream
        self.silence = silence_code(f.q_levels)

    def static_tensors(self):
        return []

    def draw(self):
        pass

    def frame(self, cond, window, pos, forced):
        fs, win, n = self.fs, window.numpy(), self.played  # a frame is sampled or forced as a whole here
        past_silent = (win[:, :fs] == self.silence).all(1)
        trapped = (np.arange(len(win)) == 1) & ((n == SR) | ((n > SR) & past_silent))
        codes = self.bell[(n[:, None] + np.arange(fs)) % len(self.bell)]
        win[:, fs:] = np.where(trapped[:, None], self.silence, codes)
        if forced is not None:
            win[:, fs:] = np.where(forced.numpy() >= 0, forced.numpy(), win[:, fs:])
        else:
            self.played += fs


@pytest.fixture
def stand_in(monkeypatch):
    """Every backend is the stand-in, on a model with 32-sample bottom frames (fewer Python steps)."""
    for name in ("numba", "torch"):
        monkeypatch.setitem(backends_mod.BACKENDS, name, StandIn)
    torch.manual_seed(0)
    return SampleRNN(ModelConfig(frame_sizes=(32, 32), dim=8, n_rnn=1, embed_size=4, q_levels=CFG.q_levels)).eval()


def test_rescue_reprimes_a_stream_driven_into_silence_and_leaves_the_healthy_one(stand_in, tmp_path):
    source = bell_peal(SR, 30.0)[: 6 * SR]  # what the stand-in plays: its healthy stream is the source itself
    paths = render(
        stand_in,
        tmp_path,
        6.0,
        SR,
        batch_size=2,
        temperatures=[1.0],
        seed=0,
        label="x",
        prime=source[:512],
        progress=False,
        rescue=Rescue(source, SR),
    )
    sides = [json.loads(p.with_suffix(".json").read_text()) for p in paths]
    assert sides[0]["rescue"]["events"] == []  # the healthy stream is never touched
    [event] = sides[1]["rescue"]["events"]
    # checked about every second, at top-tier frame boundaries: silent over the last 3 s from 1 s on
    assert event["reason"] == "silence" and event["since"] == pytest.approx(event["seconds"] - 3.0, abs=1e-3)
    assert 1.0 <= event["since"] <= 1.0 + 2 * stand_in.lookback / SR
    healthy, _ = sf.read(paths[0], dtype="float32")
    audio, _ = sf.read(paths[1], dtype="float32")
    assert np.array_equal(quantize(healthy, CFG.q_levels).numpy(), StandIn.bell[: 6 * SR])
    assert np.array_equal(quantize(audio[:SR], CFG.q_levels).numpy(), StandIn.bell[:SR])
    at = int(event["seconds"] * SR)
    assert is_silent(audio[SR:at], SR)
    assert not is_silent(audio[at : at + SR], SR)  # re-primed: it plays again


def test_without_rescue_the_stream_stays_silent_and_the_sidecar_says_none(stand_in, tmp_path):
    paths = render(stand_in, tmp_path, 5.0, SR, batch_size=2, temperatures=[1.0], label="x", progress=False)
    assert json.loads(paths[1].with_suffix(".json").read_text())["rescue"] is None
    audio, _ = sf.read(paths[1], dtype="float32")
    assert is_silent(audio[SR:], SR)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_a_restarted_stream_continues_as_a_fresh_stream_primed_with_the_excerpt(model, backend):
    lb = model.lookback
    excerpt = quantize(bell(SR, 0.1, seed=3), CFG.q_levels)[: 12 * lb]
    s = Sampler(model, 3, 0.0, seed=0, backend=backend)
    before = torch.cat(list(s.run(5 * lb)), 1)
    s.restart(1, excerpt)
    after = torch.cat(list(s.run(300)), 1)
    alone = generate(model, 5 * lb + 300, batch_size=3, temperature=0.0)
    fresh = generate(model, 300, temperature=0.0, prime=excerpt)
    assert torch.equal(before, alone[:, : 5 * lb])
    assert torch.equal(after[[0, 2]], alone[[0, 2], 5 * lb :])  # the other streams go on untouched
    assert torch.equal(after[1], fresh[0])
    with pytest.raises(ValueError, match="multiples"):
        s.restart(0, excerpt[:-1])
