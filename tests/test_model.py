import pytest
import torch

from samplernn_lab import ModelConfig, SampleRNN
from samplernn_lab.config import SettingError
from samplernn_lab.model import embed_window, nll_bits, port_forward

TINY = ModelConfig(frame_sizes=(4, 2), dim=24, n_rnn=1, embed_size=8, q_levels=32)


@pytest.mark.parametrize(
    "cfg",
    [
        TINY,
        ModelConfig(frame_sizes=(8, 2), dim=16, n_rnn=2, embed_size=8, q_levels=16, rnn_type="lstm", weight_norm=False),
        ModelConfig(frame_sizes=(2, 2, 2), dim=16, n_rnn=1, embed_size=8, q_levels=16),
    ],
)
def test_causal_changing_later_codes_never_changes_earlier_log_probs(cfg):
    torch.manual_seed(0)
    model = SampleRNN(cfg).eval()
    codes = torch.randint(0, cfg.q_levels, (2, 100))
    base = model.log_probs(codes)
    for t in (0, 7, 8, 31, 64, 99):
        other = codes.clone()
        other[:, t:] = torch.randint(0, cfg.q_levels, other[:, t:].shape)
        lp = model.log_probs(other)
        assert torch.equal(lp[:, : t + 1], base[:, : t + 1]), t  # sample t's distribution depends on < t only
        if t < 99:
            assert not torch.allclose(lp[:, t + 1 :], base[:, t + 1 :])


def test_frame_lengths_and_lookback():
    cfg = ModelConfig(frame_sizes=(8, 2))
    assert cfg.frame_lengths == (8, 16) and cfg.lookback == 16
    model = SampleRNN(ModelConfig(frame_sizes=(8, 2), dim=8, n_rnn=1, embed_size=4, q_levels=8))
    assert [t.frame_len for t in model.tiers] == [16, 8]  # stored top first


def test_windowed_tbptt_equals_one_pass():
    torch.manual_seed(1)
    model = SampleRNN(TINY).eval()
    lb = model.lookback
    codes = torch.randint(0, 32, (3, lb + 64))
    full, _ = model(codes)
    hidden, parts = None, []
    for i in range(4):  # windows of 16 with carried state
        logits, hidden = model(codes[:, i * 16 : i * 16 + lb + 16], hidden)
        parts.append(logits)
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_log_probs_starts_from_silence_and_h0():
    torch.manual_seed(2)
    model = SampleRNN(TINY).eval()
    codes = torch.randint(0, 32, (2, 24))
    x = torch.cat([torch.full((2, model.lookback), 16), codes], 1)
    logits, _ = model(x)
    assert torch.allclose(model.log_probs(codes), torch.log_softmax(logits, -1), atol=1e-6)


def test_h0_is_learned():
    model = SampleRNN(TINY)
    codes = torch.randint(0, 32, (2, model.lookback + 16))
    logits, _ = model(codes)
    nll_bits(logits, codes[:, model.lookback :]).backward()
    assert all(t.h0.grad is not None and t.h0.grad.abs().sum() > 0 for t in model.tiers)


def test_dropout_drops_only_while_training():
    import dataclasses

    torch.manual_seed(3)
    model = SampleRNN(dataclasses.replace(TINY, dropout=0.5))
    plain = SampleRNN(TINY)
    plain.load_state_dict(model.state_dict())  # dropout adds no weights
    codes = torch.randint(0, 32, (2, model.lookback + 32))
    a, _ = model.train()(codes)
    b, _ = model(codes)
    assert not torch.allclose(a, b)  # two masks
    tiers, mlp = [t.drop for t in model.tiers], [model.mlp.drop]
    for on in (tiers, mlp):  # the frame tiers' outputs and the MLP's activations each drop on their own
        for site in tiers + mlp:
            site.p = 0.5 if site in on else 0.0
        a, _ = model(codes)
        assert not torch.allclose(a, model(codes)[0])
    assert torch.equal(model.eval()(codes)[0], plain.eval()(codes)[0])
    lp = model.train().log_probs(codes)  # the teacher-forced distribution never drops either
    assert torch.equal(lp, model.log_probs(codes)) and model.training


def test_sampling_never_drops():
    import dataclasses

    from samplernn_lab import generate

    torch.manual_seed(4)
    model = SampleRNN(dataclasses.replace(TINY, dropout=0.5)).train()  # as an epoch render finds it
    plain = SampleRNN(TINY)
    plain.load_state_dict(model.state_dict())
    assert torch.equal(generate(model, 200, seed=2), generate(plain.eval(), 200, seed=2))


def test_poster_size():
    from samplernn_lab.presets import get_preset

    p = get_preset("poster")
    assert p.model.frame_sizes == (8, 2) and p.model.dim == 1024 and p.model.n_rnn == 2
    assert p.model.embed_size == 256 and p.model.q_levels == 256 and p.model.learn_h0
    assert p.train.seq_len == 1024 and p.train.batch_size == 128 and p.data.sample_rate == 44100
    # a short source is copied until its training chunks fill the study's batch (a 6 s one made 5 of 8 copies)
    assert p.data.min_chunks >= p.train.batch_size


@pytest.mark.parametrize("weight_norm, q_levels", [(True, 32), (False, 32), (True, 256)])
def test_forward_and_gradients_equal_the_convolutional_form(weight_norm, q_levels):
    # The transposed convolutions and the embedding-then-convolution run as a matrix product and table lookups
    # (CPU convolutions are slow); the logits and every gradient must stay those of the modules themselves.
    # With 256 levels the tables (4 x 256 rows) outgrow the 3 x 64 outputs: the other way round in embed_window.
    torch.manual_seed(2)
    cfg = ModelConfig(frame_sizes=(4, 2, 2), dim=24, n_rnn=1, embed_size=8, q_levels=q_levels, weight_norm=weight_norm)
    model = SampleRNN(cfg)
    codes = torch.randint(0, cfg.q_levels, (3, model.lookback + 64))
    grads = []
    for forward in (lambda: model(codes)[0], lambda: port_forward(model, codes)[0]):
        model.zero_grad()
        logits = forward()
        nll_bits(logits, codes[:, model.lookback :]).backward()
        grads.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (fast, fast_grads), (slow, slow_grads) = grads
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    assert fast_grads.keys() == slow_grads.keys() and len(fast_grads) > 10
    for name, g in slow_grads.items():
        torch.testing.assert_close(fast_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_table_lookups_gradient_in_parts_equals_embedding_bags():
    # On a CPU the lookups' backward adds LOOKUP_BAGS bags at a time, every position per part: over several
    # parts, a short last one and rows repeated within a bag, the table's gradient is embedding_bag's own
    from samplernn_lab.model import LOOKUP_BAGS, _LookupSum

    torch.manual_seed(4)
    n, k, q, dim = 3 * LOOKUP_BAGS + 5, 3, 16, 8
    rows = torch.randint(0, k * q, (n, k))
    rows[:10, 1] = rows[:10, 0]
    upstream = torch.randn(n, dim, dtype=torch.float64)  # float64: the two add in different orders
    grads = []
    for lookup in (_LookupSum.apply, lambda r, t: torch.nn.functional.embedding_bag(r, t, mode="sum")):
        table = torch.randn(k * q, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        table.requires_grad_()
        (lookup(rows, table) * upstream).sum().backward()
        grads.append(table.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_embedding_table_gradients_keep_float32_under_bf16_autocast():
    # A silent stretch is thousands of one code: summed in bfloat16, its table row's gradient would lose
    # a third of itself. The tables are built and summed in float32 whatever the autocast.
    torch.manual_seed(3)
    q, embed, dim, k, t = 32, 16, 24, 4, 4096
    prev = torch.where(torch.rand(2, t + k - 1) < 0.9, 5, torch.randint(0, q, (2, t + k - 1)))
    table, weight = torch.randn(q, embed), torch.randn(dim, embed, k) * 0.1
    upstream = torch.randn(2, t, dim)

    def grads(dtype, autocast):
        tab = table.to(dtype).requires_grad_()
        w = weight.to(dtype).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = embed_window(prev, tab, w)
        (out.to(dtype) * upstream.to(dtype)).sum().backward()
        return tab.grad.double(), w.grad.double()

    exact = grads(torch.float64, False)
    for got, want in zip(grads(torch.float32, True), exact):
        assert ((got - want).norm() / want.norm()).item() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
# the loss scaled, as a gradient scaler does; a sign; a scale under the exponent's floor; none
@pytest.mark.parametrize("upstream", [2.5, 65536.0, -0.5, 1e-30, 0.0])
def test_nll_bits_in_chunks_equals_cross_entropy_in_value_and_gradient(monkeypatch, dtype, upstream):
    import math

    import samplernn_lab.model as model_module

    monkeypatch.setattr(model_module, "NLL_ROWS", 7)  # 3 x 13 rows: six chunks, the last one short
    chunks = []
    row_chunks = model_module._row_chunks
    monkeypatch.setattr(model_module, "_row_chunks", lambda x: chunks.append(row_chunks(x)) or chunks[-1])
    torch.manual_seed(4)
    logits = (torch.randn(3, 13, 32) * torch.tensor([1.0, 30.0, 0.01])[:, None, None]).to(dtype)
    targets = torch.randint(0, 32, (3, 15))[:, 2:]  # a window's targets: a slice, not contiguous

    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    got = nll_bits(a, targets)
    want = torch.nn.functional.cross_entropy(b.reshape(-1, 32).float(), targets.reshape(-1)) / math.log(2.0)
    (got * upstream).backward()
    (want * upstream).backward()
    assert [[len(range(39)[c]) for c in call] for call in chunks] == [[7, 7, 7, 7, 7, 4]] * 2  # forward, backward
    assert got.dtype == torch.float32 and a.grad.dtype == dtype
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-8 * abs(upstream))
    if upstream == 0.0:
        assert not a.grad.any()
    with torch.no_grad():  # validation calls it without a graph
        torch.testing.assert_close(nll_bits(logits, targets), want.detach(), rtol=1e-6, atol=1e-6)


def test_init_torch_keeps_pytorchs_layer_defaults_and_port_the_ports():
    cfg = dict(frame_sizes=(4, 2), dim=32, n_rnn=1, embed_size=8, q_levels=64, weight_norm=False)
    torch.manual_seed(0)
    port = SampleRNN(ModelConfig(**cfg))
    torch.manual_seed(0)
    mine = SampleRNN(ModelConfig(**cfg, init="torch"))
    bound = 32**-0.5  # PyTorch's GRU and Linear(32, .) defaults: uniform in +-1/sqrt(32), biases drawn
    for model, default in ((mine, True), (port, False)):
        rnn, hidden = model.tiers[0].rnn, model.mlp.hidden[0]
        within = float(rnn.weight_hh_l0.abs().max()) <= bound and float(hidden.weight.abs().max()) <= bound
        drawn = float(rnn.bias_ih_l0.abs().sum()) > 0 and float(hidden.bias.abs().sum()) > 0
        assert within == default and drawn == default  # the port: orthogonal and Kaiming, biases zero
    with pytest.raises(SettingError, match="init"):
        ModelConfig(**cfg, init="xavier")
