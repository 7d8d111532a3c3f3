"""Fast generation: the same distribution as the model, without the per-sample overhead.

What makes it fast (see benchmarks/RESULTS.md for where the time goes):

* weight normalisation is folded into plain weights once;
* the embedding times the MLP's first layer is a lookup table per frame position
  (``lut[j, code]`` is a ``dim`` vector), so the first layer is ``frame_size`` row additions
  instead of a (frame_size x embed_size) x dim product per sample;
* each frame tier is stepped only at its frame boundaries, with GRU cells on folded weights;
* the per-sample loop of a bottom frame runs in one compiled call on CPU (a numba kernel), or as
  torch ops on the device; both sample by inverse CDF from uniforms drawn in bulk, one per sample.
  No per-sample traffic between host and device.

Generation starts from the same state as :meth:`SampleRNN.log_probs` (h0, a lookback of silence
codes). A prime is teacher-forced: its codes go through the frame tiers exactly as if sampled.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import audio as audio_io
from .errors import LabError
from .files import atomic_path, write_text
from .model import SampleRNN, rescale_codes

try:  # numba comes with librosa; without it the CPU falls back to the torch path
    import numba
except ImportError:  # pragma: no cover
    numba = None


# ---------------------------------------------------------------------------------------------
# Folding the model into plain tensors

# CPU layers run on oneDNN with pre-packed weights (see _Dense) once rows x weights reaches this: below
# it the call costs more than it saves. Measured on the CI kind of machine (benchmarks/RESULTS.md).
PACK_MIN_WORK = 2 ** 20
# The numba kernel runs the per-sample loop below this many streams, for models up to this width (it
# runs torch with one thread, which slows wide frame tiers); otherwise torch ops do. Measured likewise.
NUMBA_MAX_BATCH = 16
NUMBA_MAX_DIM = 512


def _pack(w: torch.Tensor, rows: int) -> torch.Tensor | None:
    """``w`` (out, in) reordered for oneDNN's matmul at ``rows`` rows, or None where that is unavailable."""
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
        probe = torch.randn(2, w.shape[1], generator=torch.Generator().manual_seed(0))
        y = torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], "")
        ok = torch.allclose(y, F.linear(probe, w), rtol=1e-4, atol=1e-4 * float(w.abs().max()) * w.shape[1])
    except (RuntimeError, AttributeError, NotImplementedError):  # no oneDNN here, or the op changed
        return None
    return packed if ok else None


class _Dense:
    """``x @ w.T + b``, then ReLU if asked, on folded float32 weights ``w`` (out, in).

    On CPU, for ``rows`` inputs at a time with ``rows * w.numel() >= PACK_MIN_WORK``, the weights are
    packed once for oneDNN, which uses AVX-512 where the CPU has it (MKL, behind ``F.linear``, stays on
    AVX2 on AMD CPUs): 2-3x faster at batch 128. Same float32 arithmetic, summed in another order,
    so the distribution sampled from is the model's.
    """

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None, rows: int | None = None):
        self.w, self.b = w, b
        pack = rows is not None and w.device.type == "cpu" and rows * w.numel() >= PACK_MIN_WORK
        self.packed = _pack(w, rows) if pack else None

    def __call__(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.b, "relu" if relu else "none", [], "")
        y = F.linear(x, self.w, self.b)
        return torch.relu_(y) if relu else y


@dataclass
class _Tier:
    frame_len: int
    frame_size: int
    inp: _Dense  # frame_len -> dim
    ih: list  # per layer: _Dense, input -> gates
    hh: list  # per layer: _Dense, hidden -> gates
    up: _Dense  # dim -> frame_size * dim: row j*dim + o is output o of sub-step j
    h0: torch.Tensor  # (states, layers, 1, dim)
    lstm: bool


@dataclass
class _Folded:
    tiers: list  # top first
    lut: torch.Tensor  # (frame_size, q, dim)
    hidden: list  # _Dense, dim -> dim
    out: _Dense  # dim -> q
    q_levels: int
    lookback: int
    frame_size: int  # bottom frame size: samples per MLP window


@torch.no_grad()
def fold(model: SampleRNN, device: torch.device | str = "cpu", rows: int | None = None) -> _Folded:
    """Plain float32 weights on ``device``; reading ``.weight`` of a weight-normed layer folds it.

    ``rows``: the batch size the layers will see, to pack them for oneDNN where that pays (:class:`_Dense`).
    """
    def t(x: torch.Tensor) -> torch.Tensor:
        return x.detach().float().to(device).contiguous()

    def dense(w: torch.Tensor, b: torch.Tensor | None) -> _Dense:
        return _Dense(t(w), None if b is None else t(b), rows)

    tiers = []
    for tier in model.tiers:
        rnn = tier.rnn
        layers = range(rnn.num_layers)
        w = tier.upsample.weight  # (in, out, frame_size)
        fs = tier.frame_size
        up = dense(w.permute(2, 1, 0).reshape(fs * w.shape[1], w.shape[0]), tier.upsample.bias.repeat(fs))
        tiers.append(_Tier(tier.frame_len, fs, _Dense(t(tier.expand.weight), t(tier.expand.bias)),
                           [dense(getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"bias_ih_l{k}")) for k in layers],
                           [dense(getattr(rnn, f"weight_hh_l{k}"), getattr(rnn, f"bias_hh_l{k}")) for k in layers],
                           up, t(tier.h0), tier.is_lstm))
    mlp = model.mlp
    w_in = mlp.input.weight  # (dim, embed, frame_size)
    lut = torch.einsum("qe,dej->jqd", mlp.embedding.weight, w_in)
    return _Folded(tiers, t(lut), [dense(l.weight, l.bias) for l in mlp.hidden], dense(mlp.output.weight,
                   mlp.output.bias), model.config.q_levels, model.lookback, mlp.frame_size)


def _tier_step(tier: _Tier, frame: torch.Tensor, cond: torch.Tensor | None, state: list, q: int):
    """One step of a frame tier: frame codes (B, frame_len) -> conditioning (B, frame_size, dim).

    The GRU and LSTM cells are written out (as ``torch.gru_cell``/``lstm_cell`` compute them) so
    that their matmuls go through :class:`_Dense`. ``state`` (per layer: h, or (h, c)) is updated in
    place, so a captured CUDA graph replays on the same memory.
    """
    x = tier.inp(rescale_codes(frame, q))
    if cond is not None:
        x = x + cond
    for k, (ih, hh) in enumerate(zip(tier.ih, tier.hh)):
        if tier.lstm:
            h, c = state[k]
            i, f, g, o = (ih(x) + hh(h)).chunk(4, 1)
            c.copy_(torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g))
            h.copy_(torch.sigmoid(o) * torch.tanh(c))
        else:
            h = state[k]
            xr, xz, xn = ih(x).chunk(3, 1)
            hr, hz, hn = hh(h).chunk(3, 1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h.copy_(n + z * (h - n))  # (1 - z) * n + z * h
        x = h
    return tier.up(x).view(x.shape[0], tier.frame_size, -1)


# ---------------------------------------------------------------------------------------------
# The sample-level loop of one bottom frame


if numba is not None:
    @numba.njit(cache=True, nogil=True)
    def _dense_numba(x, w, b, y):  # pragma: no cover
        # y = x @ w + b; x (B, n_in), w (n_in, n_out), y (B, n_out). BLAS gemm repacks all of w on every
        # call, 4x the cost of the product at 2-4 rows: below 8 rows it is written out, reading each row of
        # w once for all streams and skipping the zeros the previous ReLU left (about half).
        b_size, n_out = y.shape
        if b_size >= 8:
            y[:] = x @ w
            for r in range(b_size):
                for d in range(n_out):
                    y[r, d] += b[d]
            return
        for r in range(b_size):
            for d in range(n_out):
                y[r, d] = b[d]
        for k in range(x.shape[1]):
            for r in range(b_size):
                v = x[r, k]
                if v != 0.0:
                    for d in range(n_out):
                        y[r, d] += v * w[k, d]

    @numba.njit(cache=True, nogil=True)
    def _mlp_frame_numba(lut, cond, hid_w, hid_b, out_w, out_b, window, temps, uniforms, forced):  # pragma: no cover
        # lut (fs, q, dim); cond (B, fs, dim); hid_w (L, dim, dim) transposed to (in, out); hid_b (L, dim)
        # out_w (dim, q) transposed; window (B, 2 fs) int64: fs previous codes, then the fs to fill;
        # temps (B,); uniforms (B, fs) float64; forced (B, fs) int64, -1 where a code is sampled.
        fs, q, dim = lut.shape
        b_size = cond.shape[0]
        n_hidden = hid_w.shape[0]
        x = np.empty((b_size, dim), np.float32)
        y = np.empty((b_size, dim), np.float32)
        logits = np.empty((b_size, q), np.float32)
        zero = np.zeros(q, np.float32)
        weights = np.empty(q, np.float64)
        for j in range(fs):
            any_sampled = False
            for b in range(b_size):
                if forced[b, j] < 0:
                    any_sampled = True
            if not any_sampled:
                for b in range(b_size):
                    window[b, fs + j] = forced[b, j]
                continue
            for b in range(b_size):
                for d in range(dim):
                    x[b, d] = cond[b, j, d]
                for k in range(fs):
                    c = window[b, j + k]
                    for d in range(dim):
                        x[b, d] += lut[k, c, d]
                for d in range(dim):
                    if x[b, d] < 0.0:
                        x[b, d] = 0.0
            for layer in range(n_hidden):
                _dense_numba(x, hid_w[layer], hid_b[layer], y)
                for b in range(b_size):
                    for d in range(dim):
                        x[b, d] = y[b, d] if y[b, d] > 0.0 else 0.0
            _dense_numba(x, out_w, zero, logits)  # the bias is added below
            for b in range(b_size):
                if forced[b, j] >= 0:
                    window[b, fs + j] = forced[b, j]
                    continue
                best = 0
                top = logits[b, 0] + out_b[0]
                for i in range(1, q):
                    v = logits[b, i] + out_b[i]
                    if v > top:
                        top = v
                        best = i
                t = temps[b]
                if t > 0.0:  # inverse CDF of softmax(logits / t) at one uniform
                    total = 0.0
                    for i in range(q):
                        e = math.exp((float(logits[b, i] + out_b[i]) - float(top)) / t)
                        weights[i] = e
                        total += e
                    target = uniforms[b, j] * total
                    acc = 0.0
                    best = q - 1
                    for i in range(q):
                        acc += weights[i]
                        if acc > target:
                            best = i
                            break
                window[b, fs + j] = best


def _mlp_frame_torch(f: _Folded, cond: torch.Tensor, window: torch.Tensor, inv_t: torch.Tensor,
                     greedy: torch.Tensor | None, uniforms: torch.Tensor, forced: torch.Tensor | None) -> None:
    """The torch twin of the numba kernel, for any device: inverse-CDF sampling on bulk uniforms.

    cond (B, fs, dim); window (B, 2 fs) long, filled in place; inv_t (B, 1) = 1 / temperature (1 where
    greedy); greedy (B,) bool or None when no stream is; uniforms (B, fs); forced (B, fs) or None.
    """
    fs, q, dim = f.lut.shape
    offsets = torch.arange(fs, device=window.device) * q
    lut = f.lut.view(fs * q, dim)
    for j in range(fs):
        # the first layer is a sum of lookup-table rows: one fused gather-and-add
        x = F.embedding_bag(window[:, j:j + fs] + offsets, lut, mode="sum").add_(cond[:, j]).relu_()
        for layer in f.hidden:
            x = layer(x, relu=True)
        logits = f.out(x).mul_(inv_t)
        cdf = torch.softmax(logits, dim=1).cumsum_(1)
        code = torch.searchsorted(cdf, uniforms[:, j:j + 1] * cdf[:, -1:]).squeeze(1).clamp_(max=q - 1)
        if greedy is not None:
            code = torch.where(greedy, logits.argmax(dim=1), code)
        if forced is not None:
            code = torch.where(forced[:, j] >= 0, forced[:, j], code)
        window[:, fs + j] = code


# ---------------------------------------------------------------------------------------------
# The generator


class Sampler:
    """Streams of codes from a model, a bottom frame at a time.

    All state (code history, recurrent states, conditioning, noise) lives in tensors allocated
    once and updated in place: on CUDA, one top-tier frame of steps (every tier's steps and the
    sample-level loop of ``lookback`` samples) is captured as a CUDA graph and replayed.

    Parameters
    ----------
    model : a trained :class:`SampleRNN` (left untouched).
    batch_size : number of streams.
    temperature : a float or one per stream; 0 = greedy (argmax).
    seed : seeds the sampling noise; ``None`` draws one.
    device : where to run; default the model's device.
    backend : ``"numba"`` (CPU only) or ``"torch"``; default numba on CPU for small batches of narrow
        models (``NUMBA_MAX_BATCH``, ``NUMBA_MAX_DIM``), else torch.
    cuda_graph : replay captured CUDA graphs (CUDA and the torch backend only); default on.
    """

    def __init__(self, model: SampleRNN, batch_size: int = 1, temperature: float | Sequence[float] = 1.0,
                 seed: int | None = None, device: torch.device | str | None = None, backend: str | None = None,
                 cuda_graph: bool = True):
        if batch_size < 1:
            raise LabError(f"batch size must be at least 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if backend is None:
            small = batch_size < NUMBA_MAX_BATCH and model.config.dim <= NUMBA_MAX_DIM
            backend = "numba" if self.device.type == "cpu" and numba is not None and small else "torch"
        if backend == "numba" and (self.device.type != "cpu" or numba is None):
            raise LabError("the numba backend runs on CPU only (and needs numba installed)")
        self.backend = backend
        self.f = fold(model, self.device, rows=batch_size)
        self.b = batch_size
        temps = torch.as_tensor(temperature, dtype=torch.float32).flatten()
        if temps.numel() == 1:
            temps = temps.expand(batch_size)
        if temps.numel() != batch_size:
            raise LabError(f"{temps.numel()} temperatures for {batch_size} streams")
        if bool((temps < 0).any()) or not bool(torch.isfinite(temps).all()):
            raise LabError(f"temperatures must be finite and >= 0, got {temps.tolist()}")
        greedy = temps <= 0
        self.greedy = greedy.to(self.device) if bool(greedy.any()) else None
        self.inv_t = torch.where(greedy, 1.0, 1.0 / temps.clamp_min(1e-30)).unsqueeze(1).to(self.device)
        self.temps_np = temps.numpy().astype(np.float32)
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        self.np_rng = np.random.default_rng(seed)
        self.torch_rng = torch.Generator(device=self.device).manual_seed(int(seed))

        f = self.f
        lb, fs, dev = f.lookback, f.frame_size, self.device
        self.t = 0  # samples produced so far (prime included)
        self._pending = None  # sampled codes of a prime's last, partly forced frame
        silence = audio_io.silence_code(f.q_levels)
        # history: the last `lookback` codes, then room for one bottom frame
        self.hist = torch.full((batch_size, lb + fs), silence, dtype=torch.long, device=dev)
        self.state = []
        self.cond = []
        for tier in f.tiers:
            h0 = tier.h0.expand(-1, -1, batch_size, -1)
            self.state.append([(h0[0, k].clone(), h0[1, k].clone()) if tier.lstm else h0[0, k].clone()
                               for k in range(h0.shape[1])])
            self.cond.append(torch.zeros(batch_size, tier.frame_size, h0.shape[-1], device=dev))
        self.uniforms = torch.zeros(batch_size, lb, device=dev)  # one per sample of a top-tier frame
        self.codes = torch.zeros(batch_size, lb, dtype=torch.long, device=dev)  # the codes of that frame
        self.graph = None
        self.use_graph = cuda_graph and dev.type == "cuda" and backend == "torch"
        if backend == "numba":
            self.lut = f.lut.numpy()
            dim = f.lut.shape[2]
            self.hid_w = np.ascontiguousarray(
                np.stack([d.w.T.numpy() for d in f.hidden]) if f.hidden else np.zeros((0, dim, dim), np.float32))
            self.hid_b = np.ascontiguousarray(
                np.stack([d.b.numpy() for d in f.hidden]) if f.hidden else np.zeros((0, dim), np.float32))
            self.out_w = np.ascontiguousarray(f.out.w.T.numpy())
            self.out_b = f.out.b.numpy()
            self.hist_np = self.hist.numpy()  # shares memory with self.hist
            self.free_np = np.full((batch_size, fs), -1, np.int64)

    def static_tensors(self) -> list[torch.Tensor]:
        """Every tensor the steps read and write: a captured graph replays on exactly these."""
        states = [x for tier in self.state for layer in tier for x in (layer if isinstance(layer, tuple) else (layer,))]
        return [self.hist, *states, *self.cond, self.uniforms, self.codes]

    def _draw(self) -> None:
        """Noise for the next top-tier frame, drawn at its start (eager and graph paths alike)."""
        if self.backend == "torch":
            self.uniforms.uniform_(0.0, 1.0, generator=self.torch_rng)

    @torch.no_grad()
    def _step(self, forced: torch.Tensor | None = None) -> None:
        """Advance one bottom frame in place; ``forced`` (B, fs): codes taken as given (-1 = sample).

        The frame's codes land in ``self.codes`` at the frame's place in the top-tier frame.
        """
        f = self.f
        fs, lb = f.frame_size, f.lookback
        cond = None
        for i, tier in enumerate(f.tiers):
            n = tier.frame_len
            if self.t % n == 0:
                frame = self.hist[:, lb - n:lb]
                self.cond[i].copy_(_tier_step(tier, frame, cond, self.state[i], f.q_levels))
            # the conditioning vector for the current step of the tier below
            sub = (self.t % n) // (n // tier.frame_size)
            cond = self.cond[i][:, sub]
        bottom = self.cond[-1]  # (B, fs, dim): one conditioning vector per sample of this frame
        pos = self.t % lb
        if self.backend == "numba":
            uniforms = self.np_rng.random((self.b, fs))
            win = self.hist_np[:, lb - fs:]
            win_c = np.ascontiguousarray(win)
            _mlp_frame_numba(self.lut, np.ascontiguousarray(bottom.numpy()), self.hid_w, self.hid_b, self.out_w,
                             self.out_b, win_c, self.temps_np, uniforms,
                             self.free_np if forced is None else forced.numpy())
            win[:] = win_c
        else:
            _mlp_frame_torch(f, bottom, self.hist[:, lb - fs:], self.inv_t, self.greedy,
                             self.uniforms[:, pos:pos + fs], None if forced is None else forced.to(self.device))
        self.codes[:, pos:pos + fs] = self.hist[:, lb:]
        self.hist[:, :lb] = self.hist[:, fs:fs + lb].clone()
        self.t += fs

    def _frame(self, forced: torch.Tensor | None = None) -> torch.Tensor:
        """One bottom frame, eagerly: its codes (B, fs) on the device."""
        fs, lb = self.f.frame_size, self.f.lookback
        if self.t % lb == 0:
            self._draw()
        pos = self.t % lb
        self._step(forced)
        return self.codes[:, pos:pos + fs].clone()

    def _top_frame(self) -> None:
        """The steps of one top-tier frame (``lookback`` samples) from a frame boundary: what is captured."""
        for _ in range(self.f.lookback // self.f.frame_size):
            self._step()

    def _restore(self, saved: list[torch.Tensor], t: int) -> None:
        for x, v in zip(self.static_tensors(), saved):
            x.copy_(v)
        self.t = t

    def _capture(self) -> None:
        """Record :meth:`_top_frame` as a CUDA graph, and check that a replay does what running the steps
        does, from the same state. The state is left as it was before, even on failure."""
        static = self.static_tensors()
        saved, t = [x.clone() for x in static], self.t
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm up outside the capture (lazy kernel and cuBLAS set-up)
                self._top_frame()
            torch.cuda.current_stream(self.device).wait_stream(side)
            eager = [x.clone() for x in static]
            self._restore(saved, t)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._top_frame()
            self._restore(saved, t)
            graph.replay()
            if not all(torch.allclose(x, e) for x, e in zip(static, eager)):
                raise RuntimeError("a replay of the captured steps differs from running them")
            self.graph = graph
        finally:
            self._restore(saved, t)

    def _graph_frame(self) -> torch.Tensor | None:
        """One top-tier frame by graph replay, or None where the graph path does not apply here."""
        if not self.use_graph or self.t % self.f.lookback:
            return None
        if self.graph is None:
            try:
                self._capture()
            except RuntimeError as err:  # never lose a render to it: go on eagerly
                warnings.warn(f"CUDA graph capture failed ({err}); sampling without graphs")
                self.use_graph = False
                return None
        self._draw()
        self.graph.replay()
        self.t += self.f.lookback
        return self.codes.clone()

    def prime(self, codes: torch.Tensor) -> None:
        """Teacher-force codes (P,) or (B, P) through the model, as if they had been sampled.

        A prime whose length is not a multiple of the bottom frame size leaves the rest of its last
        frame to sampling: :meth:`run` then returns those samples first.
        """
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.dim() == 1:
            codes = codes.unsqueeze(0).expand(self.b, -1)
        fs = self.f.frame_size
        self._pending = None
        for s in range(0, codes.shape[1], fs):
            part = codes[:, s:s + fs]
            forced = torch.full((self.b, fs), -1, dtype=torch.long)
            forced[:, :part.shape[1]] = part
            out = self._frame(forced)
            if part.shape[1] < fs:
                self._pending = out[:, part.shape[1]:]

    def run(self, n_samples: int, block: int = 16384, progress: bool = False,
            sample_rate: int | None = None) -> Iterator[torch.Tensor]:
        """Yield blocks of codes, (B, <= block) ``torch.long`` on CPU, ``n_samples`` in all."""
        if n_samples < 0:
            raise LabError(f"cannot generate a negative number of samples ({n_samples})")
        bar = tqdm(total=n_samples, unit="sample", unit_scale=True, desc="generate", disable=not progress)
        # torch's OpenMP threads spin between ops and starve the BLAS threads of the numba kernel
        threads = torch.get_num_threads()
        if self.backend == "numba":
            torch.set_num_threads(1)
        start = time.perf_counter()
        pending, self._pending = self._pending, None
        parts, have, done = [], 0, 0
        if pending is not None:
            parts.append(pending)
            have = pending.shape[1]
        try:
            while done < n_samples:
                while have < min(block, n_samples - done):
                    out = self._graph_frame()
                    if out is None:
                        out = self._frame()  # stays on the device until the block is complete
                    parts.append(out)
                    have += out.shape[1]
                buf = torch.cat([p.to(self.device) for p in parts], dim=1)
                k = min(block, n_samples - done)
                yield buf[:, :k].cpu()
                parts, have = [buf[:, k:]], buf.shape[1] - k
                done += k
                bar.update(k)
                if sample_rate:
                    rate = done * self.b / max(time.perf_counter() - start, 1e-9)
                    bar.set_postfix(samples_per_s=f"{rate:,.0f}", realtime=f"{rate / sample_rate:.2f}x")
        finally:
            bar.close()
            torch.set_num_threads(threads)


def generate(model: SampleRNN, n_samples: int, batch_size: int = 1, temperature: float | Sequence[float] = 1.0,
             seed: int | None = None, prime: np.ndarray | torch.Tensor | None = None,
             device: torch.device | str | None = None, progress: bool = False) -> torch.Tensor:
    """Sample ``n_samples`` codes per stream.

    Parameters
    ----------
    model : a :class:`SampleRNN`.
    n_samples : samples per stream (after the prime), >= 0.
    batch_size : number of streams.
    temperature : float, or one per stream; 0 = greedy (argmax).
    seed : the same seed gives the same codes (on the same device and backend).
    prime : audio to continue from: float samples in [-1, 1] at the model's rate, shape (P,),
        or codes (``torch.long``) of shape (P,) or (batch_size, P). Teacher-forced first.
    device : default the model's device.
    progress : show a progress bar.

    Returns
    -------
    torch.LongTensor (batch_size, n_samples) on CPU, codes in [0, q_levels).
    """
    sampler = Sampler(model, batch_size, temperature, seed, device)
    if prime is not None:
        sampler.prime(prime_codes(model, prime))
    blocks = list(sampler.run(n_samples, progress=progress))
    if not blocks:
        return torch.zeros(batch_size, 0, dtype=torch.long)
    return torch.cat(blocks, dim=1)


def prime_codes(model: SampleRNN, prime: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Audio (float) or codes (long) -> codes for :meth:`Sampler.prime`."""
    if isinstance(prime, torch.Tensor) and not torch.is_floating_point(prime):
        codes = prime.long()
    else:
        codes = audio_io.quantize(prime, model.config.q_levels, model.config.quantization)
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= model.config.q_levels):
        raise LabError(f"prime codes outside [0, {model.config.q_levels})")
    return codes


# ---------------------------------------------------------------------------------------------
# Renders on disk


def render(model: SampleRNN, out_dir: str | os.PathLike, seconds: float, sample_rate: int, *,
           batch_size: int = 1, temperatures: Sequence[float] = (1.0,), seed: int = 0,
           prime: np.ndarray | None = None, label: str = "render", info: dict | None = None,
           device: torch.device | str | None = None, block_seconds: float = 2.0,
           progress: bool = True) -> list[Path]:
    """Render ``batch_size`` streams per temperature to WAV files, streamed to disk in blocks.

    Files are named ``{label}_t{temperature}_s{seed}_{stream}.wav`` with a ``.json`` sidecar of the
    settings. Codes are dequantised exactly (bin centres): no normalisation, no DC shift.
    Returns the WAV paths.
    """
    import soundfile as sf

    if seconds < 0:
        raise LabError(f"--seconds must not be negative, got {seconds}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    temps = [float(t) for t in temperatures]
    per_stream = [t for t in temps for _ in range(batch_size)]
    cfg = model.config
    n = int(round(seconds * sample_rate))
    paths = [out_dir / f"{label}_t{t:g}_s{seed}_{i % batch_size}.wav" for i, t in enumerate(per_stream)]
    sampler = Sampler(model, len(per_stream), per_stream, seed, device)
    if prime is not None:
        sampler.prime(prime_codes(model, prime))
    start = time.perf_counter()
    # Each WAV is written under a temporary name and renamed when complete (files are closed first).
    with ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(p)) for p in paths]
        files = [stack.enter_context(sf.SoundFile(t, "w", samplerate=sample_rate, channels=1, subtype="PCM_16",
                                                  format="WAV")) for t in tmps]
        for block in sampler.run(n, block=max(1, int(block_seconds * sample_rate)), progress=progress,
                                 sample_rate=sample_rate):
            audio = audio_io.dequantize(block, cfg.q_levels, cfg.quantization).numpy()
            for fh, row in zip(files, audio):
                fh.write(row)
    elapsed = time.perf_counter() - start
    for path, t in zip(paths, per_stream):
        side = {"file": path.name, "label": label, "temperature": t, "seed": seed, "seconds": seconds,
                "sample_rate": sample_rate, "streams_in_batch": len(per_stream), "prime": prime is not None,
                "q_levels": cfg.q_levels, "quantization": cfg.quantization,
                "samples_per_second": n * len(per_stream) / max(elapsed, 1e-9),
                "realtime_factor": n * len(per_stream) / max(elapsed, 1e-9) / sample_rate, **(info or {})}
        write_text(path.with_suffix(".json"), json.dumps(side, indent=1, default=str) + "\n")
    return paths


def render_checkpoint(run: str | os.PathLike, out_dir: str | os.PathLike, seconds: float, which: str = "best", *,
                      batch_size: int = 1, temperatures: Sequence[float] = (1.0,), seed: int = 0,
                      prime: str | os.PathLike | None = None, prime_seconds: float = 0.0,
                      device: str | None = None, progress: bool = True) -> list[Path]:
    """Render from a run folder's checkpoint (``best``, ``last``, ``auto``, ``epoch-NNN`` or a path).

    A prime file must be at the run's sample rate (it is not resampled silently). Without one,
    ``prime_seconds > 0`` primes each stream with that much of the run's training audio (a different
    chunk per stream), so renders continue the source instead of starting from digital silence.
    """
    from .checkpoint import load_model

    model, info = load_model(run, which)
    sr = int(info["config"]["sample_rate"])
    prime_audio = None
    if prime is not None:
        import soundfile as sf

        try:
            prime_sr = sf.info(str(prime)).samplerate
        except Exception:
            prime_sr = None
        if prime_sr is not None and prime_sr != sr:
            raise LabError(f"{prime}: sampled at {prime_sr} Hz, but the model was trained at {sr} Hz "
                           f"(resample it first)")
        prime_audio, _ = audio_io.load(prime, sr)
    elif prime_seconds > 0:
        from .dataset import excerpts

        dataset = Path(info["config"]["dataset"])
        if not dataset.exists():  # the run folder was moved: the lab chain keeps its dataset inside
            dataset = Path(run) / "dataset"
        prime_audio = excerpts(dataset, prime_seconds, batch_size * len(temperatures), seed)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    label = Path(info["path"]).stem
    meta = {"checkpoint": info["path"], "epoch": info.get("epoch"), "step": info.get("step"),
            "prime_file": str(prime) if prime else None,
            "prime_seconds": prime_audio.shape[-1] / sr if prime_audio is not None else 0.0}
    return render(model, out_dir, seconds, sr, batch_size=batch_size, temperatures=temperatures, seed=seed,
                  prime=prime_audio, label=label, info=meta, device=device, progress=progress)
