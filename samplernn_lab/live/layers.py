"""The live module's layers, in TorchScript: dense products in float32, bfloat16 or int8 weights, the recurrent
cells written out, and one frame tier stepped a frame at a time.

Each dense layer offers ``forward(x)`` (float32 out), ``plus(x, c)`` (``c`` in the bias's place) and
``hidden(x)`` (ReLU, for a layer that only feeds another; bfloat16 out in bf16 and int8, so no casts run
between the MLP's layers). Everything is long-standing aten ops except int8's ``torch._weight_int8pack_mm``.
"""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class DenseF32(nn.Module):
    """``x @ w.T + b`` with float32 weights."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.register_buffer("wt", w.detach().float().t().contiguous())  # (in, out): addmm without a transpose
        self.register_buffer("b", b.detach().float().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b, x, self.wt)

    def plus(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``x @ w.T + c``: ``c`` takes the bias's place (one op where ``forward(x) + c`` is two)."""
        return torch.addmm(c, x, self.wt)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(x @ w.T + b)``, for a layer whose output only feeds another layer."""
        return torch.addmm(self.b, x, self.wt).relu_()  # in place: the product is new


class DenseBF16(nn.Module):
    """Weights in bfloat16; float32 in and out."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.register_buffer("w", w.detach().to(torch.bfloat16).contiguous())
        self.register_buffer("b", b.detach().float().contiguous())
        self.register_buffer("b16", b.detach().to(torch.bfloat16).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.w) + self.b  # bf16 + float32 gives float32

    def plus(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.w) + c

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """In bfloat16 (bias too): the next layer reads bfloat16, so no casts between them."""
        return (F.linear(x.to(torch.bfloat16), self.w) + self.b16).relu_()


class DenseInt8(nn.Module):
    """Weights in int8 with one scale per output row (``torch._weight_int8pack_mm``, torch >= 2.3)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor):
        super().__init__()
        from ..precision import int8_rows

        q, s = int8_rows(w)
        self.register_buffer("w", q)
        self.register_buffer("s", s.to(torch.bfloat16))
        self.register_buffer("b", b.detach().float().contiguous())
        self.register_buffer("b16", b.detach().to(torch.bfloat16).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(x.to(torch.bfloat16), self.w, self.s) + self.b  # float32 out

    def plus(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(x.to(torch.bfloat16), self.w, self.s) + c

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """In bfloat16 (bias too): the next layer reads bfloat16, so no casts between them."""
        return (torch._weight_int8pack_mm(x.to(torch.bfloat16), self.w, self.s) + self.b16).relu_()


DENSE = {"fp32": DenseF32, "bf16": DenseBF16, "int8": DenseInt8}


class Cell(nn.Module):
    """One GRU or LSTM layer, written out as ``torch.gru_cell`` / ``lstm_cell`` compute it.

    ``ih`` is the input product; a tier's first layer gets ``nn.Identity()``: its input arrives as gates.
    """

    def __init__(self, ih: nn.Module, hh: nn.Module, lstm: bool):
        super().__init__()
        self.ih, self.hh, self.lstm = ih, hh, lstm

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.lstm:
            g = self.ih(x) + self.hh(h)
            i, f, gg, o = g.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
            return torch.sigmoid(o) * torch.tanh(c), c
        gi, gh = self.ih(x), self.hh(h)
        d = h.shape[1]
        rz = torch.sigmoid(gi.narrow(1, 0, 2 * d) + gh.narrow(1, 0, 2 * d))  # reset and update gates at once
        n = torch.tanh(torch.addcmul(gi.narrow(1, 2 * d, d), rz.narrow(1, 0, d), gh.narrow(1, 2 * d, d)))
        return torch.lerp(n, h, rz.narrow(1, d, d)), c  # n + z * (h - n)


class Tier(nn.Module):
    """One frame tier, stepped once per frame: frame (B, frame_len) -> conditioning (B, frame_size, width).

    ``inp`` maps the frame to the first layer's gates (the input layer and that layer's input product are one
    matrix); ``cond`` from the tier above is already in gates. ``up`` hands down the tier below's first-layer
    gates, or the MLP's conditioning at the bottom: ``width`` is its size per position.
    """

    def __init__(self, frame_len: int, frame_size: int, inp: DenseF32, cells: List[Cell], up: nn.Module):
        super().__init__()
        self.frame_len, self.frame_size = frame_len, frame_size
        self.inp, self.up = inp, up
        self.cells = nn.ModuleList(cells)
        self.width = int(up.b.shape[0]) // frame_size

    def forward(
        self, frame: torch.Tensor, cond: Optional[torch.Tensor], state: List[torch.Tensor]
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """``state``: per layer h and c (c unused by a GRU)."""
        # below the top, the input layer's bias is in the tier above's upsampling bias (export.build folds it)
        # x: the first layer's input gates
        x = self.inp(frame) if cond is None else self.inp.plus(frame, cond)
        new: List[torch.Tensor] = []
        for k, cell in enumerate(self.cells):
            h, c = cell(x, state[2 * k], state[2 * k + 1])
            new.append(h)
            new.append(c)
            x = h
        return self.up(x).view(x.shape[0], self.frame_size, -1), new
