"""The row math of csrc/common/row_math.h, executed on CPU through the gro_C CPU ops.

The CUDA epilogue calls the same header functions (exp_nonpositive, row_stats_merge, row_lse,
row_entropy, logit_grad), so these are the numerical tests of that shared code. The references
are plain float64 torch. The CPU ops take a chunk in two layouts (token-major rows, or the
vocab-major transpose of a [V, rows] GEMM output, which the chunked backend uses on CPU): every
test runs on both.
"""

import pytest
import torch

from gro_kernels import _ext

pytestmark = pytest.mark.skipif(not _ext.native_available("cpu"), reason=_ext.native_status())

IGNORE = -100
LAYOUTS = ["token-major", "vocab-major"]


def _in_layout(z, layout):
    """A copy of z with contiguous rows (token-major) or contiguous columns (vocab-major)."""
    if layout == "token-major":
        return z.clone(memory_format=torch.contiguous_format)
    return z.t().clone(memory_format=torch.contiguous_format).t()


def _reference(z, y, tau):
    s = z.double() / tau
    log_p = torch.log_softmax(s, dim=1)
    valid = y != IGNORE
    safe = torch.where(valid, y, 0)
    logprob = torch.where(valid, log_p.gather(1, safe[:, None])[:, 0], 0.0)
    entropy = torch.where(valid, -(log_p.exp() * log_p).sum(1), 0.0)
    return logprob, entropy, torch.logsumexp(s, 1)


def _native_forward(z, y, tau, layout="token-major"):
    z = _in_layout(z, layout)
    rows = z.shape[0]
    logprob, lse, entropy = torch.empty(rows), torch.empty(rows), torch.empty(rows)
    torch.ops.gro_C.logprob_forward(z, y, 1.0 / tau, IGNORE, logprob, lse, entropy)
    return logprob, entropy, lse


# vocab 1 (single logit), 5000 (crosses the 2048-logit CPU block: exercises row_stats_merge), 50257 (odd).
CASES = [
    pytest.param(1, 1, 1.0, 1.0, id="one-logit"),
    pytest.param(7, 5000, 1.0, 3.0, id="merge-blocks"),
    pytest.param(3, 50257, 0.7, 2.0, id="odd-vocab-tau0.7"),
    pytest.param(4, 300, 1.3, 40.0, id="extreme-logits"),
    # Many tokens: the vocab-major kernel walks several vocabulary blocks per thread.
    pytest.param(300, 5003, 1.0, 3.0, id="many-rows-blocks"),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rows,vocab,tau,scale", CASES)
def test_forward_matches_float64(rows, vocab, tau, scale, layout):
    g = torch.Generator().manual_seed(vocab)
    z = torch.randn(rows, vocab, generator=g) * scale
    y = torch.randint(0, vocab, (rows,), generator=g)
    if rows > 2:
        y[1] = IGNORE
    for got, want in zip(_native_forward(z, y, tau, layout), _reference(z, y, tau)):
        torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=2e-5 * max(1.0, scale))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ignored_rows_are_zero_and_lse_still_written(layout):
    z = torch.randn(2, 33)
    y = torch.tensor([IGNORE, 5])
    logprob, entropy, lse = _native_forward(z, y, 1.0, layout)
    assert logprob[0] == 0 and entropy[0] == 0
    torch.testing.assert_close(lse.double(), torch.logsumexp(z.double(), 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_logit_poisons_only_its_row(bad, layout):
    z = torch.randn(3, 4100)
    # In the second CPU block (token-major) / the last thread's vocabulary range (vocab-major), so
    # the poison must survive row_stats_merge.
    z[1, 4099] = bad
    logprob, entropy, lse = _native_forward(z, torch.tensor([0, 1, 2]), 1.0, layout)
    assert torch.isnan(lse[1]) and torch.isnan(logprob[1]) and torch.isnan(entropy[1])
    assert torch.isfinite(torch.stack([lse, logprob, entropy])[:, [0, 2]]).all()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_minus_inf_logit_is_a_token_of_probability_zero(layout):
    # A banned token (-inf logit, e.g. from the bias), in the last block / thread range as above: the
    # row's outputs are those of the same row without that entry.
    z = torch.randn(3, 4100)
    z[1, 4099] = -float("inf")
    logprob, entropy, lse = _native_forward(z, torch.tensor([0, 1, 2]), 1.0, layout)
    ref = torch.log_softmax(z[1, :4099].double(), 0)
    torch.testing.assert_close(lse[1].double(), torch.logsumexp(z[1, :4099].double(), 0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logprob[1].double(), ref[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(entropy[1].double(), -(ref.exp() * ref).sum(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_exp_underflow_gives_exact_zero_probability(layout):
    # A logit 200 below the max has p = 0 exactly (exp_nonpositive's underflow branch), so lse == max.
    z = torch.tensor([[0.0, -200.0, -1000.0]])
    logprob, entropy, lse = _native_forward(z, torch.tensor([1]), 1.0, layout)
    assert lse.item() == 0.0 and entropy.item() == 0.0
    assert logprob.item() == -200.0


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("with_entropy", [False, True], ids=["logprob-grad", "with-entropy-grad"])
@pytest.mark.parametrize("rows,vocab,tau", [(5, 3000, 0.7), (2, 17, 1.0), (37, 1030, 1.0)])
def test_logit_grad_matches_autograd_float64(rows, vocab, tau, with_entropy, layout):
    g = torch.Generator().manual_seed(rows * vocab)
    z = torch.randn(rows, vocab, generator=g) * 2
    y = torch.randint(0, vocab, (rows,), generator=g)
    y[0] = IGNORE
    g_l, g_h = torch.randn(rows, generator=g), torch.randn(rows, generator=g)
    zd = z.double().requires_grad_()
    logprob, entropy, _ = _reference(zd, y, tau)
    loss = (logprob * g_l.double()).sum() + ((entropy * g_h.double()).sum() if with_entropy else 0.0)
    (want,) = torch.autograd.grad(loss, zd)
    _, ent, lse = _native_forward(z, y, tau, layout)
    z[0, 3] = float("nan")  # an ignored row's gradient is exactly 0, even where its logits are not finite
    got = _in_layout(z, layout)
    torch.ops.gro_C.logit_grad_(got, y, 1.0 / tau, IGNORE, lse, ent if with_entropy else None, g_l,
                                g_h if with_entropy else None)
    torch.testing.assert_close(got.double()[1:], want[1:], rtol=1e-5, atol=1e-6)
    assert (got[0] == 0).all()


def test_op_refuses_a_chunk_with_neither_rows_nor_columns_contiguous():
    z = torch.randn(4, 6, 2)[:, :, 0]  # strides (12, 2)
    out = [torch.empty(4) for _ in range(3)]
    with pytest.raises(RuntimeError, match="contiguous rows"):
        torch.ops.gro_C.logprob_forward(z, torch.zeros(4, dtype=torch.long), 1.0, IGNORE, *out)


def test_cpu_op_refuses_out_of_range_target():
    with pytest.raises(RuntimeError, match="target id 9 at row 0 is outside"):
        _native_forward(torch.randn(1, 9), torch.tensor([9]), 1.0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("rows,vocab,tau", [(7, 5000, 0.7), (300, 1031, 1.0), (1, 3, 1.3)])
def test_forward_exp_leaves_scaled_softmax_and_matches_forward_bit_for_bit(rows, vocab, tau, layout):
    # The grad-in-forward epilogue: the same lse/logprob/entropy as logprob_forward (bit for bit: no-grad
    # old logprobs must give ratio 1 exactly), and the chunk overwritten with E, softmax = E * exp_scale.
    g = torch.Generator().manual_seed(rows + vocab)
    z = torch.randn(rows, vocab, generator=g) * 3
    y = torch.randint(0, vocab, (rows,), generator=g)
    y[0] = IGNORE if rows > 1 else y[0]
    logprob, entropy, lse = _native_forward(z, y, tau, layout)
    chunk = _in_layout(z, layout)
    out = [torch.empty(rows) for _ in range(4)]
    torch.ops.gro_C.logprob_forward_exp_(chunk, y, 1.0 / tau, IGNORE, out[0], out[1], out[2], out[3])
    for got, want in zip(out[:3], (logprob, lse, entropy)):
        assert torch.equal(got, want)
    softmax = torch.softmax(z.double() / tau, dim=1)
    valid = (y != IGNORE).unsqueeze(1)
    torch.testing.assert_close(chunk.double() * out[3].double().unsqueeze(1), torch.where(valid, softmax, 0.0),
                               rtol=1e-5, atol=1e-7)
    assert (chunk[~valid.squeeze(1)] == 0).all() and (out[3][~valid.squeeze(1)] == 0).all()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_exp_poisons_a_row_with_a_non_finite_logit(layout):
    z = torch.randn(3, 300)
    z[1, 7] = float("inf")
    z[2, 9] = -float("inf")  # a banned token: probability 0, not a poison
    out = [torch.empty(3) for _ in range(4)]
    torch.ops.gro_C.logprob_forward_exp_(_in_layout(z, layout), torch.tensor([0, 1, 2]), 1.0, IGNORE, *out)
    assert all(torch.isnan(t[1]) for t in out[:2]) and all(torch.isfinite(t[[0, 2]]).all() for t in out)


def test_forward_exp_refuses_bad_input():
    z, out = torch.randn(2, 9), [torch.empty(2) for _ in range(4)]
    with pytest.raises(RuntimeError, match="target id 9 at row 1 is outside"):
        torch.ops.gro_C.logprob_forward_exp_(z, torch.tensor([0, 9]), 1.0, IGNORE, *out)
    with pytest.raises(RuntimeError, match="inv_temperature must be > 0"):
        torch.ops.gro_C.logprob_forward_exp_(z, torch.tensor([0, 1]), 0.0, IGNORE, *out)
    with pytest.raises(RuntimeError, match="exp_scale must be contiguous"):
        torch.ops.gro_C.logprob_forward_exp_(z, torch.tensor([0, 1]), 1.0, IGNORE, *out[:3], torch.empty(3))
