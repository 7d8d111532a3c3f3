"""How much a render sounds like its source, and how much of it is the source replayed.

Two measures, both arrays in, numbers out:

:func:`resemblance`
    A Fréchet distance between the two sounds' log-mel frames and their frame-to-frame changes,
    divided by the same distance for the source with its phases randomised (noise with the source's
    long-term spectrum). Frames below a floor a fixed ``FLOOR_DB`` under the source's loudest band are
    held at the floor, so a hiss bed that the source does not have counts, but detail far below what a
    listener hears does not. Read it as:

    * about 0.0-0.4: another stretch of the source itself (what one could hope for);
    * under 1.0: closer to the source than coloured noise: its sounds, their motion or their silences
      are there;
    * about 1.0: like noise of the source's colour (the study's "noise" failure, e.g. a hiss band
      around the source's partials);
    * well above 1.0: a steady tone, silence, white noise: further than coloured noise.

    Because the frames' spread over time and their changes enter the distance, a render with the
    source's spectrum but none of its attacks, decays and silences is not called close. The measure
    hears pitch: the source transposed by three semitones reads about as far as its coloured noise. On
    a source that is itself nearly stationary noise the scale is steep (its coloured noise is a near
    neighbour, so a level offset alone reads far: the bundled vinyl hiss 8 dB quieter, about 9); on
    purely stationary noise everything reads near or above 1.

:func:`copy_share`
    The share of a render's audible stretch that replays the source verbatim: windows whose normalised
    cross-correlation with some place in the source reaches ``COPY_MIN_CORRELATION``, confirmed by the
    next window matching at the same offset (a replay moves in step with the source; a steady tone that
    happens to match a partial does not).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .errors import LabError
from .frame_features import CATEGORIES, features, hiss_db
from .spectral import as_mono, pad_to_window

# Levels below the source's loudest mel band minus this many dB are held at that floor: about the range
# between a loud passage and the room around a listener.
FLOOR_DB = 60.0
# Frames whose loudest band is this far under the source's loudest are quiet: only audible frames
# enter the Gaussian; the share of audible frames is compared separately.
GATE_DB = 40.0
# Mel bands of the frames the distance compares (delta frames add as many dimensions).
N_MELS = 40
# Analysis frame about 64 ms (1024 samples at 16 kHz), hop a quarter of it.
FRAME_SECONDS = 0.064
# Ridge added to each covariance (dB^2), so short sounds with few frames give a stable square root.
COVARIANCE_RIDGE = 1e-3
# Copy measure: window length (s), hop (s), and the correlation that counts as "the same waveform".
COPY_WINDOW_SECONDS = 0.1
COPY_MIN_CORRELATION = 0.9
# Windows quieter than this below the source's loudest window are not judged (silence copies nothing).
COPY_QUIET_DB = 40.0
# A confirming window may land this many samples off the expected offset (resampling, rounding).
COPY_LAG_SLACK = 2


def _mono(audio: np.ndarray, name: str) -> np.ndarray:
    return np.nan_to_num(as_mono(audio, name))


def _n_fft(sr: int) -> int:
    return int(2 ** max(8, round(math.log2(FRAME_SECONDS * sr))))


def log_mel_frames(audio: np.ndarray, sr: int) -> np.ndarray:
    """Log-mel power frames in dB (unfloored).

    Parameters
    ----------
    audio : (n,) float, mono, in [-1, 1].
    sr : sample rate in Hz.

    Returns
    -------
    (frames, N_MELS) float64, dB re full scale power.
    """
    import librosa

    x = _mono(audio, "audio")
    n_fft = _n_fft(sr)
    x = pad_to_window(x, n_fft)
    mel = librosa.feature.melspectrogram(
        y=x.astype(np.float32),
        sr=sr,
        n_fft=n_fft,
        hop_length=n_fft // 4,
        n_mels=N_MELS,
        fmin=30.0,
        fmax=sr / 2,
        center=False,
    )
    return 10.0 * np.log10(mel.T.astype(np.float64) + 1e-20)


def _features(frames_db: np.ndarray, floor_db: float) -> np.ndarray:
    """Floored frames with their first differences: (frames - 1, 2 * N_MELS)."""
    f = np.maximum(frames_db, floor_db)
    if len(f) < 2:
        f = np.concatenate([f, f])
    return np.concatenate([f[1:], np.diff(f, axis=0)], axis=1)


def _gaussian(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = feats.mean(axis=0)
    cov = np.cov(feats, rowvar=False) if len(feats) > 1 else np.zeros((feats.shape[1],) * 2)
    return mu, cov + COVARIANCE_RIDGE * np.eye(len(mu))


def _sqrt_psd(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Fréchet distance between two Gaussians ``(mean, covariance)``, in dB^2."""
    (m1, c1), (m2, c2) = a, b
    s1 = _sqrt_psd(c1)
    cross = np.linalg.eigvalsh(s1 @ c2 @ s1)
    trace = np.trace(c1) + np.trace(c2) - 2.0 * np.sum(np.sqrt(np.clip(cross, 0.0, None)))
    return float(np.sum((m1 - m2) ** 2) + max(trace, 0.0))


class _Frames:
    """A sound's frames as the distance sees them: the audible ones' Gaussian and the audible share."""

    def __init__(self, frames_db: np.ndarray, floor_db: float, gate_db: float):
        feats = _features(frames_db, floor_db)
        loud = np.max(frames_db, axis=1)[1:] if len(frames_db) > 1 else np.max(frames_db, axis=1)
        audible = loud >= gate_db
        self.share = float(np.mean(audible))
        # a sound with no audible frame is one frame of floor: the farthest a sound can be from any content
        kept = (
            feats[audible]
            if audible.sum() >= 2
            else np.full((2, feats.shape[1]), 0.0) + np.r_[np.full(N_MELS, floor_db), np.zeros(N_MELS)]
        )
        self.gaussian = _gaussian(kept)


def _distance(r: _Frames, s: _Frames, silence: _Frames) -> float:
    """Audible frames' Fréchet distance plus the cost of audible share turned to silence or back."""
    d = frechet(r.gaussian, s.gaussian)
    return d + (r.share - s.share) ** 2 * frechet(silence.gaussian, s.gaussian)


def phase_randomised(audio: np.ndarray, seed: int = 0) -> np.ndarray:
    """Noise with the long-term spectrum of ``audio``: its Fourier phases replaced by random ones.

    Parameters
    ----------
    audio : (n,) float, mono.
    seed : phases are drawn from ``numpy.random.default_rng(seed)``.

    Returns
    -------
    (n,) float64, the same magnitude spectrum (so the same RMS level), stationary.
    """
    x = _mono(audio, "audio")
    spec = np.fft.rfft(x)
    phases = np.random.default_rng(seed).uniform(0, 2 * np.pi, len(spec))
    phases[0] = 0.0
    if len(x) % 2 == 0:
        phases[-1] = 0.0
    return np.fft.irfft(np.abs(spec) * np.exp(1j * phases), n=len(x))


class SourceProfile:
    """What :func:`resemblance` needs of a source, computed once for many renders.

    Parameters
    ----------
    source : (m,) float, mono, in [-1, 1].
    sr : sample rate in Hz (renders are compared at this rate).
    seed : seed of the phase-randomised reference.
    kind : what the source is as a whole (``"silence"``, ``"tone"``, ``"noise"``, ``"varied"``) where already
        known, e.g. measured when its dataset was prepared; None: measured from ``source`` when asked
        (:func:`samplernn_lab.analysis.source_kind`).
    q_levels : the levels the renders are played with (the run's ``q_levels``; 256, the presets', where not
        known): fewer leave more hiss, which :attr:`played_hiss_db` allows for.
    """

    def __init__(self, source: np.ndarray, sr: int, seed: int = 0, kind: str | None = None, q_levels: int = 256):
        s = _mono(source, "source")
        if kind not in (None, *CATEGORIES):
            raise LabError(f"source kind must be one of {', '.join(CATEGORIES)} or None, got {kind!r}")
        if q_levels < 2:
            raise LabError(f"q_levels must be at least 2, got {q_levels}")
        self.sr, self.audio, self.kind, self.q_levels = int(sr), s, kind, int(q_levels)
        frames = log_mel_frames(s, sr)
        top = float(frames.max())
        self.floor_db, self.gate_db = top - FLOOR_DB, top - GATE_DB
        self.frames = _Frames(frames, self.floor_db, self.gate_db)
        self.silence = _Frames(np.full((2, N_MELS), self.floor_db - 1.0), self.floor_db, self.gate_db)
        noise = self._frames(phase_randomised(s, seed))
        # A source that is itself stationary noise is as far from its noise as from itself: keep the scale
        # finite (such a source's renders then read near or above 1 whatever they are).
        self.noise_distance = max(_distance(noise, self.frames, self.silence), 1.0)

    @functools.cached_property
    def features(self) -> dict[str, float]:
        """The source's own :func:`~samplernn_lab.frame_features.features`, measured when first asked (a long
        source costs ~0.5 s per minute): what kind of sound the source itself is, and how noisy."""
        return features(self.audio, self.sr)

    @functools.cached_property
    def played_hiss_db(self) -> float:
        """The hiss between the source's partials as a model of ``q_levels`` levels would at best play it: its
        :func:`played_hiss_db` with linear or mu-law levels, whichever leaves more."""
        return max(played_hiss_db(self.audio, self.sr, m, self.q_levels) for m in ("linear", "mulaw"))

    @property
    def noisiness(self) -> float:
        """The source's own noisiness (its :attr:`features`')."""
        return self.features["noisiness"]

    def _frames(self, audio: np.ndarray) -> _Frames:
        return _Frames(log_mel_frames(audio, self.sr), self.floor_db, self.gate_db)

    def distance(self, render: np.ndarray) -> float:
        """Distance (dB^2) of ``render``'s frames from the source's."""
        return _distance(self._frames(render), self.frames, self.silence)

    def resemblance(self, render: np.ndarray) -> float:
        """:func:`resemblance` of ``render`` (same rate as the source) against this source."""
        return self.distance(render) / self.noise_distance


def played_hiss_db(audio: np.ndarray, sr: int, method: str, q_levels: int = 256) -> float:
    """The hiss between partials (:func:`~samplernn_lab.frame_features.hiss_db`) of ``audio`` after ``q_levels``
    levels of ``method`` (``"linear"`` or ``"mulaw"``): what a perfect model of it with those levels would play.

    256 levels alone raise a clean source's by 26-47 dB (benchmarks/RESULTS.md, "Sparse strikes are not
    steady; the hiss bed's level").

    Parameters
    ----------
    audio : (n,) float, mono, in [-1, 1].
    sr : sample rate in Hz.
    method : the quantisation (:func:`samplernn_lab.audio.quantize`).
    q_levels : how many levels.

    Returns
    -------
    dB under the mean bin power (-120 for digital silence).
    """
    from .audio import dequantize, quantize

    return hiss_db(dequantize(quantize(audio, q_levels, method), q_levels, method).numpy(), sr)


def resemblance(render: np.ndarray, source: np.ndarray, sr: int) -> float:
    """How far a render is from its source, in units of the source's own coloured noise.

    Parameters
    ----------
    render, source : float arrays, shape (n,) and (m,), mono, same sample rate ``sr`` (Hz).
        Give at least a second of each: fewer frames make the distance noisy.

    Returns
    -------
    float >= 0: about 0 for another stretch of the source, 1 for noise with the source's long-term
    spectrum, above 1 for tones, silence and white noise (see the module docstring).
    """
    return SourceProfile(source, sr).resemblance(render)


def _window_correlation(window: np.ndarray, source_fft: np.ndarray, energy: np.ndarray, n: int, m: int) -> np.ndarray:
    """Normalised cross-correlation of ``window`` with every position of the source: (m - len + 1,)."""
    w = window - window.mean()
    norm = np.sqrt(np.sum(w * w))
    corr = np.fft.irfft(source_fft * np.conj(np.fft.rfft(w, n)), n)[: m - len(w) + 1]
    return corr / np.maximum(norm * energy, 1e-12)


def copy_share(render: np.ndarray, source: np.ndarray, sr: int) -> float:
    """Share of a render's audible stretch that replays the source verbatim.

    Parameters
    ----------
    render, source : float arrays, shape (n,) and (m,), mono, same sample rate ``sr`` (Hz).

    Returns
    -------
    float in [0, 1]: the fraction of the render's audible windows (``COPY_WINDOW_SECONDS`` long, not
    quieter than ``COPY_QUIET_DB`` under the source's loudest) that match a place in the source with a
    normalised cross-correlation of at least ``COPY_MIN_CORRELATION``, the next window matching at the
    offset a replay would reach. 0.0 when nothing is audible.
    """
    r, s = _mono(render, "render"), _mono(source, "source")
    win = max(16, int(round(COPY_WINDOW_SECONDS * sr)))
    if len(r) < 2 * win or len(s) < win:
        return 0.0
    s = s - s.mean()
    m = len(s)
    n = 1 << int(math.ceil(math.log2(m + win)))
    source_fft = np.fft.rfft(s, n)
    csum = np.concatenate([[0.0], np.cumsum(s * s)])
    csum1 = np.concatenate([[0.0], np.cumsum(s)])
    seg = csum[win:] - csum[:-win] - (csum1[win:] - csum1[:-win]) ** 2 / win
    energy = np.sqrt(np.maximum(seg, 0.0))
    loudest = float(np.max(seg)) / win if len(seg) else 0.0
    quiet = loudest * 10 ** (-COPY_QUIET_DB / 10)

    starts = list(range(0, len(r) - win + 1, win))
    best: list[tuple[float, int] | None] = []
    for st in starts:
        w = r[st : st + win]
        if np.mean((w - w.mean()) ** 2) < quiet or loudest == 0.0:
            best.append(None)
            continue
        c = _window_correlation(w, source_fft, energy, n, m)
        k = int(np.argmax(c))
        best.append((float(c[k]), k))
    audible = [b for b in best if b is not None]
    if not audible:
        return 0.0

    def matches(i: int) -> bool:
        if best[i] is None or best[i][0] < COPY_MIN_CORRELATION:
            return False
        _, lag = best[i]
        for j, step in ((i - 1, -win), (i + 1, win)):
            if 0 <= j < len(best) and best[j] is not None and best[j][0] >= COPY_MIN_CORRELATION:
                if abs(best[j][1] - (lag + step)) <= COPY_LAG_SLACK:
                    return True
        return False

    copied = sum(matches(i) for i in range(len(best)))
    return copied / len(audible)
