"""Vocabulary-parallel linear_logprobs: each rank holds rows [start, start + V_r) of the LM head.

Per token, rank r's shard pass gives the shard's lse_r, entropy H_r of the shard's softmax and, on the
rank that owns the target, the target logit. One all_gather of those [3, N] rows lets every rank form
the full-vocabulary values (docs/math.md §1 split over shards):

    lse = logsumexp_r lse_r,   w_r = exp(lse_r - lse)
    logprob = z_y / tau - lse,  entropy = sum_r w_r (H_r - log w_r)

Backward: the same chunk epilogue with the GLOBAL lse and entropy gives rank r the exact dLoss/dz of
its columns (one-hot term only where it owns the target), hence its own dweight/dbias shard and its
share of dhidden; one all_reduce sums the shares. Nobody forms more than a [C, V_r] tile.

hidden and targets must be the same on every rank (replicated), as must the downstream loss: each
rank's autograd graph carries the same upstream gradient, which is what makes the backward local.
"""

import torch

from ..common import collectives, compaction
from . import chunked

# Local target ids handed to the shard kernels (chunked.local_targets): ignored rows and rows owned by another
# shard get two fixed negative ids, never a valid local column.
LOCAL_IGNORE, FOREIGN = chunked.LOCAL_IGNORE, chunked.FOREIGN


def local_targets(targets, shard, ignore_index):
    """(local ids: t - start where owned, FOREIGN elsewhere, LOCAL_IGNORE on ignored rows; valid; owned)."""
    return chunked.local_targets(targets, shard.start, shard.size, ignore_index)


def combine(gathered, valid, with_entropy):
    """Full-vocabulary (logprobs, entropy or empty, lse) from every rank's [lse_r, target logit, H_r?] rows.

    gathered [P, 2 or 3, N]; the target logit is 0 on ranks that do not own the target. Plain torch ops,
    so the naive path differentiates through the same formulas."""
    lse_r = gathered[:, 0]
    lse = torch.logsumexp(lse_r, dim=0)
    zero = torch.zeros((), dtype=lse.dtype, device=lse.device)
    logprobs = torch.where(valid, gathered[:, 1].sum(0) - lse, zero)
    if not with_entropy:
        return logprobs, lse.new_empty(0), lse
    log_w = lse_r - lse
    entropy = (log_w.exp() * (gathered[:, 2] - log_w)).sum(0)
    return logprobs, torch.where(valid, entropy, zero), lse


def _shard_kernels(backend):
    """(forward, backward) of a backend on one vocabulary shard, called with local target ids."""
    if backend == "chunked":
        def forward(*args, **kwargs):
            return chunked.forward(*args, vocab_shard=True, **kwargs)

        def backward(*args, **kwargs):
            return chunked.backward(*args, vocab_shard=True, **kwargs)

        return forward, backward
    if backend == "triton":
        from . import triton_impl  # Triton is optional

        # The tiled kernels match targets against column ids, so an id outside [0, V_r) already means
        # "no target in this shard": zero target logit, no one-hot term.
        return triton_impl.forward, triton_impl.backward
    raise ValueError(f"vocab-parallel linear_logprobs supports backends naive, chunked, triton; got {backend!r}")


class _ShardedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, local, valid, owned, shard, inv_temperature, with_entropy, chunk_size,
                backend):
        ctx.set_materialize_grads(False)
        fwd, _ = _shard_kernels(backend)
        logprob_r, entropy_r, lse_r = fwd(hidden, weight, bias, local, inv_temperature=inv_temperature,
                                          ignore_index=LOCAL_IGNORE, with_entropy=with_entropy, chunk_size=chunk_size)
        rows = [lse_r, torch.where(owned, logprob_r + lse_r, 0.0)] + ([entropy_r] if with_entropy else [])
        gathered = collectives.all_gather_stack(torch.stack(rows), shard.group)
        logprobs, entropy, lse = combine(gathered, valid, with_entropy)
        ctx.save_for_backward(hidden, weight, bias, local, lse, entropy)
        ctx.options = (shard, inv_temperature, with_entropy, chunk_size, backend)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        hidden, weight, bias, local, lse, entropy = ctx.saved_tensors
        shard, inv_temperature, with_entropy, chunk_size, backend = ctx.options
        needs_hidden, needs_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        needs_bias = bias is not None and ctx.needs_input_grad[2]
        if grad_logprobs is None:
            grad_logprobs = torch.zeros_like(lse)
        if grad_entropy is not None and not with_entropy:
            grad_entropy = None
        _, bwd = _shard_kernels(backend)
        dh, dw, db = bwd(grad_logprobs.float().contiguous(),
                         None if grad_entropy is None else grad_entropy.float().contiguous(), hidden, weight, bias,
                         local, lse, entropy, inv_temperature=inv_temperature, ignore_index=LOCAL_IGNORE,
                         chunk_size=chunk_size, needs_hidden=needs_hidden, needs_weight=needs_weight,
                         needs_bias=needs_bias)
        if needs_hidden:
            collectives.all_reduce_sum_(dh, shard.group)  # every rank's share of dhidden -> the full dhidden
        return dh, dw, db, None, None, None, None, None, None, None, None


def _naive(hidden, weight, bias, local, valid, owned, shard, temperature):
    """The spec on a shard: materializes the [N, V_r] logits and differentiates the combine with autograd
    (CopyToGroup sums dhidden over ranks; GatherFromGroup hands each rank its own rows' gradient)."""
    h = collectives.CopyToGroup.apply(hidden, shard.group)
    logits = h @ weight.t()
    if bias is not None:
        logits = logits + bias
    out_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    scaled = logits.to(out_dtype) / temperature
    lse_r = torch.logsumexp(scaled, dim=-1)
    log_p = scaled - lse_r.unsqueeze(-1)
    entropy_r = -(log_p.exp() * log_p).sum(-1)
    target_logit = scaled.gather(-1, torch.where(owned, local, 0).unsqueeze(-1)).squeeze(-1)
    rows = torch.stack([lse_r, torch.where(owned, target_logit, 0.0), entropy_r])
    logprobs, entropy, _ = combine(collectives.GatherFromGroup.apply(rows, shard.group), valid, True)
    return logprobs.float(), entropy.float()


def sharded_linear_logprobs(hidden, weight, bias, targets, shard, *, temperature, ignore_index, with_entropy,
                            chunk_size, backend):
    """(logprobs [N] fp32, entropy [N] fp32 or empty) over the full vocabulary from this rank's shard.

    Inputs are validated and flattened; `shard` is the checked collectives.VocabShard; backend resolved.
    Only rows whose target is not ignore_index run (ops/common/compaction.py); targets are replicated, so every
    rank keeps the same rows and the collectives stay matched."""
    n = hidden.shape[0]
    live, hidden, targets = compaction.take_targeted(targets, ignore_index, hidden)
    return compaction.put(live, n, *_sharded(hidden, weight, bias, targets, shard, temperature=temperature,
                                       ignore_index=ignore_index, with_entropy=with_entropy, chunk_size=chunk_size,
                                       backend=backend))


def _sharded(hidden, weight, bias, targets, shard, *, temperature, ignore_index, with_entropy, chunk_size, backend):
    local, valid, owned = local_targets(targets, shard, ignore_index)
    if backend == "naive":
        logprobs, entropy = _naive(hidden, weight, bias, local, valid, owned, shard, temperature)
        return logprobs, entropy if with_entropy else entropy.new_empty(0)
    if chunk_size is None:
        # Rows per chunk as for the whole vocabulary, so the [C, V_r] tile shrinks with the shard.
        chunk_size = chunked.default_chunk_size(hidden.shape[0], shard.total)
    return _ShardedLogprobs.apply(hidden, weight, bias, local, valid, owned, shard, 1.0 / temperature,
                                  bool(with_entropy), int(chunk_size), backend)
