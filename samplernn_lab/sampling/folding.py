"""The model folded into plain float32 tensors, and the frame tiers stepped on them.

* weight normalisation is folded into plain weights once (reading ``.weight`` of a weight-normed
  layer folds it);
* the embedding times the MLP's first layer becomes a lookup table per frame position
  (``lut[j, code]`` is a ``dim`` vector), so the first layer is ``frame_size`` row additions instead of a
  (frame_size x embed_size) x dim product per sample;
* on CPU, dense layers big enough for it run on oneDNN with weights packed once (:class:`Dense`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model import SampleRNN, position_tables, rescale_codes, upsample_matrix
from ..precision import pack

# CPU layers run on oneDNN with pre-packed weights once rows x weights reaches this: below it the call costs
# more than it saves. Measured on the CI kind of machine (benchmarks/RESULTS.md).
PACK_MIN_WORK = 2**20


class Dense:
    """``x @ w.T + b``, then ReLU if asked, on folded float32 weights ``w`` (out, in).

    On CPU, for ``rows`` inputs at a time with ``rows * w.numel() >= pack_min_work``, the weights are
    packed once for oneDNN, which uses AVX-512 where the CPU has it (MKL, behind ``F.linear``, stays on
    AVX2 on AMD CPUs): 2-3x faster at batch 128. Same float32 arithmetic, summed in another order,
    so the distribution sampled from is the model's.
    """

    def __init__(
        self, w: torch.Tensor, b: torch.Tensor | None, rows: int | None = None, pack_min_work: int = PACK_MIN_WORK
    ):
        self.w, self.b = w, b
        want = rows is not None and w.device.type == "cpu" and rows * w.numel() >= pack_min_work
        self.packed = pack(w, rows) if want else None

    def __call__(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.b, "relu" if relu else "none", [], "")
        y = F.linear(x, self.w, self.b)
        return torch.relu_(y) if relu else y


@dataclass
class Tier:
    """One frame tier on folded weights."""

    frame_len: int
    frame_size: int
    inp: Dense  # frame_len -> dim
    ih: list  # per layer: Dense, input -> gates
    hh: list  # per layer: Dense, hidden -> gates
    up: Dense  # dim -> frame_size * dim: row j*dim + o is output o of sub-step j
    h0: torch.Tensor  # (states, layers, 1, dim)
    lstm: bool


@dataclass
class Folded:
    """A whole model on folded weights: what the sampler runs."""

    tiers: list  # Tier, top first
    lut: torch.Tensor  # (frame_size, q, dim)
    hidden: list  # Dense, dim -> dim
    out: Dense  # dim -> q
    q_levels: int
    lookback: int
    frame_size: int  # bottom frame size: samples per MLP window
    mlp_dtype: torch.dtype = torch.float32  # between the MLP's layers: bfloat16 where they are low precision


@torch.no_grad()
def fold(
    model: SampleRNN,
    device: torch.device | str = "cpu",
    rows: int | None = None,
    pack_min_work: int = PACK_MIN_WORK,
    precision: str = "fp32",
) -> Folded:
    """Plain weights on ``device``: float32, or for ``precision`` "bf16"/"int8" the dense layers of the frame
    tiers and the MLP in that precision (:class:`samplernn_lab.precision.LowPrecisionDense`).

    Parameters
    ----------
    model : the model (left untouched).
    device : where the folded tensors live.
    rows : the batch size the layers will see, to pack them for oneDNN where that pays (:class:`Dense`).
    pack_min_work : rows x weights from which a CPU layer is packed for oneDNN.
    precision : ``"fp32"`` (the model's distribution), ``"bf16"`` or ``"int8"`` (within a stated KL of it,
        ``tests/test_precision.py``); the input layers of the tiers and the lookup tables stay float32.
    """
    from ..precision import LowPrecisionDense, check_precision

    check_precision(precision)

    def t(x: torch.Tensor) -> torch.Tensor:
        return x.detach().float().to(device).contiguous()

    def dense(w: torch.Tensor, b: torch.Tensor | None) -> Dense | LowPrecisionDense:
        if precision != "fp32":
            return LowPrecisionDense(t(w), None if b is None else t(b), precision, rows)
        return Dense(t(w), None if b is None else t(b), rows, pack_min_work)

    tiers = []
    for tier in model.tiers:
        rnn = tier.rnn
        layers = range(rnn.num_layers)
        fs = tier.frame_size
        up = dense(*upsample_matrix(tier.upsample.weight, tier.upsample.bias))
        ih = [dense(getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"bias_ih_l{k}")) for k in layers]
        hh = [dense(getattr(rnn, f"weight_hh_l{k}"), getattr(rnn, f"bias_hh_l{k}")) for k in layers]
        inp = Dense(t(tier.expand.weight), t(tier.expand.bias))
        tiers.append(Tier(tier.frame_len, fs, inp, ih, hh, up, t(tier.h0), tier.is_lstm))
    mlp = model.mlp
    lut = position_tables(mlp.embedding.weight, mlp.input.weight)
    hidden = [dense(layer.weight, layer.bias) for layer in mlp.hidden]
    out = dense(mlp.output.weight, mlp.output.bias)
    # bfloat16 between the MLP's layers only where they are low precision (int8 layers the kernel cannot take,
    # width not a multiple of 16, stay float32 and must see float32: the distribution the KL bound is held on)
    low = all(getattr(d, "precision", "fp32") != "fp32" for d in (*hidden, out))
    mlp_dtype = torch.bfloat16 if low else torch.float32
    return Folded(tiers, t(lut), hidden, out, model.config.q_levels, model.lookback, mlp.frame_size, mlp_dtype)


def tier_step(tier: Tier, frame: torch.Tensor, cond: torch.Tensor | None, state: list, q: int) -> torch.Tensor:
    """One step of a frame tier: frame codes (B, frame_len) -> conditioning (B, frame_size, dim).

    The GRU and LSTM cells are written out (as ``torch.gru_cell``/``lstm_cell`` compute them) so
    that their matmuls go through :class:`Dense`. ``state`` (per layer: h, or (h, c)) is updated in
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
