"""Grad-in-forward fused token loss vs the plain path (linear_logprobs + the same loss through autograd)."""

import pytest
import torch

import gro_kernels
from gro_kernels.ops.linear_logprobs import fused_token_loss as ftl

EPS_LOW, EPS_HIGH = 0.2, 0.28


def clipped_surrogate(logprobs, entropy, adv, old_logprobs, weight, c_entropy):
    """Per-token PPO-clip surrogate with an entropy bonus, times a per-token weight (plain torch)."""
    ratio = torch.exp(torch.clamp(logprobs - old_logprobs, -20.0, 20.0))
    clipped = torch.clamp(ratio, 1 - EPS_LOW, 1 + EPS_HIGH)
    per_token = -torch.minimum(ratio * adv, clipped * adv)
    if entropy is not None:
        per_token = per_token - c_entropy * entropy
    return per_token * weight


@ftl.register_token_fn("tests.clipped_surrogate", num_extras=2)
def clipped_surrogate_token_fn(logprobs, entropy, args, params):
    """Analytic gradients of `clipped_surrogate`; extras = (clipped flag, ratio)."""
    adv, old_logprobs, weight = args
    (c_entropy,) = params
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(torch.clamp(log_ratio, -20.0, 20.0))
    unclipped_wins = ratio * adv <= torch.clamp(ratio, 1 - EPS_LOW, 1 + EPS_HIGH) * adv
    in_clamp = (log_ratio > -20.0) & (log_ratio < 20.0)
    g_l = torch.where(unclipped_wins & in_clamp, -adv * ratio, 0.0) * weight
    loss = clipped_surrogate(logprobs, entropy, adv, old_logprobs, weight, c_entropy).sum()
    g_h = None if entropy is None else torch.full_like(logprobs, -c_entropy) * weight
    extras = torch.stack([(~unclipped_wins).float(), ratio], dim=1)
    return loss, g_l, g_h, extras


def make_case(n, hidden_size, vocab, *, bias, seed=0, n_ignored=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, hidden_size, generator=g) * 0.5
    weight = torch.randn(vocab, hidden_size, generator=g) * 0.5
    b = torch.randn(vocab, generator=g) * 0.3 if bias else None
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[torch.randperm(n, generator=g)[:n_ignored]] = -100
    adv = torch.randn(n, generator=g)
    # Old logprobs near the current ones so that both clipped and unclipped tokens occur.
    with torch.no_grad():
        lp = gro_kernels.linear_logprobs(hidden, weight, targets, b, backend="naive")
    old = lp + 0.4 * torch.randn(n, generator=g)
    weight_t = torch.rand(n, generator=g) * (targets != -100)
    return hidden, weight, b, targets, [adv, old, weight_t]


def run_plain(hidden, weight, bias, targets, args, *, temperature, with_entropy, c_entropy, grad_output):
    leaves = [t.detach().clone().requires_grad_() for t in (hidden, weight)]
    b = bias.detach().clone().requires_grad_() if bias is not None else None
    out = gro_kernels.linear_logprobs(leaves[0], leaves[1], targets, b, temperature=temperature,
                                      return_entropy=with_entropy, backend="chunked")
    logprobs, entropy = out if with_entropy else (out, None)
    loss = clipped_surrogate(logprobs, entropy, *args, c_entropy).sum()
    loss.backward(torch.tensor(grad_output))
    return loss.detach(), logprobs.detach(), leaves[0].grad, leaves[1].grad, None if b is None else b.grad


def run_fused(hidden, weight, bias, targets, args, *, temperature, with_entropy, c_entropy, grad_output,
              chunk_size=None):
    leaves = [t.detach().clone().requires_grad_() for t in (hidden, weight)]
    b = bias.detach().clone().requires_grad_() if bias is not None else None
    loss, logprobs, entropy, extras = ftl.fused_token_loss(
        leaves[0], leaves[1], b, targets, "tests.clipped_surrogate", args, [c_entropy], temperature=temperature,
        with_entropy=with_entropy, chunk_size=chunk_size)
    loss.backward(torch.tensor(grad_output))
    return loss.detach(), logprobs, leaves[0].grad, leaves[1].grad, None if b is None else b.grad


CASES = [
    pytest.param(dict(n=64, hidden_size=32, vocab=300, bias=False), 1.0, False, id="basic"),
    pytest.param(dict(n=65, hidden_size=24, vocab=257, bias=True, n_ignored=9), 1.0, False, id="bias-ignored-tail"),
    pytest.param(dict(n=40, hidden_size=16, vocab=211, bias=True, n_ignored=5), 0.7, True, id="temp0.7-entropy"),
    # Without entropy the CPU path folds dLoss/dlogits into the GEMMs (no backward epilogue).
    pytest.param(dict(n=40, hidden_size=16, vocab=211, bias=True, n_ignored=5), 0.7, False, id="temp0.7-no-entropy"),
    pytest.param(dict(n=1, hidden_size=8, vocab=50, bias=False), 1.0, True, id="one-token"),
]


@pytest.mark.parametrize("grad_output", [1.0, 0.37, -2.0, 0.0])
@pytest.mark.parametrize("case, temperature, with_entropy", CASES)
def test_matches_plain_path(case, temperature, with_entropy, grad_output):
    hidden, weight, bias, targets, args = make_case(**case)
    kw = dict(temperature=temperature, with_entropy=with_entropy, c_entropy=0.05, grad_output=grad_output)
    plain = run_plain(hidden, weight, bias, targets, args, **kw)
    fused = run_fused(hidden, weight, bias, targets, args, chunk_size=16, **kw)
    for name, a, b in zip(["loss", "logprobs", "dhidden", "dweight", "dbias"], plain, fused):
        if a is None:
            assert b is None, name
            continue
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_ignored_rows_zero_gradient_and_extras():
    hidden, weight, bias, targets, args = make_case(n=30, hidden_size=16, vocab=97, bias=True, n_ignored=10)
    # Ignored rows with a nonzero weight: they are not computed at all (compacted away), so they add
    # nothing to the loss, get zero gradient and zero logprob, entropy and extras.
    # The entropy bonus gives every valid row a gradient, clipped or not.
    args[2] = torch.ones(30)
    h = hidden.clone().requires_grad_()
    loss, logprobs, entropy, extras = ftl.fused_token_loss(h, weight, bias, targets, "tests.clipped_surrogate",
                                                           args, [0.1], with_entropy=True, chunk_size=7)
    loss.backward()
    ignored = targets == -100
    assert torch.all(h.grad[ignored] == 0)
    assert torch.all(h.grad[~ignored].abs().sum(1) > 0)
    assert torch.all(logprobs[ignored] == 0) and torch.all(entropy[ignored] == 0)
    assert extras.shape == (30, 2) and not extras.requires_grad and not logprobs.requires_grad
    ratio = torch.exp(torch.clamp(logprobs - args[1], -20, 20))
    torch.testing.assert_close(extras[~ignored, 1], ratio[~ignored])
    assert torch.all(extras[ignored] == 0)


def test_ignored_rows_get_exactly_zero_gradient_without_entropy():
    # The folded CPU path (no backward epilogue): an ignored row whose token function gradient is nonzero
    # must still give exactly zero dhidden and leave dW/db unchanged, whatever its hidden state holds.
    hidden, weight, bias, targets, args = make_case(n=30, hidden_size=16, vocab=97, bias=True, n_ignored=10)
    args[2] = torch.ones(30)
    ignored = targets == -100
    grads = []
    for scale in (1.0, 1e3):
        h = torch.where(ignored.unsqueeze(1), hidden * scale, hidden).requires_grad_()
        w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
        loss, *_ = ftl.fused_token_loss(h, w, b, targets, "tests.clipped_surrogate", args, [0.0], chunk_size=7)
        loss.backward()
        assert torch.all(h.grad[ignored] == 0)
        grads.append((h.grad[~ignored], w.grad, b.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_chunk_size_independent():
    hidden, weight, bias, targets, args = make_case(n=50, hidden_size=16, vocab=131, bias=True, n_ignored=4)
    kw = dict(temperature=0.7, with_entropy=True, c_entropy=0.1, grad_output=0.37)
    ref = run_fused(hidden, weight, bias, targets, args, chunk_size=50, **kw)
    for chunk in (1, 7, 16, 64):
        out = run_fused(hidden, weight, bias, targets, args, chunk_size=chunk, **kw)
        for a, b in zip(ref, out):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_frozen_head_and_no_grad():
    hidden, weight, bias, targets, args = make_case(n=20, hidden_size=8, vocab=40, bias=True)
    h = hidden.clone().requires_grad_()
    w = weight.clone()  # frozen head: no dW GEMM, weight.grad stays None
    loss, *_ = ftl.fused_token_loss(h, w, bias, targets, "tests.clipped_surrogate", args, [0.0])
    loss.backward()
    plain = run_plain(hidden, weight, bias, targets, args, temperature=1.0, with_entropy=False, c_entropy=0.0,
                      grad_output=1.0)
    torch.testing.assert_close(h.grad, plain[2], rtol=1e-5, atol=1e-6)
    assert w.grad is None
    with torch.no_grad():
        loss_ng, lp_ng, _, _ = ftl.fused_token_loss(h, w, bias, targets, "tests.clipped_surrogate", args, [0.0])
    torch.testing.assert_close(loss_ng, loss.detach())
    torch.testing.assert_close(lp_ng, plain[1], rtol=0, atol=0)


def test_loss_used_twice_in_graph_and_backward_twice_raises():
    hidden, weight, bias, targets, args = make_case(n=20, hidden_size=8, vocab=40, bias=False)
    h = hidden.clone().requires_grad_()
    loss, *_ = ftl.fused_token_loss(h, weight, None, targets, "tests.clipped_surrogate", args, [0.0])
    (loss * 0.5 + loss * 2.0).backward(retain_graph=True)
    plain = run_plain(hidden, weight, None, targets, args, temperature=1.0, with_entropy=False, c_entropy=0.0,
                      grad_output=2.5)
    torch.testing.assert_close(h.grad, plain[2], rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="back-propagated once"):
        loss.backward()


def test_unregistered_and_malformed_token_fn():
    hidden, weight, bias, targets, args = make_case(n=8, hidden_size=4, vocab=10, bias=False)
    with pytest.raises(ValueError, match="not registered"):
        ftl.fused_token_loss(hidden, weight, None, targets, "tests.nope", args, [0.0])

    @ftl.register_token_fn("tests.bad_shape", num_extras=0)
    def bad(logprobs, entropy, args, params):
        return logprobs.sum(), logprobs[:1], None, logprobs.new_empty(logprobs.shape[0], 0)

    with pytest.raises(ValueError, match="expected"):
        ftl.fused_token_loss(hidden, weight, None, targets, "tests.bad_shape")
    with pytest.raises(ValueError, match="already registered"):
        ftl.register_token_fn("tests.bad_shape")(lambda *a: None)


def test_torch_compile_sees_one_op():
    hidden, weight, bias, targets, args = make_case(n=24, hidden_size=8, vocab=33, bias=True)

    def step(h, w, b):
        loss, *_ = ftl.fused_token_loss(h, w, b, targets, "tests.clipped_surrogate", args, [0.0], chunk_size=8)
        return loss * 3.0

    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    torch.compile(step, backend="aot_eager", fullgraph=True)(*leaves).backward()
    plain = run_plain(hidden, weight, bias, targets, args, temperature=1.0, with_entropy=False, c_entropy=0.0,
                      grad_output=3.0)
    for leaf, ref in zip(leaves, plain[2:]):
        torch.testing.assert_close(leaf.grad, ref, rtol=1e-5, atol=1e-6)


@ftl.register_token_fn("tests.weighted_logprob")
def weighted_logprob_token_fn(logprobs, entropy, args, params):
    """sum_t w_t l_t: no params, no extras."""
    (weight,) = args
    return (weight * logprobs).sum(), weight.clone(), None, logprobs.new_empty(logprobs.shape[0], 0)


def test_token_fn_without_params_or_extras():
    hidden, weight, bias, targets, args = make_case(n=20, hidden_size=8, vocab=40, bias=False, n_ignored=3)
    h = hidden.clone().requires_grad_()
    loss, _, _, extras = ftl.fused_token_loss(h, weight, None, targets, "tests.weighted_logprob", [args[0]],
                                              chunk_size=6)
    loss.backward(torch.tensor(-2.0))
    h_ref = hidden.clone().requires_grad_()
    lp = gro_kernels.linear_logprobs(h_ref, weight, targets, backend="naive")
    ((args[0] * lp).sum() * -2.0).backward()
    assert extras.shape == (20, 0)
    torch.testing.assert_close(loss.detach(), (args[0] * lp).sum().detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_entropy", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_matches_plain_path(dtype, with_entropy):
    hidden, weight, bias, targets, args = make_case(n=48, hidden_size=32, vocab=300, bias=True, n_ignored=4)
    kw = dict(temperature=1.0, with_entropy=with_entropy, c_entropy=0.05, grad_output=0.37)
    cast = [t.to(dtype) for t in (hidden, weight, bias)]
    plain = run_plain(*cast, targets, args, **kw)
    fused = run_fused(*cast, targets, args, chunk_size=16, **kw)
    for name, a, b in zip(["loss", "logprobs", "dhidden", "dweight", "dbias"], plain, fused):
        assert b.dtype == a.dtype, name
        # Same kernels; the fused path only adds one rounding of the gradient scale in the input dtype.
        torch.testing.assert_close(b.float(), a.float(), rtol=2e-2, atol=2e-3, msg=name)
