"""The generator: streams of codes from a model, a bottom frame at a time; priming; :func:`generate`.

Each frame tier is stepped only at its frame boundaries (:func:`.folding.tier_step`), the sample-level
loop of a bottom frame runs in a backend (:mod:`.backends`). Generation starts from the same state as
:meth:`SampleRNN.log_probs` (h0, a lookback of silence codes). A prime is teacher-forced: its codes go
through the frame tiers exactly as if sampled.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import audio as audio_io
from ..errors import LabError
from ..model import SampleRNN
from ..precision import check_precision
from .backends import BACKENDS, Tuning, choose_backend
from .folding import fold, tier_step
from .rescue import Watchdog


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
        models (see :class:`Tuning`), else torch. The chosen name is ``self.backend``; the backend
        itself (:mod:`.backends`) is ``self.kernel``.
    cuda_graph : replay captured CUDA graphs (CUDA and the torch backend only); default on.
    tuning : speed settings (:class:`Tuning`); none changes the distribution.
    top_p : nucleus (top-p) truncation: sample only from the most likely codes whose probabilities (after
        the temperature) sum to ``top_p`` or more, renormalised; 1.0 (the default) keeps the whole
        distribution. Both backends honour it; greedy streams ignore it.
    temperature_curve : a temperature per sample instead of ``temperature``: an array (N,) shared by all
        streams or (batch_size, N), sample 0 being the first after the prime; past N the last value holds
        (:class:`.temperature.TemperatureCurve` makes one from breakpoints).
    precision : weights of the frame tiers and the MLP: ``"fp32"`` (default: the model's distribution, and
        the fastest where the CPU lacks AVX-512 BF16/AMX), ``"bf16"`` or ``"int8"`` (per-row scales): fewer
        bytes read per step, a distribution within a stated KL of the float32 one (``tests/test_precision.py``).
        The numba kernel computes its MLP on the weights these stand for, in float32 (same distribution,
        no speed-up there); the frame tiers run in the precision.
    """

    def __init__(
        self,
        model: SampleRNN,
        batch_size: int = 1,
        temperature: float | Sequence[float] = 1.0,
        seed: int | None = None,
        device: torch.device | str | None = None,
        backend: str | None = None,
        cuda_graph: bool = True,
        tuning: Tuning = Tuning(),
        top_p: float = 1.0,
        precision: str = "fp32",
        temperature_curve: np.ndarray | torch.Tensor | None = None,
    ):
        if batch_size < 1:
            raise LabError(f"batch size must be at least 1, got {batch_size}")
        if seed is not None and seed < 0:
            raise LabError(f"seed (--seed) must be a whole number >= 0, got {seed}")
        if not 0.0 < top_p <= 1.0:
            raise LabError(f"top_p (--top-p) must be in (0, 1], got {top_p}")
        self.top_p = float(top_p)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.backend = choose_backend(self.device, batch_size, model.config.dim, backend, tuning)
        self.precision = check_precision(precision)
        self.f = fold(model, self.device, rows=batch_size, pack_min_work=tuning.pack_min_work, precision=precision)
        self.b = batch_size
        self.curve = None if temperature_curve is None else _curve(temperature_curve, batch_size)
        temps = self.curve if self.curve is not None else _temperatures(temperature, batch_size)
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])

        self._alloc()
        self.kernel = BACKENDS[self.backend](self.f, batch_size, temps, seed, self.device, top_p=self.top_p)
        self.graph = None
        self.use_graph = cuda_graph and self.device.type == "cuda" and self.kernel.graphable
        self._side: Sampler | None = None  # a one-stream sampler on the same weights, to restart streams with

    def _alloc(self) -> None:
        """The initial state, allocated: h0, a lookback of silence codes, t = 0."""
        f, b = self.f, self.b
        lb, fs, dev = f.lookback, f.frame_size, self.device
        self.t = 0  # samples produced so far (prime included)
        self.t0 = 0  # where the prime ends: sample 0 of a temperature curve
        self._pending = None  # sampled codes of a prime's last, partly forced frame
        silence = audio_io.silence_code(f.q_levels)
        # history: the last `lookback` codes, then room for one bottom frame
        self.hist = torch.full((b, lb + fs), silence, dtype=torch.long, device=dev)
        self.state = []
        self.cond = []
        for tier in f.tiers:
            h0 = tier.h0.expand(-1, -1, b, -1)
            self.state.append(
                [(h0[0, k].clone(), h0[1, k].clone()) if tier.lstm else h0[0, k].clone() for k in range(h0.shape[1])]
            )
            self.cond.append(torch.zeros(b, tier.frame_size, h0.shape[-1], device=dev))
        self.codes = torch.zeros(b, lb, dtype=torch.long, device=dev)  # the codes of a top-tier frame

    def _states(self) -> list[torch.Tensor]:
        """The recurrent states, flat: (B, dim) each."""
        return [x for tier in self.state for layer in tier for x in (layer if isinstance(layer, tuple) else (layer,))]

    def static_tensors(self) -> list[torch.Tensor]:
        """Every tensor the steps read and write: a captured graph replays on exactly these."""
        return [self.hist, *self._states(), *self.cond, *self.kernel.static_tensors(), self.codes]

    def _draw(self) -> None:
        """Noise (and a curve's temperatures) for the next top-tier frame, set at its start (eager and graph
        paths alike)."""
        if self.curve is not None:
            lb = self.f.lookback
            at = (torch.arange(self.t, self.t + lb) - self.t0).clamp_(0, self.curve.shape[1] - 1)
            self.kernel.set_temperatures(self.curve[:, at].expand(self.b, -1))
        self.kernel.draw()

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
                frame = self.hist[:, lb - n : lb]
                self.cond[i].copy_(tier_step(tier, frame, cond, self.state[i], f.q_levels))
            # the conditioning vector for the current step of the tier below
            sub = (self.t % n) // (n // tier.frame_size)
            cond = self.cond[i][:, sub]
        bottom = self.cond[-1]  # (B, fs, dim): one conditioning vector per sample of this frame
        pos = self.t % lb
        self.kernel.frame(bottom, self.hist[:, lb - fs :], pos, forced)
        self.codes[:, pos : pos + fs] = self.hist[:, lb:]
        self.hist[:, :lb] = self.hist[:, fs : fs + lb].clone()
        self.t += fs

    def _frame(self, forced: torch.Tensor | None = None) -> torch.Tensor:
        """One bottom frame, eagerly: its codes (B, fs) on the device."""
        fs, lb = self.f.frame_size, self.f.lookback
        if self.t % lb == 0:
            self._draw()
        pos = self.t % lb
        self._step(forced)
        return self.codes[:, pos : pos + fs].clone()

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
                warnings.warn(f"CUDA graph capture failed ({err}); sampling without graphs", stacklevel=2)
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
        self.t0 = self.t + codes.shape[1]
        for s in range(0, codes.shape[1], fs):
            part = codes[:, s : s + fs]
            forced = torch.full((self.b, fs), -1, dtype=torch.long)
            forced[:, : part.shape[1]] = part
            out = self._frame(forced)
            if part.shape[1] < fs:
                self._pending = out[:, part.shape[1] :]

    def restart(self, stream: int, codes: torch.Tensor) -> None:
        """Start stream ``stream`` afresh: from the initial state, primed with ``codes`` (P,), as a new
        stream would be, while the others go on. Only at a top-tier frame boundary (``t % lookback == 0``),
        with P a multiple of ``lookback``, so that every tier of the new state steps next.

        The prime is teacher-forced on a one-stream sampler on the same weights, whose state is then
        copied into the stream's rows (in place: a captured CUDA graph replays on them).
        """
        lb = self.f.lookback
        codes = torch.as_tensor(codes, dtype=torch.long).reshape(-1)
        if self.t % lb or codes.numel() % lb or codes.numel() == 0:
            raise ValueError(f"restart at t={self.t} with {codes.numel()} codes: both must be multiples of {lb}")
        if self._side is None:
            side = object.__new__(Sampler)
            side.device, side.backend, side.f, side.b = self.device, self.backend, self.f, 1
            side._alloc()
            side.kernel = BACKENDS[self.backend](self.f, 1, torch.zeros(1), 0, self.device)
            side.graph, side.use_graph, side._side, side.curve = None, False, None, None
            self._side = side
        side = self._side
        side._alloc()
        side.prime(codes)
        with torch.no_grad():
            self.hist[stream].copy_(side.hist[0])
            for mine, new in zip(self._states(), side._states()):
                mine[stream].copy_(new[0])

    def run(
        self,
        n_samples: int,
        block: int = 16384,
        progress: bool = False,
        sample_rate: int | None = None,
        watchdog: Watchdog | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield blocks of codes, (B, <= block) ``torch.long`` on CPU, ``n_samples`` in all.

        With a ``watchdog`` (:class:`.rescue.Watchdog`), streams it finds trapped are restarted from an
        excerpt of the source it holds (:meth:`restart`), checked at top-tier frame boundaries.
        """
        if n_samples < 0:
            raise LabError(f"cannot generate a negative number of samples ({n_samples})")
        bar = tqdm(total=n_samples, unit="sample", unit_scale=True, desc="generate", disable=not progress)
        # a backend may run torch on fewer threads (numba: its BLAS threads would be starved)
        threads = torch.get_num_threads()
        if self.kernel.torch_threads is not None:
            torch.set_num_threads(self.kernel.torch_threads)
        start = time.perf_counter()
        pending, self._pending = self._pending, None
        parts, have, done = [], 0, 0
        if pending is not None:
            parts.append(pending)
            have = pending.shape[1]
            if watchdog is not None:
                watchdog.observe(pending)
        lb = self.f.lookback
        try:
            while done < n_samples:
                while have < min(block, n_samples - done):
                    out = self._graph_frame()
                    if out is None:
                        out = self._frame()  # stays on the device until the block is complete
                    parts.append(out)
                    have += out.shape[1]
                    if watchdog is not None:
                        watchdog.observe(out)
                        if self.t % lb == 0 and watchdog.due():
                            for stream, _ in watchdog.check():
                                self.restart(stream, watchdog.excerpt_codes())
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


def generate(
    model: SampleRNN,
    n_samples: int,
    batch_size: int = 1,
    temperature: float | Sequence[float] = 1.0,
    seed: int | None = None,
    prime: np.ndarray | torch.Tensor | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    top_p: float = 1.0,
    precision: str = "fp32",
    temperature_curve: np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
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
    top_p : nucleus truncation (see :class:`Sampler`); 1.0 = off.
    precision : ``"fp32"``, ``"bf16"`` or ``"int8"`` weights (see :class:`Sampler`).
    temperature_curve : a temperature per sample, (n_samples,) or (batch_size, n_samples), instead of
        ``temperature`` (see :class:`Sampler`).

    Returns
    -------
    torch.LongTensor (batch_size, n_samples) on CPU, codes in [0, q_levels).
    """
    sampler = Sampler(
        model,
        batch_size,
        temperature,
        seed,
        device,
        top_p=top_p,
        precision=precision,
        temperature_curve=temperature_curve,
    )
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


def _temperatures(temperature: float | Sequence[float], batch_size: int) -> torch.Tensor:
    """One temperature per stream, checked: (B,) float32."""
    temps = torch.as_tensor(temperature, dtype=torch.float32).flatten()
    if temps.numel() == 1:
        temps = temps.expand(batch_size)
    if temps.numel() != batch_size:
        raise LabError(f"{temps.numel()} temperatures for {batch_size} streams")
    if bool((temps < 0).any()) or not bool(torch.isfinite(temps).all()):
        raise LabError(f"temperatures must be finite and >= 0, got {temps.tolist()}")
    return temps


def _curve(curve: np.ndarray | torch.Tensor, batch_size: int) -> torch.Tensor:
    """A per-sample temperature array, checked: (B, N), or (1, N) when shared, float32 on CPU."""
    c = torch.as_tensor(np.asarray(curve, dtype=np.float32))
    if c.dim() == 1:
        c = c.unsqueeze(0)  # shared: expanded per top-tier frame, never stored B times
    if c.dim() != 2 or c.shape[0] not in (1, batch_size) or c.shape[1] == 0:
        raise LabError(f"temperature curve of shape {tuple(c.shape)}: want (N,) or ({batch_size}, N), N >= 1")
    if bool((c < 0).any()) or not bool(torch.isfinite(c).all()):
        raise LabError("temperature curve: temperatures must be finite and >= 0")
    return c.contiguous()
