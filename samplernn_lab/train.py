"""The training loop: truncated BPTT over chunk windows, resumable, guarded against blow-ups.

Read it top to bottom in :func:`train`. One optimiser step per window of ``seq_len`` samples
(:func:`train_step`); the hidden state is carried from window to window of the same chunks and reset to
the learned h0 at each batch's start (every batch is a new set of chunks). Everything random derives
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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt_io
from .audio import silence_code
from .config import ModelConfig, TrainConfig
from .dataset import batch_order, windows
from .distributed import any_rank, barrier, setup_distributed, teardown_distributed
from .epoch_renders import epoch_render
from .model import SampleRNN, eval_mode, nll_bits
from .rundir import MetricsWriter, RunDir, claim
from .train_start import keep_freed_memory, start
from .train_start import new_state as new_state  # re-exported: the old import path
from .train_start import resume_state as resume_state  # re-exported
from .train_state import Session, TrainResult, TrainState, _detach, _set_lr, _to

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
        On resume the model config comes from the checkpoint; ``config``'s budgets apply, counted over the
        whole run as epochs and steps are: ``max_minutes`` includes the minutes trained before the resume.
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
            if session.device.type == "cpu":
                stack.enter_context(keep_freed_memory())
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
            if state.hidden is not None and _batch_of(state.hidden) != chunks.shape[0]:
                state.hidden = None  # a checkpoint from before full batches, saved in a short last batch
            for wi, window in windows(chunks, cfg.seq_len, state.model.lookback, silence):
                if wi < state.window:
                    continue
                stop = stop_reason(state, session, stopper)
                if stop:
                    return stop
                if cfg.lr_final < 1:
                    done = (state.batch * n_windows + wi) / max(1, len(batches) * n_windows)
                    _set_lr(state.optimizer, state.lr * lr_factor(cfg, budget_spent(state, session, done)))
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


def _batch_of(hidden) -> int:
    """The batch size a carried hidden state was made for (GRU tensors or LSTM (h, c) pairs, batch dim 1)."""
    first = hidden[0][0] if isinstance(hidden[0], tuple) else hidden[0]
    return int(first.shape[1])


def jitter_codes(codes: torch.Tensor, levels: int, q_levels: int) -> torch.Tensor:
    """``codes`` each moved by a whole number of levels drawn uniformly in ``[-levels, levels]``, kept in range.

    Parameters
    ----------
    codes : (B, T) long in [0, q_levels).
    levels : the largest move, >= 0; 0 returns ``codes`` itself. Drawn from torch's global generator (seeded).
    q_levels : number of quantisation levels.

    Returns
    -------
    (B, T) long in [0, q_levels).
    """
    if levels <= 0:
        return codes
    moves = torch.randint(-levels, levels + 1, codes.shape, device=codes.device)
    return (codes + moves).clamp_(0, q_levels - 1)


def train_step(state: TrainState, window: torch.Tensor) -> tuple[float, float]:
    """One optimiser step on one window of codes, ``(B, lookback + seq_len)`` long, on the model's device.

    Returns ``(loss, grad_norm)``: the window's NLL in bits per sample and the gradient norm before
    clipping. A non-finite loss or gradient skips the update and drops the carried state; what follows is
    :func:`blowup_guard`'s call.
    """
    model, opt, scaler = state.model, state.optimizer, state.scaler
    amp = state.amp_dtype is not None
    inputs = jitter_codes(window, state.cfg.input_noise, model.config.q_levels)
    with torch.autocast(window.device.type, dtype=state.amp_dtype) if amp else nullcontext():
        logits, new_hidden = (model if state.net is None else state.net)(inputs, state.hidden)
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
    state.update_average()
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
        state.load_weights(saved)
        state.optimizer.load_state_dict(saved["optimizer"])
        where = f"restored {last.name} (step {saved['step']})"
    else:
        where = "no checkpoint yet, kept the current weights"
    _set_lr(state.optimizer, state.lr)
    return f"{where}, learning rate lowered to {state.lr:.3g}"


def budget_spent(state: TrainState, session: Session, epoch_done: float) -> float:
    """How much of the budget is spent, in [0, 1]: the most of epochs, steps and minutes (``epoch_done``: the
    share of the current epoch trained)."""
    cfg, shares = state.cfg, [0.0]
    if cfg.epochs:
        shares.append((state.epoch + epoch_done) / cfg.epochs)
    if cfg.max_steps:
        shares.append(state.step / cfg.max_steps)
    if cfg.max_minutes:
        shares.append(session.budget_seconds() / (cfg.max_minutes * 60))
    return min(1.0, max(shares))


def lr_factor(cfg: TrainConfig, spent: float) -> float:
    """The share of the learning rate at ``spent`` of the budget: a cosine from 1 down to ``cfg.lr_final``."""
    return cfg.lr_final + (1 - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * spent))


def stop_reason(state: TrainState, session: Session, stopper: _Stop) -> str | None:
    """Why to stop before the next step; all ranks agree (any rank's reason stops all)."""
    cfg = state.cfg
    spent = (cfg.max_steps is not None and state.step >= cfg.max_steps) or (
        cfg.max_minutes is not None and session.budget_seconds() >= cfg.max_minutes * 60
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
        val = evaluate(state.listened, session.val_codes, cfg.seq_len, cfg.batch_size, session.device)
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
            "model": state.listened.state_dict(),
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
            state.listened, run, session.dataset, session.sample_rate, cfg, state.epoch, state.step, session.device
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
    online = {} if state.average is None else {"model_online": state.model.state_dict()}
    ckpt_io.save(
        {
            "config": session.run_config,
            "model": state.listened.state_dict(),
            **online,
            "optimizer": state.optimizer.state_dict(),
            "position": {"epoch": state.epoch, "batch": state.batch, "window": state.window},
            "hidden": _detach(_to(state.hidden, "cpu")),
            "step": state.step,
            "epoch": state.epoch,
            "seconds": session.elapsed(),
            "budget_seconds": session.budget_seconds(),
            "best_val": state.best_val,
            "lr": state.lr,
            "rng": {"seed": state.cfg.seed, "torch": torch.get_rng_state(), **_cuda_rng(session.device)},
        },
        session.run.last,
    )


def _cuda_rng(device: torch.device) -> dict:
    """The CUDA generators' states where training runs on CUDA (dropout and input noise draw there)."""
    return {"cuda": torch.cuda.get_rng_state_all()} if device.type == "cuda" else {}


@torch.no_grad()
def evaluate(model: SampleRNN, codes: torch.Tensor, seq_len: int, batch_size: int, device) -> float | None:
    """Mean NLL (bits per sample) over whole chunks, windowed with carried state like training."""
    if codes.shape[0] == 0:
        return None
    total, count = 0.0, 0
    silence = silence_code(model.config.q_levels)
    with eval_mode(model):  # no dropout while measuring
        for i in range(0, codes.shape[0], batch_size):
            hidden = None
            for _, window in windows(codes[i : i + batch_size], seq_len, model.lookback, silence):
                window = window.to(device)
                logits, hidden = model(window, hidden)
                n = window.shape[0] * seq_len
                total += float(nll_bits(logits, window[:, model.lookback :])) * n
                count += n
    return total / count if count else None


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


def _loss_curve(run: RunDir) -> None:
    from .figures import loss_curve

    loss_curve(run.metrics, run.loss_plot)
