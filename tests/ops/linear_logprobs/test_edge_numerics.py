"""Numerics at the edges: -inf logits (banned tokens in the bias) are tokens of probability 0 on every
path; tiny temperatures stay finite on the native path (FMA contraction can make z/tau - max > 0)."""

import pytest
import torch

import gro_kernels
from gro_kernels.ops.linear_logprobs.naive import linear_logprobs_naive
from tests.support.helpers import make_inputs

PATHS = ["native", "torch", "naive"]


def _run(path, monkeypatch, *args, **kwargs):
    if path == "torch":
        monkeypatch.setenv("GRO_DISABLE_NATIVE", "1")
    backend = "naive" if path == "naive" else "chunked"
    return gro_kernels.linear_logprobs(*args, backend=backend, **kwargs)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_banned_tokens_have_probability_zero(path, temperature, monkeypatch):
    n, h, v = 19, 16, 101
    hidden, weight, targets, bias = make_inputs(n, h, v, bias=True, ignored=(4,))
    banned = torch.tensor([0, 7, 50, 99, 100])
    bias[banned] = float("-inf")
    keep = torch.ones(v, dtype=torch.bool)
    keep[banned] = False
    targets = torch.where(keep[targets.clamp(min=0)] | (targets == -100), targets, 3)
    hh, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    lp, ent = _run(path, monkeypatch, hh, w, targets, bias, temperature=temperature, return_entropy=True,
                   chunk_size=6)
    g_l, g_h = torch.randn(n), torch.randn(n)
    ((lp * g_l) + (ent * g_h)).sum().backward()
    # The same head without the banned rows, in fp64.
    remap = torch.cumsum(keep.long(), 0) - 1
    small_targets = torch.where(targets == -100, targets, remap[targets.clamp(min=0)])
    h64, w64 = hidden.double().requires_grad_(), weight.double()[keep].clone().requires_grad_()
    lp_ref, ent_ref = linear_logprobs_naive(h64, w64, small_targets, bias.double()[keep], temperature=temperature)
    ((lp_ref * g_l.double()) + (ent_ref * g_h.double())).sum().backward()
    torch.testing.assert_close(lp.double(), lp_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent.double(), ent_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hh.grad.double(), h64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w.grad[keep].double(), w64.grad, rtol=1e-4, atol=1e-5)
    assert torch.all(w.grad[banned] == 0)


@pytest.mark.parametrize("path", PATHS)
def test_nan_and_plus_inf_logits_poison_only_their_row(path, monkeypatch):
    hidden, weight, targets, bias = make_inputs(8, 12, 40, bias=True)
    hidden[2, 0] = float("nan")
    hidden[5] = 0.0
    bias[9] = float("inf")  # every row has a +inf logit: no finite logprob anywhere (NaN or the -inf limit)
    lp = _run(path, monkeypatch, hidden, weight, targets, bias)
    assert not torch.isfinite(lp).any()
    bias[9] = 0.0
    lp = _run(path, monkeypatch, hidden, weight, targets, bias)
    assert torch.isnan(lp[2]) and torch.isfinite(lp[torch.arange(8) != 2]).all()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("temperature", [1e-6, 1e-9, 1e-12])
def test_tiny_temperature_is_the_argmax_limit(path, temperature, monkeypatch):
    hidden, weight, targets, _ = make_inputs(16, 32, 97, scale=3.0)
    logits = hidden.double() @ weight.double().t()
    targets[:8] = logits[:8].argmax(1)  # the most likely token: logprob -> 0
    # (Gradients scale with 1/tau: at these temperatures they overflow fp32 by nature, so only values are checked.)
    lp, ent = _run(path, monkeypatch, hidden, weight, targets, temperature=temperature, return_entropy=True,
                   chunk_size=5)
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all()
    # fp32 holds z / tau to one ulp of its magnitude, so that is the accuracy to expect.
    ulp = 4 * 2.0**-24 * float(logits.abs().max()) / temperature
    assert torch.all(lp <= ulp) and torch.all(ent >= -ulp)
    ref = torch.log_softmax(logits / temperature, -1).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(lp.double(), ref, rtol=1e-6, atol=ulp)
