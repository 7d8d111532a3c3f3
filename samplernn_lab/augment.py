"""The study's augmentation: several copies of a source, each offset in time, joined end to end.

An offset is a circular shift (the copy starts ``offset`` samples into the source and wraps
around), so chunk boundaries fall at different places of the sound in every copy. Every join,
including the wrap inside a shifted copy, is a short linear crossfade so no join clicks.

The stream is described by *pieces*: each piece is a run of consecutive source samples placed at
a position of the joined stream, which is what lets the dataset manifest say where every chunk
came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Piece:
    """A run of source samples ``[source_start, source_start + length)`` placed at ``stream_start``.

    Neighbouring pieces overlap by the crossfade length. All values are in samples.
    """

    copy: int
    offset: int
    source_start: int
    stream_start: int
    length: int
    gain: float


def crossfade_join(segments: list[np.ndarray], fade: int) -> np.ndarray:
    """Join segments end to end, each join a linear crossfade over ``fade`` samples.

    Parameters
    ----------
    segments : list of float32 arrays, shape (n_i,).
    fade : crossfade length in samples; shortened where a segment is shorter.

    Returns
    -------
    np.ndarray, float32, shape (sum(n_i) - total overlap,).
    """
    if not segments:
        return np.zeros(0, dtype=np.float32)
    out = np.asarray(segments[0], dtype=np.float32).copy()
    for seg in segments[1:]:
        seg = np.asarray(seg, dtype=np.float32)
        f = _overlap(len(out), len(seg), fade)
        if f == 0:
            out = np.concatenate([out, seg])
            continue
        ramp = (np.arange(f, dtype=np.float32) + 0.5) / f
        mixed = out[-f:] * (1.0 - ramp) + seg[:f] * ramp
        out = np.concatenate([out[:-f], mixed, seg[f:]])
    return out


def _overlap(len_a: int, len_b: int, fade: int) -> int:
    # A crossfade may not eat more than half of either side.
    return int(max(0, min(fade, len_a // 2, len_b // 2)))


def augment(
    audio: np.ndarray,
    copies: int,
    rng: np.random.Generator,
    fade: int,
    gain_jitter_db: float = 0.0,
    min_length: int = 0,
) -> tuple[np.ndarray, list[Piece]]:
    """Make ``copies`` circularly shifted copies of ``audio`` and join them with crossfades.

    Parameters
    ----------
    audio : float32, shape (n,), the source (or a held-out stretch of it).
    copies : number of copies, >= 1. More are added while the result is shorter than ``min_length``.
    rng : the generator that draws offsets (uniform in [0, n)) and gains.
    fade : crossfade length in samples at every join.
    gain_jitter_db : each copy's gain is drawn uniformly in [-jitter, +jitter] dB (0 = unchanged).
    min_length : the joined stream is at least this many samples long (for held-out stretches
        shorter than a chunk).

    Returns
    -------
    stream : float32, shape (m,).
    pieces : where each run of source samples landed in ``stream``.
    """
    audio = np.asarray(audio, dtype=np.float32)
    n = len(audio)
    if n == 0:
        raise ValueError("cannot augment an empty signal")
    segments: list[np.ndarray] = []
    raw: list[tuple[int, int, int, int, float]] = []  # copy, offset, source_start, length, gain
    length = 0
    k = 0
    while k < copies or length < min_length:
        offset = int(rng.integers(0, n))
        gain = float(10.0 ** (rng.uniform(-gain_jitter_db, gain_jitter_db) / 20.0)) if gain_jitter_db > 0 else 1.0
        for start, stop in ((offset, n), (0, offset)):
            if stop > start:
                segments.append(audio[start:stop] * np.float32(gain))
                raw.append((k, offset, start, stop - start, gain))
                length += (stop - start) - (_overlap(length, stop - start, fade) if length else 0)
        k += 1
    stream = crossfade_join(segments, fade)
    pieces: list[Piece] = []
    pos = 0
    prev_len = 0
    for i, (copy, offset, start, seg_len, gain) in enumerate(raw):
        if i > 0:
            pos = pos + prev_len - _overlap(pos + prev_len, seg_len, fade)
        pieces.append(Piece(copy, offset, start, pos, seg_len, gain))
        prev_len = seg_len
    assert pieces[-1].stream_start + pieces[-1].length == len(stream)
    return stream, pieces
