"""Head options of linear_logprobs against the naive spec: final_logit_softcapping, logit_scale, the no-grad
statistics (linear_head_outputs), an unused entropy output that costs nothing in backward, and autocast.

Statistics' definitions: TRL 1.16 trl/kernels/chunked_logprob.py ChunkedLogProbFunction.forward (mean of
the temperature-scaled logits, log sum p^2, target == first argmax); ours are written from naive.py."""

import pytest
import torch

import gro_kernels
from gro_kernels import functional as F
from gro_kernels.ops.linear_logprobs import chunked, epilogues, naive
from tests.support.helpers import make_inputs

# (final_logit_softcapping, logit_scale, temperature): softcap with temperature, a scale alone, both
TRANSFORMS = [(None, 1.0, 1.0), (5.0, 1.0, 0.7), (3.0, 0.5, 1.3), (None, 0.25, 0.8), (30.0, 1.0, 1.0)]
IDS = ["plain", "softcap+tau", "softcap+scale+tau", "scale+tau", "gemma-cap30"]


def _case(dtype, n=53, h=32, v=1031):
    # Logits ~±10 so a softcap of 3-5 bends them hard (the tanh is far from linear); rows 3 and 40 ignored.
    return make_inputs(n, h, v, dtype=dtype, bias=True, ignored=tuple(r for r in (3, 40) if r < n), scale=3.0)


def _grads(fn, hidden, weight, targets, bias, g_lp, g_ent, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in (hidden, weight, bias)]
    lp, ent = fn(leaves[0], leaves[1], targets, leaves[2], **kw)
    objective = (lp.double() * g_lp).sum() + (ent.double() * g_ent).sum()
    return lp.detach(), ent.detach(), torch.autograd.grad(objective, leaves)


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30)).item()


@pytest.mark.parametrize("cap,scale,tau", TRANSFORMS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", ["chunked", "naive"])
def test_transforms_match_naive_forward_and_backward(cap, scale, tau, dtype, backend):
    hidden, weight, targets, bias = _case(dtype)
    g = torch.Generator().manual_seed(1)
    g_lp, g_ent = torch.randn(53, generator=g, dtype=torch.float64), torch.randn(53, generator=g, dtype=torch.float64)
    opts = dict(temperature=tau, final_logit_softcapping=cap, logit_scale=scale)
    lp, ent, grads = _grads(lambda *a, **k: F.linear_logprobs(*a, return_entropy=True, backend=backend,
                                                              chunk_size=16, **k),
                            hidden, weight, targets, bias, g_lp, g_ent, **opts)
    # The oracle: fp64 on the same (possibly 16-bit) values; the chunked logits are fp32 whatever the dtype.
    ref_lp, ref_ent, ref_grads = _grads(naive.linear_logprobs_naive, hidden.double(), weight.double(), targets,
                                        bias.double(), g_lp, g_ent, **opts)
    lowp = dtype != torch.float32
    # naive rounds its logits to bf16 (what a plain trainer does); chunked does not: looser only there.
    tol = 5e-2 if lowp and backend == "naive" else (2e-4 if lowp else 1e-5)
    assert (lp.double() - ref_lp).abs().max() <= tol
    assert (ent.double() - ref_ent).abs().max() <= tol
    assert lp[3] == 0 and ent[3] == 0 and lp[40] == 0
    for got, ref in zip(grads, ref_grads):
        assert _rel(got, ref) <= (3e-2 if lowp else 1e-5)
    assert grads[0][3].abs().max() == 0 and grads[0][40].abs().max() == 0  # ignored rows: exact zeros


def test_softcap_changes_the_answer():
    """Guard against a softcap that is silently dropped: capped and uncapped logprobs differ."""
    hidden, weight, targets, bias = _case(torch.float32)
    plain = F.linear_logprobs(hidden, weight, targets, bias)
    capped = F.linear_logprobs(hidden, weight, targets, bias, final_logit_softcapping=3.0)
    scaled = F.linear_logprobs(hidden, weight, targets, bias, logit_scale=0.5)
    assert (plain - capped).abs().max() > 0.1 and (plain - scaled).abs().max() > 0.1


@pytest.mark.parametrize("cap,scale,tau", TRANSFORMS, ids=IDS)
@pytest.mark.parametrize("backend", ["chunked", "naive"])
def test_head_statistics_match_naive(cap, scale, tau, backend):
    hidden, weight, targets, bias = _case(torch.float32)
    # make some targets the argmax, and one a tie with an earlier token (first argmax wins: not top-1)
    logits = naive.transformed_logits(hidden, weight, bias, temperature=tau, final_logit_softcapping=cap,
                                      logit_scale=scale)
    targets = targets.clone()
    targets[::4] = logits.argmax(-1)[::4]
    targets[3], targets[40] = -100, -100
    opts = dict(temperature=tau, final_logit_softcapping=cap, logit_scale=scale)
    out = F.linear_head_outputs(hidden, weight, targets, bias, outputs=F.HEAD_OUTPUTS, backend=backend,
                                chunk_size=16, **opts)
    mean, log_sum_sq, top1 = naive.head_stats_naive(hidden, weight, targets, bias, **opts)
    assert (out.mean_logits - mean).abs().max() <= 1e-5
    assert (out.log_sum_sq_probs - log_sum_sq).abs().max() <= 1e-5
    assert out.is_top1.dtype == torch.bool and torch.equal(out.is_top1, top1)
    assert out.is_top1.sum() >= 10  # the check can fail: there are top-1 rows to find
    ref_lp, ref_ent = naive.linear_logprobs_naive(hidden, weight, targets, bias, **opts)
    assert (out.log_probs - ref_lp).abs().max() <= 1e-5 and (out.entropy - ref_ent).abs().max() <= 1e-5
    assert out.mean_logits[3] == 0 and out.log_sum_sq_probs[40] == 0 and not out.is_top1[3]


def test_is_top1_tie_goes_to_the_first_token():
    hidden, weight, targets, _ = _case(torch.float32, n=8, v=1000)
    weight = weight.clone()
    top = (hidden @ weight.t()).argmax(-1)
    weight[999] = weight[top[0]]  # token 999 ties row 0's argmax, and comes after it
    targets = targets.clone()
    targets[0], targets[1] = 999, top[1]
    out = F.linear_head_outputs(hidden, weight, targets, outputs=("log_probs", "is_top1"))
    ref = naive.head_stats_naive(hidden, weight, targets)[2]
    assert top[0] < 999 and not out.is_top1[0] and bool(out.is_top1[1]) and torch.equal(out.is_top1, ref)


def test_head_outputs_fields_not_requested_are_none_and_statistics_have_no_grad():
    hidden, weight, targets, bias = _case(torch.float32)
    w = weight.clone().requires_grad_()
    out = F.linear_head_outputs(hidden, w, targets, bias, outputs=("log_probs", "mean_logits"))
    assert out.entropy is None and out.is_top1 is None and out.log_sum_sq_probs is None
    assert out.log_probs.requires_grad and not out.mean_logits.requires_grad
    plain = F.linear_logprobs(hidden, weight, targets, bias)
    assert torch.equal(out.log_probs.detach(), plain)  # the statistics pass leaves the logprobs bitwise alone


def test_unused_entropy_runs_no_entropy_gradient(monkeypatch):
    """set_materialize_grads(False): an entropy nobody differentiates reaches the kernel as None, and the
    gradients equal those of a call without entropy."""
    hidden, weight, targets, bias = _case(torch.float32)
    seen = []
    real = chunked.backward

    def spy(grad_logprobs, grad_entropy, *args, **kwargs):
        seen.append(grad_entropy)
        return real(grad_logprobs, grad_entropy, *args, **kwargs)

    monkeypatch.setattr(chunked, "backward", spy)
    grads = []
    for with_entropy in (True, False):
        w = weight.clone().requires_grad_()
        out = F.linear_logprobs(hidden, w, targets, bias, return_entropy=with_entropy, backend="chunked")
        lp = out[0] if with_entropy else out
        (lp * torch.linspace(-1, 1, lp.numel())).sum().backward()
        grads.append(w.grad)
    assert seen == [None, None]
    assert torch.equal(grads[0], grads[1])
    # and an entropy-only objective still gets its gradient (the logprob gradient then arrives as None)
    seen.clear()
    w = weight.clone().requires_grad_()
    _, ent = F.linear_logprobs(hidden, w, targets, bias, return_entropy=True, backend="chunked")
    ent.sum().backward()
    assert seen[0] is not None and w.grad.abs().max() > 0


def test_unused_entropy_with_softcap_also_skips_entropy_gradient(monkeypatch):
    hidden, weight, targets, bias = _case(torch.float32)
    seen = []
    real = epilogues.pick

    def pick(device_type):
        fwd, bwd, name = real(device_type)

        def spy_bwd(*args):
            seen.append(args[7])  # grad_entropy
            return bwd(*args)
        return fwd, spy_bwd, name

    monkeypatch.setattr(epilogues, "pick", pick)
    w = weight.clone().requires_grad_()
    lp, _ = F.linear_logprobs(hidden, w, targets, bias, return_entropy=True, final_logit_softcapping=4.0,
                              backend="chunked")
    lp.sum().backward()
    assert seen and all(g is None for g in seen)


def test_autocast_runs_the_head_in_the_autocast_dtype():
    hidden, weight, targets, bias = _case(torch.float32)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp, ent = F.linear_logprobs(h, w, targets, bias, return_entropy=True)
    (lp.sum() + ent.sum()).backward()
    h16, w16 = hidden.bfloat16().requires_grad_(), weight.bfloat16().requires_grad_()
    ref_lp, ref_ent = F.linear_logprobs(h16, w16, targets, bias.bfloat16(), return_entropy=True)
    (ref_lp.sum() + ref_ent.sum()).backward()
    assert torch.equal(lp, ref_lp) and torch.equal(ent, ref_ent)
    assert w.grad.dtype == torch.float32 and torch.equal(w.grad, w16.grad.float())
    fp32 = F.linear_logprobs(hidden, weight, targets, bias)
    assert (fp32 - lp).abs().max() > 1e-4  # bf16 inputs really were used


def test_no_grad_entry_takes_the_options():
    hidden, weight, targets, bias = _case(torch.float32)
    a = gro_kernels.linear_logprobs_no_grad(hidden, weight, targets, bias, final_logit_softcapping=4.0,
                                            logit_scale=0.5, temperature=0.9)
    b = F.linear_logprobs(hidden, weight, targets, bias, final_logit_softcapping=4.0, logit_scale=0.5,
                          temperature=0.9)
    assert torch.equal(a, b)


@pytest.mark.parametrize("kw,kind,pattern", [
    (dict(final_logit_softcapping=0.0), ValueError, r"final_logit_softcapping must be finite and > 0, got 0.0"),
    (dict(final_logit_softcapping=-30.0), ValueError, r"final_logit_softcapping must be finite and > 0"),
    (dict(final_logit_softcapping="30"), TypeError, r"final_logit_softcapping must be a number"),
    (dict(logit_scale=0.0), ValueError, r"logit_scale must be finite and > 0, got 0.0"),
    (dict(logit_scale=float("nan")), ValueError, r"logit_scale must be finite and > 0, got nan"),
    (dict(final_logit_softcapping=30.0, backend="triton"), ValueError,
     r"final_logit_softcapping is not supported by backend='triton'"),
])
def test_bad_transform_options_raise_naming_them(kw, kind, pattern):
    hidden, weight, targets, bias = _case(torch.float32, n=4)
    with pytest.raises(kind, match=pattern):
        F.linear_logprobs(hidden, weight, targets, bias, **kw)


def test_head_outputs_bad_names_raise():
    hidden, weight, targets, _ = _case(torch.float32, n=4)
    with pytest.raises(ValueError, match=r"outputs has unknown names \['logits'\]"):
        F.linear_head_outputs(hidden, weight, targets, outputs=("log_probs", "logits"))
    with pytest.raises(TypeError, match=r"outputs must be a tuple of names"):
        F.linear_head_outputs(hidden, weight, targets, outputs="entropy")
    with pytest.raises(ValueError, match=r"the head statistics is not supported by backend='triton'"):
        F.linear_head_outputs(hidden, weight, targets, outputs=("is_top1",), backend="triton")


def test_softcap_with_a_vocabulary_parallel_head_raises_naming_it():
    hidden, weight, targets, _ = _case(torch.float32, n=4)
    with pytest.raises(ValueError, match=r"final_logit_softcapping is not supported with process_group="):
        F.linear_logprobs(hidden, weight, targets, process_group=object(), vocab_start=0, final_logit_softcapping=3.0)
