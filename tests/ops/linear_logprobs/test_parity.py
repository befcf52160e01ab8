"""linear_logprobs: every CPU backend against the fp64 naive oracle, forward and backward."""

import pytest
import torch

import gro_kernels
from gro_kernels import _ext
from tests.support.helpers import assert_close_rel, make_inputs, max_err, oracle, run

# (backend, epilogue): the chunked backend with the compiled epilogue and with the torch fallback.
BACKENDS = [
    pytest.param(("chunked", "native"), id="chunked-native",
                 marks=pytest.mark.skipif(not _ext.native_available("cpu"), reason=_ext.native_status())),
    pytest.param(("chunked", "torch"), id="chunked-torch"),
    pytest.param(("naive", None), id="naive"),
]

# id: (N, H, V, bias, ignored rows, temperature, chunk_size)
SHAPES = {
    "one-token": (1, 16, 50, False, (), 1.0, None),
    "tail-257-v1000": (257, 32, 1000, True, (0, 5, 256), 1.0, 64),
    "v50257-not-pow2": (33, 24, 50257, False, (3,), 1.0, 8),
    "temp0.7-bias": (64, 48, 3001, True, (1, 2), 0.7, 16),
    "chunk1": (9, 8, 77, True, (4,), 1.3, 1),
}


@pytest.fixture
def use_backend(monkeypatch):
    def apply(spec):
        backend, epilogue = spec
        if epilogue == "torch":
            monkeypatch.setenv("GRO_DISABLE_NATIVE", "1")
        return backend

    return apply


@pytest.mark.parametrize("spec", BACKENDS)
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("grad_on", ["both", "logprob", "entropy"])
def test_matches_fp64_oracle(spec, shape, grad_on, use_backend):
    n, h, v, bias, ignored, tau, chunk = SHAPES[shape]
    backend = use_backend(spec)
    hidden, weight, targets, b = make_inputs(n, h, v, bias=bias, ignored=ignored)
    g_l = torch.randn(n) if grad_on != "entropy" else torch.zeros(n)
    g_h = torch.randn(n) if grad_on != "logprob" else torch.zeros(n)
    ref_lp, ref_ent, ref_grads = oracle(hidden, weight, targets, b, g_l, g_h, temperature=tau)
    lp, ent, grads = run(gro_kernels.linear_logprobs, hidden, weight, targets, b, g_l, g_h, temperature=tau,
                         backend=backend, chunk_size=chunk)
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32
    assert_close_rel(lp, ref_lp, 1e-5, 1e-5, "logprobs")
    assert_close_rel(ent, ref_ent, 1e-5, 1e-5, "entropy")
    for name, got, want in zip(("dhidden", "dweight", "dbias"), grads, ref_grads):
        assert got.dtype == torch.float32
        assert_close_rel(got, want, 1e-4, 1e-6, name)
    for row in ignored:
        assert lp[row] == 0 and ent[row] == 0
        assert torch.all(grads[0][row] == 0), "ignored rows must get exactly zero dhidden"


@pytest.mark.parametrize("spec", BACKENDS[:2])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_three_way(spec, dtype, use_backend):
    """Kernel vs fp64 must be within 2x the error of the naive op run in the same dtype (+ atol)."""
    backend = use_backend(spec)
    n, h, v = 70, 64, 2000
    hidden, weight, targets, b = make_inputs(n, h, v, dtype=dtype, bias=True, ignored=(3,))
    g_l, g_h = torch.randn(n), torch.randn(n)
    ref = oracle(hidden, weight, targets, b, g_l, g_h, temperature=0.7)
    same_dtype_naive = run(gro_kernels.linear_logprobs, hidden, weight, targets, b, g_l, g_h, temperature=0.7,
                           backend="naive")
    got = run(gro_kernels.linear_logprobs, hidden, weight, targets, b, g_l, g_h, temperature=0.7,
              backend=backend, chunk_size=32)
    atol = {"logprobs": 1e-3, "entropy": 1e-3, "grads": 2e-3}
    assert max_err(got[0], ref[0]) <= 2 * max_err(same_dtype_naive[0], ref[0]) + atol["logprobs"]
    assert max_err(got[1], ref[1]) <= 2 * max_err(same_dtype_naive[1], ref[1]) + atol["entropy"]
    for g_got, g_naive, g_ref in zip(got[2], same_dtype_naive[2], ref[2]):
        assert g_got.dtype == dtype, "gradients come back in the input dtype"
        assert max_err(g_got, g_ref) <= 2 * max_err(g_naive, g_ref) + atol["grads"] * g_ref.abs().max().item()


@pytest.mark.parametrize("spec", BACKENDS[:2])
def test_result_independent_of_chunk_size(spec, use_backend):
    backend = use_backend(spec)
    hidden, weight, targets, b = make_inputs(100, 32, 999, bias=True, ignored=(7,))
    g_l, g_h = torch.randn(100), torch.randn(100)
    base = run(gro_kernels.linear_logprobs, hidden, weight, targets, b, g_l, g_h, backend=backend, chunk_size=100)
    for chunk in (1, 3, 17, 64):
        other = run(gro_kernels.linear_logprobs, hidden, weight, targets, b, g_l, g_h, backend=backend,
                    chunk_size=chunk)
        assert_close_rel(other[0], base[0], 1e-6, 1e-6, f"logprobs, chunk {chunk}")
        assert_close_rel(other[1], base[1], 1e-6, 1e-6, f"entropy, chunk {chunk}")
        for got, want in zip(other[2], base[2]):
            assert_close_rel(got, want, 1e-5, 1e-7, f"grad, chunk {chunk}")


@pytest.mark.parametrize("spec", BACKENDS)
def test_no_grad_path_is_bitwise_equal(spec, use_backend):
    backend = use_backend(spec)
    hidden, weight, targets, b = make_inputs(50, 32, 777, bias=True, ignored=(2,))
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with_grad = gro_kernels.linear_logprobs(h, w, targets, b, backend=backend, temperature=0.9)
    no_grad = gro_kernels.linear_logprobs_no_grad(hidden, weight, targets, b, backend=backend, temperature=0.9)
    assert no_grad.grad_fn is None and not no_grad.requires_grad
    assert torch.equal(with_grad.detach(), no_grad)
    _, ent_grad = gro_kernels.linear_logprobs(h, w, targets, b, backend=backend, temperature=0.9,
                                              return_entropy=True)
    assert torch.equal(gro_kernels.linear_logprobs(h, w, targets, b, backend=backend, temperature=0.9,
                                                   return_entropy=True)[0].detach(), no_grad)
    assert ent_grad.requires_grad


@pytest.mark.parametrize("spec", BACKENDS[:2])
def test_extreme_logits(spec, use_backend):
    """Logits of magnitude ~1e3: no overflow, entropy does not lose precision to cancellation."""
    backend = use_backend(spec)
    hidden, weight, targets, _ = make_inputs(20, 16, 500, scale=300.0)
    g_l, g_h = torch.randn(20), torch.randn(20)
    ref = oracle(hidden, weight, targets, None, g_l, g_h)
    got = run(gro_kernels.linear_logprobs, hidden, weight, targets, None, g_l, g_h, backend=backend, chunk_size=8)
    assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all()
    assert_close_rel(got[0], ref[0], 1e-5, 1e-3, "logprobs")
    assert_close_rel(got[1], ref[1], 1e-5, 1e-3, "entropy")
    for g, r in zip(got[2], ref[2]):
        assert_close_rel(g, r, 1e-4, 1e-4, "grad")


@pytest.mark.parametrize("spec", BACKENDS[:2])
def test_nan_row_stays_in_its_row(spec, use_backend):
    backend = use_backend(spec)
    hidden, weight, targets, _ = make_inputs(12, 16, 300)
    clean = gro_kernels.linear_logprobs(hidden, weight, targets, backend=backend, return_entropy=True, chunk_size=4)
    poisoned = hidden.clone()
    poisoned[5, 3] = float("nan")
    poisoned[9, 0] = float("inf")
    lp, ent = gro_kernels.linear_logprobs(poisoned, weight, targets, backend=backend, return_entropy=True,
                                          chunk_size=4)
    bad = torch.zeros(12, dtype=torch.bool)
    bad[[5, 9]] = True
    assert torch.isnan(lp[bad]).all() and torch.isnan(ent[bad]).all()
    assert torch.equal(lp[~bad], clean[0][~bad]) and torch.equal(ent[~bad], clean[1][~bad])


@pytest.mark.parametrize("spec", BACKENDS)
def test_batched_noncontiguous_and_empty(spec, use_backend):
    backend = use_backend(spec)
    hidden, weight, targets, b = make_inputs(24, 16, 101, bias=True, ignored=(0,))
    flat = gro_kernels.linear_logprobs(hidden, weight, targets, b, backend=backend)
    batched = gro_kernels.linear_logprobs(hidden.view(4, 6, 16), weight, targets.view(4, 6), b, backend=backend)
    assert batched.shape == (4, 6)
    torch.testing.assert_close(batched.reshape(-1), flat, rtol=1e-6, atol=1e-6)
    # Non-contiguous views of the same values give the same result.
    hidden_t = hidden.t().contiguous().t()
    weight_nc = torch.stack([weight, weight], dim=2)[..., 0]
    targets_nc = torch.stack([targets, targets], dim=1)[:, 0]
    assert not hidden_t.is_contiguous() and not weight_nc.is_contiguous() and not targets_nc.is_contiguous()
    torch.testing.assert_close(gro_kernels.linear_logprobs(hidden_t, weight_nc, targets_nc, b, backend=backend),
                               flat, rtol=1e-6, atol=1e-6)
    empty_lp, empty_ent = gro_kernels.linear_logprobs(hidden[:0], weight, targets[:0], b, backend=backend,
                                                      return_entropy=True)
    assert empty_lp.shape == (0,) and empty_ent.shape == (0,)


def test_frozen_head_skips_weight_grad():
    hidden, weight, targets, _ = make_inputs(10, 8, 50)
    h = hidden.clone().requires_grad_()
    lp = gro_kernels.linear_logprobs(h, weight, targets, backend="chunked")
    lp.sum().backward()
    assert h.grad is not None and weight.grad is None


def test_selected_backend_reports_the_path(monkeypatch):
    expected = "chunked/native-cpu" if _ext.native_available("cpu") else "chunked/torch"
    assert gro_kernels.selected_backend("cpu") == expected
    monkeypatch.setenv("GRO_DISABLE_NATIVE", "1")
    assert gro_kernels.selected_backend("cpu") == "chunked/torch"
    monkeypatch.setenv("GRO_BACKEND", "naive")
    assert gro_kernels.selected_backend("cpu") == "naive"
    assert "gro_kernels._C" in gro_kernels.native_status()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_empty_batch_backward_gives_zero_weight_grad(dtype):
    hidden = torch.randn(0, 8, dtype=dtype, requires_grad=True)
    weight = torch.randn(20, 8, dtype=dtype, requires_grad=True)
    bias = torch.randn(20, dtype=dtype, requires_grad=True)
    gro_kernels.linear_logprobs(hidden, weight, torch.zeros(0, dtype=torch.long), bias).sum().backward()
    assert weight.grad.shape == (20, 8) and torch.all(weight.grad == 0) and torch.all(bias.grad == 0)
