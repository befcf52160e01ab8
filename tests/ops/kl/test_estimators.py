"""kl_penalty estimators: values and gradients in closed form; the loss layer's token function agrees."""

import pytest
import torch

import gro_kernels
from gro_kernels.ops.policy_loss.token_terms import kl_value_and_grad

D = torch.tensor([-3.0, -0.5, 0.0, 0.2, 2.5], dtype=torch.float64)
CLOSED = {  # value, d value / d logprob
    "k1": (D, torch.ones_like(D)),
    "k2": (D * D / 2, D),
    "k3": (torch.exp(-D) + D - 1, 1 - torch.exp(-D)),
    "k3_st": (torch.exp(-D) + D - 1, D),
    # verl's (verl/trainer/ppo/core_algos.py kl_penalty): abs, "+" = k2's gradient, low_var_kl = clamped k3
    "abs": (D.abs(), torch.sign(D)),
    "k1+": (D, D),
    "abs+": (D.abs(), D),
    "low_var_kl": ((torch.exp(-D) + D - 1).clamp(max=10),  # d = -3: k3 = 16.1 > 10, capped, gradient 0
                   torch.where(torch.exp(-D) + D - 1 <= 10, 1 - torch.exp(-D), 0.0)),
    "low_var_kl+": ((torch.exp(-D) + D - 1).clamp(max=10), D),
}
# Beyond verl's clamps: -d > 20 (the exponent) and a value > 10 (here -d = 12): value capped, gradient 0.
D_FAR = torch.tensor([-25.0, -12.0, 30.0], dtype=torch.float64)


@pytest.mark.parametrize("estimator", ["low_var_kl", "low_var_kl+"])
def test_low_var_kl_clamps(estimator):
    x = (-D_FAR).clamp(-20, 20)
    value = (torch.exp(x) - x - 1).clamp(max=10)
    grad = torch.zeros_like(D_FAR) if estimator == "low_var_kl" else D_FAR
    ref = torch.zeros(3, dtype=torch.float64)
    lp = D_FAR.clone().requires_grad_()
    kl = gro_kernels.kl_penalty(lp, ref, estimator=estimator)
    kl.sum().backward()
    torch.testing.assert_close(kl.detach(), value.float())
    torch.testing.assert_close(lp.grad, grad)
    tv, tg = kl_value_and_grad(D_FAR, estimator)
    torch.testing.assert_close(tv, value)
    torch.testing.assert_close(tg, grad)


@pytest.mark.parametrize("estimator", list(CLOSED))
def test_value_and_gradient_closed_form(estimator):
    ref = torch.randn(5, dtype=torch.float64)
    lp = (ref + D).float().requires_grad_()
    kl = gro_kernels.kl_penalty(lp, ref.float(), estimator=estimator)
    g = torch.randn(5)
    kl.backward(g)
    value, grad = CLOSED[estimator]
    torch.testing.assert_close(kl.detach().double(), value, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lp.grad.double(), g.double() * grad, rtol=1e-5, atol=1e-5)
    tv, tg = kl_value_and_grad(D, estimator)
    torch.testing.assert_close(tv, value)
    torch.testing.assert_close(tg, grad)


def test_k3_nonnegative_and_zero_at_equal_logprobs():
    lp = torch.randn(100)
    assert (gro_kernels.kl_penalty(lp, lp + torch.randn(100)) >= 0).all()
    assert torch.equal(gro_kernels.kl_penalty(lp, lp), torch.zeros(100))


def test_k3_is_unbiased_for_the_true_kl():
    logits_p, logits_q = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    logp, logq = torch.log_softmax(logits_p, 0), torch.log_softmax(logits_q, 0)
    p = logp.exp()
    # expectation over the sampled token under p, computed exactly
    for est in ("k1", "k3"):
        expected = (p * gro_kernels.kl_penalty(logp, logq, estimator=est).double()).sum()
        torch.testing.assert_close(expected, (p * (logp - logq)).sum(), rtol=1e-5, atol=1e-6)
