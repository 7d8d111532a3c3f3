"""Where a training runs: the device, and the ranks of a data-parallel run under torchrun.

``torchrun --nproc_per_node N -m samplernn_lab.cli train ...`` starts N ranks; each trains on its shard of
every batch (NCCL on GPUs, gloo on CPU), and rank 0 alone writes the run folder. Imports nothing of the lab
but :mod:`samplernn_lab.errors` (and the model's type).
"""

from __future__ import annotations

import gc
import os
from typing import Any

import torch
import torch.distributed as dist

from .errors import LabError
from .model import SampleRNN


def pick_device(device: str | None) -> torch.device:
    """``cpu``, ``cuda`` (this rank's GPU under torchrun) or None: CUDA when present."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cuda":
        return torch.device(device)
    if not torch.cuda.is_available():
        raise LabError("--device cuda: no CUDA device is available")
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(dev)
    return dev


def setup_distributed(device: str | None) -> tuple[int, int, bool]:
    """``(rank, world size, whether this call started the process group)``: from torchrun's variables,
    NCCL on GPUs and gloo on CPU; ``(0, 1, False)`` when not distributed."""
    if not (dist.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1):
        return 0, 1, False
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if torch.cuda.is_available() and device != "cpu" else "gloo")
    return rank, world, owns


def wrap_distributed(model: SampleRNN, dev: torch.device, world: int) -> torch.nn.Module:
    """The model, or with several ranks its DistributedDataParallel wrapper (weights synced from rank 0)."""
    if world == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=True
    )


def teardown_distributed(state: Any, world: int, owns_group: bool, clean: bool) -> None:
    """Wait for all ranks (after a clean end), free the DDP reducer (``state.net``, a training's state), then
    the process group if ours.

    The reducer must go before its process group, or the process can abort at exit.
    """
    if world == 1:
        return
    if clean:
        dist.barrier()
    if state is not None:
        state.net = None
    gc.collect()
    if owns_group:
        dist.destroy_process_group()


def any_rank(flags: list[bool], device: torch.device, world: int) -> list[bool]:
    """Each flag, true where it is true on any rank (all ranks get the same answer)."""
    if world == 1:
        return flags
    on = device if device.type == "cuda" else "cpu"
    t = torch.tensor(flags, dtype=torch.float32, device=on)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def barrier(world: int) -> None:
    """Wait for every rank (nothing to wait for on one)."""
    if world > 1:
        dist.barrier()
