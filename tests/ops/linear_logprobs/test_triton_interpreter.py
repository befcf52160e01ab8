"""Triton linear_logprobs under the interpreter vs the naive spec (fp64 oracle), forward and backward.

Interpreter configs use 16x64 tiles with BLOCK_K=32, so N=37, V=300, H=48 leave tails in every
dimension; N <= 16 uses several vocabulary splits (the merge kernel), N=129 a single split.
"""

import pytest
import torch

from gro_kernels import linear_logprobs
from gro_kernels.ops.linear_logprobs import naive, triton_impl

pytestmark = pytest.mark.interpreter

CASES = {
    # id: (N, H, V, bias, temperature, entropy, ignored rows)
    "tails_bias_t0.7_entropy": (37, 48, 300, True, 0.7, True, (3, 36)),
    "tails_no_entropy": (37, 48, 300, False, 1.0, False, (0,)),
    "one_token": (1, 40, 130, True, 1.0, True, ()),
    "one_token_ignored": (1, 40, 130, False, 1.0, True, (0,)),
    "single_split_n129": (129, 32, 200, False, 0.7, True, (5, 64, 128)),
    "v_below_block": (5, 16, 7, True, 1.3, True, (2,)),
}


def _inputs(case, dtype, seed=0, scale=0.5):
    n, h, v, bias, temp, entropy, ignored = CASES[case]
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(v, h, generator=g) * scale
    b = torch.randn(v, generator=g) if bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    targets[list(ignored)] = -100
    grads = (torch.randn(n, generator=g), torch.randn(n, generator=g) if entropy else None)
    cast = (lambda t: None if t is None else t.to(dtype))
    return cast(hidden), cast(weight), cast(b), targets, temp, entropy, grads


def _naive(hidden, weight, bias, targets, temp, grads, dtype):
    """Values and gradients of the spec computed from `hidden`, ... cast to dtype (fp64 = oracle)."""
    leaves = [t.detach().to(dtype).requires_grad_() if t is not None else None for t in (hidden, weight, bias)]
    lp, ent = naive.linear_logprobs_naive(leaves[0], leaves[1], targets, leaves[2], temperature=temp)
    outs, gs = [lp], [grads[0].to(lp.dtype)]
    if grads[1] is not None:
        outs.append(ent)
        gs.append(grads[1].to(ent.dtype))
    torch.autograd.backward(outs, gs)
    return lp.detach().double(), ent.detach().double(), [None if t is None else t.grad.double() for t in leaves]


def _triton(hidden, weight, bias, targets, temp, entropy, grads):
    lp, ent, lse = triton_impl.forward(hidden, weight, bias, targets, inv_temperature=1.0 / temp,
                                       ignore_index=-100, with_entropy=entropy, chunk_size=0)
    dh, dw, db = triton_impl.backward(grads[0], grads[1], hidden, weight, bias, targets, lse, ent,
                                      inv_temperature=1.0 / temp, ignore_index=-100, chunk_size=0,
                                      needs_hidden=True, needs_weight=True, needs_bias=bias is not None)
    return lp, ent, lse, [dh, dw, db]


def _err(a, b):
    return (a.double() - b).abs().max().item()


@pytest.mark.parametrize("case", list(CASES))
def test_fp32_matches_spec(case):
    hidden, weight, bias, targets, temp, entropy, grads = _inputs(case, torch.float32)
    lp, ent, lse, dgrads = _triton(hidden, weight, bias, targets, temp, entropy, grads)
    ref_lp, ref_ent, ref_grads = _naive(hidden, weight, bias, targets, temp, grads, torch.float64)
    assert lp.dtype == torch.float32 and lse.dtype == torch.float32
    torch.testing.assert_close(lp.double(), ref_lp, rtol=1e-5, atol=1e-5)
    if entropy:
        torch.testing.assert_close(ent.double(), ref_ent, rtol=1e-5, atol=1e-5)
    else:
        assert ent.numel() == 0
    for got, ref in zip(dgrads, ref_grads):
        if ref is None:
            assert got is None
            continue
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    ignored = targets == -100
    assert (lp[ignored] == 0).all() and (dgrads[0][ignored] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", ["tails_bias_t0.7_entropy", "one_token", "single_split_n129"])
def test_low_precision_within_twice_naive_error(case, dtype):
    """DESIGN §5: error vs the fp64 oracle <= 2x the naive op's error in the same dtype + atol."""
    hidden, weight, bias, targets, temp, entropy, grads = _inputs(case, dtype)
    lp, ent, _, dgrads = _triton(hidden, weight, bias, targets, temp, entropy, grads)
    ref_lp, ref_ent, ref_grads = _naive(hidden, weight, bias, targets, temp, grads, torch.float64)
    low_lp, low_ent, low_grads = _naive(hidden, weight, bias, targets, temp, grads, dtype)
    assert _err(lp, ref_lp) <= 2 * _err(low_lp, ref_lp) + 1e-4
    if entropy:
        assert _err(ent, ref_ent) <= 2 * _err(low_ent, ref_ent) + 1e-4
    for got, ref, low in zip(dgrads, ref_grads, low_grads):
        if ref is not None:
            assert got.dtype == dtype
            assert _err(got, ref) <= 2 * _err(low, ref) + 1e-3


def test_extreme_logits_stay_finite():
    hidden, weight, bias, targets, temp, entropy, grads = _inputs("tails_bias_t0.7_entropy", torch.float32,
                                                                  scale=40.0)
    lp, ent, _, dgrads = _triton(hidden, weight, bias, targets, temp, entropy, grads)
    ref_lp, ref_ent, ref_grads = _naive(hidden, weight, bias, targets, temp, grads, torch.float64)
    f32_lp, f32_ent, f32_grads = _naive(hidden, weight, bias, targets, temp, grads, torch.float32)
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all()
    # Logits near 400 carry fp32 rounding of ~3e-5 into p: hold the kernel to the fp32 spec's own error.
    assert _err(lp, ref_lp) <= 2 * _err(f32_lp, ref_lp) + 1e-5
    assert _err(ent, ref_ent) <= 2 * _err(f32_ent, ref_ent) + 1e-5
    for got, ref, f32 in zip(dgrads, ref_grads, f32_grads):
        assert torch.isfinite(got).all()
        assert _err(got, ref) <= 2 * _err(f32, ref) + 1e-5


def test_needs_flags_skip_unrequested_gradients():
    hidden, weight, bias, targets, temp, entropy, grads = _inputs("tails_bias_t0.7_entropy", torch.float32)
    _, ent, lse, full = _triton(hidden, weight, bias, targets, temp, entropy, grads)
    dh, dw, db = triton_impl.backward(grads[0], grads[1], hidden, weight, bias, targets, lse, ent,
                                      inv_temperature=1.0 / temp, ignore_index=-100, chunk_size=0,
                                      needs_hidden=False, needs_weight=True, needs_bias=False)
    assert dh is None and db is None
    torch.testing.assert_close(dw, full[1], rtol=1e-6, atol=1e-6)


def test_split_count_does_not_change_results(monkeypatch):
    """The forward's vocabulary split only re-associates fp32 sums: same values to rounding."""
    hidden, weight, bias, targets, temp, entropy, _ = _inputs("tails_bias_t0.7_entropy", torch.float32)
    run = lambda: triton_impl.forward(hidden, weight, bias, targets, inv_temperature=1 / temp,  # noqa: E731
                                      ignore_index=-100, with_entropy=True, chunk_size=0)
    many = run()
    assert triton_impl.vocab_splits(37, 300, triton_impl.CONFIGS["interpreter"]["fwd"], 4)[0] > 1
    monkeypatch.setattr(triton_impl, "_INTERPRETER_SMS", 1)
    assert triton_impl.vocab_splits(37, 300, triton_impl.CONFIGS["interpreter"]["fwd"], 1)[0] == 1
    one = run()
    for a, b in zip(many, one):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_public_api_autograd_and_no_grad_agree():
    """backend="triton" through the custom op + autograd; the no-grad call gives the same values."""
    hidden, weight, bias, targets, temp, _, grads = _inputs("tails_bias_t0.7_entropy", torch.float32)
    h, w, b = (t.clone().requires_grad_() for t in (hidden, weight, bias))
    lp, ent = linear_logprobs(h, w, targets, b, temperature=temp, return_entropy=True, backend="triton")
    torch.autograd.backward([lp, ent], list(grads))
    with torch.no_grad():
        lp0 = linear_logprobs(hidden, weight, targets, bias, temperature=temp, backend="triton")
    assert torch.equal(lp0, lp.detach())
    _, _, ref_grads = _naive(hidden, weight, bias, targets, temp, grads, torch.float64)
    for got, ref in zip((h.grad, w.grad, b.grad), ref_grads):
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_triton_ops_pass_opcheck():
    """The triton_op registrations (schema, autograd glue) are consistent. Fake-tensor tracing is not
    checked here: under the interpreter wrap_triton runs the kernel instead of emitting its HOP."""
    from gro_kernels.ops.linear_logprobs import function

    fwd, bwd = function._triton_ops()
    hidden, weight, bias, targets, temp, _, grads = _inputs("v_below_block", torch.float32)
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    torch.library.opcheck(fwd, (h, w, bias, targets, temp, -100, True, 0, "triton"),
                          test_utils=("test_schema", "test_autograd_registration"))
    _, ent, lse = fwd(hidden.detach(), weight.detach(), bias, targets, temp, -100, True, 0, "triton")
    torch.library.opcheck(bwd, (grads[0], grads[1], hidden.detach(), weight.detach(), bias, targets, lse, ent, temp,
                                -100, 0, "triton", True, True, True), test_utils=("test_schema",))
