"""Test signals made in code: bells, clicks, noise, chirps, tones."""

from __future__ import annotations

import numpy as np


def bell(sr: int = 16000, seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """Struck inharmonic partials with noisy transients at irregular times."""
    rng = np.random.default_rng(seed)
    n = int(sr * seconds)
    t = np.arange(n) / sr
    out = np.zeros(n)
    for onset in np.sort(rng.uniform(0, seconds * 0.8, 5)):
        f0 = rng.uniform(300, 900)
        i0 = int(onset * sr)
        tt = t[: n - i0]
        for ratio, amp, decay in ((1.0, 1.0, 1.5), (2.76, 0.5, 3.0), (5.4, 0.3, 6.0)):
            out[i0:] += amp * np.exp(-decay * tt) * np.sin(2 * np.pi * f0 * ratio * tt)
        out[i0 : i0 + 80] += rng.normal(0, 0.5, min(80, n - i0))
    return (0.5 * out / np.max(np.abs(out))).astype(np.float32)


def tone(freq: float = 440.0, sr: int = 16000, seconds: float = 2.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(sr: int = 16000, seconds: float = 2.0, amp: float = 0.2, seed: int = 0) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).normal(0, amp, int(sr * seconds)), -1, 1).astype(np.float32)


def tone_plus_noise(sr: int = 16000, seconds: float = 4.0, seed: int = 0) -> np.ndarray:
    return np.clip(tone(220.0, sr, seconds, 0.4) + noise(sr, seconds, 0.03, seed), -1, 1).astype(np.float32)


def bell_peal(sr: int = 16000, seconds: float = 12.0, rate: float = 2.0, seed: int = 0) -> np.ndarray:
    """A peal: strikes at random times (``rate`` per second) of a few tuned inharmonic bells, each
    strike a noisy transient and decaying partials, over a faint room noise. Stationary over time, so
    any two stretches sound alike."""
    rng = np.random.default_rng(seed)
    n = int(sr * seconds)
    t = np.arange(n) / sr
    out = rng.normal(0, 1e-4, n)
    tuning = (392.0, 523.3, 659.3, 784.0)
    for onset in np.sort(rng.uniform(0, seconds, rng.poisson(rate * seconds))):
        f0, amp = rng.choice(tuning), rng.uniform(0.3, 1.0)
        i0 = int(onset * sr)
        tt = t[: n - i0]
        for ratio, a, decay in ((1.0, 1.0, 2.0), (2.76, 0.5, 4.0), (5.4, 0.3, 8.0)):
            out[i0:] += amp * a * np.exp(-decay * tt) * np.sin(2 * np.pi * f0 * ratio * tt + rng.uniform(0, 6.3))
        out[i0 : i0 + 80] += amp * rng.normal(0, 0.3, min(80, n - i0))
    return (0.5 * out / np.max(np.abs(out))).astype(np.float32)
