"""The parts the lab's figures are built from: spectrogram panels (log frequency, the low range), their colour
scale, the waveform, and saving a figure atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from .files import atomic_path
from .spectral import FLOOR_DB, as_mono, spectrogram_db, window_length

DYNAMIC_RANGE_DB = 90.0  # colour scale spans this many dB below the loudest bin of all panels
LOG_ROWS = 256  # rows of the log-frequency spectrogram
MAX_COLUMNS = 1600  # spectrogram columns drawn at most; longer sounds are max-pooled in time
LOW_RANGE_BINS = 160  # about this many frequency bins in the low-range panel
CMAP = "magma"

_FREQ_TICKS = [20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000]


# ------------------------------------------------------------------------------------------------------
# spectrograms


def _mono(audio: np.ndarray, label: str) -> np.ndarray:
    """Mono float32 with NaN and inf zeroed; LabError naming ``label`` otherwise."""
    return np.nan_to_num(as_mono(audio, f"{label}: audio", dtype=np.float32))


def _log_rows(
    s_db: np.ndarray, freqs: np.ndarray, fmin: float, fmax: float, n_rows: int = LOG_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a linear-frequency spectrogram onto log-spaced rows.

    Each row takes the loudest bin inside it (so a narrow partial never falls between rows), or the
    nearest bin where the row is narrower than a bin. Returns (rows, frames) and the (n_rows + 1,) edges.
    """
    edges = np.geomspace(fmin, fmax, n_rows + 1)
    lo = np.searchsorted(freqs, edges[:-1])
    hi = np.searchsorted(freqs, edges[1:])
    centres = np.sqrt(edges[:-1] * edges[1:])
    nearest = np.clip(np.searchsorted(freqs, centres), 0, len(freqs) - 1)
    out = np.empty((n_rows, s_db.shape[1]), dtype=s_db.dtype)
    for i in range(n_rows):
        out[i] = s_db[lo[i] : hi[i]].max(axis=0) if hi[i] > lo[i] else s_db[nearest[i]]
    return out, edges


def _pool_time(s_db: np.ndarray, times: np.ndarray, max_cols: int = MAX_COLUMNS) -> tuple[np.ndarray, np.ndarray]:
    """Max-pool frames in time so at most ``max_cols`` columns are drawn (keeps transients visible)."""
    n = s_db.shape[1]
    if n <= max_cols:
        return s_db, times
    g = math.ceil(n / max_cols)
    pad = (-n) % g
    padded = np.pad(s_db, ((0, 0), (0, pad)), constant_values=FLOOR_DB)
    pooled = padded.reshape(s_db.shape[0], -1, g).max(axis=2)
    return pooled, times[::g][: pooled.shape[1]]


def _time_edges(times: np.ndarray, duration: float) -> np.ndarray:
    """Column edges (n + 1,) for pcolormesh from column centres, clipped to [0, duration]."""
    if len(times) == 1:
        return np.array([0.0, max(duration, 1e-3)])
    mids = (times[:-1] + times[1:]) / 2
    edges = np.concatenate([[times[0] - (mids[0] - times[0])], mids, [times[-1] + (times[-1] - mids[-1])]])
    return np.clip(edges, 0.0, max(duration, edges[1]))


def _log_spectrogram(audio: np.ndarray, sr: int) -> dict:
    """The middle panel's data: log-frequency rows from ~20 Hz to Nyquist."""
    n_fft = window_length(sr)
    s_db, freqs, times = spectrogram_db(audio, sr, n_fft=n_fft, hop=n_fft // 4)
    fmin = max(20.0, 2.0 * sr / n_fft)
    rows, edges = _log_rows(s_db, freqs, fmin, sr / 2)
    rows, times = _pool_time(rows, times)
    return {"S": rows, "x": _time_edges(times, len(audio) / sr), "y": edges}


def _low_spectrogram(audio: np.ndarray, sr: int, low_hz: float) -> dict:
    """The right panel's data: 0..low_hz on a linear axis, with a window long enough to resolve it."""
    top = min(low_hz, sr / 2)
    n_fft = int(2 ** math.ceil(math.log2(max(sr * LOW_RANGE_BINS / top, 256))))
    n_fft = min(n_fft, 32768)
    s_db, freqs, times = spectrogram_db(audio, sr, n_fft=n_fft, hop=n_fft // 8)
    keep = freqs <= top + 1e-9
    s_db, freqs = s_db[keep], freqs[keep]
    s_db, times = _pool_time(s_db, times)
    df = freqs[1] - freqs[0] if len(freqs) > 1 else top
    y = np.concatenate([[0.0], (freqs[:-1] + freqs[1:]) / 2, [min(freqs[-1] + df / 2, top)]])
    return {"S": s_db, "x": _time_edges(times, len(audio) / sr), "y": y, "top": top}


def _colour_range(panels: Iterable[np.ndarray]) -> tuple[float, float]:
    vmax = max(float(np.max(p)) for p in panels)
    vmax = max(math.ceil(vmax / 10.0) * 10.0, FLOOR_DB + 10.0)
    return max(vmax - DYNAMIC_RANGE_DB, FLOOR_DB), vmax


def _hz_label(f: float, _pos=None) -> str:
    return f"{f / 1000:g}k" if f >= 1000 else f"{f:g}"


def _draw_log_spectrogram(ax, panel: dict, vmin: float, vmax: float):
    mesh = ax.pcolormesh(
        panel["x"], panel["y"], panel["S"], cmap=CMAP, vmin=vmin, vmax=vmax, shading="flat", rasterized=True
    )
    ax.set_yscale("log")
    ax.set_ylim(panel["y"][0], panel["y"][-1])
    ticks = [f for f in _FREQ_TICKS if panel["y"][0] <= f <= panel["y"][-1]]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(_hz_label))
    ax.yaxis.set_minor_locator(NullLocator())
    return mesh


def _draw_waveform(ax, audio: np.ndarray, sr: int, colour: str = "#2b5c8a") -> None:
    n = len(audio)
    if n > 4000:  # min/max per pixel-sized bucket: exact envelope, few points
        buckets = 2000
        size = math.ceil(n / buckets)
        padded = np.pad(audio, (0, (-n) % size), mode="edge").reshape(-1, size)
        t = (np.arange(padded.shape[0]) + 0.5) * size / sr
        ax.fill_between(
            t, padded.min(axis=1), padded.max(axis=1), color=colour, linewidth=0.3, edgecolor=colour, rasterized=True
        )
    else:
        ax.plot(np.arange(n) / sr, audio, color=colour, linewidth=0.6)
    ax.axhline(0.0, color="0.6", linewidth=0.4)
    ax.set_ylim(-1.0, 1.0)
    ax.set_xlim(0.0, max(n / sr, 1e-3))
    ax.set_ylabel("amplitude")
    ax.set_xlabel("time (s)")


# ------------------------------------------------------------------------------------------------------
# saving


def figure_paths(out: str | os.PathLike) -> list[Path]:
    """The ``[.png, .pdf]`` files a figure at ``out`` is saved to: a given .png/.pdf suffix is replaced, any
    other name is kept whole."""
    p = Path(out)
    base = p.with_suffix("") if p.suffix.lower() in (".png", ".pdf") else p
    return [base.with_name(f"{base.name}.{s}") for s in ("png", "pdf")]


def _save(fig: Figure, path: Path, dpi: int) -> Path:
    """Write atomically: a temporary file in the same folder, then rename."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix[1:], dpi=dpi)
    return path
