"""Notebook helpers: inline players, render cards, and the listening controls.

Everything here displays plain IPython outputs (audio, HTML, PNG), so executed notebooks keep
them when run headless by papermill or exported to HTML. ipywidgets is imported only by
:func:`listen_controls`, the interactive part.
"""

from __future__ import annotations

import html
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import audio as audio_io
from .rundir import LISTEN


def player(sound: np.ndarray | str | os.PathLike, sample_rate: int | None = None):
    """An inline audio player for an array (needs ``sample_rate``) or a file.

    Playback is not normalised, so quiet renders sound quiet and silence sounds silent.
    """
    from IPython.display import Audio

    if isinstance(sound, (str, os.PathLike)):
        data, sample_rate = audio_io.load(sound)
    else:
        data = np.asarray(sound, dtype=np.float32)
        if sample_rate is None:
            raise ValueError("player(array) needs sample_rate")
    return Audio(np.clip(data, -1, 1), rate=sample_rate, normalize=False)


def spectrogram_png(
    audio: np.ndarray, sample_rate: int, title: str = "", width: float = 7.0, height: float = 2.2
) -> bytes:
    """A small log-frequency spectrogram as PNG bytes (dB, full scale = 0); ``width``, ``height`` in inches."""
    from matplotlib.figure import Figure

    from .spectral import spectrogram_db

    s_db, freqs, times = spectrogram_db(audio, sample_rate)
    fig = Figure(figsize=(width, height), dpi=100)
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(times, np.maximum(freqs, 1.0), s_db, shading="auto", vmin=-100, vmax=0, cmap="magma")
    ax.set_yscale("log")
    ax.set_ylim(30, sample_rate / 2)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("Hz")
    ax.set_title(title, fontsize=9)
    fig.colorbar(mesh, ax=ax, label="dB")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


CATEGORY_COLOURS = {"silence": "#888", "tone": "#c60", "noise": "#36c", "varied": "#282"}


def render_card_html(path: str | os.PathLike, source: str | os.PathLike | None = None) -> tuple[str, dict]:
    """One render as a card: name, diagnosis and player on the left, its spectrogram on the right.

    Returns ``(html, row)``: the card (a ``<div class="srl-card">``, self-contained: the WAV and the PNG
    are embedded) and ``{"file", "category", "sentence", **features}``. Playback is not normalised.
    """
    import base64

    from .analysis import compare, diagnose

    path = Path(path)
    data, sr = audio_io.load(path)
    d = diagnose(data, sr)
    colour = CATEGORY_COLOURS.get(d.category, "#000")
    text = (
        f"<div><b>{html.escape(path.name)}</b></div>"
        f"<div class='srl-diagnosis'><span class='srl-category' style='color:{colour};font-weight:bold'>"
        f"{d.category}</span> &middot; {len(data) / sr:.1f} s at {sr} Hz<br>{html.escape(d.sentence)}"
    )
    if source is not None:
        src, _ = audio_io.load(source, sr)
        text += "<br><i>" + html.escape(compare(data, src, sr)["sentence"]) + "</i>"
    text += "</div>"
    png = base64.b64encode(spectrogram_png(data, sr, width=5.5, height=1.9)).decode("ascii")
    card = (
        "<div class='srl-card' style='display:flex;flex-wrap:wrap;gap:12px;align-items:center;"
        "margin:6px 0;padding:6px;border:1px solid #ddd;border-radius:4px'>"
        f"<div style='flex:1 1 300px;min-width:280px;max-width:460px'>{text}"
        f"<div style='margin-top:6px'>{player(data, sr)._repr_html_()}</div></div>"
        f"<img class='srl-spectrogram' alt='spectrogram of {html.escape(path.name)}' "
        f"src='data:image/png;base64,{png}' style='max-width:100%'></div>"
    )
    return card, {"file": str(path), **d.to_dict()}


def render_card(path: str | os.PathLike, source: str | os.PathLike | None = None) -> dict:
    """Show a render: its name, diagnosis and a player beside its spectrogram (and, given the source,
    how it compares). Returns the diagnosis as a dict."""
    from IPython.display import HTML, display

    card, row = render_card_html(path, source)
    display(HTML(card))
    return row


def listen_controls(
    run: str | os.PathLike,
    out: str | os.PathLike | None = None,
    temperatures: Sequence[float] = (1.0,),
    seconds: float = 5.0,
    batch: int = 1,
    seed: int = 0,
    prime_seconds: float = 0.25,
    checkpoint: str = LISTEN,
):
    """Widgets to render from a run in JupyterLab: checkpoint (starting at ``checkpoint``, default ``auto``),
    temperature, seconds, batch, seed, prime seconds and a Render button; each render appears as a card below.
    Returns the widget box."""
    import ipywidgets as w
    from IPython.display import display

    from .rundir import RunDir
    from .sampling import render_checkpoint

    run = Path(run)
    out = Path(out) if out is not None else run / "renders" / "listen"
    names = sorted(p.stem for p in RunDir(run).checkpoints.glob("*.pt"))
    names = list(dict.fromkeys([checkpoint, LISTEN, *names])) if names else []  # `auto`, a path: choices, not files
    wide = {"description_width": "initial"}
    choose = w.Dropdown(
        options=names,
        value=names[0] if names else None,
        description="checkpoint",
        style=wide,
    )
    temp = w.FloatSlider(
        value=float(temperatures[0]), min=0.0, max=1.5, step=0.05, description="temperature", style=wide
    )
    secs = w.BoundedFloatText(
        value=seconds, min=0.1, max=3600, description="seconds", style=wide, layout=w.Layout(width="150px")
    )
    streams = w.IntSlider(value=batch, min=1, max=16, description="batch", style=wide)
    seed_box = w.IntText(value=seed, description="seed", style=wide, layout=w.Layout(width="130px"))
    prime = w.BoundedFloatText(
        value=prime_seconds, min=0.0, max=10.0, description="prime (s)", style=wide, layout=w.Layout(width="150px")
    )
    button = w.Button(description="Render", button_style="primary", icon="play")
    area = w.Output()

    def on_click(_):
        button.disabled = True
        with area:
            try:
                paths = render_checkpoint(
                    run,
                    out,
                    secs.value,
                    which=choose.value,
                    batch_size=streams.value,
                    temperatures=[temp.value],
                    seed=seed_box.value,
                    prime_seconds=prime.value,
                    progress=True,
                )
                for p in paths:
                    render_card(p)
            except Exception as e:  # shown in the notebook, not lost in a log
                print(f"render failed: {e}")
            finally:
                button.disabled = False

    button.on_click(on_click)
    box = w.VBox([w.HBox([choose, temp]), w.HBox([secs, streams, seed_box, prime]), button, area])
    display(box)
    return box
