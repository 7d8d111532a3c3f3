"""SampleRNN (Mehri et al., ICLR 2017) with the conventions of the PyTorch port the study used.

Tiers, bottom first as in ``frame_sizes``: with ``frame_sizes=(8, 2)`` the bottom frame tier reads
frames of 8 samples, the tier above reads frames of 16 (the running product), the lookback is 16,
and a sample-level MLP predicts each sample from the previous 8 and the bottom tier's
conditioning. Each frame tier:

    frame of codes -> rescale to about [-2, 2] -> linear to ``dim`` (+ conditioning from above)
    -> multi-layer GRU (or LSTM) from a learned h0 -> transposed conv (kernel = stride =
    frame size): one conditioning vector per step of the tier below.

The sample-level MLP embeds the previous bottom-frame codes (``embed_size`` each), applies one
layer over that window plus the conditioning vector, ``mlp_hidden_layers`` ReLU layers, and a
log-softmax over ``q_levels``.

Initialisation (as in the port): frame inputs and MLP layers Kaiming-uniform (they feed ReLUs or
sums), the MLP output LeCun-uniform, GRU input weights LeCun-uniform and recurrent weights
orthogonal, each per gate, all biases zero, upsampling uniform in +-1/sqrt(dim), h0 zero. ``init="torch"`` keeps
PyTorch's layer defaults instead (weights about 2.4x smaller in the linear layers, biases drawn, h0 zero).
Weight normalisation (on by default) wraps every linear and convolutional layer but the GRUs;
it is folded into plain weights for inference (:mod:`samplernn_lab.sample`).

The layers keep the port's modules and parameters (checkpoints load either way), but ``forward`` applies
the transposed convolutions as one matrix product and the embedding-then-convolution as lookups in
per-position tables: the same logits and gradients in float32 (dropout aside: the same draws fill the
masks in another order), and a sketch training step 1.3x faster on two CPU threads (``benchmarks/
bench_train.py``), 1.6x on one, where 1-D convolutions and their backward are slow.

Shapes: codes are ``torch.long`` (B, T) in [0, q_levels); log-probabilities (B, T, q_levels).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm as _weight_norm

from .config import ModelConfig

Hidden = list  # one entry per frame tier, top first: a tensor (GRU) or a (h, c) tuple (LSTM)


def _wn(module: nn.Module, enabled: bool, dim: int = 0) -> nn.Module:
    return _weight_norm(module, dim=dim) if enabled else module


def _lecun_uniform_(w: torch.Tensor) -> None:
    bound = math.sqrt(3.0 / w.shape[1])
    nn.init.uniform_(w, -bound, bound)


def rescale_codes(codes: torch.Tensor, q_levels: int) -> torch.Tensor:
    """Codes -> floats at the bin centres of [-2, 2] (the frame tiers' input range)."""
    return (2.0 * codes.float() + 1.0) / q_levels * 2.0 - 2.0


def upsample_matrix(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A transposed convolution with kernel = stride ``k`` as one linear layer's ``(w, b)``.

    Parameters
    ----------
    weight : (dim_in, dim_out, k), ``nn.ConvTranspose1d``'s layout.
    bias : (dim_out,).

    Returns
    -------
    w : (k * dim_out, dim_in); row ``j * dim_out + o`` is output ``o`` of sub-step ``j``.
    b : (k * dim_out,).
    """
    d_in, d_out, k = weight.shape
    return weight.permute(2, 1, 0).reshape(k * d_out, d_in), bias.repeat(k)


def position_tables(table: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Embedding ``table`` (q_levels, embed) times a convolution ``weight`` (dim, embed, k), per position.

    Returns (k, q_levels, dim): row ``[j, c]`` is what code ``c`` at position ``j`` of the window adds to
    the layer's output.
    """
    return torch.einsum("qe,dej->jqd", table, weight)


def upsample_frames(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A transposed convolution with kernel = stride, as one matrix product (CPU convolutions are slow).

    Parameters
    ----------
    y : (B, S, dim_in) one vector per frame.
    weight : (dim_in, dim_out, k), ``nn.ConvTranspose1d``'s layout.
    bias : (dim_out,).

    Returns
    -------
    (B, S * k, dim_out): vector ``j`` of frame ``s`` at ``s * k + j``.
    """
    _, d_out, k = weight.shape
    b, s, _ = y.shape
    return F.linear(y, *upsample_matrix(weight, bias)).reshape(b, s * k, d_out)


def embed_window(prev: torch.Tensor, table: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Embedding then a convolution over ``k`` codes, as ``k`` lookups in per-position tables.

    :func:`position_tables` hold what code ``c`` at position ``j`` adds to the output, so the layer
    is ``k`` row lookups per sample instead of a (k x embed) x dim product: the sampler's folding
    (:mod:`samplernn_lab.sampling.folding`), kept differentiable for training. Where the tables would
    have more rows than the output (many levels, e.g. 16-bit codes, or a short window), the embeddings
    of the ``k`` codes go through one matrix product instead.

    Parameters
    ----------
    prev : (B, T + k - 1) long codes.
    table : (q_levels, embed) the embedding.
    weight : (dim, embed, k), ``nn.Conv1d``'s layout, no bias.

    Returns
    -------
    (B, T, dim) float32, also under autocast: a table row's gradient sums every occurrence of its code (a
    silent stretch is thousands of one code), which 16-bit floats would round away.
    """
    k = weight.shape[2]
    t = prev.shape[1] - k + 1
    q, dim = table.shape[0], weight.shape[0]
    codes = prev.unfold(1, k, 1)  # (B, T, k)
    with torch.autocast(prev.device.type, enabled=False):
        if k * q > codes.shape[0] * t:
            e = F.embedding(codes, table.float()).reshape(codes.shape[0], t, -1)  # (B, T, k * embed)
            return F.linear(e, weight.float().permute(0, 2, 1).reshape(dim, -1))
        luts = position_tables(table.float(), weight.float()).reshape(k * q, dim)  # row j*q + c
        rows = codes + torch.arange(0, k * q, q, device=prev.device)
        bags = rows.reshape(-1, k)
        if prev.device.type == "cpu" and luts.requires_grad:
            out = _LookupSum.apply(bags, luts)
        else:
            out = F.embedding_bag(bags, luts, mode="sum")
        return out.reshape(codes.shape[0], t, dim)


# bags whose gradient :class:`_LookupSum` adds at a time: 16,384 x 256 float32 is 16 MiB; the sketch's 8,192 are one
# part, the poster's batch's 131,072 eight
LOOKUP_BAGS = 16384


class _LookupSum(torch.autograd.Function):
    """``F.embedding_bag(rows, table, mode="sum")`` whose backward adds each bag's gradient into its rows
    with ``index_add_``, once per column of ``rows``.

    The same gradient to float32 rounding. On a CPU embedding_bag's own backward sorts every row index
    first: at the poster's batch (128 x 1,024 bags of 8) about a fifth of a training step of the sketch's
    size, where ``index_add_``, 16,384 bags at a time, takes under a third of its time and adds in a fixed order
    (``benchmarks/RESULTS.md``, "The allocator and the embedding's gradient"). Used on a CPU only; a GPU keeps
    embedding_bag's (not measured there).
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows)
        ctx.table_rows = table.shape[0]
        return F.embedding_bag(rows, table, mode="sum")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        (rows,) = ctx.saved_tensors
        out = grad.new_zeros(ctx.table_rows, grad.shape[1])
        # LOOKUP_BAGS bags at a time, every position's rows added while that part is in cache: the gradient is read
        # from memory once, not once per position (the same sums in the same order, sample after sample)
        for s in range(0, rows.shape[0], LOOKUP_BAGS):
            part, part_rows = grad[s : s + LOOKUP_BAGS], rows[s : s + LOOKUP_BAGS]
            for j in range(rows.shape[1]):
                out.index_add_(0, part_rows[:, j], part)
        return None, out


class FrameTier(nn.Module):
    """One frame-level tier: reads frames of ``frame_len`` samples, steps once per frame."""

    def __init__(self, frame_size: int, frame_len: int, cfg: ModelConfig):
        super().__init__()
        self.frame_size, self.frame_len, self.dim = frame_size, frame_len, cfg.dim
        rnn_cls = nn.GRU if cfg.rnn_type == "gru" else nn.LSTM
        self.is_lstm = cfg.rnn_type == "lstm"
        self.expand = nn.Linear(frame_len, cfg.dim)
        self.rnn = rnn_cls(cfg.dim, cfg.dim, cfg.n_rnn, batch_first=True)
        self.upsample = nn.ConvTranspose1d(cfg.dim, cfg.dim, frame_size, stride=frame_size)
        self.drop = nn.Dropout(cfg.dropout)
        n_states = 2 if self.is_lstm else 1
        self.h0 = nn.Parameter(torch.zeros(n_states, cfg.n_rnn, 1, cfg.dim), requires_grad=cfg.learn_h0)

        if cfg.init == "port":
            self._port_init(cfg)
        self.expand = _wn(self.expand, cfg.weight_norm)
        self.upsample = _wn(self.upsample, cfg.weight_norm, dim=1)

    @torch.no_grad()
    def _port_init(self, cfg: ModelConfig) -> None:
        nn.init.kaiming_uniform_(self.expand.weight)
        nn.init.zeros_(self.expand.bias)
        gates = 4 if self.is_lstm else 3
        for layer in range(cfg.n_rnn):
            w_ih, w_hh = getattr(self.rnn, f"weight_ih_l{layer}"), getattr(self.rnn, f"weight_hh_l{layer}")
            for g in range(gates):
                _lecun_uniform_(w_ih.data[g * cfg.dim : (g + 1) * cfg.dim])
                nn.init.orthogonal_(w_hh.data[g * cfg.dim : (g + 1) * cfg.dim])
            nn.init.zeros_(getattr(self.rnn, f"bias_ih_l{layer}"))
            nn.init.zeros_(getattr(self.rnn, f"bias_hh_l{layer}"))
        bound = 1.0 / math.sqrt(cfg.dim)
        nn.init.uniform_(self.upsample.weight, -bound, bound)
        nn.init.zeros_(self.upsample.bias)

    def initial_hidden(self, batch: int):
        h = self.h0.expand(-1, -1, batch, -1).contiguous()
        return (h[0], h[1]) if self.is_lstm else h[0]

    def forward(self, frames: torch.Tensor, cond: torch.Tensor | None, hidden):
        """Map frames (B, S, frame_len) floats, cond (B, S, dim) or None -> ((B, S*frame_size, dim), hidden)."""
        x = self.expand(frames)
        if cond is not None:
            x = x + cond
        if hidden is None:
            hidden = self.initial_hidden(frames.shape[0])
        y, hidden = self.rnn(x, hidden)
        return upsample_frames(self.drop(y), self.upsample.weight, self.upsample.bias), hidden


class SampleMLP(nn.Module):
    """Predicts each sample from the previous ``frame_size`` codes and a conditioning vector."""

    def __init__(self, frame_size: int, cfg: ModelConfig):
        super().__init__()
        self.frame_size = frame_size
        self.embedding = nn.Embedding(cfg.q_levels, cfg.embed_size)
        self.input = nn.Conv1d(cfg.embed_size, cfg.dim, frame_size, bias=False)
        self.hidden = nn.ModuleList(nn.Linear(cfg.dim, cfg.dim) for _ in range(cfg.mlp_hidden_layers))
        self.output = nn.Linear(cfg.dim, cfg.q_levels)
        self.drop = nn.Dropout(cfg.dropout)

        if cfg.init == "port":
            nn.init.kaiming_uniform_(self.input.weight)
            for layer in self.hidden:
                nn.init.kaiming_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
            _lecun_uniform_(self.output.weight)
            nn.init.zeros_(self.output.bias)
        self.input = _wn(self.input, cfg.weight_norm)
        self.hidden = nn.ModuleList(_wn(layer, cfg.weight_norm) for layer in self.hidden)
        self.output = _wn(self.output, cfg.weight_norm)

    def forward(self, prev: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Map previous codes (B, T + frame_size - 1), cond (B, T, dim) -> logits (B, T, q_levels)."""
        x = self.drop(F.relu(embed_window(prev, self.embedding.weight, self.input.weight).to(cond.dtype) + cond))
        for layer in self.hidden:
            x = self.drop(F.relu(layer(x)))
        return self.output(x)


class SampleRNN(nn.Module):
    """The multi-tier model. ``forward`` is teacher-forced over one window with carried state."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        lengths = config.frame_lengths
        # Stored top tier first: the order in which a window is computed.
        self.tiers = nn.ModuleList(
            FrameTier(config.frame_sizes[i], lengths[i], config) for i in reversed(range(len(lengths)))
        )
        self.mlp = SampleMLP(config.frame_sizes[0], config)

    @property
    def lookback(self) -> int:
        return self.config.lookback

    def forward(self, codes: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        """Teacher-forced logits for one window.

        Parameters
        ----------
        codes : (B, lookback + T) long; T a multiple of the top tier's frame length.
        hidden : state carried from the previous window, or None for the learned h0.

        Returns
        -------
        logits : (B, T, q_levels) unnormalised; ``log_softmax`` gives log-probabilities.
        hidden : the state after the window.
        """
        lb = self.lookback
        b, total = codes.shape
        t = total - lb
        if t <= 0 or t % lb:
            raise ValueError(f"window of {total} codes: need lookback {lb} plus a multiple of {lb}")
        q = self.config.q_levels
        cond = None
        new_hidden = []
        for i, tier in enumerate(self.tiers):
            n = tier.frame_len
            frames = rescale_codes(codes[:, lb - n : lb - n + t], q).reshape(b, t // n, n)
            cond, h = tier(frames, cond, None if hidden is None else hidden[i])
            new_hidden.append(h)
        fs = self.mlp.frame_size
        logits = self.mlp(codes[:, lb - fs : lb + t - 1], cond)
        return logits, new_hidden

    def initial_hidden(self, batch: int) -> Hidden:
        return [tier.initial_hidden(batch) for tier in self.tiers]

    @torch.no_grad()
    def log_probs(self, codes: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of ``codes`` given everything before them.

        Starts, like generation, from h0 and a lookback of silence codes; never drops (eval mode for the call).

        Parameters
        ----------
        codes : (B, T) long in [0, q_levels).

        Returns
        -------
        (B, T, q_levels) float32: entry ``[b, t]`` is the distribution of sample ``t``.
        """
        from .audio import silence_code

        lb = self.lookback
        b, t = codes.shape
        pad = (-t) % lb
        silence = silence_code(self.config.q_levels)
        dev = next(self.parameters()).device
        x = torch.cat(
            [
                torch.full((b, lb), silence, dtype=torch.long),
                codes.long().cpu(),
                torch.full((b, pad), silence, dtype=torch.long),
            ],
            dim=1,
        ).to(dev)
        with eval_mode(self):
            logits, _ = self(x)
        return F.log_softmax(logits[:, :t].float(), dim=-1).cpu()


def port_forward(model: SampleRNN, codes: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
    """``model(codes, hidden)`` with every layer applied as its own module, as the PyTorch port does.

    The reference :meth:`SampleRNN.forward` is tested against (the same logits and gradients) and timed
    against (``benchmarks/bench_train.py``); nothing else runs it. Dropout is left out (0 in the presets).
    """
    lb, q = model.lookback, model.config.q_levels
    b, t = codes.shape[0], codes.shape[1] - lb
    cond, new_hidden = None, []
    for i, tier in enumerate(model.tiers):
        n = tier.frame_len
        x = tier.expand(rescale_codes(codes[:, lb - n : lb - n + t], q).reshape(b, t // n, n))
        h = tier.initial_hidden(b) if hidden is None else hidden[i]
        y, h = tier.rnn(x if cond is None else x + cond, h)
        cond = tier.upsample(y.transpose(1, 2)).transpose(1, 2)
        new_hidden.append(h)
    fs = model.mlp.frame_size
    e = model.mlp.embedding(codes[:, lb - fs : lb + t - 1]).transpose(1, 2)
    x = torch.relu(model.mlp.input(e).transpose(1, 2) + cond)
    for layer in model.mlp.hidden:
        x = torch.relu(layer(x))
    return model.mlp.output(x), new_hidden


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode (no dropout) for a block, then back in the mode it was in."""
    was_training = model.training
    try:
        yield model.eval()
    finally:
        model.train(was_training)


# Rows of logits the loss reads at a time on a CPU: 2,048 x 256 levels in float32 is 2 MiB, so a step's
# temporaries are a few MiB instead of several 128 MiB float32 copies at the poster's batch. On a GPU, whose
# memory is fast and where each chunk costs kernel launches, one chunk is all the rows (not measured there).
NLL_ROWS = 2048


# exp's arguments stop here: exp(-80) = 1.8e-35 adds nothing to a float32 sum holding 1 (a softmax's denominator),
# and on a CPU torch's exp is about 70x slower where its result would underflow, which a trained model's unlikely
# levels, most of them, do. The backward pass folds its scale into the argument for the same reason (no products
# in the subnormal range).
EXP_FLOOR = -80.0


def _row_chunks(logits: torch.Tensor) -> list[slice]:
    """Slices of :data:`NLL_ROWS` rows of ``logits`` (N, q) on a CPU; elsewhere one slice of all of them."""
    n = logits.shape[0]
    rows = NLL_ROWS if logits.device.type == "cpu" else max(1, n)
    return [slice(s, s + rows) for s in range(0, n, rows)]


class _ChunkedCrossEntropy(torch.autograd.Function):
    """``F.cross_entropy(logits.float(), targets)`` (mean over rows) in chunks of :data:`NLL_ROWS` rows.

    The same value and gradient to float32 rounding, whatever the logits' dtype. Forward keeps each row's
    log-sum-exp; backward is ``softmax - one_hot`` from it, computed in float32 and returned in the logits'
    dtype. At the poster's batch of 128 x 1,024 samples PyTorch's log-softmax and its backward make several
    128 MiB float32 copies a step: there a CPU training step of the sketch's size was 1.17x faster in ``train``
    this way, the sketch's own 1.09x (``benchmarks/RESULTS.md``, "The loss in chunks"); since training keeps freed
    pages (``train_start.keep_freed_memory``) ``bench_train.py``'s loops gain 1.06x and about 1x from it ("The
    allocator and the embedding's gradient").
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        sums = []
        for c in _row_chunks(logits):
            x, t = logits[c].float(), targets[c, None]
            top = x.amax(dim=1, keepdim=True)
            lse[c] = top[:, 0] + (x - top).clamp_(min=EXP_FLOOR).exp_().sum(dim=1).log_()
            sums.append((lse[c] - x.gather(1, t)[:, 0]).sum())
        ctx.save_for_backward(logits, targets, lse)
        return torch.stack(sums).sum() / logits.shape[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, targets, lse = ctx.saved_tensors
        out = torch.empty_like(logits)
        scale = grad.float() / logits.shape[0]
        # |scale| goes into the exponent down to e^-40 (the floor stays far under it); a smaller one, never met in
        # training (1 / (N ln 2) or a gradient scaler's multiple of it), is multiplied back in with the sign.
        log_abs = scale.abs().log()
        fold = log_abs.clamp(min=EXP_FLOOR / 2)
        rest, minus = (log_abs - fold).exp() * scale.sign(), -fold.exp()
        for c in _row_chunks(logits):
            # e^fold * softmax, as one exp; then e^fold off at the target, and the rest of the scale
            p = (logits[c].float() - lse[c, None]).add_(fold).clamp_(min=EXP_FLOOR).exp_()
            t = targets[c, None]
            p.scatter_add_(1, t, minus.expand(t.shape))
            out[c] = p.mul_(rest)
        return out, None


def nll_bits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood in bits per sample; logits (B, T, q), targets (B, T) long in [0, q).

    Computed in float32 in chunks of rows (:class:`_ChunkedCrossEntropy`): ``F.cross_entropy`` on the logits
    made float32, divided by ln 2, in value and gradient (to float32 rounding).
    """
    flat = logits.reshape(-1, logits.shape[-1])
    return _ChunkedCrossEntropy.apply(flat, targets.reshape(-1)) / math.log(2.0)
