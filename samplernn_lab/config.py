"""Every setting of the lab in one place: data, model and training settings, the presets, overrides.

Each setting is checked when it is set (at construction, by ``dataclasses.replace``, by an override,
or by assigning the attribute): its type, its range and its allowed values. A bad value raises
:class:`SettingError` (a :class:`~samplernn_lab.errors.LabError`) naming the field, the value and what is
allowed. Settings that depend on each other (``seq_len`` a multiple of the model's lookback, chunks at
least one window long) are checked where both are known, when training starts.

A preset is one :class:`Preset` of three dataclasses; any field can be overridden by name (``dim=256``,
``seq_len=512``, ``sample_rate=16000``), from the CLI (``--set``), notebook parameters or Python
(:func:`get_preset`). Imports nothing of the lab but :mod:`samplernn_lab.errors`.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import LabError


class SettingError(LabError, ValueError):
    """A setting with a value of the wrong type, out of range, or not one of the allowed values."""


def _rule(default: Any, **limits: Any) -> Any:
    """A dataclass field with its limits: ``ge``/``gt``/``le``/``lt`` (numbers) or ``choices``."""
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata=limits)
    return field(default=default, metadata=limits)


def _allowed(kind: str, optional: bool, limits: dict) -> str:
    words = {
        "bool": "true or false",
        "int": "a number (an integer)",
        "float": "a number",
        "str": "a name",
        "tuple": "a list of integers",
    }[kind]
    if "choices" in limits:
        words = "one of " + ", ".join(repr(c) for c in limits["choices"])
    bounds = [
        f"{op} {limits[key]:g}" for key, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if key in limits
    ]
    if bounds:
        words += (" each " if kind == "tuple" else " ") + " and ".join(bounds)
    return words + (", or none" if optional else "")


def _in_range(x: float, limits: dict) -> bool:
    return (
        math.isfinite(x)
        and x >= limits.get("ge", -math.inf)
        and x > limits.get("gt", -math.inf)
        and x <= limits.get("le", math.inf)
        and x < limits.get("lt", math.inf)
    )


def check_value(name: str, value: Any, annotation: str, limits: dict) -> Any:
    """``value`` as the field ``name`` stores it (ints widened to float, lists to tuples), or SettingError.

    ``annotation`` is the field's type as written (``"int"``, ``"float | None"``, ``"tuple[int, ...]"``).
    """
    optional = "None" in annotation
    kind = next(k for k in ("tuple", "bool", "int", "float", "str") if annotation.startswith(k))
    if value is None and optional:
        return None

    def bad() -> SettingError:
        return SettingError(f"setting {name}={value!r}: expected {_allowed(kind, optional, limits)}")

    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad()
    elif kind == "int":
        if not is_int or not _in_range(value, limits):
            raise bad()
    elif kind == "float":
        if not (is_int or isinstance(value, float)) or not _in_range(float(value), limits):
            raise bad()
        value = float(value)
    elif kind == "str":
        if not isinstance(value, str) or value not in limits.get("choices", (value,)):
            raise bad()
    else:  # a tuple of whole numbers
        if not isinstance(value, (list, tuple)) or not value:
            raise bad()
        if not all(isinstance(v, int) and not isinstance(v, bool) and _in_range(v, limits) for v in value):
            raise bad()
        value = tuple(value)
    return value


class Checked:
    """Checks each field against its annotation and limits whenever it is assigned."""

    def __setattr__(self, name: str, value: Any) -> None:
        spec = self.__dataclass_fields__.get(name)
        if spec is not None:
            value = check_value(name, value, str(spec.type), dict(spec.metadata))
        object.__setattr__(self, name, value)


@dataclass
class DataConfig(Checked):
    """Settings of ``prepare``; stored in the manifest as ``settings``."""

    sample_rate: int = _rule(44100, ge=1000, le=384000)
    copies: int = _rule(8, ge=1)
    # more copies of a source while its training split makes fewer chunks than this (0: just `copies`)
    min_chunks: int = _rule(0, ge=0)
    chunk_seconds: float = _rule(8.0, gt=0)
    val_fraction: float = _rule(0.1, ge=0, lt=0.5)
    test_fraction: float = _rule(0.1, ge=0, lt=0.5)
    gain_jitter_db: float = _rule(0.0, ge=0)
    # each training copy played up to this many cents higher or lower (pitch and duration together)
    pitch_jitter_cents: float = _rule(0.0, ge=0, le=1200)
    crossfade_ms: float = _rule(10.0, ge=0)
    seed: int = _rule(0, ge=0)

    def validate(self) -> None:
        """Re-check every field (they are checked when set; kept for callers that ask)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name))

    @property
    def chunk_samples(self) -> int:
        """Samples per chunk at the dataset's rate."""
        return int(round(self.chunk_seconds * self.sample_rate))


@dataclass
class ModelConfig(Checked):
    """Sizes of a SampleRNN. ``frame_sizes`` bottom tier first."""

    frame_sizes: tuple[int, ...] = _rule((8, 2), ge=1)
    dim: int = _rule(1024, ge=1)
    n_rnn: int = _rule(2, ge=1)
    rnn_type: str = _rule("gru", choices=("gru", "lstm"))
    embed_size: int = _rule(256, ge=1)
    q_levels: int = _rule(256, ge=2, le=65536)
    quantization: str = _rule("linear", choices=("linear", "mulaw"))
    mlp_hidden_layers: int = _rule(1, ge=0)
    learn_h0: bool = True
    weight_norm: bool = True
    # initialisation: "port" as the study's PyTorch port (module docstring of samplernn_lab.model), "torch" PyTorch's
    # own layer defaults: smaller weights, a model that learns a short source by heart more slowly per step
    init: str = _rule("port", choices=("port", "torch"))
    # dropout on the frame tiers' outputs and the sample MLP's activations, in training only (sampling and
    # validation never drop). 0.2 stops the sketch learning a short source by heart (held-out NLL) but makes its
    # renders noisier on some sources, so it is off (benchmarks/RESULTS.md, "Dropout")
    dropout: float = _rule(0.0, ge=0, lt=1)

    @property
    def frame_lengths(self) -> tuple[int, ...]:
        """Samples per frame of each tier, bottom first: the running product of ``frame_sizes``."""
        return tuple(math.prod(self.frame_sizes[: i + 1]) for i in range(len(self.frame_sizes)))

    @property
    def lookback(self) -> int:
        """Samples of context before the first prediction: the top tier's frame length."""
        return self.frame_lengths[-1]

    def validate(self) -> None:
        """Re-check every field (they are checked when set; kept for callers that ask)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name))


@dataclass
class TrainConfig(Checked):
    """Training settings. Budgets: training stops at whichever of epochs, steps, minutes ends first.

    ``clock`` says what ``max_minutes`` counts: ``"wall"`` (elapsed time) or ``"process"`` (this process's
    CPU time, :func:`time.process_time`, all its threads: fair comparisons on a shared machine). Logged
    ``seconds`` are wall time whatever the clock.
    """

    seq_len: int = _rule(1024, ge=1)
    batch_size: int = _rule(128, ge=1)
    lr: float = _rule(1e-3, gt=0)
    # the learning rate at the end of the budget, as a share of lr: a cosine from lr down to lr * lr_final over
    # whichever budget (epochs, steps, minutes) ends first; 1 = constant
    lr_final: float = _rule(1.0, gt=0, le=1)
    grad_clip: float = _rule(1.0, gt=0)
    # training inputs moved by up to +-input_noise quantisation levels, targets left clean, so the model learns
    # to go on from samples that are a little off, as its own are when it renders; 0 = off
    input_noise: int = _rule(0, ge=0)
    # an exponential moving average of the weights, over about 1 / (1 - ema) steps, is what is validated, rendered
    # and kept as every checkpoint's "model" (last.pt also keeps the optimiser's own weights); 0 = off
    ema: float = _rule(0.0, ge=0, lt=1)
    epochs: int | None = _rule(None, ge=1)
    max_steps: int | None = _rule(None, ge=0)
    max_minutes: float | None = _rule(None, ge=0)
    seed: int = _rule(0, ge=0)
    amp: bool = True  # mixed precision: on CUDA, and bf16 on CPUs with AVX-512 BF16 or AMX
    render_seconds: float = _rule(2.0, ge=0)  # per-epoch render; 0 = none
    # streams of the per-epoch render, each primed from another place; the epoch is judged by the median one
    # (one 4 s render called an epoch 0.15 whose 6 s renders were 1.9, loud noise: benchmarks/RESULTS.md)
    render_streams: int = _rule(4, ge=1)
    render_temperature: float = _rule(1.0, ge=0)
    render_prime_seconds: float = _rule(0.25, ge=0)  # start epoch renders from training audio, not silence
    checkpoint_minutes: float = _rule(10.0, gt=0)  # also save last.pt this often within an epoch
    blowup_patience: int = _rule(3, ge=1)  # consecutive non-finite steps before restoring the last checkpoint
    blowup_lr_factor: float = _rule(0.5, gt=0, le=1)
    clock: str = _rule("wall", choices=("wall", "process"))


@dataclass
class Preset:
    """A whole run's settings: the model, its training and the dataset it is trained on."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)


def poster() -> Preset:
    """The study's SampleRNN.

    Frame sizes (8, 2), 1024 units, 2 GRU layers, 256-way embedding and quantisation, sequence length
    1024, batch 128, 44.1 kHz, learned h0; a short source copied until it fills a batch of 128 chunks.
    """
    return Preset(
        ModelConfig(frame_sizes=(8, 2), dim=1024, n_rnn=2, rnn_type="gru", embed_size=256, q_levels=256, learn_h0=True),
        TrainConfig(seq_len=1024, batch_size=128, epochs=6, render_seconds=5.0),
        # min_chunks: a batch of 128 needs 128 training chunks; 8 copies of a 6 s source make 5, a batch of 5
        DataConfig(sample_rate=44100, chunk_seconds=8.0, min_chunks=128),
    )


def sketch() -> Preset:
    """What teaches an audible result in minutes on 2 CPU cores (see README, "Presets")."""
    return Preset(
        # mu-law: with 256 linear levels a quiet tail sits under one step (-42 dBFS) and every uncertain
        # prediction there is hiss; measured on a bell strike, resemblance 7.4 -> 0.9 (benchmarks/RESULTS.md)
        ModelConfig(
            frame_sizes=(8, 2),
            dim=256,
            n_rnn=1,
            rnn_type="gru",
            embed_size=64,
            q_levels=256,
            quantization="mulaw",
            learn_h0=True,
            # PyTorch's layer defaults, not the port's 2.4x larger weights (the poster keeps the port's): over two
            # seeds, 3-minute held-out NLL at or below the textbook loop's on 6 and 6 of 9 sources against 2 and
            # 2, 10-minute renders' medians 0.26 / 0.35 against 0.25 / 0.43 (RESULTS, "`init=torch` by default")
            init="torch",
        ),
        # ema=0.99 (the weights' moving average validated, rendered and kept) was measured and not made the default:
        # at equal steps held-out NLL lower at 197 of 220 epochs and per-epoch renders closer at 132, further at 61,
        # but the 10-minute `auto` renders further on 7 of 9 sources; the same with +-3 dB copies over two seeds
        # (benchmarks/RESULTS.md, "A moving average" and "... again")
        TrainConfig(seq_len=512, batch_size=16, lr=2e-3, max_minutes=10.0, render_seconds=4.0),
        # gain jitter: with one source of seconds the model soon recites its training stretch by heart (held-out
        # NLL rising from ~100 steps); copies at other levels make exact recall useless (+-6 dB: held-out NLL
        # 11.4 -> 6.9 bits on a bell, 6.4 -> 4.4 on a guitar at 400 steps). But the model learns the level as
        # something a stream carries on, and at +-6 dB half a vinyl hiss's streams settled 7 dB under the source;
        # +-3 dB renders closer for held-out NLL a little higher, 0 closer still but learns by heart sooner
        # (figures in README, "Presets"; RESULTS, "Gain jitter: +-6, +-3 or none"). Pitch jitter (each copy up to a
        # quarter tone off, as a varispeed) slows that recall further: the last held-out NLL lower in 7 of 8 runs,
        # renders closer or level in most (RESULTS, "Pitch jitter by default"); a drum loop came further with it.
        # min_chunks=48 (three batches an epoch) was measured and not kept: better at 10 minutes on the benchmark
        # four, noise at 3 minutes on the held-aside recordings (RESULTS, "Three batches an epoch")
        DataConfig(sample_rate=16000, chunk_seconds=2.0, gain_jitter_db=3.0, pitch_jitter_cents=50.0),
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
        An unknown preset or field, or a value of the wrong kind or out of range.
    """
    if name not in PRESETS:
        raise LabError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return apply_overrides(PRESETS[name](), overrides)


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["dim=512", "lr=1e-3"]`` as ``{"dim": 512, "lr": 0.001}`` (values parsed, names not yet checked)."""
    pairs = {}
    for item in overrides:
        if "=" not in item:
            raise LabError(f"--set {item!r}: expected field=value")
        k, v = item.split("=", 1)
        pairs[k.strip()] = parse_value(v.strip())
    return pairs


def apply_overrides(preset: Preset, overrides: dict[str, Any] | list[str] | None) -> Preset:
    """A copy of ``preset`` with ``overrides`` applied and checked (see :func:`get_preset`)."""
    if not overrides:
        return preset
    if isinstance(overrides, (list, tuple)):
        overrides = parse_overrides(overrides)
    parts = {"model": preset.model, "train": preset.train, "data": preset.data}
    for key, value in overrides.items():
        section, fname = setting_owner(key)
        parts[section] = replace(parts[section], **{fname: value})
    return Preset(parts["model"], parts["train"], parts["data"])


def setting_owner(key: str) -> tuple[str, str]:
    """``(section, field)`` of an override's key (``"dim"`` or ``"model.dim"``); a LabError if unknown or ambiguous."""
    parts = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}
    section, _, fname = key.rpartition(".")
    owners = [section] if section else [s for s, cls in parts.items() if fname in _fields(cls)]
    if not owners or owners[0] not in parts or fname not in _fields(parts[owners[0]]):
        known = sorted({f for cls in parts.values() for f in _fields(cls)})
        raise LabError(f"unknown setting {key!r}; known: {', '.join(known)}")
    if len(owners) > 1:
        raise LabError(f"setting {key!r} is ambiguous: write {' or '.join(o + '.' + fname for o in owners)}")
    return owners[0], fname


def _fields(obj: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(obj)}
