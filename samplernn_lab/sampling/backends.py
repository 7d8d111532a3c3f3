"""Backends: where the sample-level loop of a bottom frame runs, behind one small interface.

A backend holds what its kernel needs (weights in its layout, sampling noise, temperatures, the nucleus
mass ``top_p``) and offers:

* ``draw()``: noise for the next top-tier frame, called at its start (outside a captured CUDA graph);
* ``set_temperatures(temps)``: the temperature of each sample (B, lookback) of the next top-tier frame,
  called before ``draw()`` when they vary (a temperature curve); otherwise each stream keeps its own;
* ``frame(cond, window, pos, forced)``: sample one bottom frame into ``window`` in place;
* ``static_tensors()``: the tensors ``frame`` reads that a CUDA graph must replay on;
* ``torch_threads``: torch threads to run with (None: leave as is), ``graphable``: CUDA graphs apply.

:func:`choose_backend` picks one from the device, the batch and the model's width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import LabError
from .folding import PACK_MIN_WORK, Folded
from .kernels import mlp_frame_numba, mlp_frame_torch, numba


@dataclass(frozen=True)
class Tuning:
    """Speed settings of the sampler; none changes the distribution sampled from.

    Parameters
    ----------
    pack_min_work : rows x weights from which a CPU dense layer runs on oneDNN with packed weights.
    numba_max_batch : the numba kernel runs below this many streams ...
    numba_max_dim : ... for models up to this width (it runs torch with one thread, which slows wide frame
        tiers); otherwise torch ops do. Measured on the CI kind of machine (benchmarks/RESULTS.md).
    """

    pack_min_work: int = PACK_MIN_WORK
    numba_max_batch: int = 16
    numba_max_dim: int = 512


def choose_backend(
    device: torch.device, batch_size: int, dim: int, backend: str | None = None, tuning: Tuning = Tuning()
) -> str:
    """``"numba"`` or ``"torch"``: ``backend`` checked, or the default for this device, batch and width."""
    if backend is None:
        small = batch_size < tuning.numba_max_batch and dim <= tuning.numba_max_dim
        backend = "numba" if device.type == "cpu" and numba is not None and small else "torch"
    if backend not in BACKENDS:
        raise LabError(f"unknown sampling backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend == "numba" and (device.type != "cpu" or numba is None):
        raise LabError("the numba backend runs on CPU only (and needs numba installed)")
    return backend


class NumbaBackend:
    """The per-sample loop of a frame in one compiled numba call (CPU); noise from numpy, per frame."""

    name = "numba"
    # one torch thread: two made a quiet 2-core CPU 1.1-1.5x faster but doubled the CPU time (the second spins
    # between ops), and with another training on the cores rendered 3-9x slower (benchmarks/RESULTS.md)
    torch_threads = 1
    graphable = False

    def __init__(
        self, f: Folded, batch_size: int, temps: torch.Tensor, seed: int, device: torch.device, top_p: float = 1.0
    ):
        dim = f.lut.shape[2]
        self.top_p = float(top_p)
        self.lut = f.lut.numpy()
        self.hid_w = np.ascontiguousarray(
            np.stack([d.w.T.numpy() for d in f.hidden]) if f.hidden else np.zeros((0, dim, dim), np.float32)
        )
        self.hid_b = np.ascontiguousarray(
            np.stack([d.b.numpy() for d in f.hidden]) if f.hidden else np.zeros((0, dim), np.float32)
        )
        self.out_w = np.ascontiguousarray(f.out.w.T.numpy())
        self.out_b = f.out.b.numpy()
        # the temperature of each sample of a top-tier frame: (B, lookback)
        self.temps = np.empty((batch_size, f.lookback), np.float32)
        self.temps[:] = temps.reshape(len(temps), -1)[:, :1].numpy()
        self.free = np.full((batch_size, f.frame_size), -1, np.int64)
        self.rng = np.random.default_rng(seed)

    def static_tensors(self) -> list[torch.Tensor]:
        return []

    def draw(self) -> None:
        pass  # uniforms are drawn per frame

    def set_temperatures(self, temps: torch.Tensor) -> None:
        self.temps[:] = temps.numpy()

    def frame(self, cond: torch.Tensor, window: torch.Tensor, pos: int, forced: torch.Tensor | None) -> None:
        b, fs = self.free.shape
        uniforms = self.rng.random((b, fs))
        win = window.numpy()  # shares memory with the sampler's history
        win_c = np.ascontiguousarray(win)
        mlp_frame_numba(
            self.lut,
            np.ascontiguousarray(cond.numpy()),
            self.hid_w,
            self.hid_b,
            self.out_w,
            self.out_b,
            win_c,
            self.temps,
            pos,
            uniforms,
            self.free if forced is None else forced.numpy(),
            self.top_p,
        )
        win[:] = win_c


class TorchBackend:
    """The per-sample loop as torch ops on any device; uniforms drawn per top-tier frame into a static tensor."""

    name = "torch"
    torch_threads = None
    graphable = True

    def __init__(
        self, f: Folded, batch_size: int, temps: torch.Tensor, seed: int, device: torch.device, top_p: float = 1.0
    ):
        self.f = f
        self.top_p = float(top_p)
        # temps (B,) or (B, N) per sample (a curve): greedy steps are possible if any is 0. Both tensors below
        # hold a top-tier frame, (B, lookback), static for a captured CUDA graph.
        temps = temps.reshape(len(temps), -1)  # (B or 1, N)
        self.greedy = (
            torch.zeros(batch_size, f.lookback, dtype=torch.bool, device=device) if bool((temps <= 0).any()) else None
        )
        self.inv_t = torch.ones(batch_size, f.lookback, device=device)
        self.set_temperatures(temps[:, :1].expand(batch_size, f.lookback))
        self.rng = torch.Generator(device=device).manual_seed(int(seed))
        self.uniforms = torch.zeros(batch_size, f.lookback, device=device)  # one per sample of a top-tier frame

    def static_tensors(self) -> list[torch.Tensor]:
        # inv_t and greedy are only read by the steps, and set in place outside a graph (set_temperatures)
        return [self.uniforms]

    def set_temperatures(self, temps: torch.Tensor) -> None:
        temps = temps.to(self.inv_t.device)
        greedy = temps <= 0
        self.inv_t.copy_(torch.where(greedy, 1.0, 1.0 / temps.clamp_min(1e-30)))
        if self.greedy is not None:
            self.greedy.copy_(greedy)

    def draw(self) -> None:
        self.uniforms.uniform_(0.0, 1.0, generator=self.rng)

    def frame(self, cond: torch.Tensor, window: torch.Tensor, pos: int, forced: torch.Tensor | None) -> None:
        fs = self.f.frame_size
        forced = None if forced is None else forced.to(window.device)
        mlp_frame_torch(
            self.f,
            cond,
            window,
            self.inv_t[:, pos : pos + fs],
            None if self.greedy is None else self.greedy[:, pos : pos + fs],
            self.uniforms[:, pos : pos + fs],
            forced,
            self.top_p,
        )


BACKENDS = {"numba": NumbaBackend, "torch": TorchBackend}
