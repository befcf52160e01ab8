"""linear_logprobs on the device under test (GRO_TEST_DEVICE) vs the fp64 naive oracle, forward + backward
with a random upstream gradient on logprobs and entropy, for every backend that runs there; and
torch.compile of the public call. Tiny shapes with tails in N, V and the chunk count."""

import pytest
import torch

import gro_kernels
from tests.device.common import (DTYPES, assert_within_naive_error, require_native, require_triton, to,
                                 triton_param)
from tests.support.helpers import make_inputs, oracle, run

# id: (N, H, V, bias, ignored rows, temperature, chunk_size)
SHAPES = {
    "tail-n70-v2000-bias-t0.7": (70, 64, 2000, True, (3, 69), 0.7, 32),
    "one-token-v300": (1, 32, 300, False, (), 1.0, None),
}
CHUNKED = [pytest.param("native", id="chunked-native"), pytest.param("torch", id="chunked-torch")]


def _case(shape, dtype, device):
    n, h, v, bias, ignored, tau, chunk = SHAPES[shape]
    hidden, weight, targets, b = make_inputs(n, h, v, dtype=dtype, bias=bias, ignored=ignored)
    g = torch.Generator().manual_seed(1)
    g_l, g_h = torch.randn(n, generator=g), torch.randn(n, generator=g)
    ref = oracle(hidden, weight, targets, b, g_l, g_h, temperature=tau)
    on_device = to(device, hidden, weight, targets, b, g_l, g_h)
    return on_device, ref, dict(temperature=tau), chunk


def _check(got, naive_same_dtype, ref, dtype, targets):
    lp, ent, grads = got
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32
    assert_within_naive_error(lp, naive_same_dtype[0], ref[0], dtype, "logprobs")
    assert_within_naive_error(ent, naive_same_dtype[1], ref[1], dtype, "entropy")
    for name, g, g_naive, g_ref in zip(("dhidden", "dweight", "dbias"), grads, naive_same_dtype[2], ref[2]):
        assert g.dtype == dtype, f"{name} comes back in the input dtype"
        assert_within_naive_error(g, g_naive, g_ref, dtype, name, gradient=True)
    ignored = (targets == -100).cpu()
    assert (lp.cpu()[ignored] == 0).all() and (grads[0].cpu()[ignored] == 0).all()


def _compare(device, shape, dtype, backend):
    (hidden, weight, targets, b, g_l, g_h), ref, opts, chunk = _case(shape, dtype, device)
    naive = run(gro_kernels.linear_logprobs, hidden, weight, targets, b, g_l, g_h, backend="naive", **opts)
    got = run(gro_kernels.linear_logprobs, hidden, weight, targets, b, g_l, g_h, backend=backend,
              chunk_size=chunk if backend == "chunked" else None, **opts)
    assert got[0].device.type == device.type
    _check(got, naive, ref, dtype, targets)


@pytest.mark.parametrize("epilogue", CHUNKED)
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_chunked_matches_fp64_oracle(device, shape, dtype, epilogue, monkeypatch):
    if epilogue == "native":
        require_native(device)
    else:
        monkeypatch.setenv("GRO_DISABLE_NATIVE", "1")
    expected = f"chunked/native-{device.type}" if epilogue == "native" else "chunked/torch"
    assert gro_kernels.selected_backend(device, "chunked") == expected
    _compare(device, shape, dtype, "chunked")


@pytest.mark.parametrize("dtype,shape", [triton_param(d, s, id=f"{name}-{s}") for name, d in DTYPES.items()
                                         for s in SHAPES])
def test_triton_matches_fp64_oracle(device, dtype, shape):
    require_triton(device)
    _compare(device, shape, dtype, "triton")


def _loss(hidden, weight, targets, bias, upstream, backend):
    logprobs, entropy = gro_kernels.linear_logprobs(hidden, weight, targets, bias, temperature=0.8,
                                                    return_entropy=True, backend=backend, chunk_size=16)
    return (logprobs * upstream).sum() - 0.01 * entropy.sum()


@pytest.mark.parametrize("backend", ["chunked", "triton"])
def test_torch_compile_fullgraph_matches_eager(device, backend):
    """torch.compile sees the custom ops (triton_op for Triton) as graph nodes: same values and gradients."""
    if backend == "triton":
        require_triton(device)
        if device.type == "cpu":
            pytest.skip("inductor cannot compile the Triton ops for CPU tensors (the interpreter is eager-only)")
    hidden, weight, targets, bias = to(device, *make_inputs(40, 16, 301, bias=True, ignored=(3,)))
    upstream = torch.randn(40).to(device)
    results = []
    for fn in (_loss, torch.compile(_loss, fullgraph=True, backend="inductor")):
        h, w, b = (t.clone().requires_grad_() for t in (hidden, weight, bias))
        loss = fn(h, w, targets, b, upstream, backend)
        loss.backward()
        results.append((loss.detach(), h.grad, w.grad, b.grad))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
