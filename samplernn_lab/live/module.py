"""The scripted module an nn~ host plays: a SampleRNN sampling buffer after buffer, at the host's rate.

It follows the conventions nn~'s C++ backend reads from a TorchScript module (acids-ircam/nn_tilde,
``src/backend/backend.cpp``): ``get_methods()`` names the methods; each method ``m`` has a buffer
``m_params = [in_channels, in_ratio, out_channels, out_ratio]`` and the lists ``m_input_labels`` /
``m_output_labels``; a method takes one float tensor ``(batch, in_channels, n / in_ratio)`` and returns
``(batch, out_channels, n / out_ratio)`` (nn~ calls it under inference mode, batch > 1 from mc.nn~);
``get_attributes()`` names the settable attributes, each with a ``name_params`` tensor of type ids
(0 bool, 1 int, 2 float) and ``get_name()`` / ``set_name(...)`` (0 on success); ``set_sample_rate(sr)``
is called with the host's rate after loading.

Methods (both one channel in, one out, ratio 1: every call returns as many host samples as it gets):

* ``forward``: the input is the temperature as a signal (0 = greedy, plus the ``temperature_offset``
  attribute); the output is the model's audio converted to the host's rate.
* ``follow``: the input is the host's audio. While it is louder than ``gate_db`` it is converted to the
  model's rate, quantised and teacher-forced into the model's state (and played back as the model heard
  it); when it falls quiet the model continues it, at ``temperature``.

State (code history, recurrent states, conditioning, the rate converters' buffers) is carried from call
to call, so consecutive buffers join without a click and N calls give what one long call gives. The
``reset`` attribute (or :meth:`reset`) returns to the primed start. Sampling is Gumbel-max on noise
hashed from (seed, stream, sample index, code): ``argmax(logits + T * g)`` samples ``softmax(logits /
T)`` exactly and is the argmax at T = 0, and the noise does not depend on how the stream is cut into
buffers.

Everything here is TorchScript over long-standing aten ops; loading needs torch/libtorch alone.
"""

from typing import List, Optional

import torch
from torch import nn

from .layers import Tier
from .resample import StreamResampler

NOISE_CHUNK = 256  # model samples of noise drawn at a time
GATE_SECONDS = 0.02  # the window over which `follow` measures the input's peak level


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix (two multiply-xorshift rounds) of int32 values; products wrap around."""
    x = (x ^ ((x >> 16) & 0xFFFF)) * 0x45D9F3B
    x = (x ^ ((x >> 16) & 0xFFFF)) * 0x45D9F3B
    return x ^ ((x >> 16) & 0xFFFF)


class LiveSampleRNN(nn.Module):
    """See the module docstring. Built by :func:`samplernn_lab.live.export.build`; scripted for nn~."""

    state: List[torch.Tensor]  # per tier, per layer: h, c
    cond: List[torch.Tensor]  # per tier: (B, frame_size, width), the conditioning of its current step

    def __init__(
        self,
        tiers: List[Tier],
        lut: torch.Tensor,
        hidden: List[nn.Module],
        out: nn.Module,
        levels: torch.Tensor,
        h0: List[torch.Tensor],
        model_rate: int,
        host_rate: int,
        n_layers: int,
        precision: str,
    ):
        super().__init__()
        fs, q, dim = lut.shape
        self.fs, self.q, self.dim = fs, q, dim
        self.lookback = tiers[0].frame_len
        self.n_layers = n_layers
        self.noise_chunk = NOISE_CHUNK
        self.gate_seconds = GATE_SECONDS
        self.model_rate = model_rate
        self.precision = precision
        self.tiers = nn.ModuleList(tiers)
        self.hidden = nn.ModuleList(hidden)
        self.out = out
        # lut_rev[c, m] = lut[fs - 1 - m, c]: what code c adds to the first layer of the fs samples after it
        self.register_buffer("lut", lut.float().contiguous())
        self.register_buffer("lut_rev", lut.float().flip(0).transpose(0, 1).contiguous())
        self.register_buffer("levels", levels.float().contiguous())
        self.register_buffer("edges", (levels[1:] + levels[:-1]).float() / 2.0)  # bin edges, for `follow`
        self.out_rs = StreamResampler(model_rate, host_rate)
        self.in_rs = StreamResampler(host_rate, model_rate)
        self.host_rate = host_rate

        # nn~'s conventions
        self.methods: List[str] = ["forward", "follow"]
        self.register_buffer("forward_params", torch.tensor([1, 1, 1, 1]))
        self.forward_input_labels: List[str] = ["(signal) temperature, 0 = greedy"]
        self.forward_output_labels: List[str] = ["(signal) audio"]
        self.register_buffer("follow_params", torch.tensor([1, 1, 1, 1]))
        self.follow_input_labels: List[str] = ["(signal) audio to follow"]
        self.follow_output_labels: List[str] = ["(signal) audio: the input while loud, its continuation after"]
        self.attributes: List[str] = ["temperature_offset", "temperature", "seed", "gate_db", "reset"]
        self.register_buffer("temperature_offset_params", torch.tensor([2]))
        self.register_buffer("temperature_params", torch.tensor([2]))
        self.register_buffer("seed_params", torch.tensor([1]))
        self.register_buffer("gate_db_params", torch.tensor([2]))
        self.register_buffer("reset_params", torch.tensor([0]))
        self.temperature_offset_value = 0.0
        self.temperature_value = 1.0
        self.seed_value = 0
        self.gate_db_value = -45.0
        self.one_stream_loop = True  # batch 1 samples in _sample_one (False: in the batched loop; for tests)

        # the primed start (batch 1): silence and h0 until prime_with() is called
        self.primed_hist = torch.full((1, self.lookback), q // 2, dtype=torch.long)
        self.primed_state: List[torch.Tensor] = [h.detach().float().reshape(1, dim).clone() for h in h0]
        self.primed_cond: List[torch.Tensor] = [torch.zeros(1, t.frame_size, t.width) for t in tiers]
        self.primed_carry = torch.zeros(1, fs, dim)
        self.primed_t = 0
        self.primed_tail = torch.zeros(1, 0)

        # the running state
        self.batch = 1
        self.hist = self.primed_hist
        self.state = []
        self.cond = []
        self.carry = self.primed_carry
        self.t = 0  # model samples since the stream began (prime included): the noise's index
        self.gen = 0  # model samples produced since the last reset: the output converter's index
        self.noise = torch.zeros(1, 0, q)
        self.noise_start = -1
        self.last_temp = torch.zeros(1, 1)
        self.in_buf = torch.zeros(1, 0)
        self.in_start = 0
        self.reset()

    # ----------------------------------------------------------------------------------------
    # nn~'s interface

    @torch.jit.export
    def get_methods(self) -> List[str]:
        return self.methods

    @torch.jit.export
    def get_attributes(self) -> List[str]:
        return self.attributes

    @torch.jit.export
    def set_sample_rate(self, sample_rate: int) -> int:
        """The host's rate in Hz; restarts from the primed start. 0 on success."""
        if sample_rate <= 0:
            return -1
        self.host_rate = sample_rate
        self.out_rs.set_rates(self.model_rate, sample_rate)
        self.in_rs.set_rates(sample_rate, self.model_rate)
        self.reset()
        return 0

    @torch.jit.export
    def get_sample_rate(self) -> int:
        return self.host_rate

    @torch.jit.export
    def get_temperature_offset(self) -> List[float]:
        return [self.temperature_offset_value]

    @torch.jit.export
    def set_temperature_offset(self, value: float) -> int:
        self.temperature_offset_value = value
        return 0

    @torch.jit.export
    def get_temperature(self) -> List[float]:
        return [self.temperature_value]

    @torch.jit.export
    def set_temperature(self, value: float) -> int:
        if value < 0.0:
            return -1
        self.temperature_value = value
        return 0

    @torch.jit.export
    def get_seed(self) -> List[int]:
        return [self.seed_value]

    @torch.jit.export
    def set_seed(self, value: int) -> int:
        """A new seed: the noise from the next sample on is drawn from it."""
        self.seed_value = value
        self.noise_start = -1
        return 0

    @torch.jit.export
    def get_gate_db(self) -> List[float]:
        return [self.gate_db_value]

    @torch.jit.export
    def set_gate_db(self, value: float) -> int:
        self.gate_db_value = value
        return 0

    @torch.jit.export
    def get_reset(self) -> List[bool]:
        return [False]

    @torch.jit.export
    def set_reset(self, value: bool) -> int:
        if value:
            self.reset()
        return 0

    # ----------------------------------------------------------------------------------------
    # state

    @torch.jit.export
    def reset(self) -> None:
        """Back to the primed start, keeping the batch size."""
        b = self.batch
        self.hist = self.primed_hist.expand(b, -1).clone()
        self.state = [s.expand(b, -1).clone() for s in self.primed_state]
        self.cond = [c.expand(b, -1, -1).clone() for c in self.primed_cond]
        self.carry = self.primed_carry.expand(b, -1, -1).clone()
        self.t = self.primed_t
        self.gen = 0
        self.noise_start = -1
        self.last_temp = torch.zeros(b, 1)
        self.out_rs.reset(b)
        if self.primed_tail.shape[1] > 0:
            self.out_rs.prefill(self.primed_tail.expand(b, -1))
        self.in_rs.reset(b)
        self.in_buf = torch.zeros(b, 0)
        self.in_start = 0

    def _check_cpu(self, x: torch.Tensor) -> None:
        # the carried state lives on the CPU; a host's GPU switch would otherwise fail deep inside a call
        if x.device.type != "cpu":
            raise RuntimeError("this SampleRNN module runs on the CPU only: turn the host's GPU option off")

    def _use_batch(self, b: int) -> None:
        if b != self.batch:
            self.batch = b
            self.reset()

    @torch.jit.export
    def prime_with(self, codes: torch.Tensor) -> None:
        """Teacher-force ``codes`` (1, P) from the current state and make the result the primed start.

        P is cut to a multiple of the bottom frame size (its oldest samples dropped).
        """
        self._use_batch(1)
        p = codes.shape[1] - codes.shape[1] % self.fs
        codes = codes[:, codes.shape[1] - p :]
        for s in range(0, p, self.fs):
            frame = codes[:, s : s + self.fs]
            self._frame(torch.zeros(1, 1, 1), frame, torch.ones(1, dtype=torch.bool))
        self.primed_hist = self.hist.clone()
        self.primed_state = [s.clone() for s in self.state]
        self.primed_cond = [c.clone() for c in self.cond]
        self.primed_carry = self.carry.clone()
        self.primed_t = self.t
        self.primed_tail = self.levels[codes[:, max(0, p - 2 * self.out_rs.taps_half) :]]
        self.reset()

    def _draw_noise(self, start: int) -> None:
        """Gumbel noise (B, noise_chunk, q) for model samples ``start`` on, hashed from the seed.

        One key per (seed, stream, sample), then one hash per code: the value for a sample does not
        depend on ``start``.
        """
        b = self.batch
        stream = torch.arange(b, dtype=torch.int32).view(b, 1)
        index = torch.arange(self.noise_chunk, dtype=torch.long).view(1, -1) + start
        high = ((index >> 31) & 0x7FFFFFFF).to(torch.int32)
        low = (index & 0x7FFFFFFF).to(torch.int32)
        seed = torch.tensor(self.seed_value & 0x7FFFFFFF, dtype=torch.int32)
        key = _hash32(low ^ _hash32(_hash32(seed ^ high) + stream * 0x2C1B3C6D))  # (B, chunk)
        codes = torch.arange(self.q, dtype=torch.int32) * 0x297A2D39
        bits = _hash32(key.unsqueeze(2) ^ codes)
        u = (((bits >> 8) & 0xFFFFFF).float() + 0.5) * (1.0 / 16777216.0)
        self.noise = -torch.log(-torch.log(u))
        self.noise_start = start

    def _frame(self, temp: torch.Tensor, forced: Optional[torch.Tensor], use: Optional[torch.Tensor]) -> torch.Tensor:
        """One bottom frame: codes sampled at ``temp`` (B, 1, 1), or ``forced`` (B, fs) where ``use`` (B,).

        Updates the state; returns the frame's codes (B, fs) (:meth:`_audio` makes them audio, a buffer at once).
        """
        fs, lb, t = self.fs, self.lookback, self.t
        cond: Optional[torch.Tensor] = None
        new_cond: List[torch.Tensor] = []
        new_state: List[torch.Tensor] = []
        for i, tier in enumerate(self.tiers):
            n = tier.frame_len
            c = self.cond[i]
            st = self.state[2 * self.n_layers * i : 2 * self.n_layers * (i + 1)]
            if t % n == 0:
                frame = self.hist[:, lb - n :].float()  # codes as numbers: the rescaling is in tier.inp
                c, st = tier(frame, cond, st)
            new_cond.append(c)
            new_state.extend(st)
            sub = (t % n) // (n // tier.frame_size)
            cond = c[:, sub]
        self.cond = new_cond
        self.state = new_state
        bottom = self.cond[len(self.cond) - 1]  # (B, fs, dim)
        acc = torch.constant_pad_nd(self.carry + bottom, [0, 0, 0, fs])  # first layer, before the ReLU
        sample = True
        codes = self.hist[:, :0]
        if forced is not None and use is not None:
            if bool(use.all()):
                sample = False
                codes = forced
                for k in range(fs):  # each code's row added in the order sampling adds them
                    acc.narrow(1, k + 1, fs).add_(self.lut_rev.index_select(0, forced[:, k]))
        if sample:
            if self.noise_start < 0 or t < self.noise_start or t + fs > self.noise_start + self.noise_chunk:
                self._draw_noise(t)
            # the output layer's bias plus the frame's Gumbel noise at the temperature, in one op per frame
            shift = torch.addcmul(self.out.b, self.noise.narrow(1, t - self.noise_start, fs), temp)
            free = forced is None or use is None or not bool(use.any())  # nothing of this frame is forced
            if self.batch == 1 and free and self.one_stream_loop:
                codes = self._sample_one(acc, shift)
            else:
                rows = acc.unbind(1)  # views: the in-place additions below reach them
                shifts = shift.unbind(1)
                picked: List[torch.Tensor] = []
                for j in range(fs):
                    x = torch.relu(rows[j])
                    for layer in self.hidden:
                        x = layer.hidden(x)
                    code = torch.argmax(self.out.plus(x, shifts[j]), dim=1)
                    if forced is not None and use is not None:
                        code = torch.where(use, forced[:, j], code)
                    acc.narrow(1, j + 1, fs).add_(self.lut_rev.index_select(0, code))
                    picked.append(code)
                codes = torch.stack(picked, 1)
        self.carry = acc[:, fs:]
        self.hist = torch.cat([self.hist[:, fs:], codes], 1)
        self.t = t + fs
        return codes

    def _sample_one(self, acc: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """The frame's sampling loop for one stream, nn~'s usual case: what the batched loop computes, with each
        code a number and its lookup-table row a view selected by it instead of a gather (`index_select` was
        the dearest op per sample after the products), and the ReLUs in place. ``acc`` (1, 2 fs, dim) as in
        :meth:`_frame` (its first fs rows are used up here), ``shift`` (1, fs, q); returns codes (1, fs)."""
        a, s = acc[0], shift[0]
        picked: List[int] = []
        for j in range(self.fs):
            x = a[j : j + 1].relu_()  # row j is complete: every earlier code has added its share
            for layer in self.hidden:
                x = layer.hidden(x)
            code = int(torch.argmax(self.out.plus(x, s[j : j + 1])))
            a.narrow(0, j + 1, self.fs).add_(self.lut_rev[code])
            picked.append(code)
        return torch.tensor(picked, dtype=torch.long).unsqueeze(0)

    def _audio(self, frames: List[torch.Tensor]) -> torch.Tensor:
        """Frames of codes (B, fs) each -> audio (B, fs * len) at the model's rate."""
        codes = torch.cat(frames, 1)
        return self.levels.index_select(0, codes.reshape(-1)).view(codes.shape)

    # ----------------------------------------------------------------------------------------
    # the methods nn~ calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Temperature signal (B, 1, N) -> audio (B, 1, N) at the host rate."""
        self._check_cpu(x)
        self._use_batch(x.shape[0])
        n = x.shape[2]
        temps = torch.cat([self.last_temp, x[:, 0].float()], 1) + self.temperature_offset_value
        temps = temps.clamp(min=0.0).unsqueeze(2)  # (B, 1 + N, 1): a frame's slice scales its noise as it is
        n0 = self.out_rs.n_out
        need = self.out_rs.last_needed(n)
        up, down = self.out_rs.up, self.out_rs.down
        frames: List[torch.Tensor] = []
        while self.gen <= need:
            h = (self.gen * up) // down - n0 + 1  # the host sample at the frame's first model sample
            frames.append(self._frame(temps[:, h : h + 1], None, None))
            self.gen += self.fs
        if len(frames) > 0:
            self.out_rs.push(self._audio(frames))  # one conversion and append per buffer, not per frame
        self.last_temp = x[:, 0, n - 1 : n].float()
        return self.out_rs.pull(n).unsqueeze(1)

    @torch.jit.export
    def follow(self, x: torch.Tensor) -> torch.Tensor:
        """Host audio (B, 1, N) -> audio (B, 1, N): the input while it is loud, the model continuing it after."""
        self._check_cpu(x)
        self._use_batch(x.shape[0])
        n = x.shape[2]
        fs = self.fs
        self.in_rs.push(x[:, 0].float())
        m = self.in_rs.available()
        if m > 0:
            self.in_buf = torch.cat([self.in_buf, self.in_rs.pull(m)], 1)
        window = max(fs, int(self.gate_seconds * self.model_rate))
        threshold = 10.0 ** (self.gate_db_value / 20.0)
        temp = torch.full((self.batch, 1, 1), max(0.0, self.temperature_value))
        need = self.out_rs.last_needed(n)
        frames: List[torch.Tensor] = []
        while self.gen <= need:
            # the input frame that ends one frame before this one: always converted by now
            end = self.gen - self.in_start
            start = end - fs
            if start >= 0 and end <= self.in_buf.shape[1]:
                seg = self.in_buf[:, start:end]
                peak = self.in_buf[:, max(0, end - window) : end].abs().amax(1)
                forced = torch.bucketize(seg, self.edges, right=True)
                frames.append(self._frame(temp, forced, peak > threshold))
            else:
                frames.append(self._frame(temp, None, None))
            self.gen += fs
        if len(frames) > 0:
            self.out_rs.push(self._audio(frames))
        drop = max(0, self.gen - fs - window - self.in_start)
        drop = min(drop, self.in_buf.shape[1])
        self.in_buf = self.in_buf[:, drop:]
        self.in_start += drop
        return self.out_rs.pull(n).unsqueeze(1)
