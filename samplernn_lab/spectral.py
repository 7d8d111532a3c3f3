"""Spectral helpers shared by :mod:`~samplernn_lab.analysis` (numbers) and :mod:`~samplernn_lab.figures` (pictures).

* :func:`as_mono` - the one check that a sound is a mono, non-empty array.
* :func:`window_length` - the analysis window for a sample rate (the power of two nearest 46 ms). Not to
  be confused with the model's frame sizes (``ModelConfig.frame_sizes``, samples per tier step).
* :func:`pad_to_window` / :func:`frames` - zero-pad a short sound to one whole window, cut it into windows.
* :func:`spectrogram_db` - a magnitude spectrogram in dB relative to full scale.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import LabError

FLOOR_DB = -100.0  # spectrogram floor, dBFS: about the noise of 16-bit audio, below anything audible
SILENT_PEAK = 1e-4  # -80 dBFS: a source quieter than this everywhere is treated as silent


def as_mono(audio: np.ndarray, label: str = "audio", dtype: type = np.float64) -> np.ndarray:
    """``audio`` as a 1-D array of ``dtype``; a (1, n) or (n, 1) array is flattened.

    Non-finite samples are kept (callers decide: the diagnosis counts them, figures zero them).

    Raises
    ------
    LabError
        ``"{label} must be mono ..."`` for any other shape, ``"{label} holds no samples"`` when empty.
    """
    x = np.asarray(audio)
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise LabError(f"{label} must be mono with shape (n,), got shape {x.shape}")
    if x.size == 0:
        raise LabError(f"{label} holds no samples")
    return x.astype(dtype, copy=False)


def window_length(sr: int) -> int:
    """Analysis window in samples: the power of two nearest 46 ms (2048 at 44.1 kHz, 1024 at 16 kHz), >= 64."""
    return int(2 ** max(6, round(math.log2(0.046 * sr))))


def pad_to_window(y: np.ndarray, n: int) -> np.ndarray:
    """``y`` (n_samples,) zero-padded at the end to at least one window of ``n`` samples."""
    return np.pad(y, (0, n - len(y))) if len(y) < n else y


def frames(y: np.ndarray, n: int, hop: int) -> np.ndarray:
    """Windows of ``n`` samples every ``hop`` samples, shape (n, n_frames): a view, no centring padding.

    A sound shorter than one window is zero-padded to one window first.
    """
    import librosa

    return librosa.util.frame(pad_to_window(y, n), frame_length=n, hop_length=hop)


def spectrogram_db(
    audio: np.ndarray, sr: int, n_fft: int = 2048, hop: int = 512
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Magnitude spectrogram in dB relative to full scale.

    Parameters
    ----------
    audio : float array, shape (n,), in [-1, 1]; NaN and inf count as 0.
    sr : sample rate, Hz.
    n_fft : window length in samples (periodic Hann window, frames centred).
    hop : hop in samples.

    Returns
    -------
    S_db : float32 array (1 + n_fft // 2, frames), dBFS: a full-scale sine peaks at 0 dB; floored at
        ``FLOOR_DB`` (-100 dB).
    freqs : float array (1 + n_fft // 2,), bin centre frequencies in Hz.
    times : float array (frames,), frame centres in seconds.
    """
    import librosa

    y = pad_to_window(np.nan_to_num(as_mono(audio, dtype=np.float32)), n_fft)
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann, as librosa uses
    stft = librosa.stft(y, n_fft=n_fft, hop_length=hop, window=window, center=True)
    ref = window.sum() / 2.0  # |X| of a full-scale sine at its bin
    s_db = 20.0 * np.log10(np.maximum(np.abs(stft) / ref, 10 ** (FLOOR_DB / 20)))
    freqs = librosa.fft_frequencies(sr=sr, n_fft=n_fft)
    times = librosa.frames_to_time(np.arange(s_db.shape[1]), sr=sr, hop_length=hop)
    return s_db.astype(np.float32), freqs, times
