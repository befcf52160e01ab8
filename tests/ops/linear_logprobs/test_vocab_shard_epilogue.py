"""Chunk epilogues with vocab_shard=True (native gro_C ops and the torch fallback) vs a float64 formula.

A target outside [0, V) that is not ignore_index is another shard's token: forward gives logprob 0 and
the shard's lse and entropy; backward, given the full vocabulary's lse and entropy, gives
(1/tau) [g_l (onehot - p) - g_H p (log p + H)] with the one-hot term only on rows that own their target.
"""

import pytest
import torch

from gro_kernels import _ext
from gro_kernels.ops.linear_logprobs import epilogues

IGNORE = -1
# rows: owned targets (0, last column, middle), another shard's (-2, V, V + 7), ignored.
LOCAL_TARGETS = [0, 52, 17, -2, 53, 60, IGNORE]
VOCAB = 53

IMPLS = {"torch": (epilogues.forward_torch, epilogues.backward_torch)}
if _ext.native_available("cpu"):
    IMPLS["native"] = (epilogues.forward_native, epilogues.backward_native)


def _chunk(seed=0, layout="token-major"):
    """Logits [rows, VOCAB] with contiguous rows, or contiguous columns (the CPU chunk layout)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(len(LOCAL_TARGETS), VOCAB, generator=g) * 2
    return (z if layout == "token-major" else z.t().contiguous().t()), torch.tensor(LOCAL_TARGETS)


@pytest.mark.parametrize("layout", ["token-major", "vocab-major"])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_forward_on_a_shard(impl, layout):
    z, y = _chunk(layout=layout)
    rows, tau = len(LOCAL_TARGETS), 0.7
    logprob, lse, entropy = torch.empty(rows), torch.empty(rows), torch.empty(rows)
    IMPLS[impl][0](z, y, 1.0 / tau, IGNORE, logprob, lse, entropy, True)
    log_p = torch.log_softmax(z.double() / tau, dim=1)
    here = (y >= 0) & (y < VOCAB)
    valid = y != IGNORE
    want_lp = torch.where(here, log_p.gather(1, y.clamp(0, VOCAB - 1).unsqueeze(1)).squeeze(1), 0.0)
    want_ent = torch.where(valid, -(log_p.exp() * log_p).sum(1), 0.0)
    torch.testing.assert_close(lse.double(), torch.logsumexp(z.double() / tau, 1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logprob.double(), want_lp, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(entropy.double(), want_ent, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layout", ["token-major", "vocab-major"])
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("with_entropy", [True, False])
def test_backward_on_a_shard(impl, with_entropy, layout):
    z, y = _chunk(1, layout)
    rows, tau = len(LOCAL_TARGETS), 1.3
    g = torch.Generator().manual_seed(2)
    # The full vocabulary's lse is larger than the shard's: p sums to less than 1 on the shard.
    lse = torch.logsumexp(z / tau, 1) + torch.rand(rows, generator=g)
    entropy = 3.0 + torch.rand(rows, generator=g)
    g_l, g_h = torch.randn(rows, generator=g), torch.randn(rows, generator=g)
    got = z.clone()
    IMPLS[impl][1](got, y, 1.0 / tau, IGNORE, lse, entropy if with_entropy else None, g_l,
                   g_h if with_entropy else None, True)
    log_p = z.double() / tau - lse.double().unsqueeze(1)
    p = log_p.exp()
    owned = (y >= 0) & (y < VOCAB)
    onehot = torch.zeros_like(p)
    onehot[owned.nonzero().squeeze(1), y[owned]] = 1.0
    want = g_l.double().unsqueeze(1) * (onehot - p)
    if with_entropy:
        want -= g_h.double().unsqueeze(1) * p * (log_p + entropy.double().unsqueeze(1))
    want = torch.where((y != IGNORE).unsqueeze(1), want / tau, 0.0)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_native_op_still_refuses_out_of_range_targets_outside_a_shard():
    if "native" not in IMPLS:
        pytest.skip(_ext.native_status())
    z, y = _chunk()
    out = [torch.empty(len(LOCAL_TARGETS)) for _ in range(3)]
    with pytest.raises(RuntimeError, match="outside"):
        torch.ops.gro_C.logprob_forward(z, y, 1.0, IGNORE, out[0], out[1], out[2])
    with pytest.raises(RuntimeError, match="outside"):
        torch.ops.gro_C.logit_grad_(z, y, 1.0, IGNORE, out[1], None, out[0], None)
