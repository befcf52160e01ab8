"""exact_kl (chunked, streamed over both heads) vs the naive fp64 spec: forward, backward, memory, bad input."""

import subprocess
import sys
import textwrap

import pytest
import torch

import gro_kernels
from gro_kernels.ops.exact_kl.naive import exact_kl_naive


def make_case(lead, hidden_size, ref_hidden_size, vocab, *, bias=False, ref_bias=False, n_masked=0, seed=0,
              dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape, s=1.0: (torch.randn(*shape, generator=g) * s).to(dtype)  # noqa: E731
    case = dict(hidden=rnd(*lead, hidden_size, s=0.6), weight=rnd(vocab, hidden_size, s=0.6),
                ref_hidden=rnd(*lead, ref_hidden_size, s=0.6), ref_weight=rnd(vocab, ref_hidden_size, s=0.6),
                bias=rnd(vocab, s=0.5) if bias else None, ref_bias=rnd(vocab, s=0.5) if ref_bias else None)
    mask = None
    if n_masked:
        flat = torch.ones(int(torch.tensor(lead).prod()), dtype=torch.bool)
        flat[torch.randperm(flat.numel(), generator=g)[:n_masked]] = False
        mask = flat.reshape(lead)
    grad = torch.randn(*lead, generator=g)
    return case, mask, grad


def run(case, mask, grad, *, naive, temperature=1.0, chunk_size=None, dtype=None):
    """KL and the policy gradients (hidden, weight, bias) for upstream gradient `grad`."""
    t = {k: None if x is None else x.detach().to(dtype or x.dtype) for k, x in case.items()}
    leaves = [t[k].requires_grad_() for k in ("hidden", "weight", "bias") if t[k] is not None]
    if naive:
        lead = t["hidden"].shape[:-1]
        flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731
        kl = exact_kl_naive(flat(t["hidden"]), t["weight"], flat(t["ref_hidden"]), t["ref_weight"], t["bias"],
                            t["ref_bias"], temperature=temperature,
                            mask=None if mask is None else mask.reshape(-1)).reshape(lead)
    else:
        kl = gro_kernels.exact_kl(t["hidden"], t["weight"], t["ref_hidden"], t["ref_weight"], bias=t["bias"],
                                  ref_bias=t["ref_bias"], mask=mask, temperature=temperature, chunk_size=chunk_size)
    (kl * grad.to(kl.dtype)).sum().backward()
    return [kl.detach()] + [x.grad for x in leaves]


CASES = [
    pytest.param(dict(lead=(64,), hidden_size=32, ref_hidden_size=32, vocab=300), {}, id="basic"),
    pytest.param(dict(lead=(65,), hidden_size=24, ref_hidden_size=24, vocab=257, bias=True, ref_bias=True),
                 dict(chunk_size=16), id="tail-bias"),
    pytest.param(dict(lead=(3, 21), hidden_size=16, ref_hidden_size=16, vocab=211, n_masked=12),
                 dict(temperature=0.7, chunk_size=8), id="3d-masked-temp0.7"),
    pytest.param(dict(lead=(40,), hidden_size=16, ref_hidden_size=24, vocab=100, ref_bias=True),
                 dict(chunk_size=7), id="ref-hidden-size-differs"),
    pytest.param(dict(lead=(1,), hidden_size=8, ref_hidden_size=8, vocab=50, bias=True), {}, id="one-token"),
]


@pytest.mark.parametrize("shape, options", CASES)
def test_forward_backward_vs_naive_fp64(shape, options):
    case, mask, grad = make_case(**shape)
    got = run(case, mask, grad, naive=False, **options)
    ref = run(case, mask, grad, naive=True, dtype=torch.float64,
              **{k: w for k, w in options.items() if k != "chunk_size"})
    assert got[0].dtype == torch.float32 and got[0].shape == case["hidden"].shape[:-1]
    for name, a, b in zip(["kl", "dhidden", "dweight", "dbias"], got, ref):
        torch.testing.assert_close(a.double(), b, rtol=2e-5, atol=2e-6, msg=name)
    if mask is not None:
        assert torch.all(got[0][~mask] == 0) and torch.all(got[1][~mask] == 0)
        assert torch.all(got[0][mask] > 0)


def test_bf16_within_twice_naive_error():
    case, mask, grad = make_case((48,), 32, 32, 300, bias=True, n_masked=5)
    ref = run(case, mask, grad, naive=True, dtype=torch.float64)
    got = run(case, mask, grad, naive=False, dtype=torch.bfloat16, chunk_size=16)
    naive_bf16 = run(case, mask, grad, naive=True, dtype=torch.bfloat16)
    for name, a, n, r in zip(["kl", "dhidden", "dweight", "dbias"], got, naive_bf16, ref):
        assert a.dtype == (torch.float32 if name == "kl" else torch.bfloat16), name
        err, naive_err = (a.double() - r).abs().max(), (n.double() - r).abs().max()
        assert err <= 2 * naive_err + 1e-3, (name, float(err), float(naive_err))


def test_identical_heads_give_zero_kl_and_gradient():
    case, _, grad = make_case((30,), 16, 16, 120, bias=True)
    case["ref_hidden"], case["ref_weight"], case["ref_bias"] = case["hidden"], case["weight"], case["bias"]
    kl, dh, dw, db = run(case, None, grad, naive=False, chunk_size=8)
    assert kl.abs().max() < 1e-5
    assert max(dh.abs().max(), dw.abs().max(), db.abs().max()) < 1e-5


def test_chunk_size_independent():
    case, mask, grad = make_case((57,), 16, 20, 133, bias=True, ref_bias=True, n_masked=6)
    ref = run(case, mask, grad, naive=False, temperature=0.7, chunk_size=57)
    for chunk in (1, 5, 16, 100):
        for a, b in zip(run(case, mask, grad, naive=False, temperature=0.7, chunk_size=chunk), ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_reference_gets_no_gradient_and_frozen_head():
    case, _, grad = make_case((20,), 8, 8, 40)
    ref_h, ref_w = case["ref_hidden"].clone().requires_grad_(), case["ref_weight"].clone().requires_grad_()
    h, w = case["hidden"].clone().requires_grad_(), case["weight"].clone()
    kl = gro_kernels.exact_kl(h, w, ref_h, ref_w)
    (kl * grad).sum().backward()
    assert ref_h.grad is None and ref_w.grad is None and w.grad is None
    torch.testing.assert_close(h.grad, run(case, None, grad, naive=True)[1], rtol=1e-5, atol=1e-6)


def test_torch_compile_sees_one_op():
    case, mask, grad = make_case((24,), 8, 8, 33, bias=True, n_masked=3)
    h, w, b = (case[k].clone().requires_grad_() for k in ("hidden", "weight", "bias"))
    fn = torch.compile(lambda h, w, b: gro_kernels.exact_kl(h, w, case["ref_hidden"], case["ref_weight"], bias=b,
                                                            mask=mask, chunk_size=8),
                       backend="aot_eager", fullgraph=True)
    (fn(h, w, b) * grad).sum().backward()
    for a, r in zip((h.grad, w.grad, b.grad), run(case, mask, grad, naive=True)[1:]):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)


_PEAK_SCRIPT = textwrap.dedent("""
    import torch, gro_kernels
    torch.manual_seed(0)
    n, h, v, chunk = 4096, 64, 8000, {chunk}
    hidden = torch.randn(n, h, requires_grad=True); weight = torch.randn(v, h, requires_grad=True)
    ref_h, ref_w, grad = torch.randn(n, h), torch.randn(v, h), torch.randn(n)
    def step():
        (gro_kernels.exact_kl(hidden, weight, ref_h, ref_w, chunk_size=chunk) * grad).sum().backward()
    step()  # warm-up: allocates the gradient outputs, which then stay
    def rss(key):
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) * 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = rss("VmRSS")
    step()
    print(rss("VmHWM") - base)
""")


@pytest.mark.parametrize("chunk", [64, 256])
def test_peak_memory_bounded_by_chunk_not_tokens(chunk):
    # The naive op would hold several [N, V] fp32 matrices (131 MB each); the chunked op only a few
    # [C, V] buffers and their temporaries, whatever N is.
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT.format(chunk=chunk)], capture_output=True, text=True,
                         check=True)
    extra = int(out.stdout.strip().splitlines()[-1])
    chunk_bytes = chunk * 8000 * 4
    assert extra <= 10 * chunk_bytes + (8 << 20), (extra, chunk_bytes)


BAD = [
    pytest.param(dict(ref_weight=torch.zeros(51, 8)), ValueError, "ref_weight must have the vocabulary", id="V"),
    pytest.param(dict(ref_weight=torch.zeros(50, 9)), ValueError, "ref_weight must be \\[V, H\\]", id="ref-H"),
    pytest.param(dict(weight=torch.zeros(50, 9)), ValueError, "weight must be \\[V, H\\]", id="H"),
    pytest.param(dict(ref_hidden=torch.zeros(5, 8)), ValueError, "ref_hidden must have the leading", id="N"),
    pytest.param(dict(ref_hidden=torch.zeros(4, 8, dtype=torch.float64), ref_weight=torch.zeros(50, 8).double()),
                 TypeError, "ref_hidden must have the dtype of hidden", id="ref-dtype"),
    pytest.param(dict(weight=torch.zeros(50, 8).half()), TypeError, "weight must have the dtype", id="dtype"),
    pytest.param(dict(ref_hidden=torch.zeros(4, 8, device="meta")), ValueError, "same device", id="device"),
    pytest.param(dict(mask=torch.ones(4)), ValueError, "mask must be a bool tensor of shape \\(4,\\)", id="mask"),
    pytest.param(dict(bias=torch.zeros(49)), ValueError, "bias must be \\[50\\]", id="bias"),
    pytest.param(dict(ref_bias=torch.zeros(50).double()), ValueError, "ref_bias must be \\[50\\]", id="ref-bias"),
    pytest.param(dict(temperature=0.0), ValueError, "temperature", id="temperature"),
    pytest.param(dict(chunk_size=0), ValueError, "chunk_size", id="chunk"),
    pytest.param(dict(hidden=torch.zeros(4, 8, dtype=torch.int64)), TypeError, "hidden must have a floating",
                 id="int-hidden"),
]


@pytest.mark.parametrize("override, error, message", BAD)
def test_bad_input(override, error, message):
    args = dict(hidden=torch.zeros(4, 8), weight=torch.zeros(50, 8), ref_hidden=torch.zeros(4, 8),
                ref_weight=torch.zeros(50, 8))
    args.update(override)
    with pytest.raises(error, match=message):
        gro_kernels.exact_kl(**args)
