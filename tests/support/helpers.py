"""Shared test helpers: input factories, the fp64 oracle, and the low-precision tolerance rule of docs/testing.md."""

import re

import torch

from gro_kernels.ops.linear_logprobs.naive import linear_logprobs_naive


def make_inputs(n, h, v, *, dtype=torch.float32, bias=False, ignored=(), scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=g, dtype=torch.float64) * scale).to(dtype)
    weight = (torch.randn(v, h, generator=g, dtype=torch.float64) / h**0.5).to(dtype)
    b = (torch.randn(v, generator=g, dtype=torch.float64) * 0.5).to(dtype) if bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    for row in ignored:
        targets[row] = -100
    return hidden, weight, targets, b


def oracle(hidden, weight, targets, bias, g_logprob, g_entropy, *, temperature=1.0):
    """fp64 naive forward and the gradients of sum(g_l * logprob + g_H * entropy)."""
    leaves = [hidden.double().requires_grad_(), weight.double().requires_grad_()]
    b = bias.double().requires_grad_() if bias is not None else None
    lp, ent = linear_logprobs_naive(leaves[0], leaves[1], targets, b, temperature=temperature)
    objective = (lp * g_logprob.double()).sum() + (ent * g_entropy.double()).sum()
    grads = torch.autograd.grad(objective, leaves + ([b] if b is not None else []))
    return lp.detach(), ent.detach(), grads


def run(fn, hidden, weight, targets, bias, g_logprob, g_entropy, **kwargs):
    """Forward + backward of a linear_logprobs-like fn with leaf copies of the inputs."""
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    b = bias.detach().clone().requires_grad_() if bias is not None else None
    lp, ent = fn(h, w, targets, b, return_entropy=True, **kwargs)
    objective = (lp * g_logprob).sum() + (ent * g_entropy).sum()
    grads = torch.autograd.grad(objective, [h, w] + ([b] if b is not None else []))
    return lp.detach(), ent.detach(), grads


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_close_rel(actual, expected, rtol, atol, what):
    err = max_err(actual, expected)
    bound = atol + rtol * expected.double().abs().max().item()
    assert err <= bound, f"{what}: max error {err:.3e} > {bound:.3e}"


def error_mentions(exc_info, *words):
    text = str(exc_info.value)
    for word in words:
        assert re.search(re.escape(word), text), f"error message {text!r} does not mention {word!r}"
