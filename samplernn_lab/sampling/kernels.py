"""The sample-level loop of one bottom frame, twice: a numba kernel (CPU) and torch ops (any device).

Both sample by inverse CDF of ``softmax(logits / temperature)`` at one uniform per sample, drawn in
bulk by the caller, and take codes as given where ``forced`` is not -1 (priming). With ``top_p < 1`` the
distribution is first cut to its nucleus: the most likely codes whose probabilities sum to ``top_p`` or
more (every code as likely as the least likely of them: ties at the cut stay), renormalised.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .folding import Folded

try:  # numba comes with librosa; without it the CPU falls back to the torch path
    import numba
except ImportError:  # pragma: no cover
    numba = None


if numba is not None:

    @numba.njit(cache=True, nogil=True)
    def dense_numba(x, w, b, y):  # pragma: no cover
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
    def mlp_frame_numba(
        lut, cond, hid_w, hid_b, out_w, out_b, window, temps, t_off, uniforms, forced, top_p
    ):  # pragma: no cover
        # lut (fs, q, dim); cond (B, fs, dim); hid_w (L, dim, dim) transposed to (in, out); hid_b (L, dim)
        # out_w (dim, q) transposed; window (B, 2 fs) int64: fs previous codes, then the fs to fill;
        # temps (B, >= t_off + fs): each sample's temperature (0 = greedy), this frame's from column t_off;
        # uniforms (B, fs) float64;
        # forced (B, fs) int64, -1 where a code is sampled;
        # top_p: nucleus mass (1.0: the whole distribution).
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
                dense_numba(x, hid_w[layer], hid_b[layer], y)
                for b in range(b_size):
                    for d in range(dim):
                        x[b, d] = y[b, d] if y[b, d] > 0.0 else 0.0
            dense_numba(x, out_w, zero, logits)  # the bias is added below
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
                t = temps[b, t_off + j]
                if t > 0.0:  # inverse CDF of softmax(logits / t) at one uniform
                    total = 0.0
                    for i in range(q):
                        e = math.exp((float(logits[b, i] + out_b[i]) - float(top)) / t)
                        weights[i] = e
                        total += e
                    if top_p < 1.0:  # keep the nucleus: codes at least as likely as the one reaching top_p
                        order = np.argsort(weights)
                        need = top_p * total
                        acc = 0.0
                        cut = 0.0
                        for k in range(q - 1, -1, -1):
                            cut = weights[order[k]]
                            acc += cut
                            if acc >= need:
                                break
                        total = 0.0
                        for i in range(q):
                            if weights[i] < cut:
                                weights[i] = 0.0
                            else:
                                total += weights[i]
                    target = uniforms[b, j] * total
                    acc = 0.0
                    for i in range(q):
                        if weights[i] > 0.0:
                            best = i  # the last code with mass, should round-off leave the target unreached
                            acc += weights[i]
                            if acc > target:
                                break
                window[b, fs + j] = best


def mlp_frame_torch(
    f: Folded,
    cond: torch.Tensor,
    window: torch.Tensor,
    inv_t: torch.Tensor,
    greedy: torch.Tensor | None,
    uniforms: torch.Tensor,
    forced: torch.Tensor | None,
    top_p: float = 1.0,
) -> None:
    """The torch twin of the numba kernel, for any device: inverse-CDF sampling on bulk uniforms.

    cond (B, fs, dim); window (B, 2 fs) long, filled in place; inv_t (B, fs) = 1 / each sample's temperature
    (1 where greedy); greedy (B, fs) bool or None when no step is; uniforms (B, fs); forced (B, fs) or None;
    top_p: nucleus mass (1.0: the whole distribution).
    """
    fs, q, dim = f.lut.shape
    offsets = torch.arange(fs, device=window.device) * q
    lut = f.lut.view(fs * q, dim)
    for j in range(fs):
        # the first layer is a sum of lookup-table rows: one fused gather-and-add
        x = F.embedding_bag(window[:, j : j + fs] + offsets, lut, mode="sum").add_(cond[:, j]).relu_()
        x = x.to(f.mlp_dtype)  # low precision: one cast in, one out, none between the layers
        for layer in f.hidden:
            x = layer(x, relu=True)
        logits = f.out(x).float().mul_(inv_t[:, j : j + 1])
        probs = torch.softmax(logits, dim=1)
        if top_p < 1.0:
            probs = nucleus(probs, top_p)
        cdf = probs.cumsum_(1)
        code = torch.searchsorted(cdf, uniforms[:, j : j + 1] * cdf[:, -1:]).squeeze(1).clamp_(max=q - 1)
        if greedy is not None:
            code = torch.where(greedy[:, j], logits.argmax(dim=1), code)
        if forced is not None:
            code = torch.where(forced[:, j] >= 0, forced[:, j], code)
        window[:, fs + j] = code


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs`` (..., q) with the mass outside each distribution's nucleus set to 0 (not renormalised).

    The nucleus: the most likely codes whose probabilities sum to ``top_p`` or more, and every code as
    likely as the least likely of them (ties at the cut stay, as in the numba kernel).
    """
    ranked = probs.sort(dim=-1, descending=True).values
    inside = (ranked.cumsum(-1) < top_p * ranked.sum(-1, keepdim=True)).sum(-1, keepdim=True)  # codes before the cut
    cut = ranked.gather(-1, inside.clamp_(max=probs.shape[-1] - 1))
    return torch.where(probs >= cut, probs, torch.zeros_like(probs))
