"""The training loop: truncated BPTT over chunk windows, resumable, guarded against blow-ups.

Read it top to bottom in :func:`train`. One optimiser step per window of ``seq_len`` samples
(:func:`train_step`); the hidden state is carried from window to window of the same chunks and reset to
the learned h0 at each batch's start (every batch is a fresh set of chunks). Everything random derives
from the seed and the epoch, so a checkpoint's data position is enough to resume exactly.

What changes while training is one :class:`TrainState`; what stays fixed for the call (folder, device,
data, log, clock) is one :class:`Session`. The run folder's layout is :mod:`samplernn_lab.rundir`'s.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt_io
from .audio import silence_code
from .config import ModelConfig, TrainConfig
from .dataset import batch_order, load_split, read_manifest, windows
from .distributed import any_rank, barrier, pick_device, setup_distributed, teardown_distributed, wrap_distributed
from .epoch_renders import epoch_render
from .errors import LabError
from .model import Hidden, SampleRNN, nll_bits
from .rundir import MetricsWriter, RunDir, check_new_run, claim

__all__ = [
    "Session",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "blowup_guard",
    "end_of_epoch",
    "evaluate",
    "save",
    "train",
    "train_step",
]


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
    amp_dtype: torch.dtype | None = None  # autocast dtype on CUDA; None: full precision
    epoch: int = 0  # epochs done; the position of the next step is (epoch, batch, window)
    batch: int = 0
    window: int = 0
    step: int = 0
    best_val: float | None = None
    lr: float = 1e-3
    hidden: Hidden | None = None  # carried from window to window of the same chunks
    blowups: int = 0  # non-finite steps in a row
    running: float | None = None  # smoothed training loss, for the progress bar


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
    started: float = 0.0  # clock reading at the start (the budget counts from here)
    wall_started: float = 0.0  # time.perf_counter() at the start
    last_save: float = 0.0  # time.perf_counter() at the last save of last.pt

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder; the others only train."""
        return self.rank == 0

    def elapsed(self) -> float:
        """Wall seconds trained, resumed runs included (logged as ``seconds`` whatever the clock)."""
        return self.seconds_before + time.perf_counter() - self.wall_started

    def say(self, message: str) -> None:
        """A line above the progress bar, from rank 0."""
        if self.is_main:
            tqdm.write(message)


def train(
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    model_config: ModelConfig | None = None,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a SampleRNN on a dataset folder into a run folder (layout: :mod:`samplernn_lab.rundir`).

    Parameters
    ----------
    dataset : folder written by :func:`samplernn_lab.dataset.prepare`.
    out : run folder: new, empty, or one the lab made without a run in it yet, unless ``resume``.
    model_config, config : sizes and training settings (a preset's ``model`` and ``train``).
        On resume the model config comes from the checkpoint; ``config``'s budgets apply.
    resume : continue from ``out/checkpoints/last.pt``.
    device : ``"cpu"``, ``"cuda"`` or None (CUDA when present).

    Returns
    -------
    TrainResult with how it ended (``"finished"``, ``"budget"`` or ``"interrupted"``).
    """
    rank, world, owns_group = setup_distributed(device)
    state, status, ended = None, None, False
    try:
        state, session = start(
            Path(dataset),
            RunDir(out),
            model_config,
            config or TrainConfig(),
            resume=resume,
            device=device,
            rank=rank,
            world=world,
            progress=progress,
        )
        with ExitStack() as stack:
            if session.is_main:
                stack.enter_context(claim(session.run, session.run_config, resume, session.say))
                session.log = stack.enter_context(MetricsWriter(session.run.metrics))
            stopper = stack.enter_context(_Stop().installed())
            while state.cfg.epochs is None or state.epoch < state.cfg.epochs:
                status = run_epoch(state, session, stopper)
                if status:  # a budget spent or a signal: keep the place, show the curve
                    save(state, session)
                    if session.is_main and state.step > 0:
                        _loss_curve(session.run)
                    break
                end_of_epoch(state, session)
        ended = True
    finally:
        teardown_distributed(state, world, owns_group, clean=ended)
    return TrainResult(session.run.root, status or "finished", state.step, state.epoch, state.best_val)


# ---------------------------------------------------------------------------------------------
# one epoch, one step


def run_epoch(state: TrainState, session: Session, stopper: _Stop) -> str | None:
    """Train from the state's position to the end of its epoch; returns why it stopped early, or None."""
    cfg = state.cfg
    batches = batch_order(session.train_codes.shape[0], cfg.batch_size, cfg.seed, state.epoch)
    if session.world > 1:  # each rank reads its own shard of every batch
        batches = [b[session.rank :: session.world] for b in batches if len(b) >= session.world]
    n_windows = session.train_codes.shape[1] // cfg.seq_len
    silence = silence_code(state.model.config.q_levels)
    bar = tqdm(
        total=len(batches) * n_windows,
        initial=state.batch * n_windows + state.window,
        desc=f"epoch {state.epoch + 1}",
        unit="step",
        disable=not (session.progress and session.is_main),
    )
    try:
        while state.batch < len(batches):
            chunks = session.train_codes[batches[state.batch]]
            for wi, window in windows(chunks, cfg.seq_len, state.model.lookback, silence):
                if wi < state.window:
                    continue
                stop = stop_reason(state, session, stopper)
                if stop:
                    return stop
                loss, grad_norm = train_step(state, window.to(session.device, non_blocking=True))
                state.window = wi + 1
                if state.window == n_windows:  # the batch is done: the next one starts from h0
                    state.batch, state.window, state.hidden = state.batch + 1, 0, None
                if not blowup_guard(state, session, loss, grad_norm):
                    continue
                session.log.write(
                    {
                        "step": state.step,
                        "epoch": state.epoch + 1,
                        "split": "train",
                        "nll_bits": loss,
                        "seconds": round(session.elapsed(), 3),
                        "grad_norm": round(grad_norm, 4),
                    }
                )
                bar.update(1)
                bar.set_postfix(bits=f"{state.running:.3f}")
                if time.perf_counter() - session.last_save > cfg.checkpoint_minutes * 60:
                    save(state, session)
            if state.window:  # a resumed position past this batch's last window
                state.batch, state.window, state.hidden = state.batch + 1, 0, None
    finally:
        bar.close()
    return None


def train_step(state: TrainState, window: torch.Tensor) -> tuple[float, float]:
    """One optimiser step on one window of codes, ``(B, lookback + seq_len)`` long, on the model's device.

    Returns ``(loss, grad_norm)``: the window's NLL in bits per sample and the gradient norm before
    clipping. A non-finite loss or gradient skips the update and drops the carried state; what follows is
    :func:`blowup_guard`'s call.
    """
    model, opt, scaler = state.model, state.optimizer, state.scaler
    with torch.autocast("cuda", dtype=state.amp_dtype) if state.amp_dtype is not None else nullcontext():
        logits, new_hidden = (model if state.net is None else state.net)(window, state.hidden)
        loss = nll_bits(logits, window[:, model.lookback :])
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), state.cfg.grad_clip))
    loss_value = float(loss.detach())
    if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
        state.hidden = None
        opt.zero_grad(set_to_none=True)
        scaler.update()
        return loss_value, grad_norm
    scaler.step(opt)
    scaler.update()
    state.hidden = _detach(new_hidden)
    state.step += 1
    state.running = loss_value if state.running is None else 0.98 * state.running + 0.02 * loss_value
    return loss_value, grad_norm


def blowup_guard(state: TrainState, session: Session, loss: float, grad_norm: float) -> bool:
    """True for a finite step. A non-finite one is logged; ``blowup_patience`` of them in a row restore
    ``last.pt`` (or keep the weights when there is none yet) at ``blowup_lr_factor`` times the learning rate.
    """
    if math.isfinite(loss) and math.isfinite(grad_norm):
        state.blowups = 0
        return True
    state.blowups += 1
    session.log.write(
        {
            "event": "nonfinite",
            "step": state.step,
            "epoch": state.epoch + 1,
            "loss": loss,
            "grad_norm": grad_norm,
            "seconds": session.elapsed(),
        }
    )
    if state.blowups >= state.cfg.blowup_patience:
        state.lr *= state.cfg.blowup_lr_factor
        message = _restore(state, session.run.last)
        session.log.write({"event": "restored", "step": state.step, "lr": state.lr, "message": message})
        session.say(f"{state.blowups} non-finite steps in a row: {message}")
        state.blowups = 0
    return False


def _restore(state: TrainState, last: Path) -> str:
    """Reload the last good weights and optimiser state at the state's (lowered) learning rate."""
    if last.exists():
        saved = ckpt_io.load(last)
        state.model.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
        where = f"restored {last.name} (step {saved['step']})"
    else:
        where = "no checkpoint yet, kept the current weights"
    _set_lr(state.optimizer, state.lr)
    return f"{where}, learning rate lowered to {state.lr:.3g}"


def stop_reason(state: TrainState, session: Session, stopper: _Stop) -> str | None:
    """Why to stop before the next step; all ranks agree (any rank's reason stops all)."""
    cfg = state.cfg
    spent = (cfg.max_steps is not None and state.step >= cfg.max_steps) or (
        cfg.max_minutes is not None and session.clock() - session.started >= cfg.max_minutes * 60
    )
    flags = any_rank([spent, stopper.requested is not None], session.device, session.world)
    return "interrupted" if flags[1] else "budget" if flags[0] else None


# ---------------------------------------------------------------------------------------------
# the end of an epoch: validate, keep checkpoints, render something to listen to


def end_of_epoch(state: TrainState, session: Session) -> None:
    """Close an epoch: validation NLL, ``epoch-NNN.pt``, ``best.pt``, ``last.pt``, a render, the curve."""
    state.epoch += 1
    state.batch, state.window, state.hidden = 0, 0, None
    if session.is_main:
        cfg, run = state.cfg, session.run
        val = evaluate(state.model, session.val_codes, cfg.seq_len, cfg.batch_size, session.device)
        if val is not None:
            session.log.write(
                {
                    "step": state.step,
                    "epoch": state.epoch,
                    "split": "val",
                    "nll_bits": val,
                    "seconds": round(session.elapsed(), 3),
                }
            )
        weights = {
            "config": session.run_config,
            "model": state.model.state_dict(),
            "epoch": state.epoch,
            "step": state.step,
            "val_bits": val,
        }
        ckpt_io.save(weights, run.epoch_checkpoint(state.epoch))
        if val is not None and (state.best_val is None or val < state.best_val):
            state.best_val = val
            ckpt_io.save(weights, run.best)
        save(state, session)
        for event in epoch_render(
            state.model, run, session.dataset, session.sample_rate, cfg, state.epoch, state.step, session.device
        ):
            session.log.write(event)
        _loss_curve(run)
        train_bits = state.running if state.running is not None else float("nan")
        session.say(
            f"epoch {state.epoch}: step {state.step}, train {train_bits:.3f} bits"
            + (f", val {val:.3f} bits" if val is not None else "")
        )
    barrier(session.world)


def save(state: TrainState, session: Session) -> None:
    """Write ``last.pt`` (rank 0): weights, optimiser, the position of the next step, carried state, RNG."""
    session.last_save = time.perf_counter()
    if not session.is_main:
        return
    ckpt_io.save(
        {
            "config": session.run_config,
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "position": {"epoch": state.epoch, "batch": state.batch, "window": state.window},
            "hidden": _detach(_to(state.hidden, "cpu")),
            "step": state.step,
            "epoch": state.epoch,
            "seconds": session.elapsed(),
            "best_val": state.best_val,
            "lr": state.lr,
            "rng": {"seed": state.cfg.seed, "torch": torch.get_rng_state()},
        },
        session.run.last,
    )


@torch.no_grad()
def evaluate(model: SampleRNN, codes: torch.Tensor, seq_len: int, batch_size: int, device) -> float | None:
    """Mean NLL (bits per sample) over whole chunks, windowed with carried state like training."""
    if codes.shape[0] == 0:
        return None
    model.eval()
    total, count = 0.0, 0
    silence = silence_code(model.config.q_levels)
    for i in range(0, codes.shape[0], batch_size):
        hidden = None
        for _, window in windows(codes[i : i + batch_size], seq_len, model.lookback, silence):
            window = window.to(device)
            logits, hidden = model(window, hidden)
            n = window.shape[0] * seq_len
            total += float(nll_bits(logits, window[:, model.lookback :])) * n
            count += n
    model.train()
    return total / count if count else None


# ---------------------------------------------------------------------------------------------
# starting: settings, data, model, the run folder


def start(
    dataset: Path,
    run: RunDir,
    model_config: ModelConfig | None,
    cfg: TrainConfig,
    *,
    resume: bool,
    device: str | None,
    rank: int,
    world: int,
    progress: bool,
) -> tuple[TrainState, Session]:
    """Everything a run needs before it writes anything: settings (resumed or new), the dataset read,
    the model built. Raises LabError for a folder that is not this run's to write, or a bad dataset."""
    dev = pick_device(device)
    saved = None
    if resume:
        if not run.last.exists():
            raise LabError(f"{run.root}: nothing to resume (no checkpoints/last.pt)")
        saved = ckpt_io.load(run.last)
        model_config = ModelConfig(**saved["config"]["model"])
        budgets = {k: getattr(cfg, k) for k in ("epochs", "max_steps", "max_minutes", "clock")}
        cfg = TrainConfig(**{**saved["config"]["train"], **budgets})
    else:
        model_config = model_config or ModelConfig()
        check_new_run(run)  # before anything is read: a refusal costs nothing
    manifest = _check_dataset(dataset, model_config, cfg)
    run_config = {
        "model": asdict(model_config),
        "train": asdict(cfg),
        "data": manifest["settings"],
        "dataset": str(dataset.resolve()),
        "sample_rate": manifest["sample_rate"],
        "quantization": {"method": model_config.quantization, "q_levels": model_config.q_levels},
    }
    q, method = model_config.q_levels, model_config.quantization
    session = Session(
        run,
        dataset,
        dev,
        rank,
        world,
        run_config,
        manifest["sample_rate"],
        load_split(dataset, "train", q, method),
        load_split(dataset, "val", q, method),
        clock=time.process_time if cfg.clock == "process" else time.perf_counter,
        progress=progress,
    )
    torch.manual_seed(cfg.seed)
    state = new_state(SampleRNN(model_config).to(dev), cfg, dev)
    if saved is not None:
        session.seconds_before = resume_state(state, saved, dev)
    state.net = wrap_distributed(state.model, dev, world)
    session.started, session.wall_started = session.clock(), time.perf_counter()
    session.last_save = session.wall_started
    return state, session


def new_state(model: SampleRNN, cfg: TrainConfig, dev: torch.device) -> TrainState:
    """A fresh state: Adam, mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling)."""
    amp_dtype = None
    if cfg.amp and dev.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return TrainState(model, optimizer, scaler, cfg, amp_dtype=amp_dtype, lr=cfg.lr)


def resume_state(state: TrainState, saved: dict[str, Any], dev: torch.device) -> float:
    """Put a ``last.pt`` back into a fresh state; returns the seconds trained before."""
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    pos = saved["position"]
    state.epoch, state.batch, state.window = pos["epoch"], pos["batch"], pos["window"]
    state.step, state.best_val, state.lr = saved["step"], saved.get("best_val"), saved["lr"]
    state.hidden = _to(saved.get("hidden"), dev)
    _set_lr(state.optimizer, state.lr)
    torch.set_rng_state(saved["rng"]["torch"])
    return float(saved["seconds"])


def _check_dataset(dataset: Path, cfg_model: ModelConfig, cfg: TrainConfig) -> dict:
    manifest = read_manifest(dataset)
    lb = cfg_model.lookback
    if cfg.seq_len % lb:
        raise LabError(f"seq_len {cfg.seq_len} must be a multiple of the top frame length {lb}")
    if manifest["chunk_samples"] < cfg.seq_len:
        raise LabError(
            f"{dataset}: chunks of {manifest['chunk_samples']} samples are shorter than one "
            f"window (seq_len {cfg.seq_len}); prepare longer chunks or lower seq_len"
        )
    if not any(c["split"] == "train" for c in manifest["chunks"]):
        raise LabError(f"{dataset}: has no training chunks")
    return manifest


# ---------------------------------------------------------------------------------------------
# small helpers


class _Stop:
    """Turns SIGINT / SIGTERM into a flag the loop checks before each step (a second Ctrl-C forces)."""

    def __init__(self) -> None:
        self.requested: str | None = None

    @contextmanager
    def installed(self) -> Iterator[_Stop]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self.requested is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.requested = signal.Signals(signum).name

        for s in old:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _detach(hidden: Hidden | None) -> Hidden | None:
    if hidden is None:
        return None
    return [tuple(x.detach() for x in h) if isinstance(h, tuple) else h.detach() for h in hidden]


def _to(hidden: Hidden | None, device) -> Hidden | None:
    if hidden is None:
        return None
    return [tuple(x.to(device) for x in h) if isinstance(h, tuple) else h.to(device) for h in hidden]


def _loss_curve(run: RunDir) -> None:
    from .figures import loss_curve

    loss_curve(run.metrics, run.loss_plot)
