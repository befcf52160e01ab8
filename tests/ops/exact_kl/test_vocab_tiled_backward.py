"""exact_kl's vocabulary-tiled backward (exact_kl/chunked.py, ops/common/tiled_grads.py) against fp64 autograd
of the naive KL, with tiles narrower than the vocabulary (a tail tile), row blocks, bias on both heads,
temperature != 1 and masked rows."""

import pytest
import torch

from gro_kernels.ops.exact_kl import chunked
from gro_kernels.ops.exact_kl.naive import exact_kl_naive

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}  # relative to the gradient's largest entry


def _case(n, h, v, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = dict(hidden=torch.randn(n, h, generator=g) * 2, weight=torch.randn(v, h, generator=g) / h ** 0.5,
             ref_hidden=torch.randn(n, h, generator=g) * 2, ref_weight=torch.randn(v, h, generator=g) / h ** 0.5,
             bias=torch.randn(v, generator=g) * 0.5, ref_bias=torch.randn(v, generator=g) * 0.5)
    x = {k: t.to(dtype) for k, t in x.items()}
    mask = torch.ones(n, dtype=torch.bool)
    mask[1::5] = False
    return x, mask, torch.randn(n, generator=g)


@pytest.mark.parametrize("dtype", list(TOL), ids=["fp32", "bf16"])
@pytest.mark.parametrize("chunk_size, vocab_tile", [(64, 11), (6, 40), (64, 97)], ids=["tail", "row-blocks", "one-tile"])
def test_matches_fp64(dtype, chunk_size, vocab_tile):
    x, mask, g_kl = _case(23, 16, 97, dtype)
    tau = 0.8
    kl, lse_p, lse_q = chunked.forward(x["hidden"], x["weight"], x["bias"], x["ref_hidden"], x["ref_weight"],
                                       x["ref_bias"], mask, inv_temperature=1 / tau, chunk_size=chunk_size)
    dh, dw, db = chunked.backward(g_kl, x["hidden"], x["weight"], x["bias"], x["ref_hidden"], x["ref_weight"],
                                  x["ref_bias"], mask, kl, lse_p, lse_q, inv_temperature=1 / tau,
                                  chunk_size=chunk_size, needs_hidden=True, needs_weight=True, needs_bias=True,
                                  vocab_tile=vocab_tile)
    leaves = {k: x[k].double().requires_grad_() for k in ("hidden", "weight", "bias")}
    ref = exact_kl_naive(leaves["hidden"], leaves["weight"], x["ref_hidden"].double(), x["ref_weight"].double(),
                         leaves["bias"], x["ref_bias"].double(), temperature=tau, mask=mask)
    want = torch.autograd.grad((ref * g_kl.double()).sum(), [leaves[k] for k in ("hidden", "weight", "bias")])
    for name, got, w in zip(("dhidden", "dweight", "dbias"), (dh, dw, db), want):
        assert got.dtype == dtype, name
        assert (got.double() - w).abs().max() <= TOL[dtype] * max(1.0, w.abs().max().item()), name
    assert dh[~mask].abs().max() == 0  # masked rows: exact zeros
