"""64-bit index math at sizes past 2^31, checked without allocating them: the offsets helper every
kernel uses for token and vocabulary rows, evaluated by the interpreter with numpy's wrapping ints."""

import pytest
import torch
import triton
import triton.language as tl

from gro_kernels.ops.common.triton_helpers import offsets_i64

pytestmark = pytest.mark.interpreter


@triton.jit
def _row_address_probe(out_ptr, start, stride, BLOCK: tl.constexpr):
    offs = offsets_i64(start, BLOCK) * stride
    tl.store(out_ptr + tl.arange(0, BLOCK), offs)


def test_row_offsets_do_not_wrap_past_2_31():
    # Token 32768.. of a Qwen2.5 vocabulary row (V = 152064): 32768 * 152064 = 4.98e9 > 2^31.
    start, stride, block = 32768, 152064, 16
    out = torch.empty(block, dtype=torch.int64)
    _row_address_probe[(1,)](out, start, stride, BLOCK=block)
    expected = torch.tensor([(start + i) * stride for i in range(block)], dtype=torch.int64)
    assert (expected > 2**31).all()
    assert torch.equal(out, expected)
