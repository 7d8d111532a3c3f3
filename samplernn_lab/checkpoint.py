"""Checkpoint files: written atomically, read back safely into a model with its settings.

A checkpoint is a ``torch.save`` dict with ``format``, ``config`` (the run's config.json), ``model``
(state dict), ``epoch``, ``step`` and, for ``last.pt``, everything a resume needs (optimiser,
data position, carried hidden state, RNG, best validation NLL; with ``ema`` on, ``model`` is the weights'
moving average and ``model_online`` the optimiser's own). It holds only tensors and plain values,
and is read with ``torch.load(..., weights_only=True)``: a file holding anything else (a pickle that would
run code when opened) is refused, never executed.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import warnings
from pathlib import Path, PurePath
from typing import Any

import torch

from .config import ModelConfig
from .errors import LabError
from .files import atomic_path
from .model import SampleRNN
from .rundir import AUTO_MAX_COPY, LISTEN, render_events, resolve
from .rundir import liveliest_epoch as _liveliest_epoch  # noqa: F401 (the old name)

__all__ = ["AUTO_MAX_COPY", "FORMAT", "load", "load_model", "plain", "render_events", "resolve", "save"]

FORMAT = "samplernn-lab checkpoint 1"


def plain(obj: Any) -> Any:
    """``obj`` with dataclasses turned into dicts and paths into strings, recursively (tensors kept)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    return obj


def save(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename: never a half-written file.

    A failed write (a full disk) leaves the previous file at ``path`` whole and raises LabError.
    """
    try:
        with atomic_path(path) as tmp:
            torch.save({"format": FORMAT, **plain(obj)}, tmp)
    except (OSError, RuntimeError) as e:  # torch reports a failed write as RuntimeError
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0][:200]
        raise LabError(f"{path}: could not write the checkpoint ({reason}); the previous one is kept") from None
    return Path(path)


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint dict (on CPU) holding only tensors and plain values; errors name the file."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns about some pickles: the error below says it all, on one line
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # not even a pickle the safe reader understands
            raise LabError(
                f"{path}: refused: not a readable checkpoint (damaged, or written by something else)"
            ) from None
        raise LabError(
            f"{path}: refused: it holds objects other than tensors and plain values (opening it could run code)"
        ) from None
    except Exception as e:
        detail = f"{type(e).__name__}: {str(e)[:200]}".splitlines()[0]
        raise LabError(f"{path}: not a readable checkpoint ({detail})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise LabError(f"{path}: not a samplernn-lab checkpoint")
    return ckpt


def load_model(run_or_path: str | os.PathLike, which: str = LISTEN) -> tuple[SampleRNN, dict[str, Any]]:
    """The model of a checkpoint, in eval mode on CPU, and the checkpoint dict (without weights)."""
    path = resolve(run_or_path, which)
    ckpt = load(path)
    try:
        cfg = ModelConfig(**ckpt["config"]["model"])
    except (KeyError, TypeError) as e:
        raise LabError(f"{path}: its config has no usable model settings ({e})") from None
    model = SampleRNN(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:2]) or str(e).splitlines()[0]
        raise LabError(f"{path}: weights do not fit the model its config describes ({detail[:200]})") from None
    model.eval()
    info = {k: v for k, v in ckpt.items() if k not in ("model", "model_online", "optimizer", "hidden")}
    info["path"] = str(path)
    return model, info
