"""16-bit GEMMs with an fp32 result, for the chunk loops of the LM-head ops.

bf16/fp16 heads must not have their logits rounded to 16 bits before the softmax, and their dweight
accumulates over chunks in fp32 (docs/math.md §6). On CPU the native op gro_C::mm_lowp_f32_ (oneDNN's
micro-kernel, python_api/cpu_gemm.cpp) does it; on CUDA, cuBLAS through torch.mm(out_dtype=float32).
"""

import torch

from ... import _ext


def lowp_gemm_available(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a 16-bit GEMM with an fp32 result exists: the native CPU op (oneDNN micro-kernel), or cuBLAS."""
    if dtype not in (torch.bfloat16, torch.float16):
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and _ext.native_available("cpu") and \
        torch.ops.gro_C.lowp_gemm_available(str(dtype).removeprefix("torch."))


def mm_f32(out, a, b, accumulate=False):
    """out (+)= a @ b in fp32 for 16-bit a, b (see lowp_gemm_available): no rounding of the result to a or b's dtype."""
    if out.device.type == "cpu":
        torch.ops.gro_C.mm_lowp_f32_(out, a, b, accumulate)
    elif accumulate:
        out.add_(torch.mm(a, b, out_dtype=torch.float32))
    else:
        torch.mm(a, b, out_dtype=torch.float32, out=out)
