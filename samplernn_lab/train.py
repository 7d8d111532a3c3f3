"""The training loop: truncated BPTT over chunk windows, resumable, guarded against blow-ups.

Read it top to bottom in :func:`train`. One optimiser step per window of ``seq_len`` samples; the
hidden state is carried from window to window of the same chunks and reset to the learned h0 at
each batch's start (every batch is a fresh set of chunks). Everything random derives from the
seed and the epoch, so a checkpoint's data position is enough to resume exactly.

Run folder::

    RUN/config.json              model, train, data and quantisation settings
    RUN/metrics.jsonl            one JSON object per line: step, epoch, split, nll_bits, seconds, ...
    RUN/checkpoints/last.pt      everything a resume needs (written each epoch, every few minutes,
                                 and on Ctrl-C / SIGTERM / budget end)
    RUN/checkpoints/best.pt      weights at the best validation NLL
    RUN/checkpoints/epoch-NNN.pt weights after epoch NNN
    RUN/renders/epoch-NNN/*.wav  a short render after each epoch, to listen to progress
    RUN/loss.png                 the loss curve
"""

from __future__ import annotations

import gc
import json
import math
import os
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import checkpoint as ckpt_io
from .audio import silence_code
from .dataset import batch_order, load_split, read_manifest, windows
from .errors import LabError
from .files import write_text
from .model import ModelConfig, SampleRNN, nll_bits


@dataclass
class TrainConfig:
    """Training settings. Budgets: training stops at whichever of epochs, steps, minutes ends first."""

    seq_len: int = 1024
    batch_size: int = 128
    lr: float = 1e-3
    grad_clip: float = 1.0
    epochs: int | None = None
    max_steps: int | None = None
    max_minutes: float | None = None
    seed: int = 0
    amp: bool = True  # mixed precision on CUDA
    render_seconds: float = 2.0  # per-epoch render; 0 = none
    render_temperature: float = 1.0
    render_prime_seconds: float = 0.25  # start epoch renders from training audio, not digital silence
    checkpoint_minutes: float = 10.0  # also save last.pt this often within an epoch
    blowup_patience: int = 3  # consecutive non-finite steps before restoring the last checkpoint
    blowup_lr_factor: float = 0.5
    clock: str = "wall"  # what max_minutes counts: "wall" time, or this "process"'s CPU time (fair on a shared machine)


@dataclass
class TrainResult:
    run: Path
    status: str  # "finished", "budget", "interrupted"
    step: int
    epoch: int
    best_val_bits: float | None


class _Stop:
    """Turns SIGINT / SIGTERM into a flag the loop checks after each step (a second Ctrl-C forces)."""

    def __init__(self):
        self.requested = None

    @contextmanager
    def installed(self):
        if not _is_main_thread():
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


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


def _detach(hidden):
    if hidden is None:
        return None
    return [tuple(x.detach() for x in h) if isinstance(h, tuple) else h.detach() for h in hidden]


def _to(hidden, device):
    if hidden is None:
        return None
    return [tuple(x.to(device) for x in h) if isinstance(h, tuple) else h.to(device) for h in hidden]


def _check_dataset(dataset: Path, cfg_model: ModelConfig, cfg: TrainConfig) -> dict:
    manifest = read_manifest(dataset)
    lb = cfg_model.lookback
    if cfg.seq_len % lb:
        raise LabError(f"seq_len {cfg.seq_len} must be a multiple of the top frame length {lb}")
    if manifest["chunk_samples"] < cfg.seq_len:
        raise LabError(f"{dataset}: chunks of {manifest['chunk_samples']} samples are shorter than one "
                       f"window (seq_len {cfg.seq_len}); prepare longer chunks or lower seq_len")
    if not any(c["split"] == "train" for c in manifest["chunks"]):
        raise LabError(f"{dataset}: has no training chunks")
    return manifest


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
        for _, window in windows(codes[i:i + batch_size], seq_len, model.lookback, silence):
            window = window.to(device)
            logits, hidden = model(window, hidden)
            n = window.shape[0] * seq_len
            total += float(nll_bits(logits, window[:, model.lookback:])) * n
            count += n
    model.train()
    return total / count if count else None


def train(dataset: str | os.PathLike, out: str | os.PathLike, model_config: ModelConfig | None = None,
          config: TrainConfig | None = None, *, resume: bool = False, device: str | None = None,
          progress: bool = True) -> TrainResult:
    """Train a SampleRNN on a dataset folder into a run folder (see module docstring).

    Parameters
    ----------
    dataset : folder written by :func:`samplernn_lab.dataset.prepare`.
    out : run folder. Must be new or empty unless ``resume``.
    model_config, config : sizes and training settings (a preset's ``model`` and ``train``).
        On resume the model config comes from the checkpoint; ``config``'s budgets apply.
    resume : continue from ``out/checkpoints/last.pt``.
    device : ``"cpu"``, ``"cuda"`` or None (CUDA when present).

    Returns
    -------
    TrainResult with how it ended (``"finished"``, ``"budget"`` or ``"interrupted"``).
    """
    dataset, out = Path(dataset), Path(out)
    cfg = config or TrainConfig()
    rank, world = _dist_info()
    owns_group = world > 1 and not dist.is_initialized()
    if owns_group:
        backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
        dist.init_process_group(backend)
    is_main = rank == 0

    # --- device -------------------------------------------------------------------------------
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise LabError("--device cuda: no CUDA device is available")
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)

    # --- settings, resumed or new ---------------------------------------------------------------
    last_path = out / "checkpoints" / "last.pt"
    state = None
    if resume:
        if not last_path.exists():
            raise LabError(f"{out}: nothing to resume (no checkpoints/last.pt)")
        state = ckpt_io.load(last_path)
        saved = state["config"]
        model_config = ModelConfig(**saved["model"])
        budgets = {k: getattr(cfg, k) for k in ("epochs", "max_steps", "max_minutes")}
        cfg = TrainConfig(**{**saved["train"], **budgets})
    else:
        model_config = model_config or ModelConfig()
        if (out / "config.json").exists():
            raise LabError(f"{out}: already holds a run (use --resume to continue it, or another --out)")
    manifest = _check_dataset(dataset, model_config, cfg)
    run_config = {"model": asdict(model_config), "train": asdict(cfg), "data": manifest["settings"],
                  "dataset": str(dataset.resolve()), "sample_rate": manifest["sample_rate"],
                  "quantization": {"method": model_config.quantization, "q_levels": model_config.q_levels}}
    if world > 1:  # every rank has checked the run folder before rank 0 writes into it
        dist.barrier()
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.json", json.dumps(run_config, indent=1) + "\n")

    # --- data, model, optimiser ------------------------------------------------------------------
    q, method = model_config.q_levels, model_config.quantization
    train_codes = load_split(dataset, "train", q, method)
    val_codes = load_split(dataset, "val", q, method)
    torch.manual_seed(cfg.seed)
    model = SampleRNN(model_config).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    epoch, batch_i, window_i, step, seconds_before = 0, 0, 0, 0, 0.0
    best_val, hidden, lr = None, None, cfg.lr
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        pos = state["position"]
        epoch, batch_i, window_i = pos["epoch"], pos["batch"], pos["window"]
        step, seconds_before, best_val = state["step"], state["seconds"], state.get("best_val")
        hidden = _to(state.get("hidden"), dev)
        lr = state["lr"]
        torch.set_rng_state(state["rng"]["torch"])
    for group in optimizer.param_groups:
        group["lr"] = lr
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=True)

    use_amp = cfg.amp and dev.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    silence = silence_code(q)
    metrics = open(out / "metrics.jsonl", "a") if is_main else None
    t0 = time.perf_counter()
    clock = time.process_time if cfg.clock == "process" else time.perf_counter
    c0 = clock()
    last_save = t0
    blowups = 0

    def log(record: dict[str, Any]) -> None:
        if metrics is not None:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - t0

    def save_last(position: tuple[int, int, int], carried) -> None:
        if is_main:
            ckpt_io.save({"config": run_config, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "position": {"epoch": position[0], "batch": position[1], "window": position[2]},
                          "hidden": _detach(_to(carried, "cpu")), "step": step, "epoch": position[0],
                          "seconds": elapsed(), "best_val": best_val, "lr": lr,
                          "rng": {"seed": cfg.seed, "torch": torch.get_rng_state()}}, last_path)

    def stop_reason() -> str | None:
        """Why to stop before the next step; all ranks agree (any rank's reason stops all)."""
        spent = (cfg.max_steps is not None and step >= cfg.max_steps) or (
            cfg.max_minutes is not None and clock() - c0 >= cfg.max_minutes * 60)
        flags = [spent, stopper.requested is not None]
        if world > 1:
            t = torch.tensor(flags, dtype=torch.float32, device=dev if dev.type == "cuda" else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flags = [bool(v) for v in t.tolist()]
        return "interrupted" if flags[1] else "budget" if flags[0] else None

    status = "finished"
    stopper = _Stop()
    n_windows = train_codes.shape[1] // cfg.seq_len
    with stopper.installed():
        while cfg.epochs is None or epoch < cfg.epochs:
            batches = batch_order(train_codes.shape[0], cfg.batch_size, cfg.seed, epoch)
            if world > 1:  # each rank reads its own shard of every batch
                batches = [b[rank::world] for b in batches if len(b) >= world]
            bar = tqdm(total=len(batches) * n_windows, initial=batch_i * n_windows + window_i,
                       desc=f"epoch {epoch + 1}", unit="step", disable=not (progress and is_main))
            running = None
            stop = None
            while batch_i < len(batches):
                chunks = train_codes[batches[batch_i]]
                for wi, window in windows(chunks, cfg.seq_len, model.lookback, silence):
                    if wi < window_i:
                        continue
                    stop = stop_reason()
                    if stop:
                        break
                    window = window.to(dev, non_blocking=True)
                    with torch.autocast("cuda", dtype=amp_dtype) if use_amp else nullcontext():
                        logits, new_hidden = net(window, hidden)
                        loss = nll_bits(logits, window[:, model.lookback:])
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    loss_value = float(loss.detach())
                    if not (math.isfinite(loss_value) and math.isfinite(float(grad_norm))):
                        # A blow-up: skip the step, restart the state; restore after repeated ones.
                        blowups += 1
                        hidden = None
                        optimizer.zero_grad(set_to_none=True)
                        scaler.update()
                        log({"event": "nonfinite", "step": step, "epoch": epoch + 1, "loss": loss_value,
                             "grad_norm": float(grad_norm), "seconds": elapsed()})
                        if blowups >= cfg.blowup_patience:
                            lr *= cfg.blowup_lr_factor
                            message = _restore(model, optimizer, last_path, lr)
                            log({"event": "restored", "step": step, "lr": lr, "message": message})
                            if is_main:
                                tqdm.write(f"{blowups} non-finite steps in a row: {message}")
                            blowups = 0
                        window_i = wi + 1
                        continue
                    blowups = 0
                    scaler.step(optimizer)
                    scaler.update()
                    hidden = _detach(new_hidden)
                    step += 1
                    window_i = wi + 1
                    running = loss_value if running is None else 0.98 * running + 0.02 * loss_value
                    log({"step": step, "epoch": epoch + 1, "split": "train", "nll_bits": loss_value,
                         "seconds": round(elapsed(), 3), "grad_norm": round(float(grad_norm), 4)})
                    bar.update(1)
                    bar.set_postfix(bits=f"{running:.3f}")
                    if time.perf_counter() - last_save > cfg.checkpoint_minutes * 60:
                        save_last((epoch, batch_i, window_i) if window_i < n_windows else (epoch, batch_i + 1, 0),
                                  hidden if window_i < n_windows else None)
                        last_save = time.perf_counter()
                if stop:
                    break
                batch_i, window_i, hidden = batch_i + 1, 0, None
            bar.close()
            if stop:
                save_last((epoch, batch_i, window_i), hidden)
                if is_main and step > 0:
                    _loss_curve(out)
                status = stop
                break
            # --- end of epoch: validate, keep checkpoints, render something to listen to ------
            epoch += 1
            batch_i, window_i, hidden = 0, 0, None
            if is_main:
                val = evaluate(model, val_codes, cfg.seq_len, cfg.batch_size, dev)
                if val is not None:
                    log({"step": step, "epoch": epoch, "split": "val", "nll_bits": val, "seconds": round(elapsed(), 3)})
                weights = {"config": run_config, "model": model.state_dict(), "epoch": epoch, "step": step,
                           "val_bits": val}
                ckpt_io.save(weights, out / "checkpoints" / f"epoch-{epoch:03d}.pt")
                if val is not None and (best_val is None or val < best_val):
                    best_val = val
                    ckpt_io.save(weights, out / "checkpoints" / "best.pt")
                save_last((epoch, 0, 0), None)
                last_save = time.perf_counter()
                _epoch_render(model, out, dataset, epoch, step, cfg, manifest["sample_rate"], dev, log)
                _loss_curve(out)
                tqdm.write(f"epoch {epoch}: step {step}, train {running if running is not None else float('nan'):.3f} "
                           f"bits" + (f", val {val:.3f} bits" if val is not None else ""))
            if world > 1:
                dist.barrier()
    if metrics is not None:
        metrics.close()
    if world > 1:
        dist.barrier()
        # the DDP reducer must go before its process group, or the process can abort at exit
        del net
        gc.collect()
        if owns_group:
            dist.destroy_process_group()
    return TrainResult(out, status, step, epoch, best_val)


def _restore(model: SampleRNN, optimizer, last_path: Path, lr: float) -> str:
    """Reload the last good weights and optimiser state at a lower learning rate."""
    if last_path.exists():
        state = ckpt_io.load(last_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        where = f"restored {last_path.name} (step {state['step']})"
    else:
        where = "no checkpoint yet, kept the current weights"
    for group in optimizer.param_groups:
        group["lr"] = lr
    return f"{where}, learning rate lowered to {lr:.3g}"


def _epoch_render(model: SampleRNN, out: Path, dataset: Path, epoch: int, step: int, cfg: TrainConfig,
                  sample_rate: int, device, log) -> None:
    if cfg.render_seconds <= 0:
        return
    from .analysis import diagnose
    from .audio import load
    from .sampling import render

    from .dataset import excerpts

    folder = out / "renders" / f"epoch-{epoch:03d}"
    prime = excerpts(dataset, cfg.render_prime_seconds, 1, cfg.seed + epoch) if cfg.render_prime_seconds > 0 else None
    paths = render(model, folder, cfg.render_seconds, sample_rate, temperatures=[cfg.render_temperature],
                   seed=cfg.seed + epoch, label=f"epoch-{epoch:03d}", prime=prime,
                   info={"epoch": epoch, "step": step, "prime_seconds": cfg.render_prime_seconds},
                   device=device if device.type == "cuda" else "cpu", progress=False)
    model.train()
    profile = _source_profile(dataset, sample_rate)
    for p in paths:
        d = diagnose(load(p)[0], sample_rate, profile)
        log({"event": "render", "epoch": epoch, "step": step, "path": str(p.relative_to(out)),
             "category": d.category, "sentence": d.sentence,
             "resemblance": round(d.features["resemblance"], 4), "copy_share": round(d.features["copy_share"], 4)})


_PROFILES: dict[tuple[str, int], object] = {}


def _source_profile(dataset: Path, sample_rate: int):
    """The source's resemblance profile, made once per dataset and rate (every epoch's render uses it)."""
    from .dataset import source_audio
    from .resemblance import SourceProfile

    key = (str(dataset.resolve()), sample_rate)
    if key not in _PROFILES:
        _PROFILES.clear()
        _PROFILES[key] = SourceProfile(source_audio(dataset), sample_rate)
    return _PROFILES[key]


def _loss_curve(out: Path) -> None:
    from .figures import loss_curve

    loss_curve(out / "metrics.jsonl", out / "loss.png")
