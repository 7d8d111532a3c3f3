"""The training's state and session: what changes while training (:class:`TrainState`), what stays fixed for one
call (:class:`Session`), how it ended (:class:`TrainResult`), and small helpers on them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import TrainConfig
from .model import Hidden, SampleRNN
from .rundir import MetricsWriter, RunDir


@dataclass
class TrainResult:
    """How a training ended: ``status`` is ``"finished"``, ``"budget"`` or ``"interrupted"``."""

    run: Path
    status: str
    step: int
    epoch: int
    best_val_bits: float | None


@dataclass
class TrainState:
    """Everything that changes while training (and what ``last.pt`` keeps of it)."""

    model: SampleRNN
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    cfg: TrainConfig
    net: torch.nn.Module | None = None  # the model, or its DistributedDataParallel wrapper
    average: SampleRNN | None = None  # the weights' moving average (``cfg.ema``); None when off
    amp_dtype: torch.dtype | None = None  # autocast dtype (CUDA, or bf16 on a CPU with native bf16); None: float32
    epoch: int = 0  # epochs done; the position of the next step is (epoch, batch, window)
    batch: int = 0
    window: int = 0
    step: int = 0
    best_val: float | None = None
    lr: float = 1e-3
    hidden: Hidden | None = None  # carried from window to window of the same chunks
    blowups: int = 0  # non-finite steps in a row
    running: float | None = None  # smoothed training loss, for the progress bar

    @property
    def listened(self) -> SampleRNN:
        """The weights validated, rendered and saved as a checkpoint's ``model``: the average when there is one."""
        return self.model if self.average is None else self.average

    @torch.no_grad()
    def update_average(self) -> None:
        """Move the average toward the weights just stepped; its decay ramps up from 0.1 over the first steps,
        so the average does not hold on to the untrained start."""
        if self.average is None:
            return
        decay = min(self.cfg.ema, (1 + self.step) / (10 + self.step))
        for a, p in zip(self.average.parameters(), self.model.parameters()):
            a.lerp_(p, 1.0 - decay)
        for a, b in zip(self.average.buffers(), self.model.buffers()):
            a.copy_(b)

    def load_weights(self, saved: dict) -> None:
        """The weights of a ``last.pt``: the optimiser's own (``model_online`` when it was averaging) and the
        average (its ``model``)."""
        self.model.load_state_dict(saved.get("model_online", saved["model"]))
        if self.average is not None:
            self.average.load_state_dict(saved["model"])


@dataclass
class Session:
    """What stays fixed for one call of :func:`train`: where, on what, with which data; the log, the clock."""

    run: RunDir
    dataset: Path = field(default_factory=Path)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world: int = 1
    run_config: dict = field(default_factory=dict)
    sample_rate: int = 16000
    train_codes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))
    val_codes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))
    log: MetricsWriter = field(default_factory=lambda: MetricsWriter(None))
    clock: Callable[[], float] = time.perf_counter  # what max_minutes counts (TrainConfig.clock)
    progress: bool = False
    seconds_before: float = 0.0  # wall seconds of the runs this one resumes
    budget_before: float = 0.0  # seconds of those runs as ``clock`` counts them: max_minutes is the run's in all
    started: float = 0.0  # clock reading at this start
    wall_started: float = 0.0  # time.perf_counter() at the start
    last_save: float = 0.0  # time.perf_counter() at the last save of last.pt

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder; the others only train."""
        return self.rank == 0

    def elapsed(self) -> float:
        """Wall seconds trained, resumed runs included (logged as ``seconds`` whatever the clock)."""
        return self.seconds_before + time.perf_counter() - self.wall_started

    def budget_seconds(self) -> float:
        """Seconds of the minute budget spent, as ``clock`` counts them, resumed runs included."""
        return self.budget_before + self.clock() - self.started

    def say(self, message: str) -> None:
        """A line above the progress bar, from rank 0."""
        if self.is_main:
            tqdm.write(message)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _detach(hidden: Hidden | None) -> Hidden | None:
    if hidden is None:
        return None
    # float32 whatever autocast made of it (an LSTM's state comes out bf16 on CPU): carried, saved and resumed alike
    return [tuple(x.detach().float() for x in h) if isinstance(h, tuple) else h.detach().float() for h in hidden]


def _to(hidden: Hidden | None, device) -> Hidden | None:
    if hidden is None:
        return None
    return [tuple(x.to(device) for x in h) if isinstance(h, tuple) else h.to(device) for h in hidden]
