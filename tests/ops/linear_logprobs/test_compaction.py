"""Row compaction: ignored / masked rows never reach the GEMMs, so they cost nothing and a non-finite
value in them cannot leak into any gradient (issue: one NaN at a padded token poisoned dweight)."""

import pytest
import torch

import gro_kernels
from gro_kernels.ops.linear_logprobs import chunked
from tests.support.helpers import make_inputs

BACKENDS = ["chunked", "naive"]


def _poisoned(n=23, h=16, v=131, dtype=torch.float32):
    hidden, weight, targets, bias = make_inputs(n, h, v, dtype=dtype, bias=True, ignored=(0, 5, 22))
    hidden[5] = float("nan")
    hidden[22, 3] = float("inf")
    return hidden, weight, targets, bias


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entropy", [False, True], ids=["logprobs", "entropy"])
def test_non_finite_ignored_rows_leave_every_gradient_finite(backend, entropy):
    hidden, weight, targets, bias = _poisoned()
    h, w, b = (t.clone().requires_grad_() for t in (hidden, weight, bias))
    out = gro_kernels.linear_logprobs(h, w, targets, b, return_entropy=entropy, backend=backend, chunk_size=5)
    outs = out if entropy else (out,)
    sum(o @ torch.randn(o.shape[0]) for o in outs).backward()
    ignored = targets == -100
    for o in outs:
        assert torch.isfinite(o).all() and torch.all(o[ignored] == 0)
    assert torch.isfinite(w.grad).all() and torch.isfinite(b.grad).all()
    assert torch.isfinite(h.grad).all() and torch.all(h.grad[ignored] == 0)


def test_non_finite_live_row_stays_in_its_own_outputs():
    hidden, weight, targets, bias = make_inputs(12, 16, 97, bias=True)
    hidden[4] = float("nan")
    lp = gro_kernels.linear_logprobs(hidden, weight, targets, bias, chunk_size=5)
    assert torch.isnan(lp[4]) and torch.isfinite(lp[torch.arange(12) != 4]).all()


def test_only_live_rows_reach_the_gemms(monkeypatch):
    hidden, weight, targets, bias = make_inputs(40, 16, 97, ignored=range(0, 40, 3))
    seen = []
    logits = chunked.ChunkBuffer.logits

    def spy(self, hidden_rows, weight, bias):
        seen.append(hidden_rows.shape[0] * weight.shape[0])  # logits computed (the backward may tile the vocabulary)
        return logits(self, hidden_rows, weight, bias)

    monkeypatch.setattr(chunked.ChunkBuffer, "logits", spy)
    h = hidden.clone().requires_grad_()
    gro_kernels.linear_logprobs(h, weight, targets, backend="chunked", chunk_size=8).sum().backward()
    live = int((targets != -100).sum())
    assert sum(seen) == 2 * live * weight.shape[0]  # forward + backward recompute, live rows only


def test_compacted_equals_dense_valid_rows():
    hidden, weight, targets, bias = make_inputs(37, 24, 113, bias=True, ignored=(1, 2, 3, 20, 36))
    valid = targets != -100
    g = torch.randn(37)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    lp1, ent1 = gro_kernels.linear_logprobs(h1, w1, targets, bias, return_entropy=True, chunk_size=6)
    ((lp1 + ent1) * g).sum().backward()
    h2, w2 = hidden[valid].clone().requires_grad_(), weight.clone().requires_grad_()
    lp2, ent2 = gro_kernels.linear_logprobs(h2, w2, targets[valid], bias, return_entropy=True, chunk_size=6)
    ((lp2 + ent2) * g[valid]).sum().backward()
    torch.testing.assert_close(lp1[valid], lp2)
    torch.testing.assert_close(ent1[valid], ent2)
    torch.testing.assert_close(h1.grad[valid], h2.grad)
    torch.testing.assert_close(w1.grad, w2.grad)


def test_all_rows_ignored():
    hidden, weight, targets, _ = make_inputs(6, 8, 31, ignored=range(6))
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    lp = gro_kernels.linear_logprobs(h, w, targets)
    lp.sum().backward()
    assert torch.all(lp == 0) and torch.all(h.grad == 0) and torch.all(w.grad == 0)


def test_exact_kl_masked_non_finite_rows():
    hidden, weight, _, bias = make_inputs(17, 12, 67, bias=True)
    ref_hidden, ref_weight, _, _ = make_inputs(17, 10, 67, seed=1)
    mask = torch.ones(17, dtype=torch.bool)
    mask[[3, 9]] = False
    hidden[3] = float("nan")
    ref_hidden[9] = float("inf")
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    kl = gro_kernels.exact_kl(h, w, ref_hidden, ref_weight, bias=bias, mask=mask, chunk_size=4)
    (kl * torch.randn(17)).sum().backward()
    assert torch.isfinite(kl).all() and torch.all(kl[~mask] == 0)
    assert torch.isfinite(h.grad).all() and torch.isfinite(w.grad).all() and torch.all(h.grad[~mask] == 0)


@pytest.mark.parametrize("preset,grad_in_forward", [("grpo", None), ("grpo", False), ("dapo", None),
                                                    ("dpo", None), ("gspo", None)])
def test_gro_loss_masked_non_finite_tokens(preset, grad_in_forward):
    b, t, h, v = 4, 9, 16, 53
    hidden, weight, targets, _ = make_inputs(b * t, h, v)
    hidden, targets = hidden.view(b, t, h), targets.view(b, t)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[:, -3:] = False  # padding
    hidden[0, -1] = float("nan")
    hidden[2, -2] = float("-inf")
    hh, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    kwargs = dict(advantages=torch.randn(b), old_logprobs=-torch.rand(b, t)) if preset != "dpo" else \
        dict(ref_logprobs=-torch.rand(b, t), pair_ids=torch.tensor([0, 0, 1, 1]),
             chosen=torch.tensor([True, False, True, False]))
    out = gro_kernels.gro_loss(hh, w, targets, preset=preset, mask=mask, grad_in_forward=grad_in_forward, **kwargs)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert torch.isfinite(w.grad).all() and torch.isfinite(hh.grad).all()
    assert torch.all(hh.grad[~mask] == 0)
