"""Starting a training: settings (resumed or new), the dataset read and checked, the model built, the state."""

from __future__ import annotations

import copy
import ctypes
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt_io
from .audio import step_at_zero, under_step_share
from .config import ModelConfig, TrainConfig
from .dataset import load_split, read_manifest
from .distributed import pick_device, wrap_distributed
from .errors import LabError
from .model import SampleRNN
from .rundir import RunDir, check_new_run
from .train_state import Session, TrainState, _set_lr, _to

# what a resumed run takes from the caller: its budgets (counted over the whole run), the clock they count, and
# the machine's own (mixed precision, how often to save); every other setting is the run's, from its last.pt
RESUMABLE = ("epochs", "max_steps", "max_minutes", "clock", "amp", "checkpoint_minutes")
# a dataset whose training audio is more than this share quieter than one linear step is warned about (a real bell's
# decay: 86%, rendered as hiss at that step; the bundled glass bells: 0%; benchmarks/RESULTS.md)
QUIET_SHARE_WARNING = 0.25


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
        now = {k: getattr(cfg, k) for k in RESUMABLE}
        cfg = TrainConfig(**{**saved["config"]["train"], **now})
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
    if saved is None and rank == 0:
        warn_if_quiet(dataset, session.train_codes, model_config, manifest["sample_rate"])
    torch.manual_seed(cfg.seed)
    state = new_state(SampleRNN(model_config).to(dev), cfg, dev)
    if saved is not None:
        session.seconds_before = resume_state(state, saved, dev)
        # older checkpoints kept wall seconds only
        session.budget_before = float(saved.get("budget_seconds", session.seconds_before))
    state.net = wrap_distributed(state.model, dev, world)
    session.started, session.wall_started = session.clock(), time.perf_counter()
    session.last_save = session.wall_started
    return state, session


def warn_if_quiet(dataset: Path, train_codes: torch.Tensor, model_config: ModelConfig, sample_rate: int) -> None:
    """Say so, on stderr, when linear levels will turn much of the training audio into hiss at their finest step
    (:func:`samplernn_lab.audio.under_step_share` over 50 ms frames): the renders carry that hiss, and mu-law does
    not make it. A warning, not an error: the poster preset is the study's, linear levels included."""
    q = model_config.q_levels
    if model_config.quantization != "linear":
        return
    share = under_step_share(train_codes, q, "linear", max(1, sample_rate // 20))
    if share > QUIET_SHARE_WARNING:
        linear_db, mulaw_db = (20 * math.log10(step_at_zero(q, m)) for m in ("linear", "mulaw"))
        print(
            f"warning: {dataset}: {share:.0%} of the training audio is quieter than one step of {q} linear levels "
            f"({linear_db:.0f} dBFS) and reaches the model as hiss at that step; --set quantization=mulaw keeps it, "
            f'its step {mulaw_db:.0f} dBFS (benchmarks/RESULTS.md, "The hour\'s recipe on a real bell")',
            file=sys.stderr,
        )


# glibc's mallopt parameters (malloc.h) and their defaults
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_DEFAULTS = ((_M_MMAP_MAX, 65536), (_M_TRIM_THRESHOLD, 128 * 1024))
_KEPT = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
_held = {"depth": 0, "took": False}  # nested blocks (a benchmark around train): only the outermost sets and restores


def _glibc():
    """The C library when it is glibc on Linux, else None (macOS, musl: their mallopt is not glibc's)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


def _own_malloc_settings() -> bool:
    """Whether the user set glibc's malloc up themselves (environment): then the lab leaves it alone."""
    return any(k.startswith("MALLOC_") for k in os.environ) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")


@contextmanager
def keep_freed_memory() -> Iterator[bool]:
    """While in the block, glibc's malloc keeps what a training step frees for the next; yields whether it took.

    By default glibc gives every block over 32 MiB (a step's activations at the poster's batch are 64-128 MiB
    each) its own mapping and returns it to the system when freed, so the next step faults in every page
    again: about a fifth of a CPU step's time. In the block, mappings are off (``M_MMAP_MAX`` 0) and the heap's
    top is kept up to 2 GiB (``M_TRIM_THRESHOLD``): a CPU training step of the sketch's size at the poster's
    batch 1.3x faster, the sketch's own about 1.05x (``benchmarks/RESULTS.md``, "The allocator and the embedding's
    gradient"). On leaving, glibc's defaults are set again and the heap's free memory is returned
    (``malloc_trim``). Only the outermost of nested blocks does either. Does nothing where the C library is not
    glibc on Linux, or where the environment sets glibc's malloc up already (a ``MALLOC_*`` variable or
    ``glibc.malloc`` tunables; an allocator loaded with ``LD_PRELOAD`` is not seen, and the call then changes
    nothing). Blocks allocated by other threads over 64 MiB still get their own mappings (a thread's arena); the
    lab's training allocates on the thread that called it.
    """
    outermost = _held["depth"] == 0
    libc = _glibc() if outermost and not _own_malloc_settings() else None
    if outermost:  # a list, not a generator: each setting is tried, and all are restored below
        _held["took"] = libc is not None and all([libc.mallopt(p, v) == 1 for p, v in _KEPT])
    _held["depth"] += 1
    try:
        yield _held["took"]
    finally:
        _held["depth"] -= 1
        if libc is not None:
            for p, v in _GLIBC_DEFAULTS:
                libc.mallopt(p, v)
            libc.malloc_trim(0)


def cpu_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX): there bf16 autocast pays."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)


def autocast_dtype(cfg: TrainConfig, dev: torch.device) -> torch.dtype | None:
    """The autocast dtype of training with ``cfg.amp`` on ``dev``, None for float32: on CUDA bf16 where supported,
    else fp16 (with loss scaling); on CPUs with native bf16 (:func:`cpu_bf16`) bf16, a sketch step 1.5x faster
    (benchmarks/RESULTS.md); on other CPUs none, where bf16 would be emulated and many times slower."""
    if cfg.amp and dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if cfg.amp and dev.type == "cpu" and cpu_bf16():
        return torch.bfloat16
    return None


def new_state(model: SampleRNN, cfg: TrainConfig, dev: torch.device) -> TrainState:
    """A fresh state: Adam, and mixed precision where :func:`autocast_dtype` says it pays."""
    amp_dtype = autocast_dtype(cfg, dev)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    average = copy.deepcopy(model).requires_grad_(False) if cfg.ema > 0 else None
    return TrainState(model, optimizer, scaler, cfg, amp_dtype=amp_dtype, lr=cfg.lr, average=average)


def resume_state(state: TrainState, saved: dict[str, Any], dev: torch.device) -> float:
    """Put a ``last.pt`` back into a fresh state; returns the seconds trained before."""
    state.load_weights(saved)
    state.optimizer.load_state_dict(saved["optimizer"])
    pos = saved["position"]
    state.epoch, state.batch, state.window = pos["epoch"], pos["batch"], pos["window"]
    state.step, state.best_val, state.lr = saved["step"], saved.get("best_val"), saved["lr"]
    state.hidden = _to(saved.get("hidden"), dev)
    _set_lr(state.optimizer, state.lr)
    torch.set_rng_state(saved["rng"]["torch"])
    cuda = saved["rng"].get("cuda")
    if dev.type == "cuda" and cuda and len(cuda) == torch.cuda.device_count():  # else another machine: reseeded
        torch.cuda.set_rng_state_all(cuda)
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
