"""Weight precisions for sampling: float32, bfloat16, or int8 with one scale per output row.

At batch 1 a wide model's sampler is bound by memory bandwidth (every weight of the frame tiers and
the MLP is read once per step), so reading fewer bytes per weight is the way to go faster:

* ``"fp32"``: the model's own weights;
* ``"bf16"``: weights rounded to bfloat16 (8 bits of mantissa), products summed in float32 (fast where the
  CPU has AVX-512 BF16 or AMX, or on a GPU; slower than float32 on CPUs without them);
* ``"int8"``: each output row ``w[o]`` stored as ``round(w[o] / s[o])`` in [-127, 127] with ``s[o] =
  max|w[o]| / 127``, multiplied with bfloat16 activations (``torch._weight_int8pack_mm``, torch >= 2.3).

Both change the distribution sampled from slightly: ``tests/test_precision.py`` bounds the KL divergence
from the float32 model's per-sample distribution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import LabError

PRECISIONS = ("fp32", "bf16", "int8")
# torch._weight_int8pack_mm (torch 2.13, CPU) is reliable only when the number of inputs is a multiple of 16:
# for other counts it reads past the weights (wrong products, sometimes inf, depending on shape and run) and
# under 8 it crashes. Such layers stay float32 (the presets' layers all have 256 or 1024 inputs).
INT8_IN_MULTIPLE = 16


def int8_fits(in_features: int) -> bool:
    """Whether a layer with ``in_features`` inputs can take int8 weights (else it stays float32)."""
    return in_features % INT8_IN_MULTIPLE == 0


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a :class:`LabError`."""
    if precision not in PRECISIONS:
        raise LabError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision


def int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantisation of ``w`` (out, in), one scale per output row.

    Returns
    -------
    q : torch.int8 (out, in), values in [-127, 127].
    scales : float32 (out,): ``w ~= q * scales[:, None]`` (rows of zeros get scale 1).
    """
    w = w.detach().float()
    scales = w.abs().amax(dim=1) / 127.0
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scales.contiguous()


def pack(w: torch.Tensor, rows: int) -> torch.Tensor | None:
    """``w`` (out, in), float32 or bfloat16, reordered for oneDNN's matmul at ``rows`` rows, or None where that
    is unavailable (no oneDNN, the op changed, or its result differs from ``F.linear``'s)."""
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
        probe = torch.randn(2, w.shape[1], generator=torch.Generator().manual_seed(0)).to(w.dtype)
        y = torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], "").float()
        ref = F.linear(probe.float(), w.float())
        rtol = 1e-4 if w.dtype == torch.float32 else 2e-2  # bfloat16 out: 8 bits of mantissa
        ok = torch.allclose(y, ref, rtol=rtol, atol=rtol * float(w.abs().max()) * w.shape[1])
    except (RuntimeError, AttributeError, NotImplementedError):  # no oneDNN here, or the op changed
        return None
    return packed if ok else None


class LowPrecisionDense:
    """``x @ w.T + b`` (then ReLU if asked) with the weights stored in ``precision``; float32 in and out.

    ``w`` stays readable as the float32 values the low-precision weights stand for (``dequantized``),
    for code that reads weights directly (the numba kernel): it then samples the same distribution,
    without the speed-up.
    """

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None, precision: str, rows: int | None = None):
        check_precision(precision)
        w = w.detach().float()
        if precision == "int8" and not int8_fits(w.shape[1]):
            precision = "fp32"
        self.precision, self.b, self.packed = precision, b, None
        self.bb = None if b is None else b.to(torch.bfloat16)  # the bias where it is added in bfloat16
        if precision == "bf16":
            self.wb = w.to(torch.bfloat16).contiguous()
            self.w = self.wb.float()
            # packed whatever the size: oneDNN's bf16 product is never slower than F.linear's generic bf16 one
            # (256 x 256 at one row: 20 against 22 us; 1024 x 8192: 334 against 1,631 us; benchmarks/RESULTS.md)
            if rows is not None and w.device.type == "cpu":
                self.packed = pack(self.wb, rows)
        elif precision == "int8":
            self.q, scales = int8_rows(w)
            self.s = scales.to(torch.bfloat16)
            self.w = (self.q.float() * self.s.float()[:, None]).contiguous()
        else:
            self.w = w.contiguous()

    def __call__(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """Float32 ``x`` gives float32 out: the product rounded to bfloat16 where it leaves the kernel, the bias
        added after in float32 (a bias much larger than the product, as the GRU gates' can be, would otherwise
        take the product's bits). Bfloat16 ``x`` gives bfloat16 out (:meth:`bf16`), so that a chain of layers
        (the MLP) casts once on the way in and once on the way out."""
        if self.precision == "fp32":  # an int8 layer the kernel cannot take: F.linear's result, in x's type
            y = F.linear(x.float(), self.w, self.b)
            return (torch.relu_(y) if relu else y).to(x.dtype)
        if x.dtype == torch.bfloat16:
            return self.bf16(x, relu)
        y = self._product(x.to(torch.bfloat16)).float()
        if self.b is not None:
            y.add_(self.b)
        return torch.relu_(y) if relu else y

    def bf16(self, xb: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """bfloat16 (rows, in) -> bfloat16 (rows, out), for a bf16 or int8 layer: product, bias and ReLU rounded
        to bfloat16 once (the output is bfloat16 whatever the order)."""
        if self.precision == "bf16" and self.packed is not None:  # oneDNN: bias and ReLU on its float32 sums
            return torch.ops.mkldnn._linear_pointwise(xb, self.packed, self.b, "relu" if relu else "none", [], "")
        y = self._product(xb)
        if self.b is not None:
            y = y.add_(self.bb)
        return torch.relu_(y) if relu else y

    def _product(self, xb: torch.Tensor) -> torch.Tensor:
        """``xb @ w.T`` without the bias, bfloat16 in and out."""
        if self.precision == "int8":
            return torch._weight_int8pack_mm(xb, self.q, self.s)
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(xb, self.packed, None, "none", [], "")
        return F.linear(xb, self.wb)


@torch.no_grad()
def folded_log_probs(f, codes: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of ``codes`` under folded weights ``f`` (any precision), teacher-forced.

    Starts, like generation and :meth:`SampleRNN.log_probs`, from h0 and a lookback of silence codes,
    and steps the frame tiers exactly as the sampler does (``tier_step``), so it measures the
    distribution the sampler draws from.

    Parameters
    ----------
    f : a :class:`samplernn_lab.sampling.folding.Folded` on CPU.
    codes : (B, T) long, T a multiple of the bottom frame size.

    Returns
    -------
    (B, T, q_levels) float32 log-probabilities: entry ``[b, t]`` is the distribution of sample ``t``.
    """
    from .sampling.folding import tier_step

    b, n = codes.shape
    lb, fs, q = f.lookback, f.frame_size, f.q_levels
    if n % fs:
        raise ValueError(f"{n} codes: need a multiple of the bottom frame size {fs}")
    hist = torch.cat([torch.full((b, lb), q // 2, dtype=torch.long), codes.long()], 1)
    states = []
    for tier in f.tiers:
        h0 = tier.h0.expand(-1, -1, b, -1)
        states.append(
            [(h0[0, k].clone(), h0[1, k].clone()) if tier.lstm else h0[0, k].clone() for k in range(h0.shape[1])]
        )
    conds: list = [None] * len(f.tiers)
    firsts = []
    for s in range(0, n, fs):
        cond = None
        for i, tier in enumerate(f.tiers):
            size = tier.frame_len
            if s % size == 0:
                conds[i] = tier_step(tier, hist[:, lb + s - size : lb + s], cond, states[i], q)
            cond = conds[i][:, (s % size) // (size // tier.frame_size)]
        # the first MLP layer of each sample of the frame: conditioning plus lookup-table rows of its window
        x = conds[-1].clone()
        for j in range(fs):
            window = hist[:, lb + s + j - fs : lb + s + j]
            for k in range(fs):
                x[:, j] += f.lut[k, window[:, k]]
        firsts.append(x)
    # in the MLP's own type, as the sampler: bfloat16 between low-precision layers, their bias inside the rounding
    x = torch.relu(torch.cat(firsts, 1).reshape(b * n, -1)).to(f.mlp_dtype)
    for layer in f.hidden:
        x = layer(x, relu=True)
    return torch.log_softmax(f.out(x).float(), -1).reshape(b, n, -1)
