"""Grad-in-forward with a bf16 head on CPU over several chunks: the plain forward + token function + vocabulary-
tiled backward branch (fused_token_loss._forward_then_tiled_backward) against the fp32 plain path on the same
(bf16-rounded) inputs, and its logprobs bitwise equal to linear_logprobs_no_grad."""

import pytest
import torch

import gro_kernels
from gro_kernels.ops.linear_logprobs import fused_token_loss as ftl
from tests.ops.linear_logprobs.test_fused_token_loss import make_case, run_fused, run_plain

CASES = [
    pytest.param(dict(n=65, hidden_size=24, vocab=257, bias=True, n_ignored=9), 1.0, False, id="bias-ignored"),
    pytest.param(dict(n=40, hidden_size=16, vocab=211, bias=True, n_ignored=5), 0.7, True, id="temp0.7-entropy"),
]


@pytest.mark.parametrize("case, temperature, with_entropy", CASES)
def test_bf16_branch_matches_fp32_plain_path(monkeypatch, case, temperature, with_entropy):
    hidden, weight, bias, targets, args = make_case(**case)
    hidden, weight, bias = (t.to(torch.bfloat16) for t in (hidden, weight, bias))
    taken = []
    branch = ftl._forward_then_tiled_backward
    monkeypatch.setattr(ftl, "_forward_then_tiled_backward", lambda *a, **k: taken.append(1) or branch(*a, **k))
    kw = dict(temperature=temperature, with_entropy=with_entropy, c_entropy=0.05, grad_output=0.37)
    fused = run_fused(hidden, weight, bias, targets, args, chunk_size=16, **kw)
    assert taken, "the bf16 multi-chunk case must take the tiled-backward branch"
    plain = run_plain(hidden.float(), weight.float(), bias.float(), targets, args, **kw)
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-5, atol=1e-6, msg="loss")
    torch.testing.assert_close(fused[1], plain[1], rtol=1e-5, atol=2e-5, msg="logprobs")
    for name, got, want in zip(["dhidden", "dweight", "dbias"], fused[2:], plain[2:]):
        assert got.dtype == torch.bfloat16, name
        assert (got.float() - want).abs().max() <= 1e-2 * max(1.0, want.abs().max().item()), name
    no_grad = gro_kernels.linear_logprobs_no_grad(hidden, weight, targets, bias, temperature=temperature,
                                                  chunk_size=16)
    assert torch.equal(fused[1], no_grad)  # old logprobs from the no-grad path give ratio exactly 1


@pytest.mark.parametrize("frozen_head", [False, True], ids=["trained-head", "frozen-head"])
def test_bf16_single_chunk_logprobs_equal_no_grad(frozen_head):
    """One chunk (or a frozen head), where the one-pass loop would run: with the fused bf16 CPU head the op still
    takes the forward the no-grad path runs, so old logprobs from it give a ratio of exactly 1."""
    from gro_kernels.ops.common.chunk_buffer import fused_head_available
    hidden, weight, bias, targets, args = make_case(n=40, hidden_size=16, vocab=211, bias=True, n_ignored=5)
    hidden, weight, bias = (t.to(torch.bfloat16) for t in (hidden, weight, bias))
    if not fused_head_available(hidden, weight, bias):
        pytest.skip("no fused bf16 CPU head here")
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_(not frozen_head)
    loss, logprobs, _, _ = ftl.fused_token_loss(h, w, bias, targets, "tests.clipped_surrogate", args, [0.05],
                                                chunk_size=64)
    loss.backward()
    assert h.grad is not None and (w.grad is None) == frozen_head
    no_grad = gro_kernels.linear_logprobs_no_grad(hidden, weight, targets, bias, chunk_size=64)
    assert torch.equal(logprobs, no_grad)


@pytest.mark.parametrize("with_entropy", [False, True])
def test_logit_store_budget_changes_no_bit(monkeypatch, with_entropy):
    """The logit store (H >= 512 with the fused bf16 CPU head) carries the forward's logit tiles to the backward:
    the loss, logprobs and gradients are the same bits with no store, a partial one and the default one; a bad
    GRO_LOGIT_STORE_MIB is refused before any work."""
    from gro_kernels.ops.common.chunk_buffer import fused_head_available
    from gro_kernels.ops.linear_logprobs import logit_store
    hidden, weight, bias, targets, args = make_case(n=150, hidden_size=512, vocab=3000, bias=True, n_ignored=11)
    hidden, weight, bias = (t.to(torch.bfloat16) for t in (hidden, weight, bias))
    if not fused_head_available(hidden, weight, bias):
        pytest.skip("no fused bf16 CPU head here")
    shapes = []
    shape_of = logit_store.store_shape
    monkeypatch.setattr(logit_store, "store_shape", lambda *a: shapes.append(shape_of(*a)) or shapes[-1])
    kw = dict(temperature=0.8, with_entropy=with_entropy, c_entropy=0.05, grad_output=0.37)
    runs = []
    # The last run reuses the kept store, which then holds the previous run's logits.
    for mib in ("0", "1", None, None):
        if mib is None:
            monkeypatch.delenv("GRO_LOGIT_STORE_MIB", raising=False)
        else:
            monkeypatch.setenv("GRO_LOGIT_STORE_MIB", mib)
        runs.append(run_fused(hidden, weight, bias, targets, args, **kw))
    blocks = [None if s is None else s[0] for s in shapes]
    # 139 live rows are 3 panels of 64: 1 MiB (2^18 logits) holds 21 of the 47 vocabulary blocks, the default all
    assert blocks == [None, 21, 47, 47], blocks
    for run in runs[1:]:
        for ours, theirs in zip(run, runs[0]):
            assert torch.equal(ours, theirs)
    for bad in ("-1", "lots"):
        monkeypatch.setenv("GRO_LOGIT_STORE_MIB", bad)
        with pytest.raises(ValueError, match="GRO_LOGIT_STORE_MIB"):
            gro_kernels.linear_logprobs(hidden, weight, targets)
