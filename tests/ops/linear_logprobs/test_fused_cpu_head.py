"""The fused bf16 CPU head (python_api/cpu_fused_head.cpp): its two ops against fp64 on awkward shapes, their
non-finite and bad-input contracts, and linear_logprobs with it against the unfused chunked path."""

import pytest
import torch

import gro_kernels
from gro_kernels.ops.common import chunk_buffer
from gro_kernels.ops.linear_logprobs import chunked, logit_store

pytestmark = pytest.mark.skipif(
    not (gro_kernels._ext.native_available("cpu") and torch.ops.gro_C.fused_head_available("bfloat16")),
    reason="this CPU's micro-kernel has no bf16 tiles")

IGNORE = -100


def _inputs(n, h, v, bias=False, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).bfloat16()
    weight = (torch.randn(v, h, generator=g) * scale / h ** 0.5).bfloat16()
    b = torch.randn(v, generator=g).bfloat16() if bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    targets[::5] = IGNORE
    return hidden, weight, b, targets


def _logits64(hidden, weight, bias, temperature):
    z = hidden.double() @ weight.double().t()
    return (z if bias is None else z + bias.double()) / temperature


def _forward(hidden, weight, bias, targets, temperature, vocab_shard=False):
    n = hidden.shape[0]
    lp, lse, ent = torch.empty(n), torch.empty(n), torch.empty(n)
    torch.ops.gro_C.head_forward_lowp(hidden, weight, bias, targets, 1.0 / temperature, IGNORE, vocab_shard, lp, lse,
                                      ent)
    return lp, lse, ent


SHAPES = [(1, 2, 1), (1, 64, 5), (63, 130, 63), (64, 64, 64), (65, 66, 65), (130, 32, 1000), (300, 96, 3001)]


@pytest.mark.parametrize("n,h,v", SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_forward_matches_fp64(n, h, v, temperature, bias):
    hidden, weight, b, targets = _inputs(n, h, v, bias)
    lp, lse, ent = _forward(hidden, weight, b, targets, temperature)
    z = _logits64(hidden, weight, b, temperature)
    ref_lse = torch.logsumexp(z, 1)
    keep = targets != IGNORE
    ref_lp = torch.where(keep, z.gather(1, targets.clamp(min=0)[:, None])[:, 0] - ref_lse, 0.0)
    ref_ent = torch.where(keep, -(z.softmax(1) * z.log_softmax(1)).sum(1), 0.0)
    for ours, ref in ((lse, ref_lse), (lp, ref_lp), (ent, ref_ent)):
        assert (ours.double() - ref).abs().max() <= 2e-5


def _grad64(hidden, weight, bias, targets, temperature, g_l, g_h):
    z = _logits64(hidden, weight, bias, temperature)
    logp = z.log_softmax(1)
    p = logp.exp()
    keep = targets != IGNORE
    onehot = torch.zeros_like(z)
    onehot[keep.nonzero()[:, 0], targets[keep]] = 1.0
    ent = -(p * logp).sum(1, keepdim=True)
    dz = g_l.double()[:, None] * (onehot - p)
    if g_h is not None:
        dz = dz - g_h.double()[:, None] * p * (logp + ent)
    dz = dz / temperature
    dz[~keep] = 0.0
    return dz, torch.logsumexp(z, 1).float(), ent[:, 0].float()


@pytest.mark.parametrize("n,h,v", SHAPES[1:])
@pytest.mark.parametrize("entropy_grad", [False, True], ids=["logprob", "entropy"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_tile_gradient_matches_fp64(n, h, v, entropy_grad, bias):
    hidden, weight, b, targets = _inputs(n, h, v, bias, seed=1)
    temperature = 0.7
    g_l = torch.randn(n)
    g_h = torch.randn(n) if entropy_grad else None
    dz, lse, ent = _grad64(hidden, weight, b, targets, temperature, g_l, g_h)
    packed = torch.ops.gro_C.pack_hidden_lowp(hidden)
    v0, v1 = v // 3, v  # a tile of the head that starts mid-vocabulary, so targets before it are outside
    grad = torch.full((v1 - v0, n), float("nan"), dtype=torch.bfloat16)
    grad_bias = torch.zeros(v1 - v0) if bias else None
    torch.ops.gro_C.head_logit_grad_lowp_(grad, packed, n, weight[v0:v1], None if b is None else b[v0:v1], targets,
                                          v0, 1.0 / temperature, IGNORE, lse, ent if entropy_grad else None, g_l, g_h,
                                          grad_bias)
    ref = dz[:, v0:v1].t()
    # rounded once to bf16: within half a bf16 ulp of the fp64 value, plus the fp32 error of the logits
    assert ((grad.double() - ref).abs() <= ref.abs() * 2.0 ** -8 + 1e-6).all()
    if bias:
        assert (grad_bias.double() - ref.sum(1)).abs().max() <= 1e-5 * max(1.0, float(ref.abs().sum(1).max()))


def test_non_finite_logits_stay_in_their_rows():
    hidden, weight, _, targets = _inputs(70, 32, 200)
    bias = torch.zeros(200).bfloat16()
    bias[7] = float("-inf")  # a banned token: probability 0 everywhere
    targets[targets == 7] = 8
    targets[1] = 7
    hidden[3, 0] = float("nan")
    lp, lse, ent = _forward(hidden, weight, bias, targets, 1.0)
    assert lp[1] == float("-inf") and torch.isfinite(ent[1])
    assert torch.isnan(lp[3]) or targets[3] == IGNORE
    assert torch.isnan(lse[3])
    rows = torch.arange(70) != 3
    rows[1] = False
    assert torch.isfinite(lp[rows]).all() and torch.isfinite(ent[rows]).all()
    ref = torch.logsumexp(_logits64(hidden, weight, bias, 1.0)[rows], 1)
    assert (lse[rows].double() - ref).abs().max() <= 2e-5
    # the backward: the banned token's gradient is exactly 0, the NaN row's stays in that row, ignored rows are 0
    targets[3] = 5
    g_l = torch.randn(70)
    packed = torch.ops.gro_C.pack_hidden_lowp(hidden)
    grad = torch.empty(200, 70, dtype=torch.bfloat16)
    torch.ops.gro_C.head_logit_grad_lowp_(grad, packed, 70, weight, bias, targets, 0, 1.0, IGNORE, lse, None, g_l,
                                          None, None)
    others = torch.arange(70) != 3
    assert (grad[7, others & (targets != 7)] == 0).all()  # only the one-hot term of a row whose target it is
    assert torch.isnan(grad[:, 3]).all()
    assert torch.isfinite(grad[:, others]).all()
    assert (grad[:, targets == IGNORE] == 0).all()


def test_vocab_shard_targets_and_refusals():
    hidden, weight, _, targets = _inputs(20, 16, 50)
    outside = targets.clone()
    outside[2] = 75  # another shard's token
    lp, lse, _ = _forward(hidden, weight, None, outside, 1.0, vocab_shard=True)
    assert lp[2] == 0 and torch.isfinite(lse[2])
    with pytest.raises(RuntimeError, match="outside"):
        _forward(hidden, weight, None, outside, 1.0)
    with pytest.raises(RuntimeError, match="bfloat16"):
        _forward(hidden.float(), weight.float(), None, targets, 1.0)
    with pytest.raises(RuntimeError, match="even hidden size"):
        _forward(hidden[:, :15], weight[:, :15], None, targets, 1.0)
    with pytest.raises(RuntimeError, match="packed_hidden"):
        torch.ops.gro_C.head_logit_grad_lowp_(torch.empty(50, 20, dtype=torch.bfloat16),
                                              torch.ops.gro_C.pack_hidden_lowp(hidden[:, :8]), 20, weight, None,
                                              targets, 0, 1.0, IGNORE, lse, None, torch.ones(20), None, None)


@pytest.mark.parametrize("n,v", [(1, 3), (70, 1000), (300, 5003)])
@pytest.mark.parametrize("entropy", [False, True])
def test_linear_logprobs_equals_the_unfused_path(monkeypatch, n, v, entropy):
    hidden, weight, bias, targets = _inputs(n, 48, v, bias=True, seed=2)
    g_l, g_h = torch.randn(n), torch.randn(n)

    def run():
        h, w, b = (t.clone().requires_grad_() for t in (hidden, weight, bias))
        out = gro_kernels.linear_logprobs(h, w, targets, b, temperature=0.8, return_entropy=entropy, chunk_size=64)
        lp, ent = out if entropy else (out, None)
        loss = (lp * g_l).sum() + ((ent * g_h).sum() if entropy else 0.0)
        loss.backward()
        return [lp] + ([ent] if entropy else []) + [h.grad, w.grad, b.grad]

    fused = run()
    monkeypatch.setattr(chunked, "fused_head_available", lambda *args: False)
    assert not chunked.fused_head_available(hidden, weight, bias)
    unfused = run()
    for ours, theirs in zip(fused, unfused):
        assert ours.dtype == theirs.dtype
        # bf16 gradients: each path is within a bf16 ulp (<= 2^-7 relative) of the same fp32 sum
        tol = 1e-5 if ours.dtype == torch.float32 else 2.0 ** -6
        assert torch.allclose(ours.float(), theirs.float(), rtol=tol, atol=tol * 1e-2 + 1e-6)


def test_fused_path_is_taken_for_bf16_cpu_heads():
    hidden, weight, bias, _ = _inputs(4, 8, 10, bias=True)
    assert chunk_buffer.fused_head_available(hidden, weight, bias)
    assert not chunk_buffer.fused_head_available(hidden.half(), weight.half(), None)
    assert not chunk_buffer.fused_head_available(hidden[:, :7], weight[:, :7], None)  # odd H
    assert not chunk_buffer.fused_head_available(hidden, weight.t().contiguous().t(), None)  # strided W rows


def _forward_backward(hidden, weight, bias, targets, temperature, entropy, store, vocab_tile=None, chunk_size=4096):
    lp, ent, lse = chunked.forward(hidden, weight, bias, targets, inv_temperature=1.0 / temperature,
                                   ignore_index=IGNORE, with_entropy=entropy, chunk_size=chunk_size, logit_store=store)
    g = torch.Generator().manual_seed(7)
    g_l = torch.randn(hidden.shape[0], generator=g)
    g_h = torch.randn(hidden.shape[0], generator=g) if entropy else None
    grads = chunked.backward(g_l, g_h, hidden, weight, bias, targets, lse, ent, inv_temperature=1.0 / temperature,
                             ignore_index=IGNORE, chunk_size=chunk_size, needs_hidden=True, needs_weight=True,
                             needs_bias=bias is not None, vocab_tile=vocab_tile, logit_store=store)
    return [lp, ent, lse] + [t for t in grads if t is not None]


@pytest.mark.parametrize("n,h,v,vocab_tile", [(1, 16, 70, None), (63, 32, 333, None), (130, 64, 1000, 192),
                                              (200, 66, 3001, 100)])
@pytest.mark.parametrize("budget", ["all", "part"])
@pytest.mark.parametrize("entropy", [False, True])
def test_logit_store_changes_no_bit(n, h, v, vocab_tile, budget, entropy):
    """The backward's stored tiles are the ones it would recompute, bit for bit: whole or partial store, vocabulary
    tiles on or off the store's 64-entry blocks (off-block tiles recompute), a short last panel and block."""
    hidden, weight, bias, targets = _inputs(n, h, v, bias=True, seed=3)
    plain = _forward_backward(hidden, weight, bias, targets, 0.7, entropy, None, vocab_tile)
    panels = -(-n // 64)
    elements = 1 << 30 if budget == "all" else 3 * panels * 64 * 64
    store = logit_store.new(hidden, weight, bias, 4096, elements)
    assert store is not None and store.shape[1:] == (panels, 64, 64)
    assert store.shape[0] == (-(-v // 64) if budget == "all" else min(3, -(-v // 64)))
    stored = _forward_backward(hidden, weight, bias, targets, 0.7, entropy, store, vocab_tile)
    for ours, theirs in zip(stored, plain):
        assert torch.equal(ours, theirs)


def test_logit_store_is_what_the_backward_reads():
    """A store emptied between forward and backward changes the gradients: the backward reads the stored tiles
    instead of recomputing them (the test above cannot tell the two apart)."""
    hidden, weight, _, targets = _inputs(70, 32, 300, seed=4)
    store = logit_store.new(hidden, weight, None, 4096, 1 << 30)
    lp, _, lse = chunked.forward(hidden, weight, None, targets, inv_temperature=1.0, ignore_index=IGNORE,
                                 with_entropy=False, chunk_size=4096, logit_store=store)
    assert torch.isfinite(store).all() and store.abs().max() > 0
    kw = dict(inv_temperature=1.0, ignore_index=IGNORE, chunk_size=4096, needs_hidden=True, needs_weight=True,
              needs_bias=False)
    g_l = torch.ones(70)
    recomputed = chunked.backward(g_l, None, hidden, weight, None, targets, lse, None, **kw)
    store.zero_()  # every logit 0: p = exp(-lse), not the softmax of the head's logits
    from_store = chunked.backward(g_l, None, hidden, weight, None, targets, lse, None, logit_store=store, **kw)
    assert not torch.equal(from_store[0], recomputed[0]) and not torch.equal(from_store[1], recomputed[1])


def test_logit_store_refusals():
    hidden, weight, _, targets = _inputs(70, 32, 300, seed=5)
    lp, lse = torch.empty(70), torch.empty(70)
    with pytest.raises(RuntimeError, match="logit_store"):  # 70 tokens are 2 panels, not 1
        torch.ops.gro_C.head_forward_lowp(hidden, weight, None, targets, 1.0, IGNORE, False, lp, lse, None,
                                          torch.empty(2, 1, 64, 64))
    with pytest.raises(RuntimeError, match="logit_store"):  # more blocks than the head's 5
        torch.ops.gro_C.head_forward_lowp(hidden, weight, None, targets, 1.0, IGNORE, False, lp, lse, None,
                                          torch.empty(6, 2, 64, 64))
    with pytest.raises(RuntimeError, match="logit_store"):
        torch.ops.gro_C.head_forward_lowp(hidden, weight, None, targets, 1.0, IGNORE, False, lp, lse, None,
                                          torch.empty(2, 2, 64, 64, dtype=torch.bfloat16))
    store = logit_store.new(hidden, weight, None, 4096, 1 << 30)
    with pytest.raises(ValueError, match="logit_store"):  # fp32: no fused head to fill it
        chunked.forward(hidden.float(), weight.float(), None, targets, inv_temperature=1.0, ignore_index=IGNORE,
                        with_entropy=False, chunk_size=4096, logit_store=store)
    with pytest.raises(ValueError, match="single row block"):
        chunked.backward(torch.ones(70), None, hidden, weight, None, targets, lse, None, inv_temperature=1.0,
                         ignore_index=IGNORE, chunk_size=1, needs_hidden=True, needs_weight=True, needs_bias=False,
                         logit_store=store)
    # No store where it cannot serve: several backward row blocks, no fused head, a budget under one block.
    assert logit_store.new(hidden, weight, None, 1, 1 << 30) is None
    assert logit_store.new(hidden.float(), weight.float(), None, 4096, 1 << 30) is None
    assert logit_store.new(hidden, weight, None, 4096, 2 * 64 * 64 - 1) is None


def test_logit_store_is_kept_and_reused():
    """borrowed() hands out one kept buffer: the same memory on the next call, a buffer of its own to a call made
    while another holds it, a larger one when the shape grows; dropped when the budget falls below it and by
    gro_kernels.release_logit_store()."""
    hidden, weight, _, _ = _inputs(130, 32, 300, seed=6)
    gro_kernels.release_logit_store()
    with logit_store.borrowed(hidden, weight, None, 4096, 1 << 30) as first:
        assert first.shape == (5, 3, 64, 64)
        with logit_store.borrowed(hidden, weight, None, 4096, 1 << 30) as inner:
            assert inner.data_ptr() != first.data_ptr()
        inner_ptr = inner.data_ptr()
    kept = logit_store._cached[0].data_ptr()
    assert kept in (first.data_ptr(), inner_ptr)  # one of the two, the other freed
    with logit_store.borrowed(hidden[:60], weight, None, 4096, 1 << 30) as smaller:
        assert smaller.shape == (5, 1, 64, 64) and smaller.data_ptr() == kept
    with logit_store.borrowed(hidden, weight, None, 4096, 1 << 30) as again:
        assert again.data_ptr() == kept
    with logit_store.borrowed(hidden, weight, None, 4096, 2 * 3 * 64 * 64) as partial:  # budget below the buffer
        assert partial.shape == (2, 3, 64, 64) and partial.data_ptr() != kept
    with logit_store.borrowed(hidden[:5], weight, None, 4096, 0) as none:  # GRO_LOGIT_STORE_MIB=0 drops it too
        assert none is None
    assert not logit_store._cached
    with logit_store.borrowed(hidden, weight, None, 4096, 1 << 30):
        pass
    assert logit_store._cached
    gro_kernels.release_logit_store()
    assert not logit_store._cached
