"""The bounded logits buffer of the LM-head chunk loops, and 16-bit GEMMs with an fp32 result.

bf16/fp16 heads must not have their logits rounded to 16 bits before the softmax, and their dweight
accumulates over chunks in fp32 (docs/math.md §6). On CPU the native op gro_C::mm_lowp_f32_ (oneDNN's
micro-kernel, python_api/cpu_gemm.cpp) does it; on CUDA, cuBLAS through torch.mm(out_dtype=float32).
"""

import functools

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


@functools.lru_cache(maxsize=None)
def _native_fused_head(dtype: torch.dtype) -> bool:
    return _ext.native_available("cpu") and torch.ops.gro_C.fused_head_available(str(dtype).removeprefix("torch."))


def fused_head_available(hidden, weight, bias) -> bool:
    """Whether the fused bf16 CPU head (python_api/cpu_fused_head.cpp: logits GEMM and epilogue in one loop, no
    chunk of logits in memory) takes these operands: bf16 on CPU with the micro-kernel's bf16 tiles, an even
    hidden size, weight rows contiguous, bias (if any) bf16."""
    return (hidden.device.type == "cpu" and hidden.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16
            and hidden.shape[1] % 2 == 0 and weight.stride(1) == 1 and (bias is None or bias.dtype == torch.bfloat16)
            and _native_fused_head(hidden.dtype))


def _blas_strides(t):
    """t with BLAS-valid strides: a size-1 dimension's stride is arbitrary in torch (a [1, V] column of a vocab-major
    buffer has strides (1, 1)), but the native op reads it as the leading dimension, which must cover the other
    dimension (MKL refuses lda < V). Same memory, only the unused stride is rewritten."""
    rows, cols = t.shape
    if rows == 1 and t.stride(1) == 1 and t.stride(0) < cols:
        return t.as_strided(t.shape, (max(cols, 1), 1))
    if cols == 1 and t.stride(0) == 1 and t.stride(1) != 1:  # one column: row-major with ld 1 is valid
        return t.as_strided(t.shape, (1, 1))
    return t


def mm_f32(out, a, b, accumulate=False):
    """out (+)= a @ b in fp32 for 16-bit a, b (see lowp_gemm_available): no rounding of the result to a or b's dtype."""
    if out.device.type == "cpu":
        torch.ops.gro_C.mm_lowp_f32_(_blas_strides(out), _blas_strides(a), _blas_strides(b), accumulate)
    elif accumulate:
        out.add_(torch.mm(a, b, out_dtype=torch.float32))
    else:
        torch.mm(a, b, out_dtype=torch.float32, out=out)


class ChunkBuffer:
    """The bounded logits buffer of a chunk loop, and the GEMM that fills it.

    Layout: on CPU the chunk is computed as W h^T into a [V, rows] buffer and used through its
    transpose (a vocab-major [rows, V] view): the CPU BLAS (MKL) writes that layout as fast as one
    unchunked GEMM, the token-major [rows, V] one ~10% slower (N 4096, H 1024, V 32000, rows 512:
    0.94 s vs 0.83 s for the logits of all chunks), and the dhidden/dW GEMMs read either layout at
    full speed. The native CPU epilogues take both layouts. Elsewhere (cuBLAS) it is token-major.

    Precision: the logits are fp32 whatever the input dtype (docs/math.md §6). bf16/fp16 inputs go
    through a 16-bit GEMM with an fp32 result (mm_f32) where one exists; otherwise the GEMM rounds to
    the input dtype and the chunk is copied into an fp32 scratch (the only path that rounds logits).
    The gradient GEMMs read a 16-bit copy of dLoss/dlogits (`operand`), as cuBLAS/oneDNN want.
    """

    def __init__(self, rows, vocab, dtype, device, vocab_major=None):
        self.vocab, self.rows, self.dtype = vocab, rows, dtype
        self.capacity = rows * vocab  # a chunk may be narrower than `vocab` (a vocabulary tile's tail)
        device = torch.device(device)
        self.vocab_major = device.type == "cpu" if vocab_major is None else vocab_major
        self.fp32_logits = dtype == torch.float32 or lowp_gemm_available(dtype, device)
        self.storage = torch.empty(self.capacity, dtype=torch.float32 if self.fp32_logits else dtype, device=device)
        # fp32 logits: a 16-bit copy of the gradient for the dhidden/dW GEMMs, made on first use (backward only).
        # Rounded logits: an fp32 scratch for the epilogue.
        self.other = None
        if not self.fp32_logits:
            self.other = torch.empty(self.capacity, dtype=torch.float32, device=device)

    def _view(self, storage, rows, vocab):
        if rows * vocab > self.capacity:
            raise ValueError(f"ChunkBuffer: a [{rows}, {vocab}] chunk exceeds the buffer of {self.capacity} logits")
        if self.vocab_major:
            return storage[: rows * vocab].view(vocab, rows).t()
        return storage[: rows * vocab].view(rows, vocab)

    def logits(self, hidden_rows, weight, bias):
        """z [rows, V] = hidden_rows @ weight^T (+ bias), a view of the buffer (fp32 unless it must round).

        weight may be a vocabulary tile [Vt, H] of the head (Vt * rows within the buffer)."""
        out = self._view(self.storage, hidden_rows.shape[0], weight.shape[0])
        if self.fp32_logits and self.dtype != torch.float32:
            if self.vocab_major:
                mm_f32(out.t(), weight, hidden_rows.t())
            else:
                mm_f32(out, hidden_rows, weight.t())
            return out if bias is None else out.add_(bias)
        if self.vocab_major:
            zt = out.t()  # [V, rows], contiguous
            if bias is None:
                torch.mm(weight, hidden_rows.t(), out=zt)
            else:
                torch.addmm(bias.unsqueeze(1), weight, hidden_rows.t(), out=zt)
            return out
        if bias is None:
            return torch.mm(hidden_rows, weight.t(), out=out)
        return torch.addmm(bias, hidden_rows, weight.t(), out=out)

    def as_fp32(self, z):
        """The chunk as fp32 for the epilogue (a copy into the scratch only where the GEMM rounded)."""
        if z.dtype == torch.float32:
            return z
        return self._view(self.other, z.shape[0], z.shape[1]).copy_(z)

    def operand(self, z, z32):
        """The fp32 chunk z32 (epilogue output) as the gradient GEMMs' operand in the input dtype, written
        into the buffer's 16-bit storage (z itself when the logits were rounded)."""
        if self.dtype == torch.float32:
            return z32
        if not self.fp32_logits:
            return z.copy_(z32)
        if self.other is None:
            self.other = torch.empty(self.capacity, dtype=self.dtype, device=self.storage.device)
        return self._view(self.other, z32.shape[0], z32.shape[1]).copy_(z32)
