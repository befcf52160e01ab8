"""Chunked exact KL: per row chunk, a policy GEMM and a reference GEMM into two bounded [C, V] buffers,
then a fused epilogue (plain torch ops, in place on the buffers).

Memory is O(C*V) whatever N is. Forward: 2 GEMMs per chunk, saves the policy and reference lse and
KL per row. Backward recomputes both heads' logits per vocabulary tile (2 GEMMs), turns the policy tile into
dLoss/dz in place, then feeds the dhidden and dweight GEMMs (6 GEMMs in all, the reference gets no gradient).
"""

import torch

from ..common.chunk_buffer import ChunkBuffer
from ..common.chunking import env_chunk_size
from ..common.tiled_grads import TiledGrads, backward_tiles

# Target logits per buffer: 2^23 fp32 values = 32 MiB each, two buffers (policy, reference) per chunk.
_BUFFER_ELEMENTS = 1 << 23


def default_chunk_size(n_rows: int, vocab: int) -> int:
    env = env_chunk_size()
    if env is not None:
        return env
    return max(1, min(n_rows, max(16, _BUFFER_ELEMENTS // max(vocab, 1))))


class _Buffers:
    """The policy and the reference chunk buffers (ops/common/chunk_buffer.py: fp32 logits whatever the
    input dtype). Token-major on every device: the torch epilogue reduces along contiguous rows, so its
    summation order does not depend on the chunk size."""

    def __init__(self, rows, vocab, dtype, device):
        self.heads = [ChunkBuffer(rows, vocab, dtype, device, vocab_major=False) for _ in range(2)]

    def logits(self, which, hidden_rows, weight, bias):
        """fp32 logits [rows, V] of the rows (which = 0 policy, 1 reference), in buffer `which`."""
        buffer = self.heads[which]
        return buffer.as_fp32(buffer.logits(hidden_rows, weight, bias))


def _log_softmax_(z, inv_tau):
    """z <- log softmax(z * inv_tau) in place; returns the row lse."""
    z.mul_(inv_tau)
    lse = torch.logsumexp(z, dim=1)
    z.sub_(lse.unsqueeze(1))
    return lse


def _forward_epilogue(zp, zq, inv_tau, kl, lse_p, lse_q):
    lse_p.copy_(_log_softmax_(zp, inv_tau))
    lse_q.copy_(_log_softmax_(zq, inv_tau))
    log_ratio = zq.neg_().add_(zp)  # log p - log q, in zq's storage
    kl.copy_(log_ratio.mul_(zp.exp_()).sum(1))  # p (log p - log q), summed over V


def _backward_epilogue(zp, zq, inv_tau, lse_p, lse_q, kl, grad_kl, mask):
    """zp <- dLoss/dzp = g * p * (log p - log q - KL) / tau; rows outside `mask` become exact zeros."""
    log_p = zp.mul_(inv_tau).sub_(lse_p.unsqueeze(1))
    centered = zq.mul_(inv_tau).sub_(lse_q.unsqueeze(1)).neg_().add_(log_p).sub_(kl.unsqueeze(1))
    log_p.exp_().mul_(centered).mul_((grad_kl * inv_tau).unsqueeze(1))
    if mask is not None:
        zp.masked_fill_(~mask.unsqueeze(1), 0.0)  # exact zeros even for non-finite masked rows


def forward(hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, *, inv_temperature, chunk_size):
    """Returns (kl [N] fp32, masked rows 0; lse_p [N] fp32; lse_q [N] fp32)."""
    n, vocab = hidden.shape[0], weight.shape[0]
    f32 = dict(dtype=torch.float32, device=hidden.device)
    kl, lse_p, lse_q = (torch.empty(n, **f32) for _ in range(3))
    if n == 0:
        return kl, lse_p, lse_q
    rows = min(chunk_size, n)
    buffers = _Buffers(rows, vocab, hidden.dtype, hidden.device)
    for start in range(0, n, rows):
        end = min(start + rows, n)
        zp = buffers.logits(0, hidden[start:end], weight, bias)
        zq = buffers.logits(1, ref_hidden[start:end], ref_weight, ref_bias)
        _forward_epilogue(zp, zq, inv_temperature, kl[start:end], lse_p[start:end], lse_q[start:end])
    if mask is not None:
        kl.masked_fill_(~mask, 0.0)
    return kl, lse_p, lse_q


def backward(grad_kl, hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, kl, lse_p, lse_q, *,
             inv_temperature, chunk_size, needs_hidden, needs_weight, needs_bias, vocab_tile=None):
    """Returns (dhidden or None, dweight or None, dbias or None) in the input dtype.

    Vocabulary-tiled (ops/common/tiled_grads.py): with lse_p, lse_q and KL saved, dLoss/dzp of a vocabulary
    tile is pointwise, so row blocks (outer) x tiles of both heads (inner) each write their dweight tile once.
    vocab_tile overrides the tile width (tests)."""
    n, vocab = hidden.shape[0], weight.shape[0]
    rows, tile = backward_tiles(n, vocab, chunk_size, vocab_tile)
    grads = TiledGrads(hidden, weight, rows, tile, rows >= n, needs_hidden, needs_weight, needs_bias)
    if n > 0 and (needs_hidden or needs_weight or needs_bias):
        buffers = _Buffers(rows, tile, hidden.dtype, hidden.device)
        for r0 in range(0, n, rows):
            r1 = min(r0 + rows, n)
            rows_h = hidden[r0:r1]
            for v0 in range(0, vocab, tile):
                v1 = min(v0 + tile, vocab)
                w = weight[v0:v1]
                zp = buffers.logits(0, rows_h, w, None if bias is None else bias[v0:v1])
                zq = buffers.logits(1, ref_hidden[r0:r1], ref_weight[v0:v1],
                                    None if ref_bias is None else ref_bias[v0:v1])
                _backward_epilogue(zp, zq, inv_temperature, lse_p[r0:r1], lse_q[r0:r1], kl[r0:r1], grad_kl[r0:r1],
                                   None if mask is None else mask[r0:r1])
                g = buffers.heads[0].operand(zp, zp)  # dLoss/dz in the input dtype, for the GEMMs
                grads.add_tile(g, zp, rows_h, w, r0, r1, v0, v1, first_block=r0 == 0)
            grads.end_block(r0, r1)
    return grads.result(n > 0)
