"""Chunked backend: one GEMM per row chunk into a bounded [C, V] buffer, then a fused epilogue.

(On CPU the buffer is stored [V, C], see ChunkBuffer; the epilogues take either layout.)

Memory is O(C*V) whatever N is. The backward recomputes each chunk's logits (a second GEMM),
turns them into dLoss/dlogits in place, then feeds the dhidden and dweight GEMMs. With a
random upstream gradient that is the minimum of four GEMMs per step.
"""

import os

import torch

from ..common.gemm import lowp_gemm_available, mm_f32
from . import epilogues

# Target logits per chunk buffer: 2^24 fp32 values = 64 MiB. Large enough that the GEMMs of a
# chunk run near peak, small enough that extra memory stays flat in N.
_BUFFER_ELEMENTS = 1 << 24


def default_chunk_size(n_rows: int, vocab: int) -> int:
    env = os.environ.get("GRO_CHUNK_SIZE")
    if env:
        return max(1, int(env))
    rows = max(16, _BUFFER_ELEMENTS // max(vocab, 1))
    return max(1, min(n_rows, rows))


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

    def __init__(self, rows, vocab, dtype, device):
        self.vocab, self.rows, self.dtype = vocab, rows, dtype
        device = torch.device(device)
        self.vocab_major = device.type == "cpu"
        self.fp32_logits = dtype == torch.float32 or lowp_gemm_available(dtype, device)
        self.storage = torch.empty(rows * vocab, dtype=torch.float32 if self.fp32_logits else dtype, device=device)
        # fp32 logits: a 16-bit copy of the gradient for the dhidden/dW GEMMs, made on first use (backward only).
        # Rounded logits: an fp32 scratch for the epilogue.
        self.other = None
        if not self.fp32_logits:
            self.other = torch.empty(rows * vocab, dtype=torch.float32, device=device)

    def _view(self, storage, rows):
        if self.vocab_major:
            return storage[: rows * self.vocab].view(self.vocab, rows).t()
        return storage[: rows * self.vocab].view(rows, self.vocab)

    def logits(self, hidden_rows, weight, bias):
        """z [rows, V] = hidden_rows @ weight^T (+ bias), a view of the buffer (fp32 unless it must round)."""
        out = self._view(self.storage, hidden_rows.shape[0])
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
        return self._view(self.other, z.shape[0]).copy_(z)

    def operand(self, z, z32):
        """The fp32 chunk z32 (epilogue output) as the gradient GEMMs' operand in the input dtype, written
        into the buffer's 16-bit storage (z itself when the logits were rounded)."""
        if self.dtype == torch.float32:
            return z32
        if not self.fp32_logits:
            return z.copy_(z32)
        if self.other is None:
            self.other = torch.empty(self.rows * self.vocab, dtype=self.dtype, device=self.storage.device)
        return self._view(self.other, z32.shape[0]).copy_(z32)


def forward(hidden, weight, bias, targets, *, inv_temperature, ignore_index, with_entropy, chunk_size,
            vocab_shard=False):
    """Returns (logprobs [N] fp32, entropy [N] fp32 or empty [0], lse [N] fp32).

    vocab_shard: weight/bias are one vocabulary shard (see epilogues.py); the outputs are the shard's."""
    n, vocab = hidden.shape[0], weight.shape[0]
    fwd_epilogue, _, _ = epilogues.pick(hidden.device.type)
    f32 = dict(dtype=torch.float32, device=hidden.device)
    logprobs, lse = torch.empty(n, **f32), torch.empty(n, **f32)
    entropy = torch.empty(n if with_entropy else 0, **f32)
    if n == 0:
        return logprobs, entropy, lse
    rows = min(chunk_size, n)
    buffer = ChunkBuffer(rows, vocab, hidden.dtype, hidden.device)
    for start in range(0, n, rows):
        end = min(start + rows, n)
        z = buffer.logits(hidden[start:end], weight, bias)
        fwd_epilogue(buffer.as_fp32(z), targets[start:end], inv_temperature, ignore_index,
                     logprobs[start:end], lse[start:end], entropy[start:end] if with_entropy else None, vocab_shard)
    return logprobs, entropy, lse


class GradAccumulators:
    """dhidden rows and fp32 dweight/dbias sums fed chunk by chunk from dLoss/dlogits (the last two GEMMs)."""

    def __init__(self, hidden, weight, needs_hidden, needs_weight, needs_bias):
        f32 = dict(dtype=torch.float32, device=hidden.device)
        self.dtype = hidden.dtype
        self.needs_cast = hidden.dtype != torch.float32
        self.fp32_gemm = lowp_gemm_available(hidden.dtype, hidden.device)
        # Every chunk writes its own dhidden rows, and the first chunk writes dweight (no zero-fill and
        # re-read of a [V, H] tensor); result() zeroes both only if no chunk came. dweight/dbias
        # accumulate over chunks in fp32, whatever the input dtype.
        self.d_hidden = torch.empty_like(hidden) if needs_hidden else None
        self.d_weight = torch.empty(weight.shape, **f32) if needs_weight else None
        self.d_bias = torch.zeros(weight.shape[0], **f32) if needs_bias else None
        self.written = False

    def _add_to_weight(self, a, b):
        """dweight += a @ b (the first chunk writes it: no zero-fill and re-read of [V, H]); 16-bit a, b
        accumulate into the fp32 dweight inside the GEMM where a 16-bit GEMM with an fp32 result exists."""
        if self.needs_cast and self.fp32_gemm:
            mm_f32(self.d_weight, a, b, accumulate=self.written)
        elif self.needs_cast:
            update = torch.mm(a, b)
            self.d_weight.add_(update) if self.written else self.d_weight.copy_(update)
        elif self.written:
            self.d_weight.addmm_(a, b)
        else:
            torch.mm(a, b, out=self.d_weight)

    def add_chunk(self, g, g32, hidden, weight, start, end):
        """Rows start:end; g32 holds their fp32 dLoss/dlogits and g the same in the input dtype
        (ChunkBuffer.operand)."""
        if self.d_hidden is not None:
            torch.mm(g, weight, out=self.d_hidden[start:end])
        if self.d_weight is not None:
            self._add_to_weight(g.t(), hidden[start:end])
        if self.d_bias is not None:
            self.d_bias.add_(g32.sum(0))
        self.written = True

    def add_chunk_factored(self, e, e32, row_scale, target_grad, targets, hidden, weight, start, end):
        """Rows start:end, whose dLoss/dlogits is diag(row_scale) E + onehot(targets) * target_grad.

        e32 holds E [rows, V] fp32 (e: the same in the input dtype, ChunkBuffer.operand); row_scale, target_grad
        [rows] fp32 (0 on rows that must get no gradient), targets [rows] valid ids. The per-row
        factors go into the small operands of the GEMMs (dhidden rows after the GEMM, hidden rows
        before the dW GEMM) and the one-hot term is a gather/scatter of [rows, H], so the [rows, V]
        chunk is never rewritten (no backward epilogue)."""
        h = hidden[start:end]
        if self.d_hidden is not None:
            out = self.d_hidden[start:end]
            torch.mm(e, weight, out=out)
            out.mul_(row_scale.to(out.dtype).unsqueeze(1))
            out.addcmul_(weight.index_select(0, targets), target_grad.to(out.dtype).unsqueeze(1))
        if self.d_weight is not None:
            self._add_to_weight(e.t(), h * row_scale.to(h.dtype).unsqueeze(1))
            self.d_weight.index_add_(0, targets, h.float() * target_grad.unsqueeze(1))
        if self.d_bias is not None:
            self.d_bias.add_(torch.mv(e32.t(), row_scale))
            self.d_bias.index_add_(0, targets, target_grad)
        self.written = True

    def result(self):
        """(dhidden, dweight, dbias) in the input dtype, None where not needed."""
        if not self.written:
            for grad in (self.d_hidden, self.d_weight):
                if grad is not None:
                    grad.zero_()
        cast = (lambda t: t if t is None else t.to(self.dtype)) if self.needs_cast else (lambda t: t)
        return self.d_hidden, cast(self.d_weight), cast(self.d_bias)


def backward(grad_logprobs, grad_entropy, hidden, weight, bias, targets, lse, entropy, *,
             inv_temperature, ignore_index, chunk_size, needs_hidden, needs_weight, needs_bias, vocab_shard=False):
    """Returns (dhidden or None, dweight or None, dbias or None) in the input dtype.

    vocab_shard: weight/bias are one vocabulary shard and lse/entropy the full vocabulary's; the result
    is this shard's dweight/dbias and its share of dhidden (the caller sums dhidden over shards)."""
    n, vocab = hidden.shape[0], weight.shape[0]
    _, bwd_epilogue, _ = epilogues.pick(hidden.device.type)
    grads = GradAccumulators(hidden, weight, needs_hidden, needs_weight, needs_bias)
    if n > 0 and (needs_hidden or needs_weight or needs_bias):
        rows = min(chunk_size, n)
        buffer = ChunkBuffer(rows, vocab, hidden.dtype, hidden.device)
        for start in range(0, n, rows):
            end = min(start + rows, n)
            z = buffer.logits(hidden[start:end], weight, bias)
            g32 = buffer.as_fp32(z)
            bwd_epilogue(g32, targets[start:end], inv_temperature, ignore_index, lse[start:end],
                         entropy[start:end] if grad_entropy is not None else None, grad_logprobs[start:end],
                         grad_entropy[start:end] if grad_entropy is not None else None, vocab_shard)
            grads.add_chunk(buffer.operand(z, g32), g32, hidden, weight, start, end)
    return grads.result()
