"""The frame features :func:`samplernn_lab.analysis.diagnose` decides on, and the onsets: levels, flatness, noisiness,
tonal dominance, pitch, centroid and onset rate (see :func:`features`), with the constants they use.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import LabError
from .spectral import as_mono, frames, pad_to_window, window_length

CATEGORIES = ("silence", "tone", "noise", "varied")  # what the diagnosis calls a sound (samplernn_lab.analysis)
# Failures a source can itself be: a render of a drone that holds a tone, or of a hiss recording that is noise,
# is the source's own kind of sound, not the study's tone or noise failure (``auto``, the watchdog, the triage ask).
OWN_KINDS = ("tone", "noise")


def is_own_kind(category: str | None, source_category: str | None) -> bool:
    """A tone or noise render of a source that is itself a tone or noise (a drone, a hiss recording)."""
    return category in OWN_KINDS and category == source_category


def judged_category(category: str, source_category: str | None) -> str:
    """The category ``auto`` and the triage rank a render by: a source's own kind counts as ``"varied"``."""
    return "varied" if is_own_kind(category, source_category) else category


def shown_category(category: str, source_category: str | None) -> str:
    """A render's category in words (the triage page, the batch's bar, ``batch --status``, the epoch grid): "tone,
    as its source" for a source's own kind of sound, which is not the tone failure; else the category itself."""
    return f"{category}, as its source" if is_own_kind(category, source_category) else category


# Loudest frames quieter than this are "silence": -60 dBFS is about the noise floor of a quiet room
# recorded at a sane gain; a render this quiet sounds like nothing at normal listening levels.
SILENCE_DBFS = -60.0
# "The loud frames" = this percentile of frame levels, so a few stray clicks do not make silence loud.
LOUD_PERCENTILE = 95.0
# Frames more than this far below the loud frames are ignored for timbre and pitch features (decay tails
# and pauses would otherwise dominate the medians).
ACTIVE_RANGE_DB = 40.0

# The spectral floor (``hiss_db``) is this percentile of a frame's bin powers: the bins between partials.
HISS_PERCENTILE = 20.0
# Frequency bins below this are ignored for peaks and flatness (DC residue, rumble, sub-sonic drift).
FMIN_HZ = 30.0
# High-pass corner applied before analysis (removes DC offset and slow drift).
HIGHPASS_HZ = 20.0
# How many peaks count as "the strongest few", and how far above the local median spectrum (dB) a peak
# must stand to count at all (so the slope of pink noise does not look like peaks).
N_PEAKS = 5
PEAK_PROMINENCE_DB = 10.0
# Half-width of the local-median window, in bins, for peak prominence.
PEAK_CONTEXT_BINS = 15
# Half-width of a peak in bins: the main lobe of a Hann window is +-2 bins.
PEAK_HALF_WIDTH_BINS = 2
# The dominant frequency counts as "the same pitch" within this many semitones of its median.
PITCH_TOLERANCE_SEMITONES = 1.0
# An onset must stand this far (mean positive dB change over mel bands) above its local average: steady
# noise and deep tremolo stay below ~1.5, piano notes reach 2-8, drums and syllables 5-30.
ONSET_DELTA_DB = 2.0
# A strike lifts the spectral floor (the ``HISS_PERCENTILE``-th percentile bin power of a frame) at least this far
# over its median at an onset: a broadband attack breaks through whatever hiss lies between the partials, where a
# held partial that swells or returns after a dropout does not. Measured (RESULTS, "Strikes and pulses"): the
# demo's pulsing beds none of their onsets, the glass bells and a tabla loop nearly all, a till bell three in four,
# a drum break one in five (its cymbals fill the floor between hits); chosen on those same files.
STRIKE_RISE_DB = 10.0
# Level of a clipped sample.
CLIP_LEVEL = 0.999

_FLOOR_DB = -120.0  # level of a digitally silent frame
_BLOCK_FRAMES = 512  # frames analysed at once (bounds memory on long renders)
_MIN_BAND_BINS = 32  # octave bands narrower than this are merged upward (flatness needs many bins)


def _prepare(x: np.ndarray, sr: int) -> np.ndarray:
    """Remove DC and sub-sonic drift, so an offset does not count as content."""
    import scipy.signal

    y = x - x.mean()
    if len(y) > 64 and HIGHPASS_HZ < sr / 2:
        sos = scipy.signal.butter(2, HIGHPASS_HZ, btype="highpass", fs=sr, output="sos")
        y = scipy.signal.sosfilt(sos, y)
    return y


def _level_db(frames: np.ndarray) -> np.ndarray:
    """Level (dB) of each column of ``frames`` (n, n_frames): the mean square, floored at -120 dB."""
    return 10.0 * np.log10(np.maximum(np.mean(frames**2, axis=0), 1e-12))


def _octave_bands(n_bins: int, lo_bin: int) -> list[tuple[int, int]]:
    """Octave bands as (start, stop) bin ranges from ``lo_bin`` up, each at least _MIN_BAND_BINS wide."""
    bands, start = [], lo_bin
    while start < n_bins:
        stop = min(n_bins, max(2 * start, start + _MIN_BAND_BINS))
        if n_bins - stop < _MIN_BAND_BINS:  # fold a sliver at the top into the last band
            stop = n_bins
        bands.append((start, stop))
        start = stop
    return bands


def _flatness(power: np.ndarray, axis: int = 0) -> np.ndarray:
    """Geometric over arithmetic mean of power (Wiener entropy), 0 (pure tone) .. 1 (flat)."""
    p = np.maximum(power, 1e-20)
    return np.exp(np.mean(np.log(p), axis=axis)) / np.mean(p, axis=axis)


def _block_features(frames: np.ndarray, window: np.ndarray, sr: int, n_fft: int, lo_bin: int) -> dict:
    """Per-frame features of one block; ``frames`` is (n_fft, n_frames). Returns arrays of (n_frames,)."""
    import scipy.ndimage

    level = _level_db(frames)
    power = np.abs(np.fft.rfft(frames * window[:, None], axis=0)) ** 2
    power = power[lo_bin:]  # ignore DC and rumble
    n_bins, n_frames = power.shape
    total = power.sum(axis=0) + 1e-30

    flatness = _flatness(power)
    floor = 10.0 * np.log10(np.maximum(np.percentile(power, HISS_PERCENTILE, axis=0), 10 ** (_FLOOR_DB / 10)))

    # tonal dominance: energy share of the N_PEAKS strongest prominent local maxima, +-2 bins each
    local_median = scipy.ndimage.median_filter(power, size=(2 * PEAK_CONTEXT_BINS + 1, 1), mode="nearest")
    is_peak = np.zeros_like(power, dtype=bool)
    is_peak[1:-1] = (power[1:-1] > power[:-2]) & (power[1:-1] >= power[2:])
    is_peak &= power >= local_median * 10 ** (PEAK_PROMINENCE_DB / 10)
    peak_power = np.where(is_peak, power, 0.0)
    k = min(N_PEAKS, n_bins)
    top = np.argpartition(-peak_power, k - 1, axis=0)[:k]  # (k, frames) bin indices
    top_is_peak = np.take_along_axis(is_peak, top, axis=0)
    mask = np.zeros_like(power, dtype=bool)
    cols = np.broadcast_to(np.arange(n_frames), top.shape)
    for off in range(-PEAK_HALF_WIDTH_BINS, PEAK_HALF_WIDTH_BINS + 1):
        rows = np.clip(top + off, 0, n_bins - 1)
        mask[rows[top_is_peak], cols[top_is_peak]] = True
    dominance = (power * mask).sum(axis=0) / total

    # dominant frequency, refined by a parabola through the log power around the strongest bin
    b = np.argmax(power, axis=0)
    lp = np.log(power + 1e-30)
    left = lp[np.clip(b - 1, 0, n_bins - 1), np.arange(n_frames)]
    mid = lp[b, np.arange(n_frames)]
    right = lp[np.clip(b + 1, 0, n_bins - 1), np.arange(n_frames)]
    denom = left - 2 * mid + right
    shift = np.where(np.abs(denom) > 1e-12, 0.5 * (left - right) / np.where(denom == 0, 1, denom), 0.0)
    shift = np.clip(shift, -0.5, 0.5)
    dominant = (b + lo_bin + shift) * sr / n_fft

    freqs = (np.arange(n_bins) + lo_bin) * sr / n_fft
    centroid = (freqs[:, None] * power).sum(axis=0) / total
    return {
        "level": level,
        "flatness": flatness,
        "dominance": dominance,
        "dominant": dominant,
        "centroid": centroid,
        "floor": floor,
    }


def _noisiness(y: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Energy-weighted flatness within octave bands, per long frame; the spectral floor (dB); the frames' levels (dB).

    Long frames (4 analysis frames: 0.26 s at 16 kHz, 0.19 s at 44.1 kHz) resolve the harmonics of low notes,
    which at 46 ms smear into a flat-looking band; noise is flat at any resolution. The floor is the
    ``HISS_PERCENTILE``-th percentile of the frame's bin powers over their mean: what lies between the partials,
    about -6.5 dB for white noise, under -80 dB for clean partials. Returns three arrays (n_long,).
    """
    n_long = 4 * window_length(sr)
    framed = frames(y, n_long, n_long // 4)
    window = np.hanning(n_long)
    lo_bin = max(1, int(math.ceil(FMIN_HZ * n_long / sr)))
    noisiness, hisses, levels = [], [], []
    for i in range(0, framed.shape[1], _BLOCK_FRAMES // 4):
        block = framed[:, i : i + _BLOCK_FRAMES // 4]
        levels.append(_level_db(block))
        power = np.abs(np.fft.rfft(block * window[:, None], axis=0)) ** 2
        num = np.zeros(block.shape[1])
        for a, b in _octave_bands(power.shape[0], lo_bin):
            band = power[a:b]
            num += band.sum(axis=0) * _flatness(band)
        noisiness.append(num / (power[lo_bin:].sum(axis=0) + 1e-30))
        hiss = np.percentile(power[lo_bin:], HISS_PERCENTILE, axis=0) / (power[lo_bin:].mean(axis=0) + 1e-30)
        hisses.append(10.0 * np.log10(np.maximum(hiss, 10 ** (_FLOOR_DB / 10))))
    return np.concatenate(noisiness), np.concatenate(hisses), np.concatenate(levels)


def _frame_features(y: np.ndarray, sr: int) -> dict:
    """Per-frame features of the whole signal, computed block by block."""
    n_fft = window_length(sr)
    framed = frames(y, n_fft, n_fft // 4)  # (n_fft, n_frames), a view
    window = np.hanning(n_fft)
    lo_bin = max(1, int(math.ceil(FMIN_HZ * n_fft / sr)))
    parts = [
        _block_features(framed[:, i : i + _BLOCK_FRAMES], window, sr, n_fft, lo_bin)
        for i in range(0, framed.shape[1], _BLOCK_FRAMES)
    ]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def onset_times(audio: np.ndarray, sr: int) -> np.ndarray:
    """Onset times in seconds, shape (n_onsets,).

    librosa's spectral-flux onset envelope with an absolute threshold (``ONSET_DELTA_DB``) instead of
    librosa's default normalisation, which would turn the tiny fluctuations of a steady tone or hiss into
    "onsets".
    """
    import librosa

    n_fft = window_length(sr)
    hop = n_fft // 4
    y = pad_to_window(np.asarray(audio, dtype=np.float32), n_fft)
    if not np.any(y):
        return np.zeros(0)
    env = librosa.onset.onset_strength(y=y, sr=sr, n_fft=n_fft, hop_length=hop)
    env[: n_fft // hop + 1] = 0.0  # the first frame rises from librosa's zero padding: not an attack
    return librosa.onset.onset_detect(
        onset_envelope=env, sr=sr, hop_length=hop, units="time", normalize=False, delta=ONSET_DELTA_DB
    )


def features(audio: np.ndarray, sr: int) -> dict[str, float]:
    """All the numbers :func:`diagnose` decides on.

    Parameters
    ----------
    audio : float array, shape (n,), nominally in [-1, 1]. NaN and inf count as 0.
    sr : sample rate in Hz.

    Returns
    -------
    dict of plain floats: ``duration_s``; levels ``rms_dbfs``, ``peak_dbfs``, ``loud_dbfs`` (95th
    percentile frame level), ``level_spread_db`` (90th minus 10th percentile frame level; small =
    steady), ``level_range_db`` (``loud_dbfs`` minus the median: large when a few loud events stand over a
    quiet floor, which the 90th percentile misses); ``dc_offset`` (mean),
    ``clipped_fraction`` (share of ``|x| >= 0.999``), ``nonfinite_fraction``; and, as medians over the
    active frames, ``spectral_flatness`` (0..1), ``noisiness`` (energy-weighted octave-band flatness,
    0..1), ``hiss_db`` (the spectral floor between partials over the mean bin power, dB: -6.5 for white
    noise, under -80 for clean partials), ``tonal_dominance`` (share of frame energy in the strongest
    few peaks, 0..1), ``centroid_hz``; ``dominant_hz`` (median frequency of the strongest peak),
    ``pitch_stability`` (share of active frames whose strongest peak is within a
    semitone of ``dominant_hz``, 0..1), ``onset_rate`` (onsets per second), ``strike_rate`` (the onsets per
    second at which the frame's spectral floor rises ``STRIKE_RISE_DB`` over its median: attacks that break through
    the hiss, which a held partial's swell or its return after a dropout does not).
    """
    if sr <= 0:
        raise LabError(f"sample rate must be positive, got {sr}")
    raw = as_mono(audio)
    finite = np.isfinite(raw)
    nonfinite = 1.0 - float(finite.mean())
    raw = np.where(finite, raw, 0.0)
    out = _signal_numbers(raw, sr, nonfinite)
    y = _prepare(raw, sr)
    ff = _frame_features(y, sr)
    level = np.maximum(ff["level"], _FLOOR_DB)
    loud = float(np.percentile(level, LOUD_PERCENTILE))
    active = level >= loud - ACTIVE_RANGE_DB
    if not np.any(active) or loud <= _FLOOR_DB:
        active = np.ones_like(level, dtype=bool)

    dominant = ff["dominant"][active]
    f_med = float(2 ** np.median(np.log2(dominant)))
    noisiness, hiss, long_level = _noisiness(y, sr)
    long_active = _long_active(long_level, loud)
    near = np.abs(12 * np.log2(dominant / f_med)) <= PITCH_TOLERANCE_SEMITONES
    silent = loud < SILENCE_DBFS
    onsets = np.zeros(0) if silent else onset_times(y, sr)
    onset_rate = len(onsets) / out["duration_s"]
    strike_rate = _strikes(onsets, ff["floor"], level, sr) / out["duration_s"]
    if loud <= _FLOOR_DB:  # digital silence: spectral shape and pitch are undefined, report zeros (no hiss at all)
        return {**out, "loud_dbfs": loud, **dict.fromkeys(_SHAPE_FEATURES, 0.0), "hiss_db": _FLOOR_DB}
    out.update(
        {
            "loud_dbfs": loud,
            "level_spread_db": float(np.percentile(level, 90) - np.percentile(level, 10)),
            "level_range_db": float(loud - np.percentile(level, 50)),
            "spectral_flatness": float(np.median(ff["flatness"][active])),
            "noisiness": float(np.median(noisiness[long_active])),
            "hiss_db": float(np.median(hiss[long_active])),
            "tonal_dominance": float(np.median(ff["dominance"][active])),
            "centroid_hz": float(np.median(ff["centroid"][active])),
            "dominant_hz": f_med,
            "pitch_stability": float(np.mean(near)),
            "onset_rate": float(onset_rate),
            "strike_rate": float(strike_rate),
        }
    )
    return out


def _strikes(onsets: np.ndarray, floor_db: np.ndarray, level_db: np.ndarray, sr: int) -> int:
    """How many of the ``onsets`` (seconds) lift the spectral floor (dB per analysis frame, shape (n_frames,))
    ``STRIKE_RISE_DB`` over its median in the louder half of the frames (``level_db``, same shape), within a frame of
    the attack: the onsets that break through the hiss. The louder half, so that a sound that spends most of its time
    dropped out or silent does not make every return a strike."""
    if len(onsets) == 0:
        return 0
    hop = window_length(sr) // 4
    up = floor_db >= np.median(floor_db[level_db >= np.median(level_db)]) + STRIKE_RISE_DB
    # onset_times reports an attack about a hop after the frame (these start at i * hop) where the floor rises
    first = np.round(np.asarray(onsets) * sr / hop).astype(int) - 2
    return sum(bool(np.any(up[max(0, i - 1) : max(0, i + 2)])) for i in first)


def _long_active(long_level: np.ndarray, loud: float) -> np.ndarray:
    """The long frames within ``ACTIVE_RANGE_DB`` of the loud frames (all of them if none)."""
    active = long_level >= loud - ACTIVE_RANGE_DB
    return active if np.any(active) else np.ones_like(long_level, dtype=bool)


def hiss_db(audio: np.ndarray, sr: int) -> float:
    """The ``hiss_db`` of :func:`features` alone, without the rest of its work (a source's, measured once).

    Parameters
    ----------
    audio : float array, shape (n,), nominally in [-1, 1]. NaN and inf count as 0.
    sr : sample rate in Hz.

    Returns
    -------
    The spectral floor between partials over the mean bin power, dB (``_FLOOR_DB`` for digital silence).
    """
    if sr <= 0:
        raise LabError(f"sample rate must be positive, got {sr}")
    raw = as_mono(audio)
    y = _prepare(np.where(np.isfinite(raw), raw, 0.0), sr)
    n_fft = window_length(sr)
    framed = frames(y, n_fft, n_fft // 4)  # a view; squared a block at a time (a long source would not fit)
    blocks = range(0, framed.shape[1], _BLOCK_FRAMES)
    level = np.concatenate([_level_db(framed[:, i : i + _BLOCK_FRAMES]) for i in blocks])
    loud = float(np.percentile(np.maximum(level, _FLOOR_DB), LOUD_PERCENTILE))
    if loud <= _FLOOR_DB:
        return _FLOOR_DB
    _, hiss, long_level = _noisiness(y, sr)
    return float(np.median(hiss[_long_active(long_level, loud)]))


# the features that describe the sound's shape, all 0.0 for digital silence
_SHAPE_FEATURES = (
    "level_spread_db",
    "level_range_db",
    "spectral_flatness",
    "noisiness",
    "hiss_db",
    "tonal_dominance",
    "centroid_hz",
    "dominant_hz",
    "pitch_stability",
    "onset_rate",
    "strike_rate",
)


def _signal_numbers(raw: np.ndarray, sr: int, nonfinite: float) -> dict[str, float]:
    """The whole signal's numbers before any filtering: duration, levels, DC offset, clipped and non-finite shares."""
    from .audio import rms_dbfs

    peak = float(np.max(np.abs(raw)))
    return {
        "duration_s": len(raw) / sr,
        "rms_dbfs": float(rms_dbfs(raw)),
        "peak_dbfs": 20.0 * math.log10(max(peak, 1e-10)),
        "dc_offset": float(raw.mean()),
        "clipped_fraction": float(np.mean(np.abs(raw) >= CLIP_LEVEL)),
        "nonfinite_fraction": nonfinite,
    }
