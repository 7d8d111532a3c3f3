"""Audio in and out, and the quantisers that turn samples into the codes SampleRNN models.

Audio is float32 in [-1, 1], mono, shape ``(n,)``; codes are ``torch.long`` in ``[0, q_levels)``.
File I/O uses soundfile (WAV, FLAC, OGG, AIFF, and MP3 where libsndfile has it); librosa is the
fallback decoder and does the resampling (soxr, high quality).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from .errors import LabError
from .files import atomic_path, writing

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".mp3")
QUANTIZATIONS = ("linear", "mulaw")


def load(path: str | os.PathLike, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read an audio file as mono float32.

    Parameters
    ----------
    path : file to read (WAV, FLAC, OGG, AIFF; MP3 where a decoder is present).
    sample_rate : rate in Hz to resample to; ``None`` keeps the file's rate.

    Returns
    -------
    audio : np.ndarray, float32, shape (n,), channels averaged.
    sample_rate : int, Hz.

    Raises
    ------
    LabError
        Missing, empty or undecodable file, or one holding NaN or inf samples.
    """
    path = Path(path)
    if not path.exists():
        raise LabError(f"{path}: no such file")
    if path.is_dir():
        raise LabError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise LabError(f"{path}: file is empty")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as sf_error:  # libsndfile cannot read it: try librosa's other decoders
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import librosa

                mono, sr = librosa.load(str(path), sr=None, mono=True)
            data = mono[:, None]
        except Exception:
            raise LabError(f"{path}: not a readable audio file ({sf_error})") from None
    if data.shape[0] == 0:
        raise LabError(f"{path}: holds no samples")
    audio = data.mean(axis=1, dtype=np.float32)
    if not np.all(np.isfinite(audio)):
        raise LabError(f"{path}: holds NaN or infinite samples")
    sr = int(sr)
    if sample_rate is not None and sample_rate != sr:
        audio = resample(audio, sr, sample_rate)
        sr = int(sample_rate)
    return audio, sr


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """High-quality resampling (soxr 'HQ') of a mono float32 signal; shape (n,) -> (m,)."""
    import librosa

    out = librosa.resample(
        np.asarray(audio, dtype=np.float32), orig_sr=orig_sr, target_sr=target_sr, res_type="soxr_hq"
    )
    return np.ascontiguousarray(out, dtype=np.float32)


def save(path: str | os.PathLike, audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write mono audio atomically (temporary file in the same folder, then rename).

    Parameters
    ----------
    audio : float array in [-1, 1], shape (n,). Values outside are clipped by the PCM encoder.
    subtype : ``"PCM_16"`` (default) or ``"FLOAT"``.

    Raises
    ------
    LabError
        The write failed (a full disk); the previous file at ``path`` is kept.
    """
    with writing(path), atomic_path(path) as tmp:
        sf.write(tmp, np.asarray(audio, dtype=np.float32), int(sample_rate), subtype=subtype, format="WAV")
    return Path(path)


def _check(q_levels: int, method: str) -> None:
    if method not in QUANTIZATIONS:
        raise LabError(f"unknown quantisation {method!r}: choose one of {', '.join(QUANTIZATIONS)}")
    if q_levels < 2:
        raise LabError(f"q_levels must be at least 2, got {q_levels}")


def quantize(audio: torch.Tensor | np.ndarray, q_levels: int = 256, method: str = "linear") -> torch.Tensor:
    """Samples in [-1, 1] -> codes in [0, q_levels).

    ``linear`` cuts the fixed range [-1, 1] into ``q_levels`` equal bins (never the file's own
    min-max, which would put a DC offset into every render); ``mulaw`` compands first with
    mu = q_levels - 1. Both are symmetric about 0: code ``c`` and ``q_levels - 1 - c`` decode to
    opposite values, so a zero-mean signal stays zero-mean.

    Parameters
    ----------
    audio : float tensor or array, any shape; values outside [-1, 1] are clipped.

    Returns
    -------
    torch.LongTensor of the same shape.
    """
    _check(q_levels, method)
    x = torch.as_tensor(audio, dtype=torch.float64).clamp(-1.0, 1.0)
    if method == "mulaw":
        mu = q_levels - 1
        x = torch.sign(x) * torch.log1p(mu * x.abs()) / np.log1p(mu)
    codes = torch.floor((x + 1.0) * 0.5 * q_levels)
    return codes.clamp(0, q_levels - 1).long()


def dequantize(codes: torch.Tensor | np.ndarray, q_levels: int = 256, method: str = "linear") -> torch.Tensor:
    """Codes in [0, q_levels) -> float32 samples at the centres of their bins, in (-1, 1).

    The exact inverse of :func:`quantize` up to the bin width: ``quantize(dequantize(c)) == c``.
    """
    _check(q_levels, method)
    c = torch.as_tensor(codes).to(torch.float64)
    y = (2.0 * c + 1.0) / q_levels - 1.0
    if method == "mulaw":
        mu = q_levels - 1
        y = torch.sign(y) * torch.expm1(y.abs() * np.log1p(mu)) / mu
    return y.float()


def under_step_share(codes: torch.Tensor | np.ndarray, q_levels: int, method: str, frame: int) -> float:
    """Share of ``frame``-sample frames quieter than the quantiser's step at zero and not one held code.

    Sound quieter than that step (2 / q_levels with ``linear`` levels, -42 dBFS at 256; about -75 dBFS with
    ``mulaw``) comes out of :func:`quantize` as a random toggle of the few codes next to zero: a hiss at that step
    in what the model is trained on (a bell recording's decay and noise floor, benchmarks/RESULTS.md, "The hour's
    recipe on a real bell"). Digital silence, one code held, is not counted.

    Parameters
    ----------
    codes : integer tensor or array of codes, shape (n,) or (chunks, n); frames never straddle two chunks
        (any other shape is read as one row).
    q_levels, method : the quantisation the codes were made with.
    frame : samples per frame (e.g. 50 ms), >= 1.

    Returns
    -------
    float in [0, 1]; 0.0 when the codes hold no whole frame.
    """
    _check(q_levels, method)
    if frame < 1:
        raise LabError(f"frame must be at least 1 sample, got {frame}")
    c = torch.as_tensor(codes).long()
    if c.dim() != 2:
        c = c.reshape(1, -1)
    whole = c.shape[1] // frame
    if whole == 0 or c.shape[0] == 0:
        return 0.0
    levels = dequantize(torch.arange(q_levels), q_levels, method)  # a table: codes index it
    step = step_at_zero(q_levels, method)
    quiet = 0
    for row in c:  # a chunk at a time: a whole dataset's codes decoded at once could outgrow the machine
        f = row[: whole * frame].reshape(-1, frame)
        rms = levels[f].pow(2).mean(1).sqrt()
        quiet += int(((rms < step) & (f.max(1).values != f.min(1).values)).sum())
    return quiet / (c.shape[0] * whole)


def step_at_zero(q_levels: int, method: str) -> float:
    """The quantiser's finest step, between the two codes next to zero: 2 / q_levels with ``linear`` levels
    (-42 dBFS at 256), about 1.7e-4 with ``mulaw`` at 256 (-75 dBFS)."""
    _check(q_levels, method)
    zero = silence_code(q_levels)
    pair = dequantize(torch.tensor([zero - 1, zero]), q_levels, method)
    return float(pair[1] - pair[0])


def silence_code(q_levels: int) -> int:
    """The code of 0.0: the lookback that generation and ``log_probs`` start from."""
    return q_levels // 2


def rms_dbfs(audio: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (a full-scale square wave is 0 dBFS)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    return 20.0 * np.log10(max(rms, 1e-10))
