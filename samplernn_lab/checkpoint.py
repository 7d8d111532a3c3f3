"""Checkpoint files: written atomically, read back into a model with its settings.

A checkpoint is a ``torch.save`` dict with ``format``, ``config`` (the run's config.json), ``model``
(state dict), ``epoch``, ``step`` and, for ``last.pt``, everything a resume needs (optimiser,
data position, carried hidden state, RNG, best validation NLL).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .errors import LabError
from .files import atomic_path
from .model import ModelConfig, SampleRNN

FORMAT = "samplernn-lab checkpoint 1"


def save(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename: never a half-written file."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **obj}, tmp)
    return Path(path)


def resolve(run_or_path: str | os.PathLike, which: str = "best") -> Path:
    """A checkpoint path from a run folder and ``best``/``last``/``auto``/``epoch-NNN``, or a path as is.

    ``auto`` is the epoch whose per-epoch render resembles the source most without copying it (see
    :func:`_liveliest_epoch`), else ``last``: the lab's triage choosing what to listen to first.
    """
    p = Path(run_or_path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise LabError(f"{p}: no such run folder or checkpoint file")
    if which == "auto":
        which = _liveliest_epoch(p) or "last"
    if which not in ("best", "last") and Path(which).is_file():
        return Path(which)
    name = which if which.endswith(".pt") else f"{which}.pt"
    candidates = [p / "checkpoints" / name]
    if which == "best":  # a run without validation data has no best.pt
        candidates.append(p / "checkpoints" / "last.pt")
    for c in candidates:
        if c.exists():
            return c
    raise LabError(f"{p}: no checkpoint {name!r} (train first, or pick one of "
                   f"{', '.join(sorted(x.name for x in (p / 'checkpoints').glob('*.pt'))) or 'none'})")


def render_events(run: Path) -> list[dict]:
    """The per-epoch render events of a run's ``metrics.jsonl`` (a cut-off line is skipped), file order."""
    metrics = Path(run) / "metrics.jsonl"
    if not metrics.exists():
        return []
    events = []
    for line in metrics.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line cut off by a crash
            continue
        if isinstance(row, dict) and row.get("event") == "render" and "epoch" in row:
            events.append(row)
    return events


# ``auto`` passes over epochs whose render replays more than this share of the source verbatim.
AUTO_MAX_COPY = 0.2


def _liveliest_epoch(run: Path) -> str | None:
    """The epoch ``auto`` picks from the per-epoch render events of ``metrics.jsonl`` (None: none fits).

    Renders judged against their source (``resemblance`` in the event): the epoch whose render is closest
    to the source (lowest resemblance), among those diagnosed neither silence nor a tone and copying at most
    ``AUTO_MAX_COPY`` of it. Older runs without the measure: the latest epoch diagnosed varied.
    """
    events = [e for e in render_events(run) if (run / "checkpoints" / f"epoch-{int(e['epoch']):03d}.pt").exists()]
    judged = [e for e in events if isinstance(e.get("resemblance"), (int, float))
              and e.get("category") not in ("silence", "tone") and e.get("copy_share", 0.0) <= AUTO_MAX_COPY]
    if judged:
        best = min(judged, key=lambda e: (e["resemblance"], -int(e["epoch"])))
        return f"epoch-{int(best['epoch']):03d}"
    varied = [int(e["epoch"]) for e in events if e.get("category") == "varied"]
    return f"epoch-{max(varied):03d}" if varied else None


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint dict (on CPU); errors name the file."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise LabError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise LabError(f"{path}: not a samplernn-lab checkpoint")
    return ckpt


def load_model(run_or_path: str | os.PathLike, which: str = "best") -> tuple[SampleRNN, dict[str, Any]]:
    """The model of a checkpoint, in eval mode on CPU, and the checkpoint dict (without weights)."""
    path = resolve(run_or_path, which)
    ckpt = load(path)
    cfg = ModelConfig(**ckpt["config"]["model"])
    model = SampleRNN(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:2]) or str(e).splitlines()[0]
        raise LabError(f"{path}: weights do not fit the model its config describes ({detail[:200]})") from None
    model.eval()
    info = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "hidden")}
    info["path"] = str(path)
    return model, info
