"""The trap watchdog: streams that fall silent or hold one tone (opt-in: turn to noise) are re-primed from the source.

Long-time SampleRNN users listen for "traps" before long renders: a stream that has gone quiet, or that
holds one pitch, rarely leaves it by itself. With ``rescue`` on, every ``check_seconds`` of output (at a
top-tier frame boundary) the watchdog looks at the last seconds of each stream:

* **silence**: the loud frames (the ``LOUD_PERCENTILE``-th percentile of frame levels, after removing DC)
  stay below ``SILENCE_DBFS`` for ``silence_seconds``;
* **tone**: one pitch holds the sound for ``tone_seconds``: the strongest few spectral peaks carry at least
  ``TONE_MIN_DOMINANCE`` of the energy, the strongest one stays within a semitone in at least
  ``TONE_MIN_PITCH_STABILITY`` of the frames, the level spreads less than ``TONE_MAX_LEVEL_SPREAD_DB`` and it
  is re-attacked at most ``TONE_MAX_ONSET_RATE`` times a second;
* **noise** (only with ``Rescue(noise=True)``): the last ``trap_seconds`` are further from the source
  (:mod:`samplernn_lab.resemblance`) than ``NOISE_FLOOR`` (1.2), than the source's own noise of that length
  (its phases randomised) and than 1.5 times its own farthest stretch of that length: the study's "noise"
  failure, a hiss band where the source has its sounds and silences, which a stream rarely leaves by itself.

The thresholds are the diagnosis's (:mod:`samplernn_lab.analysis`), on a cheaper analysis (non-overlapping
46 ms frames, no median filter, attacks from frame levels): about a millisecond per stream and check.
Both durations are ``trap_seconds`` (3 s) or longer where the source itself is silent, or holds a tone, for
longer: 1.5 times its longest such stretch, so a source's own pauses and drones are never "traps"; where the
source is a steady tone as a whole (:func:`samplernn_lab.analysis.source_kind`: a rubbed glass, a hum), holding
a tone is what it does and the tone rule is off (``tone_seconds`` None in the sidecar). The
noise check costs a log-mel analysis of 3 s per stream and check: milliseconds with one BLAS thread, far
more with many threads on a loaded machine.

A trapped stream restarts as a fresh stream would: from the initial state, primed with ``prime_seconds``
of the source's training audio (a random, not silent, place), teacher-forced and not written to the file,
then sampled on. Where and why is recorded (:attr:`Watchdog.events`, and the render's sidecar JSON).
Rescuing changes the distribution of a render (it cuts out what the model would have done), so it is off
by default in ``generate`` and the Python API, and on in the notebook chain (``run``, ``batch``, ``demo``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import audio as audio_io
from ..analysis import (
    ACTIVE_RANGE_DB,
    CATEGORIES,
    FMIN_HZ,
    LOUD_PERCENTILE,
    N_PEAKS,
    ONSET_DELTA_DB,
    PEAK_HALF_WIDTH_BINS,
    PITCH_TOLERANCE_SEMITONES,
    SILENCE_DBFS,
    TONE_MAX_LEVEL_SPREAD_DB,
    TONE_MAX_ONSET_RATE,
    TONE_MIN_DOMINANCE,
    TONE_MIN_PITCH_STABILITY,
    categorize,
    features,
)
from ..errors import LabError
from ..resemblance import SourceProfile, phase_randomised
from ..spectral import window_length

TRAP_SECONDS = 3.0  # silent, or on one tone, at least this long: a trap ...
SOURCE_MARGIN = 1.5  # ... and longer than the source's own longest such stretch times this
CHECK_SECONDS = 1.0  # look this often (seconds of output)
# noise: clearly further than the source's coloured noise (3 s of it read 1.0-1.06 on six sounds; the streams that
# turned to hiss in the 3-minute bench read 1.5-2.0, healthy ones 0.4-0.8 over 6 s)
NOISE_FLOOR = 1.2
PRIME_SECONDS = 0.25  # re-prime with this much of the source
# a frame this much louder (dB) than the one before is an attack; ONSET_DELTA_DB is on librosa's flux scale,
# frame levels jump more: 3x it
ATTACK_DB = 3 * ONSET_DELTA_DB


def _frame_levels(y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping frames (n_frames, n) of ``y`` and their levels in dB."""
    framed = y[: len(y) // n * n].reshape(-1, n)
    return framed, 10.0 * np.log10(np.maximum(np.mean(framed**2, axis=1), 1e-12))


def is_silent(audio: np.ndarray, sr: int) -> bool:
    """Whether ``audio`` (n,) float is silence as the diagnosis means it: its loud frames under -60 dBFS."""
    y = np.asarray(audio, np.float64)
    y = y - y.mean()
    _, level = _frame_levels(y, window_length(sr))
    return level.size == 0 or float(np.percentile(level, LOUD_PERCENTILE)) < SILENCE_DBFS


def is_steady_tone(audio: np.ndarray, sr: int) -> bool:
    """Whether ``audio`` (n,) float holds one steady pitch (the module docstring's "tone")."""
    y = np.asarray(audio, np.float64)
    y = y - y.mean()
    n = window_length(sr)
    framed, level = _frame_levels(y, n)
    if level.size < 4:
        return False
    loud = float(np.percentile(level, LOUD_PERCENTILE))
    if loud < SILENCE_DBFS:
        return False
    if float(np.percentile(level, 90) - np.percentile(level, 10)) > TONE_MAX_LEVEL_SPREAD_DB:
        return False
    attacks = int(np.sum(np.diff(level) > ATTACK_DB))
    if attacks > TONE_MAX_ONSET_RATE * len(y) / sr:
        return False
    active = framed[level >= loud - ACTIVE_RANGE_DB]
    lo = max(1, int(math.ceil(FMIN_HZ * n / sr)))
    power = np.abs(np.fft.rfft(active * np.hanning(n), axis=1))[:, lo:] ** 2  # (frames, bins)
    # energy share within +-PEAK_HALF_WIDTH_BINS of the N_PEAKS strongest local maxima, per frame
    peak = np.zeros_like(power, dtype=bool)
    peak[:, 1:-1] = (power[:, 1:-1] > power[:, :-2]) & (power[:, 1:-1] >= power[:, 2:])
    ranked = np.argpartition(-np.where(peak, power, 0.0), N_PEAKS - 1, axis=1)[:, :N_PEAKS]
    mask = np.zeros_like(peak)
    rows = np.arange(len(power))[:, None]
    for off in range(-PEAK_HALF_WIDTH_BINS, PEAK_HALF_WIDTH_BINS + 1):
        mask[rows, np.clip(ranked + off, 0, power.shape[1] - 1)] = True
    dominance = float(np.median((power * mask).sum(1) / (power.sum(1) + 1e-30)))
    if dominance < TONE_MIN_DOMINANCE:
        return False
    pitch = np.argmax(power, axis=1) + lo
    near = np.abs(12 * np.log2(pitch / np.median(pitch))) <= PITCH_TOLERANCE_SEMITONES
    return float(np.mean(near)) >= TONE_MIN_PITCH_STABILITY


def noise_limit(profile: SourceProfile, seconds: float, windows: int = 12) -> float:
    """The resemblance above which ``seconds`` of a stream are noise for this source: the larger of the
    median over stretches of that length of the source's phase-randomised noise, 1.5 times the farthest
    such stretch of the source itself, and ``NOISE_FLOOR``."""
    n = int(seconds * profile.sr)

    def stretches(y: np.ndarray) -> list[np.ndarray]:
        if len(y) <= n:
            return [np.resize(y, n)]  # a short source looped to the length streams are judged on
        starts = np.linspace(0, len(y) - n, min(windows, 1 + (len(y) - n) // (n // 2 or 1))).astype(int)
        return [y[a : a + n] for a in starts]

    own = max(profile.resemblance(y) for y in stretches(profile.audio))
    noise = float(np.median([profile.resemblance(y) for y in stretches(phase_randomised(profile.audio, 1))]))
    return max(NOISE_FLOOR, noise, SOURCE_MARGIN * own)


def longest_run(audio: np.ndarray, sr: int, test, hop_seconds: float = 0.5, span_seconds: float = 1.5) -> float:
    """Seconds of the longest stretch of ``audio`` where ``test(window, sr)`` holds on every window of
    ``span_seconds`` (hop ``hop_seconds``); 0 where it never does."""
    span, hop = int(span_seconds * sr), int(hop_seconds * sr)
    if len(audio) < span:
        return 0.0
    flags = [bool(test(audio[i : i + span], sr)) for i in range(0, len(audio) - span + 1, hop)]
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return 0.0 if best == 0 else span_seconds + (best - 1) * hop_seconds


@dataclass
class Rescue:
    """Settings of the trap watchdog (see the module docstring).

    Parameters
    ----------
    source : the source's training audio, float (n,) in [-1, 1] at the model's rate: what trapped streams
        are re-primed from, and what tells how long the source itself stays silent or on one tone, and how
        far its own stretches are from it.
    sample_rate : the model's rate in Hz.
    trap_seconds : a stream silent, or on one steady tone, at least this long (and longer than the source's
        own such stretches times 1.5), or this long further from the source than its noise, is re-primed.
    noise : also re-prime streams that turn to noise (silence and tones always are). Off by default: on the
        measured renders it changed nothing (benchmarks/RESULTS.md, "The noise trap") and it costs a log-mel
        analysis per stream and check, more than the other two rules together.
    check_seconds : how often to look, in seconds of output.
    prime_seconds : how much source audio a re-primed stream continues (rounded up to whole top-tier frames).
    seed : picks the places in the source.
    kind : what the source is as a whole where known (its dataset's
        :func:`~samplernn_lab.dataset.source_category`); None: measured from ``source``. A steady-tone source
        turns the tone rule off.
    """

    source: np.ndarray
    sample_rate: int
    trap_seconds: float = TRAP_SECONDS
    check_seconds: float = CHECK_SECONDS
    prime_seconds: float = PRIME_SECONDS
    seed: int = 0
    noise: bool = False
    kind: str | None = None

    def __post_init__(self):
        self.source = np.asarray(self.source, np.float32).reshape(-1)
        if self.trap_seconds <= 0 or self.check_seconds <= 0 or self.prime_seconds <= 0:
            raise LabError(
                f"rescue: trap_seconds, check_seconds and prime_seconds must be positive, got "
                f"{self.trap_seconds}, {self.check_seconds}, {self.prime_seconds}"
            )
        if self.kind not in (None, *CATEGORIES):
            raise LabError(f"rescue: kind must be one of {', '.join(CATEGORIES)} or None, got {self.kind!r}")
        if len(self.source) < int(self.prime_seconds * self.sample_rate):
            raise LabError(
                f"rescue: {len(self.source) / self.sample_rate:.2f} s of source audio, shorter than "
                f"prime_seconds={self.prime_seconds}"
            )


def training_audio(dataset: str | os.PathLike, max_seconds: float = 60.0) -> np.ndarray:
    """The training chunks of a dataset folder at the source's level, joined (at most ``max_seconds``):
    float32 (n,)."""
    from ..dataset import chunk_as_recorded, read_manifest

    folder = Path(dataset)
    manifest = read_manifest(folder)
    limit = int(max_seconds * manifest["sample_rate"])
    parts, have = [], 0
    for chunk in manifest["chunks"]:
        if chunk["split"] == "train" and have < limit:
            parts.append(chunk_as_recorded(folder, manifest, chunk))
            have += len(parts[-1])
    if not parts:
        raise LabError(f"{folder}: no training chunks to re-prime from (rescue)")
    return np.concatenate(parts)[:limit].astype(np.float32)


class Watchdog:
    """Watches the streams of one render and says which to re-prime, with what; keeps the events.

    Parameters
    ----------
    rescue : the settings.
    n_streams : streams in the render.
    q_levels, quantization : how codes become audio (the model's).
    lookback : the model's top-tier frame in samples: re-prime lengths are multiples of it.

    Attributes
    ----------
    events : per stream, a list of ``{"seconds": s, "reason": "silence"|"tone"|"noise", "since": s0}``: the
        stream was re-primed ``s`` seconds into its output (the file), having been silent, on one tone or
        noise from ``s0`` on.
    silence_seconds, tone_seconds, noise_seconds : the durations that make a trap for this source
        (``tone_seconds`` infinite where the source is itself a steady tone: no tone traps).
    noise_limit : the resemblance above which ``noise_seconds`` of a stream are noise (:func:`noise_limit`);
        None when ``rescue.noise`` is off.
    """

    def __init__(self, rescue: Rescue, n_streams: int, q_levels: int, quantization: str, lookback: int):
        self.r, self.b = rescue, n_streams
        self.q_levels, self.quantization = q_levels, quantization
        sr = rescue.sample_rate
        self.silence_seconds = max(rescue.trap_seconds, SOURCE_MARGIN * longest_run(rescue.source, sr, is_silent))
        # a source that is one steady tone as a whole can still swell past the fine test's 1.5 s windows (a rubbed
        # glass: 2.5 s of 18 held): its renders' tones are not traps (RESULTS, "The source's own kind")
        kind = rescue.kind if rescue.kind is not None else categorize(features(rescue.source, sr))
        if kind == "tone":
            self.tone_seconds = math.inf
        else:
            self.tone_seconds = max(rescue.trap_seconds, SOURCE_MARGIN * longest_run(rescue.source, sr, is_steady_tone))
        self.noise_seconds = rescue.trap_seconds
        self.profile, self.noise_limit = None, None
        if rescue.noise:
            # the source as the model's codes render it: a linear grid's step is part of every stream's sound
            codes = audio_io.quantize(rescue.source, q_levels, quantization)
            self.profile = SourceProfile(audio_io.dequantize(codes, q_levels, quantization).numpy(), sr)
            self.noise_limit = noise_limit(self.profile, self.noise_seconds)
        self.window = int(math.ceil(max(self.silence_seconds, self.noise_seconds, self._finite_tone_seconds) * sr))
        self.check_every = max(1, int(rescue.check_seconds * sr))
        self.prime_len = max(lookback, int(math.ceil(rescue.prime_seconds * sr / lookback)) * lookback)
        self.buf = np.zeros((n_streams, self.window), np.float32)  # the last `window` samples of each stream
        self.filled = np.zeros(n_streams, np.int64)  # samples of the buffer that belong to the stream's present
        self.pending: list[torch.Tensor] = []
        self.seen = 0  # samples of output so far (per stream)
        self.since_check = 0
        self.events: list[list[dict]] = [[] for _ in range(n_streams)]
        self.rng = np.random.default_rng(rescue.seed)

    @property
    def _finite_tone_seconds(self) -> float:  # 0 where the tone rule is off
        return self.tone_seconds if math.isfinite(self.tone_seconds) else 0.0

    def settings(self) -> dict:
        """What the sidecar records of the settings."""
        return {
            "silence_seconds": round(self.silence_seconds, 3),
            "tone_seconds": round(self.tone_seconds, 3) if math.isfinite(self.tone_seconds) else None,
            "noise_seconds": round(self.noise_seconds, 3) if self.noise_limit is not None else None,
            "noise_limit": round(self.noise_limit, 3) if self.noise_limit is not None else None,
            "check_seconds": self.r.check_seconds,
            "prime_seconds": self.prime_len / self.r.sample_rate,
        }

    def observe(self, codes: torch.Tensor) -> None:
        """Take the next codes (B, n) of every stream, in order."""
        self.pending.append(codes)
        self.seen += codes.shape[1]
        self.since_check += codes.shape[1]

    def due(self) -> bool:
        return self.since_check >= self.check_every

    def _take_pending(self) -> None:
        if not self.pending:
            return
        codes = torch.cat([c.cpu() for c in self.pending], 1)
        self.pending = []
        new = audio_io.dequantize(codes, self.q_levels, self.quantization).numpy().astype(np.float32)
        n = min(new.shape[1], self.window)
        self.buf[:, : self.window - n] = self.buf[:, n:]
        self.buf[:, self.window - n :] = new[:, -n:]
        self.filled = np.minimum(self.filled + new.shape[1], self.window)

    def check(self) -> list[tuple[int, str]]:
        """Streams trapped now, as (stream, reason); their events are recorded and their history forgotten."""
        self._take_pending()
        self.since_check = 0
        sr, trapped = self.r.sample_rate, []
        for s in range(self.b):
            reason = None
            n_sil, n_tone, n_noise = (
                int(x * sr) for x in (self.silence_seconds, self._finite_tone_seconds, self.noise_seconds)
            )
            if self.filled[s] >= n_sil and is_silent(self.buf[s, -n_sil:], sr):
                reason, span = "silence", n_sil
            elif n_tone and self.filled[s] >= n_tone and is_steady_tone(self.buf[s, -n_tone:], sr):
                reason, span = "tone", n_tone
            elif self._noisy(s, n_noise):
                reason, span = "noise", n_noise
            if reason is not None:
                trapped.append((s, reason))
                self.events[s].append(
                    {"seconds": round(self.seen / sr, 3), "reason": reason, "since": round((self.seen - span) / sr, 3)}
                )
                self.filled[s] = 0
        return trapped

    def _noisy(self, stream: int, n: int) -> bool:
        if self.noise_limit is None or self.filled[stream] < n:
            return False
        # a stream falling silent or onto one tone reads far too: those rules name it, after their own time
        tail = self.buf[stream, -min(n, int(1.5 * self.r.sample_rate)) :]
        if is_silent(tail, self.r.sample_rate) or is_steady_tone(tail, self.r.sample_rate):
            return False
        return self.profile.resemblance(self.buf[stream, -n:]) > self.noise_limit

    def excerpt(self, tries: int = 20) -> np.ndarray:
        """``prime_len`` samples of the source from a random place, not silent where the source allows."""
        src, n = self.r.source, self.prime_len
        if len(src) < n:
            return np.pad(src, (n - len(src), 0))
        for _ in range(tries):
            start = int(self.rng.integers(0, len(src) - n + 1))
            part = src[start : start + n]
            if not is_silent(part, self.r.sample_rate):
                break
        return part

    def excerpt_codes(self) -> torch.Tensor:
        """:meth:`excerpt` as codes (prime_len,)."""
        return audio_io.quantize(self.excerpt(), self.q_levels, self.quantization)
