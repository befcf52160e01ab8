"""Vocabulary-tiled gradients of an LM-head chunk loop (docs/math.md §6, "Vocabulary-tiled backward").

When dLoss/dz of a [rows, Vt] tile is pointwise given per-row statistics saved by the forward (linear_logprobs:
lse and entropy; exact_kl: both lse and the KL), the backward loops over row blocks (outer) and vocabulary tiles
of the head (inner): each dweight tile is written once per row block instead of a read-modify-write of the
whole fp32 [V, H] dweight per row chunk, and dhidden accumulates over the tiles in a [rows, H] block.
"""

import torch

from .chunk_buffer import lowp_gemm_available, mm_f32

# The tiles: a row block of at most max(chunk_size, budget / _MIN_VOCAB_TILE) rows (budget = chunk_size * V, the
# forward's buffer) times a vocabulary tile filling the budget. With the whole batch in one row block every
# dweight tile is written once.
_MIN_VOCAB_TILE = 1024
_TILE_ALIGN = 64  # vocabulary tiles in whole GEMM blocks (python_api/cpu_gemm.cpp)


def backward_tiles(n_rows: int, vocab: int, chunk_size: int, vocab_tile=None, bf16_operand=False):
    """(rows per row block, vocabulary entries per tile) of the backward; vocab_tile overrides the tile.
    bf16_operand: the tile buffer holds bf16 dLoss/dz (the fused CPU head), not fp32 logits: twice the entries in
    the same bytes, as twice the rows per chunk."""
    if bf16_operand:
        chunk_size *= 2
    budget = max(1, chunk_size) * vocab
    if n_rows <= budget // (_MIN_VOCAB_TILE // 2):
        # One row block with tiles down to half the minimum: a second row block would re-read and re-write the
        # whole dweight in fp32 (e.g. N 16384 at V 32000 split 16375 + 9 rows).
        rows = max(1, n_rows)
    else:
        rows = max(1, min(n_rows, max(chunk_size, budget // _MIN_VOCAB_TILE)))
    if vocab_tile is None:
        vocab_tile = budget // rows
        if _TILE_ALIGN < vocab_tile < vocab:
            vocab_tile -= vocab_tile % _TILE_ALIGN
    return rows, max(1, min(vocab, vocab_tile))


class TiledGrads:
    """dhidden / dweight / dbias of one row block fed tile by tile (the dhidden and dweight GEMMs).

    dhidden rows accumulate over the vocabulary tiles (fp32 for 16-bit inputs, then one cast); a dweight tile
    is written straight into the result when the batch is one row block (for 16-bit inputs by torch's GEMM, which
    accumulates in fp32 and rounds once, as an fp32 tile cast at the end would, and is blocked for any K: 40 vs
    109 ms for our micro-kernel loop at K = 16384 rows), else accumulated over row blocks (fp32 for 16-bit
    inputs). 16-bit accumulations use the 16-bit GEMM with fp32 result where there is one."""

    def __init__(self, hidden, weight, rows, tile, single_block, needs_hidden, needs_weight, needs_bias):
        f32 = dict(dtype=torch.float32, device=hidden.device)
        self.dtype, self.single_block = hidden.dtype, single_block
        self.lowp = hidden.dtype != torch.float32
        self.fp32_gemm = lowp_gemm_available(hidden.dtype, hidden.device)
        self.d_hidden = torch.empty_like(hidden) if needs_hidden else None
        self.dh32 = torch.empty(rows, hidden.shape[1], **f32) if needs_hidden and self.lowp else None
        self.d_weight = None
        if needs_weight:
            accumulate_f32 = self.lowp and not single_block
            self.d_weight = torch.empty(weight.shape, **f32) if accumulate_f32 else torch.empty_like(weight)
        self.d_bias = torch.zeros(weight.shape[0], **f32) if needs_bias else None

    def _mm(self, out, a, b, accumulate):
        """out (+)= a @ b, out fp32 or in the input dtype."""
        if out.dtype != a.dtype and self.fp32_gemm:
            mm_f32(out, a, b, accumulate=accumulate)
        elif out.dtype != a.dtype:
            update = torch.mm(a, b)
            out.add_(update) if accumulate else out.copy_(update)
        elif accumulate:
            out.addmm_(a, b)
        else:
            torch.mm(a, b, out=out)

    def add_tile(self, g, g32, hidden_rows, weight_tile, r0, r1, v0, v1, first_block):
        """g [rows, v1 - v0]: dLoss/dz of rows r0:r1 on tile v0:v1 in the GEMM dtype (g32: fp32, or None when the
        bias gradient was summed elsewhere: the fused CPU head)."""
        if self.d_hidden is not None:
            out = self.dh32[: r1 - r0] if self.dh32 is not None else self.d_hidden[r0:r1]
            self._mm(out, g, weight_tile, accumulate=v0 > 0)
        if self.d_weight is not None:
            self._mm(self.d_weight[v0:v1], g.t(), hidden_rows, accumulate=not first_block)
        if self.d_bias is not None and g32 is not None:
            self.d_bias[v0:v1].add_(g32.sum(0))

    def end_block(self, r0, r1):
        if self.dh32 is not None:
            self.d_hidden[r0:r1].copy_(self.dh32[: r1 - r0])

    def result(self, any_rows):
        if not any_rows:
            for grad in (self.d_hidden, self.d_weight):
                if grad is not None:
                    grad.zero_()
        cast = lambda t: t if t is None else t.to(self.dtype)  # noqa: E731
        return self.d_hidden, cast(self.d_weight), cast(self.d_bias)
