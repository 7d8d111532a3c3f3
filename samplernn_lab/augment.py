"""The study's augmentation: several copies of a source, each offset in time, joined end to end.

An offset is a circular shift (the copy starts ``offset`` samples in and wraps around), so chunk
boundaries fall at different places of the sound in every copy. Every join, including the wrap
inside a shifted copy, is a short linear crossfade so no join clicks.

What is copied is a *stretch*: one or more ranges of the source taken in a circular order (the
training stretch is the source minus its held-out part, so it may wrap around the end). The stream
is described by *pieces*, runs of consecutive source samples placed in the stream, which is what
lets the dataset manifest say where every chunk came from.

A copy may also be played a little faster or slower (``pitch_jitter_cents``: pitch and duration together,
as a tape's varispeed), so a short source's copies are not all the same sound: a piece then covers
``length * rate`` source samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy.signal import resample_poly


@dataclass(frozen=True)
class Piece:
    """Source samples ``[source_start, source_stop)`` placed at ``stream_start``, ``length`` samples of the stream.

    ``rate`` is source samples per stream sample (1: as recorded, ``length == source_stop - source_start``;
    1.06: a semitone up and 6% shorter). Neighbouring pieces overlap by the crossfade length. Positions and
    lengths are in samples.
    """

    copy: int
    offset: int
    source_start: int
    source_stop: int
    stream_start: int
    length: int
    gain: float
    rate: float = 1.0


def crossfade_join(segments: list[np.ndarray], fade: int) -> np.ndarray:
    """Join segments end to end, each join a linear crossfade over ``fade`` samples.

    Parameters
    ----------
    segments : list of float32 arrays, shape (n_i,).
    fade : crossfade length in samples; shortened where a side is shorter than twice it.

    Returns
    -------
    np.ndarray, float32, shape (sum(n_i) - total overlap,).
    """
    if not segments:
        return np.zeros(0, dtype=np.float32)
    out = np.asarray(segments[0], dtype=np.float32).copy()
    for seg in segments[1:]:
        seg = np.asarray(seg, dtype=np.float32)
        f = overlap(len(out), len(seg), fade)
        if f == 0:
            out = np.concatenate([out, seg])
            continue
        ramp = (np.arange(f, dtype=np.float32) + 0.5) / f
        mixed = out[-f:] * (1.0 - ramp) + seg[:f] * ramp
        out = np.concatenate([out[:-f], mixed, seg[f:]])
    return out


def overlap(len_a: int, len_b: int, fade: int) -> int:
    """Crossfade length between two sides: ``fade``, but never more than half of either."""
    return int(max(0, min(fade, len_a // 2, len_b // 2)))


def rotate(ranges: list[tuple[int, int]], offset: int) -> list[tuple[int, int]]:
    """The runs of source samples of a stretch read circularly from ``offset`` (in stretch samples)."""
    runs, pos = [], 0
    tail = []
    for start, stop in ranges:
        n = stop - start
        if pos + n <= offset:
            tail.append((start, stop))
        elif pos >= offset:
            runs.append((start, stop))
        else:
            cut = start + offset - pos
            runs.append((cut, stop))
            tail.append((start, cut))
        pos += n
    return runs + tail


def augment(
    audio: np.ndarray,
    ranges: list[tuple[int, int]],
    copies: int,
    rng: np.random.Generator,
    fade: int,
    gain_jitter_db: float = 0.0,
    min_length: int = 0,
    pitch_jitter_cents: float = 0.0,
    pitch_rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, list[Piece]]:
    """Copies of a stretch of ``audio``, each circularly offset, joined with crossfades.

    Parameters
    ----------
    audio : float32, shape (n,), the whole source.
    ranges : the stretch, as ``[start, stop)`` sample ranges of ``audio`` in circular order.
    copies : number of copies, >= 1. More are added while the result is shorter than ``min_length``.
    rng : draws each copy's offset (uniform over the stretch) and gain, in that order.
    fade : crossfade length in samples at every join.
    gain_jitter_db : each copy's gain is drawn uniformly in [-jitter, +jitter] dB (0 = unchanged), but never
        louder than full scale (a source already at full scale is only ever attenuated).
    min_length : the joined stream is at least this many samples long (held-out stretches and
        short sources get extra copies to fill a chunk).
    pitch_jitter_cents : each copy is resampled to play up to this many cents higher or lower (uniform; pitch
        and duration change together), its gain capped so the resampled copy stays within full scale. 0 =
        unchanged, and no random number is drawn for it.
    pitch_rng : draws each copy's pitch (default ``rng``); a generator of its own leaves the offsets and gains
        the same whether the pitch is jittered or not.

    Returns
    -------
    stream : float32, shape (m,).
    pieces : where each run of source samples landed in ``stream``.
    """
    audio = np.asarray(audio, dtype=np.float32)
    ranges = [(int(a), int(b)) for a, b in ranges if b > a]
    total = sum(b - a for a, b in ranges)
    if total == 0:
        raise ValueError("cannot augment an empty stretch")
    segments: list[np.ndarray] = []
    pieces: list[Piece] = []
    length, k = 0, 0
    # a louder copy must not clip: its gain stops at full scale
    peak = max((float(np.abs(audio[a:b]).max()) for a, b in ranges if b > a), default=0.0)
    max_gain = 1.0 / peak if peak > 0 else 1.0
    pitch_rng = pitch_rng or rng
    while k < copies or length < min_length:
        offset = int(rng.integers(0, total))
        gain = float(10.0 ** (rng.uniform(-gain_jitter_db, gain_jitter_db) / 20.0)) if gain_jitter_db > 0 else 1.0
        gain = min(gain, max(max_gain, 1.0))
        cents = pitch_rng.uniform(-pitch_jitter_cents, pitch_jitter_cents) if pitch_jitter_cents > 0 else 0.0
        rate = varispeed(cents) if cents else 1.0
        runs = rotate(ranges, offset)
        played = [resample(audio[a:b], rate) for a, b in runs]
        if rate != 1.0 and peak > 0:  # a band-limited copy rings a little past the source's peak: cap it
            gain = min(gain, 1.0 / max(float(np.abs(x).max()) for x in played))
        for (start, stop), seg in zip(runs, played, strict=True):
            n = len(seg)
            pos = length - overlap(length, n, fade) if segments else 0
            segments.append(seg * np.float32(gain))
            pieces.append(Piece(k, offset, start, stop, pos, n, gain, rate))
            length = pos + n
        k += 1
    stream = crossfade_join(segments, fade)
    assert len(stream) == length
    return stream, pieces


def varispeed(cents: float) -> float:
    """The playback rate (source samples per output sample) that moves pitch by ``cents``, as a ratio of
    integers up to 1000 (so resampling stays a short polyphase filter): within a cent of ``2 ** (cents / 1200)``."""
    return float(Fraction(2.0 ** (cents / 1200.0)).limit_denominator(1000))


def resample(x: np.ndarray, rate: float) -> np.ndarray:
    """``x`` played at ``rate`` times its speed: float32, shape (floor((len(x) - 1) / rate) + 1,), every output
    sample inside ``x``'s span; ``x`` itself when 1.

    Band-limited (polyphase, Kaiser window), so a copy played faster folds nothing above Nyquist back down; the
    ends are extended linearly, not with zeros, so a run does not dip to silence at its edges.
    """
    if rate == 1.0:
        return x
    r = Fraction(rate).limit_denominator(1000)
    y = resample_poly(x, r.denominator, r.numerator, padtype="line")
    return y[: (len(x) - 1) * r.denominator // r.numerator + 1].astype(np.float32)
