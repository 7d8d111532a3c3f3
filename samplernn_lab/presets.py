"""Named settings: ``poster`` (the study's configuration) and ``sketch`` (fast on a laptop CPU).

A preset is one :class:`Preset` of three dataclasses; any field can be overridden by name
(``dim=256``, ``seq_len=512``, ``sample_rate=16000``), from the CLI (``--set``), notebook
parameters or Python (:func:`get_preset`).
"""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass, field, replace
from typing import Any

from .dataset import DataConfig
from .errors import LabError
from .model import ModelConfig
from .train import TrainConfig


@dataclass
class Preset:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)


def poster() -> Preset:
    """The study's SampleRNN: frame sizes (8, 2), 1024 units, 2 GRU layers, 256-way embedding and
    quantisation, sequence length 1024, batch 128, 44.1 kHz, learned h0."""
    return Preset(
        ModelConfig(frame_sizes=(8, 2), dim=1024, n_rnn=2, rnn_type="gru", embed_size=256, q_levels=256,
                    learn_h0=True),
        TrainConfig(seq_len=1024, batch_size=128, epochs=6, render_seconds=5.0),
        DataConfig(sample_rate=44100, chunk_seconds=8.0),
    )


def sketch() -> Preset:
    """What teaches an audible result in minutes on 2 CPU cores (see README, "Presets")."""
    return Preset(
        # mu-law: with 256 linear levels a quiet tail sits under one step (-42 dBFS) and every uncertain
        # prediction there is hiss; measured on a bell strike, resemblance 7.4 -> 0.9 (benchmarks/RESULTS.md)
        ModelConfig(frame_sizes=(8, 2), dim=256, n_rnn=1, rnn_type="gru", embed_size=64, q_levels=256,
                    quantization="mulaw", learn_h0=True),
        TrainConfig(seq_len=512, batch_size=16, lr=2e-3, max_minutes=10.0, render_seconds=4.0),
        DataConfig(sample_rate=16000, chunk_seconds=2.0),
    )


PRESETS = {"poster": poster, "sketch": sketch}


def parse_value(text: str) -> Any:
    """``"256"`` -> 256, ``"(8, 2)"`` -> (8, 2), ``"gru"`` -> "gru", ``"none"`` -> None."""
    if text.lower() in ("none", "null"):
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def get_preset(name: str = "sketch", overrides: dict[str, Any] | list[str] | None = None) -> Preset:
    """A preset with fields overridden.

    Parameters
    ----------
    name : ``"sketch"`` or ``"poster"``.
    overrides : ``{"dim": 512}`` or ``["dim=512", "model.n_rnn=2"]``; a field name may be given
        bare when it is unique, or as ``model.``/``train.``/``data.`` + name.

    Raises
    ------
    LabError
        An unknown preset or field, or a value of the wrong kind.
    """
    if name not in PRESETS:
        raise LabError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    preset = PRESETS[name]()
    return apply_overrides(preset, overrides)


def apply_overrides(preset: Preset, overrides: dict[str, Any] | list[str] | None) -> Preset:
    if not overrides:
        return preset
    if isinstance(overrides, (list, tuple)):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise LabError(f"--set {item!r}: expected field=value")
            k, v = item.split("=", 1)
            pairs[k.strip()] = parse_value(v.strip())
        overrides = pairs
    parts = {"model": preset.model, "train": preset.train, "data": preset.data}
    for key, value in overrides.items():
        section, _, fname = key.rpartition(".")
        owners = [section] if section else [s for s, obj in parts.items() if fname in _fields(obj)]
        if not owners or owners[0] not in parts or fname not in _fields(parts[owners[0]]):
            known = sorted({f for obj in parts.values() for f in _fields(obj)})
            raise LabError(f"unknown setting {key!r}; known: {', '.join(known)}")
        if len(owners) > 1:
            raise LabError(f"setting {key!r} is ambiguous: write {' or '.join(o + '.' + fname for o in owners)}")
        obj = parts[owners[0]]
        current = getattr(obj, fname)
        if isinstance(current, bool) and not isinstance(value, bool):
            raise LabError(f"setting {key}: expected true or false, got {value!r}")
        if isinstance(current, (int, float)) and not isinstance(current, bool) and not isinstance(value, (int, float)):
            if not (value is None and _optional(obj, fname)):
                raise LabError(f"setting {key}: expected a number, got {value!r}")
        if isinstance(current, float) and isinstance(value, int):
            value = float(value)
        parts[owners[0]] = replace(obj, **{fname: value})
    return Preset(parts["model"], parts["train"], parts["data"])


def _fields(obj) -> set[str]:
    return {f.name for f in dataclasses.fields(obj)}


def _optional(obj, name: str) -> bool:
    """Whether a field may be None (its annotation says ``| None``), e.g. the budgets."""
    return "None" in str(next(f.type for f in dataclasses.fields(obj) if f.name == name))
