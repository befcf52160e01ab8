"""mm_f32 (16-bit GEMM with an fp32 result) on operands whose size-1 dimension has an arbitrary stride.

A one-token chunk of the vocab-major buffer is a [1, V] view with strides (1, 1); the native op reads the
size-1 dimension's stride as the leading dimension (MKL refused lda < V for fp16 and the one-token fp16
backward came back inf)."""

import pytest
import torch

from gro_kernels.ops.common.chunk_buffer import lowp_gemm_available, mm_f32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("accumulate", [False, True])
def test_single_row_and_single_column_views(dtype, accumulate):
    if not lowp_gemm_available(dtype, torch.device("cpu")):
        pytest.skip(f"no native {dtype} GEMM with an fp32 result here")
    g = torch.Generator().manual_seed(0)
    row = torch.randn(300, 1, generator=g).to(dtype).t()          # [1, 300], strides (1, 1)
    weight = torch.randn(300, 32, generator=g).to(dtype)
    hidden_col = torch.randn(32, 1, generator=g).to(dtype)         # [32, 1]
    base = torch.randn(1, 32, generator=g)
    out = base.clone()
    mm_f32(out, row, weight, accumulate=accumulate)
    want = row.float() @ weight.float() + (base if accumulate else 0)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-4)
    logits = torch.empty(300, 1).t().t()                           # [300, 1] out, strides (1, 1)
    mm_f32(logits, weight, hidden_col)
    torch.testing.assert_close(logits, weight.float() @ hidden_col.float(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 6, 7, 64, 130, 131])
@pytest.mark.parametrize("accumulate", [False, True])
def test_any_inner_size(k, accumulate):
    """The micro-kernel gets K rounded down to a multiple of 4 (a K of 2 mod 4 is slow there); the rest is an fp32
    update: every K gives the fp32 product of the same 16-bit operands."""
    if not lowp_gemm_available(torch.bfloat16, torch.device("cpu")):
        pytest.skip("no native bf16 GEMM with an fp32 result here")
    g = torch.Generator().manual_seed(k)
    a = torch.randn(70, k, generator=g).bfloat16()
    b = torch.randn(k, 90, generator=g).bfloat16()
    base = torch.randn(70, 90, generator=g)
    out = base.clone()
    mm_f32(out, a, b, accumulate=accumulate)
    want = a.double() @ b.double() + (base.double() if accumulate else 0)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-4)
