"""Chunked backend: one GEMM per row chunk into a bounded [C, V] buffer, then a fused epilogue.

(On CPU the buffer is stored [V, C], see ChunkBuffer; the epilogues take either layout.) bf16 heads on a CPU
with bf16 micro-kernel tiles skip the buffer: the fused CPU head computes the logits tile by tile and runs the
epilogue on each tile in cache (fused_head_available; docs/math.md §6).

Memory is O(C*V) whatever N is. The backward recomputes the logits tile by tile of the vocabulary
(a second GEMM, see backward), turns them into dLoss/dlogits in place, then feeds the dhidden and
dweight GEMMs. With a random upstream gradient that is the minimum of four GEMMs per step.
"""

import torch

from ..common.chunking import env_chunk_size
from ..common.chunk_buffer import ChunkBuffer, fused_head_available, lowp_gemm_available, mm_f32
from ..common.tiled_grads import TiledGrads, backward_tiles
from . import epilogues
from .logit_store import STORE_TILE

# Target logits per chunk buffer: 2^24 fp32 values = 64 MiB. Large enough that the GEMMs of a
# chunk run near peak, small enough that extra memory stays flat in N.
_BUFFER_ELEMENTS = 1 << 24


def default_chunk_size(n_rows: int, vocab: int) -> int:
    env = env_chunk_size()
    if env is not None:
        return env
    rows = max(16, _BUFFER_ELEMENTS // max(vocab, 1))
    return max(1, min(n_rows, rows))


def forward(hidden, weight, bias, targets, *, inv_temperature, ignore_index, with_entropy, chunk_size,
            vocab_shard=False, softcap=0.0, softcap_scale=1.0, stats=None, logit_store=None):
    """Returns (logprobs [N] fp32, entropy [N] fp32 or empty [0], lse [N] fp32).

    vocab_shard: weight/bias are one vocabulary shard (see epilogues.py); the outputs are the shard's.
    softcap > 0: each chunk's logits go through epilogues.softcap_ (with softcap_scale) before the epilogue.
    stats: None or a [3, N] fp32 tensor that receives epilogues.stats_torch of every row.
    logit_store: from logit_store.py, filled here for backward."""
    n, vocab = hidden.shape[0], weight.shape[0]
    fwd_epilogue, _, _ = epilogues.pick(hidden.device.type)
    f32 = dict(dtype=torch.float32, device=hidden.device)
    logprobs, lse = torch.empty(n, **f32), torch.empty(n, **f32)
    entropy = torch.empty(n if with_entropy else 0, **f32)
    if n == 0:
        return logprobs, entropy, lse
    if not softcap and stats is None and fused_head_available(hidden, weight, bias):
        torch.ops.gro_C.head_forward_lowp(hidden, weight, bias, targets, inv_temperature, ignore_index, vocab_shard,
                                          logprobs, lse, entropy if with_entropy else None, logit_store)
        return logprobs, entropy, lse
    if logit_store is not None:
        raise ValueError("logit_store is the fused bf16 CPU head's (logit_store.py); this forward does not run it")
    rows = min(chunk_size, n)
    buffer = ChunkBuffer(rows, vocab, hidden.dtype, hidden.device)
    for start in range(0, n, rows):
        end = min(start + rows, n)
        z = buffer.logits(hidden[start:end], weight, bias)
        z32 = buffer.as_fp32(z)
        if softcap:
            epilogues.softcap_(z32, softcap, softcap_scale)
        fwd_epilogue(z32, targets[start:end], inv_temperature, ignore_index,
                     logprobs[start:end], lse[start:end], entropy[start:end] if with_entropy else None, vocab_shard)
        if stats is not None:
            epilogues.stats_torch(z32, targets[start:end], inv_temperature, ignore_index, lse[start:end],
                                  stats[:, start:end])
    return logprobs, entropy, lse


class GradAccumulators:
    """dhidden rows and fp32 dweight/dbias sums fed chunk by chunk from dLoss/dlogits (the last two GEMMs).

    For the one-pass grad-in-forward loop (fused_token_loss.py), whose chunks hold whole rows; the backward
    here is vocabulary-tiled (ops/common/tiled_grads.py)."""

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


# Local target ids of a vocabulary range (a backward tile, or a vocab-parallel shard): the user's ignore_index may be
# any int, and a non-negative one would collide with a local column, so ignored rows and rows whose target is in
# another range get two fixed negative ids.
LOCAL_IGNORE = -1
FOREIGN = -2


def local_targets(targets, start, size, ignore_index):
    """(local ids: t - start where owned, FOREIGN elsewhere, LOCAL_IGNORE on ignored rows; valid; owned) for the
    vocabulary range [start, start + size). The vocab_shard epilogues, called with ignore_index=LOCAL_IGNORE, give
    FOREIGN rows the softmax part only."""
    valid = targets != ignore_index
    local = targets - start
    owned = valid & (local >= 0) & (local < size)
    return torch.where(owned, local, torch.where(valid, FOREIGN, LOCAL_IGNORE)), valid, owned


def backward(grad_logprobs, grad_entropy, hidden, weight, bias, targets, lse, entropy, *,
             inv_temperature, ignore_index, chunk_size, needs_hidden, needs_weight, needs_bias, vocab_shard=False,
             softcap=0.0, softcap_scale=1.0, vocab_tile=None, logit_store=None):
    """Returns (dhidden or None, dweight or None, dbias or None) in the input dtype.

    Vocabulary-tiled (docs/math.md §6): the saved full-vocabulary lse and entropy make dLoss/dz of a tile
    [rows, Vt] a pointwise function of its logits (the vocab_shard epilogue with tile-local target ids), so
    the loop runs over row blocks (outer) and vocabulary tiles (inner, see backward_tiles): each dweight tile
    is written once per row block and dhidden accumulates in a [rows, H] block. vocab_tile overrides the tile
    width (tests).

    softcap > 0: as in forward; dLoss/dz is chained through the softcap's derivative (one extra tile buffer;
    the softcap is pointwise, so per tile as per chunk).

    vocab_shard: weight/bias are one vocabulary shard and lse/entropy the full vocabulary's; the result
    is this shard's dweight/dbias and its share of dhidden (the caller sums dhidden over shards).

    logit_store: filled by forward on the same operands (logit_store.py); its tiles are read, not recomputed, and
    consumed (overwritten)."""
    n, vocab = hidden.shape[0], weight.shape[0]
    _, bwd_epilogue, _ = epilogues.pick(hidden.device.type)
    fused = not softcap and fused_head_available(hidden, weight, bias)
    rows, tile = backward_tiles(n, vocab, chunk_size, vocab_tile, bf16_operand=fused)
    grads = TiledGrads(hidden, weight, rows, tile, rows >= n, needs_hidden, needs_weight, needs_bias)
    if n == 0 or not (needs_hidden or needs_weight or needs_bias):
        return grads.result(n > 0)
    if logit_store is not None and not (fused and rows >= n):
        raise ValueError("logit_store needs the fused bf16 CPU head and a single row block (logit_store.py)")
    if fused:
        _fused_tiles(grads, grad_logprobs, grad_entropy, hidden, weight, bias, targets, lse, entropy, rows, tile,
                     inv_temperature, ignore_index, logit_store)
        return grads.result(True)
    buffer = ChunkBuffer(rows, tile, hidden.dtype, hidden.device)
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        h = hidden[r0:r1]
        row_targets, row_lse = targets[r0:r1], lse[r0:r1]
        row_entropy = entropy[r0:r1] if grad_entropy is not None else None
        row_g_entropy = grad_entropy[r0:r1] if grad_entropy is not None else None
        for v0 in range(0, vocab, tile):
            v1 = min(v0 + tile, vocab)
            w = weight[v0:v1]
            z = buffer.logits(h, w, None if bias is None else bias[v0:v1])
            g32 = buffer.as_fp32(z)
            factor = None
            if softcap:
                factor = torch.empty_like(g32)
                epilogues.softcap_(g32, softcap, softcap_scale, grad_factor=factor)
            if v0 == 0 and v1 == vocab:
                local, local_ignore = row_targets, ignore_index
            else:
                local, local_ignore = local_targets(row_targets, v0, v1 - v0, ignore_index)[0], LOCAL_IGNORE
            bwd_epilogue(g32, local, inv_temperature, local_ignore, row_lse, row_entropy,
                         grad_logprobs[r0:r1], row_g_entropy, vocab_shard or v1 - v0 < vocab)
            if factor is not None:
                g32.mul_(factor)
            grads.add_tile(buffer.operand(z, g32), g32, h, w, r0, r1, v0, v1, first_block=r0 == 0)
        grads.end_block(r0, r1)
    return grads.result(True)


def _fused_tiles(grads, grad_logprobs, grad_entropy, hidden, weight, bias, targets, lse, entropy, rows, tile,
                 inv_temperature, ignore_index, logit_store):
    """The tile loop of backward with the fused bf16 CPU head: each tile's dLoss/dz comes out of one op
    (logits GEMM + epilogue in cache, rounded to bf16 once) into a [tile, rows] buffer, the dhidden / dweight
    GEMMs' operand; the bias gradient is summed inside the op. A tile starting on a store block reads the stored
    logits of the blocks the store holds (logit_store, single row block only)."""
    n, vocab = hidden.shape[0], weight.shape[0]
    storage = torch.empty(rows * tile, dtype=hidden.dtype, device=hidden.device)
    g_logprobs = grad_logprobs.float().contiguous()
    g_entropy = None if grad_entropy is None else grad_entropy.float().contiguous()
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        h = hidden[r0:r1]
        packed = torch.ops.gro_C.pack_hidden_lowp(h)
        row_entropy = entropy[r0:r1] if g_entropy is not None else None
        row_g_entropy = g_entropy[r0:r1] if g_entropy is not None else None
        for v0 in range(0, vocab, tile):
            v1 = min(v0 + tile, vocab)
            w = weight[v0:v1]
            g = storage[: (v1 - v0) * (r1 - r0)].view(v1 - v0, r1 - r0)
            store = logit_store if logit_store is not None and v0 % STORE_TILE == 0 else None
            torch.ops.gro_C.head_logit_grad_lowp_(
                g, packed, r1 - r0, w, None if bias is None else bias[v0:v1], targets[r0:r1], v0, inv_temperature,
                ignore_index, lse[r0:r1], row_entropy, g_logprobs[r0:r1], row_g_entropy,
                None if grads.d_bias is None else grads.d_bias[v0:v1], store, v0 // STORE_TILE)
            grads.add_tile(g.t(), None, h, w, r0, r1, v0, v1, first_block=r0 == 0)
        grads.end_block(r0, r1)
