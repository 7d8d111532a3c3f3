"""Figures for the poster and the lab book: source against renders, renders across epochs, the loss.

* :func:`poster_figure` - the study's poster layout: a row per sound (the source first, then renders),
  each with waveform | spectrogram (log frequency) | the low range (0..``low_hz``, linear, enlarged),
  all spectrograms on one colour scale so rows can be compared by eye.
* :func:`epoch_grid` - one spectrogram per epoch of a run, titled with the diagnosis.
* :func:`loss_curve` - train and validation NLL (bits per sample) against step.

Spectrograms come from :func:`samplernn_lab.spectral.spectrogram_db` (the notebooks use it too).
Figures are built on :class:`matplotlib.figure.Figure` directly (never pyplot), so the library leaves
no global state behind and works headless. Levels are dB relative to full scale: a full-scale sine
reads 0 dB at its frequency.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .errors import LabError
from .figure_parts import (  # noqa: F401  (the panels, their constants and saving live there)
    CMAP,
    DYNAMIC_RANGE_DB,
    LOG_ROWS,
    LOW_RANGE_BINS,
    MAX_COLUMNS,
    _colour_range,
    _draw_log_spectrogram,
    _draw_waveform,
    _log_spectrogram,
    _low_spectrogram,
    _mono,
    _save,
    figure_paths,
)
from .frame_features import judged_category, shown_category
from .spectral import spectrogram_db  # noqa: F401  (the notebooks and tests import it from here)

FAILURE_COLOUR = "#b2182b"  # titles of renders diagnosed as silence, tone or noise


# ------------------------------------------------------------------------------------------------------
# poster figure


def make_poster_figure(sounds: Sequence[tuple[str, np.ndarray, int]], low_hz: float = 1000.0) -> Figure:
    """Build the poster figure (see :func:`poster_figure`) without saving it.

    Returns a Figure with ``3 * len(sounds)`` panels plus one colour bar axis.
    """
    if not sounds:
        raise LabError("poster figure: give at least one sound (the source), then the renders")
    if low_hz <= 0:
        raise LabError(f"poster figure: low_hz must be positive, got {low_hz}")
    rows = []
    for i, item in enumerate(sounds):
        try:
            label, audio, sr = item
        except (TypeError, ValueError):
            raise LabError(f"poster figure: sound {i} must be (label, audio, sample_rate)") from None
        sr = int(sr)
        if sr <= 0:
            raise LabError(f"{label}: sample rate must be positive, got {sr}")
        audio = _mono(audio, str(label))
        rows.append(
            {
                "label": str(label),
                "audio": audio,
                "sr": sr,
                "log": _log_spectrogram(audio, sr),
                "low": _low_spectrogram(audio, sr, low_hz),
            }
        )
    vmin, vmax = _colour_range([p for r in rows for p in (r["log"]["S"], r["low"]["S"])])

    n = len(rows)
    fig = Figure(figsize=(13.0, 2.7 * n + 0.5), layout="constrained")
    axes = fig.subplots(n, 3, squeeze=False, gridspec_kw={"width_ratios": [1.0, 1.35, 1.0]})
    mesh = None
    for i, (r, (ax_w, ax_s, ax_l)) in enumerate(zip(rows, axes)):
        role = "source" if i == 0 else "render"
        duration = len(r["audio"]) / r["sr"]
        _draw_waveform(ax_w, r["audio"], r["sr"])
        ax_w.set_title(f"{r['label']}\n{role} \u00b7 {duration:.2f} s \u00b7 {r['sr']} Hz", loc="left", fontsize=10)
        mesh = _draw_log_spectrogram(ax_s, r["log"], vmin, vmax)
        ax_s.set_title("spectrogram (log frequency)", fontsize=9)
        ax_s.set_ylabel("frequency (Hz)")
        ax_s.set_xlabel("time (s)")
        ax_l.pcolormesh(
            r["low"]["x"],
            r["low"]["y"],
            r["low"]["S"],
            cmap=CMAP,
            vmin=vmin,
            vmax=vmax,
            shading="flat",
            rasterized=True,
        )
        ax_l.set_ylim(0.0, r["low"]["top"])
        for ax in (ax_s, ax_l):  # the three panels of a row share one time axis
            ax.set_xlim(0.0, max(duration, 1e-3))
        ax_l.set_title(f"low range enlarged, 0\u2013{r['low']['top']:.0f} Hz", fontsize=9)
        ax_l.set_ylabel("frequency (Hz)")
        ax_l.set_xlabel("time (s)")
    cbar = fig.colorbar(mesh, ax=axes[:, 1:].ravel().tolist(), fraction=0.025, pad=0.01, aspect=30 * n**0.5)
    cbar.set_label("level (dBFS)")
    return fig


def poster_figure(
    sounds: Sequence[tuple[str, np.ndarray, int]], out: str | os.PathLike, low_hz: float = 1000.0, dpi: int = 300
) -> list[Path]:
    """The study's poster figure: source and renders, waveform | spectrogram | low range enlarged.

    Parameters
    ----------
    sounds : ``[(label, audio, sr), ...]``; the first is the source, the rest renders. ``audio`` is a
        float array (n,) in [-1, 1], ``sr`` its rate in Hz; rates may differ between sounds.
    out : output path, with or without a ``.png`` / ``.pdf`` suffix; both files are written.
    low_hz : top of the enlarged low-range panel, Hz (capped at each sound's Nyquist frequency).
    dpi : resolution of the PNG (the PDF is vector, with the spectrograms embedded at this dpi).

    Returns
    -------
    ``[png_path, pdf_path]``.

    Each row: waveform (time in s, amplitude fixed to [-1, 1]); spectrogram with a log-frequency axis;
    the 0..``low_hz`` range on a linear axis, from a window long enough for ~5 Hz resolution at
    44.1 kHz. All spectrograms share one colour scale (dBFS, 90 dB range) and one colour bar.
    """
    fig = make_poster_figure(sounds, low_hz=low_hz)
    return [_save(fig, p, dpi) for p in figure_paths(out)]


def _as_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def poster_figure_files(
    source_path: str | os.PathLike,
    render_paths: str | os.PathLike | Iterable[str | os.PathLike],
    out: str | os.PathLike,
    low_hz: float = 1000.0,
    dpi: int = 300,
) -> list[Path]:
    """:func:`poster_figure` from audio files, each labelled by its file name. Returns [png, pdf]."""
    from .audio import load

    sounds = []
    for p in [Path(source_path), *_as_paths(render_paths)]:
        audio, sr = load(p)
        sounds.append((p.name, audio, sr))
    return poster_figure(sounds, out, low_hz=low_hz, dpi=dpi)


# ------------------------------------------------------------------------------------------------------
# epoch grid


_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")


def epoch_renders(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(epoch, first WAV), ...]`` from ``run_dir/renders/epoch-NNN/*.wav``, sorted by epoch.

    Raises LabError when the run folder is missing or holds no renders.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise LabError(f"{run}: no such run folder")
    found = []
    renders = run / "renders"
    if renders.is_dir():
        for d in renders.iterdir():
            m = _EPOCH_DIR.match(d.name)
            wavs = sorted(p for p in d.glob("*.wav") if p.is_file()) if m and d.is_dir() else []
            if wavs:
                found.append((int(m.group(1)), wavs[0]))
    if not found:
        raise LabError(f"{run}: no renders found (expected renders/epoch-NNN/*.wav in the run folder)")
    return sorted(found)


def make_epoch_grid(run_dir: str | os.PathLike) -> Figure:
    """Build the epoch grid (see :func:`epoch_grid`) without saving it."""
    from .analysis import diagnose
    from .audio import load
    from .checkpoint import render_events

    judged = {int(e["epoch"]): e for e in render_events(Path(run_dir)) if "resemblance" in e}
    panels = []
    for epoch, wav in epoch_renders(run_dir):
        event = judged.get(epoch, {})  # judged against the source while training
        judged_wav = (Path(run_dir) / str(event.get("path", ""))).resolve()
        if judged_wav.is_file() and (Path(run_dir) / "renders").resolve() in judged_wav.parents:
            wav = judged_wav  # the median of the epoch's streams, as judged
        elif event.get("path") is not None:
            event = {}  # the event judged another file: its figures are not this one's
        audio, sr = load(wav)
        d = diagnose(audio, sr)
        panels.append(
            {
                "epoch": epoch,
                "file": wav.name,
                "category": event.get("category", d.category),
                "source_category": event.get("source_category"),
                "resemblance": event.get("resemblance"),
                "copy": event.get("copy_share"),
                "rms": d.features["rms_dbfs"],
                "log": _log_spectrogram(audio, sr),
            }
        )
    vmin, vmax = _colour_range(p["log"]["S"] for p in panels)

    n = len(panels)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.6 * ncols + 0.8, 2.6 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    mesh = None
    for ax, p in zip(axes.ravel(), panels):
        mesh = _draw_log_spectrogram(ax, p["log"], vmin, vmax)
        failed = judged_category(p["category"], p["source_category"]) != "varied"  # a drone's own tone is no failure
        level = "no signal" if p["rms"] <= -120 else f"{p['rms']:.0f} dBFS"
        title = f"epoch {p['epoch']} \u00b7 {shown_category(p['category'], p['source_category'])} \u00b7 {level}"
        if p["resemblance"] is not None:  # 0 = like the source, 1 = like noise of its colour
            # copied: the most of any of the epoch's streams (what auto passes over), not only this one's
            title += f"\nresemblance {p['resemblance']:.2f}" + (f" \u00b7 {p['copy']:.0%} copied" if p["copy"] else "")
        ax.set_title(title, fontsize=10, color=FAILURE_COLOUR if failed else "black")
        ax.set_xlabel("time (s)")
    for ax in axes[:, 0]:
        ax.set_ylabel("frequency (Hz)")
    for ax in axes.ravel()[n:]:
        ax.set_axis_off()
    fig.suptitle(f"{Path(run_dir).resolve().name}: a render per epoch (the median of its streams)", fontsize=12)
    cbar = fig.colorbar(mesh, ax=axes.ravel().tolist(), fraction=0.03, pad=0.01)
    cbar.set_label("level (dBFS)")
    return fig


def epoch_grid(run_dir: str | os.PathLike, out: str | os.PathLike, dpi: int = 200) -> list[Path]:
    """A spectrogram per epoch: how the renders of a run changed as it trained.

    Parameters
    ----------
    run_dir : run folder holding ``renders/epoch-NNN/*.wav``: of each epoch the stream its render event
        judged the median (``path``), else the first WAV by name, is shown.
    out : output path, with or without a ``.png`` / ``.pdf`` suffix; both files are written.
    dpi : PNG resolution.

    Returns
    -------
    ``[png_path, pdf_path]``. Each panel's title gives the epoch, the diagnosis category
    (:func:`samplernn_lab.analysis.diagnose`; failures in red) and the RMS level; one colour scale.

    Raises
    ------
    LabError
        The run folder is missing or holds no renders.
    """
    fig = make_epoch_grid(run_dir)
    return [_save(fig, p, dpi) for p in figure_paths(out)]


# ------------------------------------------------------------------------------------------------------
# loss curve


def read_metrics(metrics_path: str | os.PathLike) -> list[dict]:
    """The lines of a metrics.jsonl that carry a finite ``nll_bits``, as dicts, in file order.

    Lines without ``nll_bits`` (events) are skipped; so is a cut-off last line (a run still writing).

    Raises
    ------
    LabError
        Missing file, a broken line before the last, or no line with ``nll_bits``.
    """
    from .rundir import iter_metrics

    path = Path(metrics_path)
    rows = []
    for lineno, obj in iter_metrics(path, strict=True):
        if "nll_bits" not in obj:
            continue
        try:
            nll, step = float(obj["nll_bits"]), float(obj["step"])
        except (KeyError, TypeError, ValueError):
            raise LabError(f"{path}: line {lineno} has nll_bits but no numeric step") from None
        if math.isfinite(nll):
            rows.append({**obj, "nll_bits": nll, "step": step})
    if not rows:
        raise LabError(f"{path}: no lines with nll_bits to plot")
    return rows


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` values (fewer at the start), shape as ``values``."""
    c = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(idx - window, 0)
    return (c[idx] - c[start]) / (idx - start)


def loss_curve(metrics_path: str | os.PathLike, out: str | os.PathLike, dpi: int = 150) -> Path:
    """Train and validation loss of a run, NLL in bits per sample against training step.

    Parameters
    ----------
    metrics_path : metrics.jsonl with lines holding ``step``, ``epoch``, ``split`` ("train"/"val"),
        ``nll_bits`` (other lines are skipped).
    out : output path; written as PNG (a ``.png`` suffix is added when missing).

    Returns
    -------
    Path of the PNG. Train: thin light line plus a running mean; val: markers; epochs: faint lines.
    """
    rows = read_metrics(metrics_path)
    train = [r for r in rows if r.get("split", "train") == "train"]
    val = [r for r in rows if r.get("split") == "val"]

    fig = Figure(figsize=(8.0, 4.5), layout="constrained")
    ax = fig.subplots()
    if train:
        steps = np.array([r["step"] for r in train])
        nll = np.array([r["nll_bits"] for r in train])
        order = np.argsort(steps, kind="stable")
        steps, nll = steps[order], nll[order]
        window = max(1, min(200, len(nll) // 20))
        ax.plot(steps, nll, color="C0", alpha=0.3, linewidth=0.8, label="train")
        if window > 1:
            ax.plot(
                steps, _running_mean(nll, window), color="C0", linewidth=2.0, label=f"train, running mean of {window}"
            )
        # faint line where each epoch starts
        epochs = [(r["step"], r.get("epoch")) for r in sorted(train, key=lambda r: r["step"])]
        starts = [(s, e) for k, (s, e) in enumerate(epochs) if e is not None and (k == 0 or e != epochs[k - 1][1])]
        every = max(1, math.ceil(len(starts) / 12))
        for k, (s, e) in enumerate(starts[1:], start=1):
            ax.axvline(s, color="0.8", linewidth=0.6, zorder=0)
            if k % every == 0:
                ax.annotate(
                    f"epoch {e}",
                    (s, 0.0),
                    xycoords=("data", "axes fraction"),
                    xytext=(2, 2),
                    textcoords="offset points",
                    va="bottom",
                    fontsize=7,
                    color="0.45",
                )
    if val:
        vs = sorted(val, key=lambda r: r["step"])
        ax.plot(
            [r["step"] for r in vs],
            [r["nll_bits"] for r in vs],
            "o-",
            color="C1",
            markersize=5,
            linewidth=1.0,
            label="validation",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("NLL (bits per sample)")
    ax.set_title(f"{Path(metrics_path).resolve().parent.name}: loss", loc="left")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)

    p = Path(out)
    path = p.with_suffix(".png") if p.suffix.lower() in (".png", ".pdf") else p.with_name(p.name + ".png")
    return _save(fig, path, dpi)
