"""bf16 / fp16 heads: the logits are fp32 (never rounded to the input dtype), so log-probs and entropy
match fp64 on the same inputs to fp32 accuracy, and gradients are as good as an fp32-logits reference."""

import pytest
import torch

import gro_kernels
from gro_kernels.ops.linear_logprobs.naive import linear_logprobs_naive
from tests.support.helpers import make_inputs

DTYPES = [torch.bfloat16, torch.float16]
ACCURACY = 2e-5  # max |error| of logprob / entropy against fp64 on the same 16-bit inputs


def _case(dtype, n=97, h=64, v=5003, bias=True):
    # Logits of magnitude ~10: a bf16-rounded logit would be off by ~0.03, far outside ACCURACY.
    return make_inputs(n, h, v, dtype=dtype, bias=bias, ignored=(3, 50), scale=3.0)


def _fp64(hidden, weight, targets, bias, temperature):
    h, w = hidden.double().requires_grad_(), weight.double().requires_grad_()
    lp, ent = linear_logprobs_naive(h, w, targets, None if bias is None else bias.double(), temperature=temperature)
    return lp, ent, h, w


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_and_entropy_match_fp64(dtype, temperature):
    hidden, weight, targets, bias = _case(dtype)
    lp, ent = gro_kernels.linear_logprobs(hidden, weight, targets, bias, temperature=temperature, return_entropy=True,
                                          chunk_size=40)
    ref_lp, ref_ent, _, _ = _fp64(hidden, weight, targets, bias, temperature)
    assert (lp.double() - ref_lp).abs().max() <= ACCURACY
    assert (ent.double() - ref_ent).abs().max() <= ACCURACY
    no_grad = gro_kernels.linear_logprobs_no_grad(hidden, weight, targets, bias, temperature=temperature,
                                                  chunk_size=40)
    assert torch.equal(no_grad, lp)  # old / reference logprobs give ratio exactly 1


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
def test_gradients_as_good_as_an_fp32_logits_reference(dtype):
    hidden, weight, targets, bias = _case(dtype)
    g_l, g_h = torch.randn(hidden.shape[0]), torch.randn(hidden.shape[0])
    ref_lp, ref_ent, h64, w64 = _fp64(hidden, weight, targets, bias, 1.0)
    (ref_lp * g_l.double() + ref_ent * g_h.double()).sum().backward()
    # The fp32-logits reference: fp32 math on the same inputs, gradients rounded to the input dtype at the end.
    h32, w32 = hidden.float().requires_grad_(), weight.float().requires_grad_()
    lp32, ent32 = linear_logprobs_naive(h32, w32, targets, bias.float())
    (lp32 * g_l + ent32 * g_h).sum().backward()
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    lp, ent = gro_kernels.linear_logprobs(h, w, targets, bias, return_entropy=True, chunk_size=40)
    (lp * g_l + ent * g_h).sum().backward()
    # Errors as norms over the whole tensor: the max of a few thousand rounding errors moves by 2x from one
    # random draw to the next (1.2-2.0x here over seeds), the norm by a few percent (1.36-1.46x).
    for ours, ref32, exact in ((h.grad, h32.grad, h64.grad), (w.grad, w32.grad, w64.grad)):
        assert ours.dtype == dtype
        err = (ours.double() - exact).norm()
        ref_err = (ref32.to(dtype).double() - exact).norm()
        assert err <= 2 * ref_err, (float(err), float(ref_err))


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
def test_independent_of_chunk_size(dtype):
    hidden, weight, targets, bias = _case(dtype)
    ref = gro_kernels.linear_logprobs(hidden, weight, targets, bias, return_entropy=True, chunk_size=97)
    for chunk in (1, 16, 33):
        got = gro_kernels.linear_logprobs(hidden, weight, targets, bias, return_entropy=True, chunk_size=chunk)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("grad_in_forward", [True, False], ids=["fused", "plain"])
def test_gro_loss_logprobs_match_fp64(dtype, grad_in_forward):
    b, t = 4, 24
    hidden, weight, targets, _ = make_inputs(b * t, 64, 5003, dtype=dtype, scale=3.0)
    out = gro_kernels.gro_loss(hidden.view(b, t, -1), weight, targets.view(b, t), preset="dapo",
                               advantages=torch.randn(b), old_logprobs=-torch.rand(b, t),
                               grad_in_forward=grad_in_forward, chunk_size=17)
    ref, _, _, _ = _fp64(hidden, weight, targets, None, 1.0)
    assert (out.logprobs.reshape(-1).double() - ref).abs().max() <= ACCURACY


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
def test_exact_kl_matches_fp64(dtype):
    hidden, weight, _, bias = _case(dtype, v=3001)
    ref_hidden, ref_weight, _, ref_bias = make_inputs(97, 48, 3001, dtype=dtype, bias=True, scale=3.0, seed=5)
    kl = gro_kernels.exact_kl(hidden, weight, ref_hidden, ref_weight, bias=bias, ref_bias=ref_bias, chunk_size=30)
    lp = torch.log_softmax(hidden.double() @ weight.double().t() + bias.double(), -1)
    lq = torch.log_softmax(ref_hidden.double() @ ref_weight.double().t() + ref_bias.double(), -1)
    assert (kl.double() - (lp.exp() * (lp - lq)).sum(-1)).abs().max() <= ACCURACY
