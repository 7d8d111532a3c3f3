"""Regenerate the synthetic example sounds in this folder.

Writes three 44.1 kHz mono 16-bit WAV files, 6 s each, peak -3 dBFS, no DC:

* ``synth_glassbells.wav`` - bell strikes at irregular times; each strike is an
  inharmonic partial set (ratios 1, 2.76, 5.40, 8.93) with exponential decays
  (higher partials decay faster) plus a short noisy strike transient.
* ``synth_steps.wav`` - a swung, steady-tempo loop of band-passed noise bursts
  with sharp attacks (footsteps on gravel) and low thumps.
* ``synth_textile.wav`` - a rubbing-textile-like texture: broadband filtered
  noise whose loudness and spectral centre drift slowly; no clear pitch.

Only numpy and soundfile are used and every random draw comes from a seeded
``numpy.random.default_rng``, so running the script twice gives byte-identical
files.  Usage::

    python media/make_media.py [output_dir]     # default: this folder
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 44100
DURATION = 6.0
N = int(SR * DURATION)
PEAK_DBFS = -3.0


# --------------------------------------------------------------------------- helpers
def fft_filter(x: np.ndarray, gain_fn) -> np.ndarray:
    """Zero-phase filter ``x`` with magnitude response ``gain_fn(freqs_hz)``."""
    n = len(x)
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(n, 1.0 / SR)
    return np.fft.irfft(spec * gain_fn(freqs), n)


def bandpass_gain(fc: float, octaves: float):
    """Log-frequency Gaussian band-pass centred on ``fc`` (width in octaves)."""

    def g(f):
        lf = np.log2(np.maximum(f, 1.0) / fc)
        return np.exp(-0.5 * (lf / (octaves / 2.0)) ** 2)

    return g


def highpass_gain(fc: float, order: int = 2):
    def g(f):
        r = (f / fc) ** (2 * order)
        return np.sqrt(r / (1.0 + r))

    return g


def finalize(x: np.ndarray) -> np.ndarray:
    """Remove DC / sub-sonic content, fade the edges, normalise to -3 dBFS, int16."""
    x = fft_filter(x, highpass_gain(20.0, order=2))
    x = x - x.mean()
    fade = int(0.005 * SR)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade))
    x[:fade] *= ramp
    x[-fade:] *= ramp[::-1]
    x = x - x.mean()
    x *= 10.0 ** (PEAK_DBFS / 20.0) / np.max(np.abs(x))
    return np.round(x * 32767.0).astype(np.int16)


def add_at(out: np.ndarray, start: int, sig: np.ndarray) -> None:
    end = min(len(out), start + len(sig))
    if end > start:
        out[start:end] += sig[: end - start]


# --------------------------------------------------------------------------- glass bells
BELL_RATIOS = np.array([1.0, 2.76, 5.40, 8.93])
BELL_AMPS = np.array([1.0, 0.55, 0.32, 0.18])


def make_glassbells(rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(N)
    # irregular strike times (min spacing 0.25 s), strikes stop 1.2 s before the end
    times = []
    t = 0.05
    while t < DURATION - 1.2:
        times.append(t)
        t += rng.uniform(0.25, 0.95)
    # a pentatonic-ish set of fundamentals, slightly out of tune like real bells
    pitches = np.array([523.3, 587.3, 659.3, 784.0, 880.0, 1046.5, 1174.7])
    tail = int(4.0 * SR)
    tt = np.arange(tail) / SR
    for t0 in times:
        f0 = rng.choice(pitches) * rng.uniform(0.992, 1.008)
        vel = rng.uniform(0.45, 1.0)
        base_tau = rng.uniform(0.9, 1.6)  # decay constant (s) of the fundamental
        tone = np.zeros(tail)
        for ratio, amp in zip(BELL_RATIOS, BELL_AMPS):
            f = f0 * ratio * rng.uniform(0.997, 1.003)
            if f > 0.45 * SR:
                continue
            tau = base_tau / ratio**0.9  # higher partials decay faster
            beat = rng.uniform(0.3, 2.0)  # slight doublet -> gentle beating
            ph1, ph2 = rng.uniform(0, 2 * np.pi, 2)
            partial = 0.6 * np.sin(2 * np.pi * f * tt + ph1) + 0.4 * np.sin(2 * np.pi * (f + beat) * tt + ph2)
            tone += amp * rng.uniform(0.8, 1.2) * np.exp(-tt / tau) * partial
        attack = np.minimum(1.0, tt / 0.0015)  # 1.5 ms attack
        tone *= attack
        # strike transient: ~8 ms of high-passed noise with a fast decay
        nlen = int(0.012 * SR)
        noise = rng.standard_normal(nlen * 4)
        noise = fft_filter(noise, highpass_gain(rng.uniform(2500, 5000), order=2))[:nlen]
        noise *= np.exp(-np.arange(nlen) / (0.0025 * SR))
        tone[:nlen] += 0.9 * noise / (np.max(np.abs(noise)) + 1e-12)
        add_at(out, int(t0 * SR), vel * tone)
    return out


# --------------------------------------------------------------------------- steps
def make_steps(rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(N)
    bpm = 124.0
    eighth = 60.0 / bpm / 2.0
    swing = 0.57  # first eighth of each pair takes 57 % of the beat
    events = []
    k = 0
    t = 0.02
    while t < DURATION - 0.15:
        events.append((t, k))
        t += 2 * eighth * (swing if k % 2 == 0 else 1.0 - swing)
        k += 1
    for t0, k in events:
        t0 = t0 + rng.normal(0.0, 0.004)  # small human timing jitter
        start = max(0, int(t0 * SR))
        on_beat = k % 2 == 0
        accent = 1.0 if k % 4 == 0 else (0.8 if on_beat else 0.55)
        accent *= rng.uniform(0.85, 1.1)
        # gravel crunch: band-passed noise, sharp attack, grainy decay
        blen = int(rng.uniform(0.13, 0.18) * SR)
        bt = np.arange(blen) / SR
        noise = rng.standard_normal(blen)
        fc = rng.uniform(1500.0, 4000.0) if on_beat else rng.uniform(2500.0, 6000.0)
        burst = fft_filter(noise, bandpass_gain(fc, rng.uniform(1.2, 2.2)))
        # granular crackle: sparse random grains modulate the burst
        grains = (rng.random(blen) < 0.004).astype(float) * rng.uniform(0.5, 1.0, blen)
        glen = int(0.004 * SR)
        grains = np.convolve(grains, np.exp(-np.arange(glen) / (0.0008 * SR)))[:blen]
        env = np.minimum(1.0, bt / 0.0008) * np.exp(-bt / rng.uniform(0.025, 0.05))
        burst = burst / (np.max(np.abs(burst)) + 1e-12)
        sig = burst * env * (0.55 + 1.6 * grains)
        # low thump on the beats (heel strike): decaying sine with falling pitch
        if on_beat:
            tlen = int(0.12 * SR)
            tt = np.arange(tlen) / SR
            f = 55.0 + 45.0 * np.exp(-tt / 0.02)
            phase = 2 * np.pi * np.cumsum(f) / SR
            thump = np.sin(phase) * np.minimum(1.0, tt / 0.002) * np.exp(-tt / 0.035)
            sig[:tlen] += (0.9 if k % 4 == 0 else 0.6) * thump
        add_at(out, start, accent * sig)
    # faint gravel bed between the steps
    bed = fft_filter(rng.standard_normal(N), bandpass_gain(3000.0, 3.0))
    out += 0.01 * bed / np.max(np.abs(bed))
    return out


# --------------------------------------------------------------------------- textile
def slow_lfo(rng: np.random.Generator, t: np.ndarray, n_sines: int, fmin: float, fmax: float) -> np.ndarray:
    """Sum of a few random slow sinusoids, normalised to [-1, 1]."""
    y = np.zeros_like(t)
    for _ in range(n_sines):
        y += rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * rng.uniform(fmin, fmax) * t + rng.uniform(0, 2 * np.pi))
    return y / np.max(np.abs(y))


def make_textile(rng: np.random.Generator) -> np.ndarray:
    frame, hop = 2048, 512
    n_frames = (N + frame) // hop + 1
    total = (n_frames - 1) * hop + frame
    noise = rng.standard_normal(total)
    window = np.hanning(frame + 1)[:-1]
    freqs = np.fft.rfftfreq(frame, 1.0 / SR)
    lf = np.log2(np.maximum(freqs, 20.0))
    tf = (np.arange(n_frames) * hop + frame / 2) / SR
    # spectral centre wanders between ~1 and ~5 kHz; bandwidth breathes too
    centre = np.log2(2200.0) + 1.1 * slow_lfo(rng, tf, 4, 0.07, 0.6)
    width = 2.4 + 0.8 * slow_lfo(rng, tf, 3, 0.05, 0.4)
    # loudness: back-and-forth rubbing strokes (~1.6 Hz) plus slow drift
    stroke = 0.5 + 0.5 * np.abs(np.sin(np.pi * 1.6 * tf + 0.3 * slow_lfo(rng, tf, 3, 0.1, 0.5)))
    drift = 0.65 + 0.35 * slow_lfo(rng, tf, 4, 0.05, 0.5)
    level = stroke**1.5 * drift
    tilt = 1.0 / np.sqrt(np.maximum(freqs, 50.0) / 1000.0)  # pink-ish slope
    out = np.zeros(total)
    norm = np.zeros(total)
    for i in range(n_frames):
        s = i * hop
        seg = noise[s : s + frame] * window
        spec = np.fft.rfft(seg)
        gain = np.exp(-0.5 * ((lf - centre[i]) / (width[i] / 2.0)) ** 2) * tilt
        gain *= np.exp(rng.normal(0.0, 0.35, len(freqs)))  # fine spectral roughness
        out[s : s + frame] += np.fft.irfft(spec * gain * level[i], frame) * window
        norm[s : s + frame] += window**2
    out = out / np.maximum(norm, 1e-3)
    start = frame // 2
    return out[start : start + N]


# --------------------------------------------------------------------------- main
SOUNDS = {
    "synth_glassbells.wav": (make_glassbells, 20240101),
    "synth_steps.wav": (make_steps, 20240102),
    "synth_textile.wav": (make_textile, 20240103),
}


def main(argv: list[str]) -> None:
    out_dir = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (fn, seed) in SOUNDS.items():
        rng = np.random.default_rng(seed)
        pcm = finalize(fn(rng))
        assert len(pcm) == N
        path = out_dir / name
        sf.write(str(path), pcm, SR, subtype="PCM_16", format="WAV")
        print(f"wrote {path} ({len(pcm) / SR:.2f} s)")


if __name__ == "__main__":
    main(sys.argv)
