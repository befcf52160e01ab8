"""Vocabulary-parallel exact KL: policy and reference heads sharded the same way, rows [start, start + V_r).

Rank r's shard pass (chunked.forward) gives lse_p_r, lse_q_r of the shard's two softmaxes and the KL
between them, KL_r. One all_gather of those [3, N] rows gives every rank the full-vocabulary KL:

    lse_p = logsumexp_r lse_p_r (likewise lse_q),  log wp_r = lse_p_r - lse_p,  log wq_r = lse_q_r - lse_q
    KL = sum_v p_v (log p_v - log q_v) = sum_r wp_r (KL_r + log wp_r - log wq_r)

since on shard r, p_v = wp_r p^r_v and q_v = wq_r q^r_v. Backward: chunked.backward with the global
lse_p, lse_q and KL gives the exact dKL/dz of the shard's columns, p (log p - log q - KL) / tau, hence
this rank's dweight/dbias and its share of dhidden (one all_reduce sums the shares). hidden, ref_hidden,
mask and the upstream gradient must be the same on every rank.
"""

import torch

from ..common import collectives, compaction
from . import chunked


def combine(gathered):
    """(kl, lse_p, lse_q) over the full vocabulary from gathered [P, 3, N] rows (lse_p_r, lse_q_r, KL_r)."""
    lse_p = torch.logsumexp(gathered[:, 0], dim=0)
    lse_q = torch.logsumexp(gathered[:, 1], dim=0)
    log_wp = gathered[:, 0] - lse_p
    log_wq = gathered[:, 1] - lse_q
    return (log_wp.exp() * (gathered[:, 2] + log_wp - log_wq)).sum(0), lse_p, lse_q


class _ShardedExactKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, shard, inv_temperature,
                chunk_size):
        kl_r, lse_p_r, lse_q_r = chunked.forward(hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask,
                                                 inv_temperature=inv_temperature, chunk_size=chunk_size)
        gathered = collectives.all_gather_stack(torch.stack([lse_p_r, lse_q_r, kl_r]), shard.group)
        kl, lse_p, lse_q = combine(gathered)
        if mask is not None:
            kl = kl.masked_fill(~mask, 0.0)
        ctx.save_for_backward(hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, kl, lse_p, lse_q)
        ctx.options = (shard, inv_temperature, chunk_size)
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, kl, lse_p, lse_q = ctx.saved_tensors
        shard, inv_temperature, chunk_size = ctx.options
        needs_hidden, needs_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        needs_bias = bias is not None and ctx.needs_input_grad[2]
        dh, dw, db = chunked.backward(grad_kl.float().contiguous(), hidden, weight, bias, ref_hidden, ref_weight,
                                      ref_bias, mask, kl, lse_p, lse_q, inv_temperature=inv_temperature,
                                      chunk_size=chunk_size, needs_hidden=needs_hidden, needs_weight=needs_weight,
                                      needs_bias=needs_bias)
        if needs_hidden:
            collectives.all_reduce_sum_(dh, shard.group)  # every rank's share of dhidden -> the full dhidden
        return dh, dw, db, None, None, None, None, None, None, None


def sharded_exact_kl(hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, shard, *, temperature, chunk_size):
    """Per-token KL [N] fp32 over the full vocabulary; inputs validated and flattened, `shard` checked.
    Only rows inside `mask` run (ops/common/compaction.py); the mask is replicated, so ranks stay matched."""
    n = hidden.shape[0]
    live, (hidden, ref_hidden), mask = compaction.take_masked(mask, hidden, ref_hidden)
    if chunk_size is None:
        # Rows per chunk as for the whole vocabulary, so the two [C, V_r] tiles shrink with the shard.
        chunk_size = chunked.default_chunk_size(hidden.shape[0], shard.total)
    # The reference side is a constant: detaching it keeps autograd from expecting its gradient.
    kl = _ShardedExactKL.apply(hidden, weight, bias, ref_hidden.detach(), ref_weight.detach(),
                               None if ref_bias is None else ref_bias.detach(), mask, shard,
                               1.0 / float(temperature), int(chunk_size))
    return compaction.put(live, n, kl)[0]
