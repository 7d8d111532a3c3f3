"""A streaming rate converter written in TorchScript: a windowed-sinc filter, polyphase, state kept across buffers.

Output sample ``n`` (at ``dst`` Hz) is the source signal (at ``src`` Hz) interpolated at source time
``n * src / dst - delay``, through a low-pass at 0.475 of the lower rate (the anti-imaging filter when
converting up, the anti-aliasing filter when converting down) with a Kaiser window (beta 7.9: about
80 dB of stop-band attenuation) whose transition band is 0.05 of the lower rate wide. ``delay`` is half
the filter's length, so an output needs no source sample later than ``floor(n * src / dst)``: the
converter is causal, and its latency is that half length (about 3 ms at 16 kHz).

Times are kept as integers (``n * M = q * L + r`` with ``src / dst = M / L`` in lowest terms), so a
stream never drifts, and the filter's taps for each of the ``L`` phases are tabulated once per rate
pair (computed in TorchScript, so a host can change its rate after loading).
"""

from __future__ import annotations

import math

import torch
from torch import nn

ATTENUATION_DB = 80.0
PASS = 0.475  # -6 dB point, as a fraction of the lower rate
TRANSITION = 0.05  # width of the transition band, as a fraction of the lower rate
MAX_TABLE_PHASES = 8192  # above this many phases the taps are computed per buffer


def _gcd(a: int, b: int) -> int:
    while b != 0:
        a, b = b, a % b
    return a


class StreamResampler(nn.Module):
    """Converts a stream of ``(batch, n)`` float blocks from ``src`` Hz to ``dst`` Hz.

    Use :meth:`push` to append source samples, :meth:`needed` to ask how many more source samples
    ``n`` outputs would take, and :meth:`pull` to take ``n`` outputs. Rates equal: a pass-through.
    """

    def __init__(self, src: int, dst: int):
        super().__init__()
        self.src = 1
        self.dst = 1
        self.up = 1  # L: dst / gcd
        self.down = 1  # M: src / gcd
        self.taps_half = 0  # taps on each side of an output
        self.cutoff = 0.5  # cycles per source sample
        self.attenuation = ATTENUATION_DB
        self.pass_fraction = PASS
        self.transition = TRANSITION
        self.max_phases = MAX_TABLE_PHASES
        self.beta = 0.1102 * (ATTENUATION_DB - 8.7)
        self.hw = 1.0  # half-width of the window, in source samples
        self.register_buffer("table", torch.zeros(1, 0), persistent=False)
        self.register_buffer("buf", torch.zeros(1, 0), persistent=False)
        self.buf_start = 0  # absolute source index of buf[:, 0]
        self.n_in = 0  # source samples pushed so far
        self.n_out = 0  # outputs taken so far
        self.set_rates(src, dst)

    @torch.jit.export
    def set_rates(self, src: int, dst: int) -> None:
        """Set both rates (Hz) and start the stream anew."""
        g = _gcd(src, dst)
        self.src, self.dst = src, dst
        self.up, self.down = dst // g, src // g
        low = float(min(src, dst)) / float(src)  # the lower rate, in cycles per source sample
        self.cutoff = self.pass_fraction * low
        n_taps = (self.attenuation - 7.95) / (2.285 * 2.0 * math.pi * self.transition * low)
        self.taps_half = 0 if src == dst else int(math.ceil(n_taps / 2.0))
        self.hw = float(self.taps_half) + 1.0
        if self.taps_half > 0 and self.up <= self.max_phases:
            self.table = self._taps(torch.arange(self.up, dtype=torch.int64))
        else:
            self.table = torch.zeros(1, 0)
        self.reset(self.buf.shape[0])

    @torch.jit.export
    def reset(self, batch: int) -> None:
        """Start the stream anew with ``batch`` channels and silence before it."""
        self.buf = torch.zeros(batch, 2 * self.taps_half, dtype=torch.float32, device=self.buf.device)
        self.buf_start = -2 * self.taps_half
        self.n_in = 0
        self.n_out = 0

    @torch.jit.export
    def prefill(self, past: torch.Tensor) -> None:
        """Take ``past`` (batch, n) as the source just before the stream's start (instead of silence)."""
        k = min(past.shape[1], 2 * self.taps_half)
        if k > 0:
            buf = self.buf.clone()
            buf[:, buf.shape[1] - k :] = past[:, past.shape[1] - k :].to(buf.dtype)
            self.buf = buf

    def _taps(self, phase: torch.Tensor) -> torch.Tensor:
        """Taps for outputs at phases ``r`` (N,) -> (N, 2 * half), tap ``k`` for source index ``q - 2 half + 1 + k``."""
        k = torch.arange(2 * self.taps_half, dtype=torch.float64)
        # distance from the output's time (q - half + r / L) to the tap's source index
        tau = (float(self.taps_half - 1) - k).unsqueeze(0) + phase.to(torch.float64).unsqueeze(1) / float(self.up)
        x = 2.0 * self.cutoff * tau
        sinc = torch.where(x == 0.0, torch.ones_like(x), torch.sin(math.pi * x) / (math.pi * x))
        ratio = (tau / self.hw).clamp(-1.0, 1.0)
        window = torch.i0(self.beta * torch.sqrt(1.0 - ratio * ratio)) / torch.i0(torch.tensor(self.beta))
        return (2.0 * self.cutoff * sinc * window).to(torch.float32)

    @torch.jit.export
    def push(self, x: torch.Tensor) -> None:
        """Append source samples ``x`` (batch, n)."""
        self.buf = torch.cat([self.buf, x.to(self.buf.dtype)], dim=1)
        self.n_in += x.shape[1]

    @torch.jit.export
    def last_needed(self, n: int) -> int:
        """The highest source index that the next ``n`` outputs read."""
        return ((self.n_out + n - 1) * self.down) // self.up

    @torch.jit.export
    def available(self) -> int:
        """How many outputs the samples pushed so far allow."""
        # output m reads up to floor(m * M / L) <= n_in - 1, i.e. m * M < n_in * L
        if self.n_in == 0:
            return 0
        return (self.n_in * self.up - 1) // self.down + 1 - self.n_out

    @torch.jit.export
    def pull(self, n: int) -> torch.Tensor:
        """The next ``n`` outputs (batch, n); the source must reach :meth:`last_needed` ``(n)``."""
        if self.taps_half == 0:
            start = self.n_out - self.buf_start
            y = self.buf[:, start : start + n]
            self.n_out += n
            self.buf = self.buf[:, start + n :]
            self.buf_start = self.n_out
            return y
        idx = torch.arange(self.n_out, self.n_out + n, dtype=torch.int64)
        prod = idx * self.down
        q = torch.div(prod, self.up, rounding_mode="floor")
        r = prod - q * self.up
        taps = self.table[r] if self.table.shape[1] > 0 else self._taps(r)
        first = q - (2 * self.taps_half - 1) - self.buf_start  # (n,) position in buf of each output's first tap
        lo = int(first[0])
        span = self.buf[:, lo:]
        windows = span.unfold(1, 2 * self.taps_half, 1)  # (B, positions, 2 half)
        y = (windows[:, first - lo] * taps.to(span.device).unsqueeze(0)).sum(-1)
        self.n_out += n
        keep = ((self.n_out * self.down) // self.up) - (2 * self.taps_half - 1) - self.buf_start
        keep = max(0, min(keep, self.buf.shape[1]))
        self.buf = self.buf[:, keep:]
        self.buf_start += keep
        return y
