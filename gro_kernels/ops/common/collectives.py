"""torch.distributed plumbing of the vocabulary-parallel ops: shard layout, collectives, autograd helpers.

Collectives run here, outside every kernel, on whatever backend the group has (gloo on CPU, NCCL on
GPU). Nothing in this module is imported unless a process group is passed, and `import gro_kernels`
never initializes torch.distributed.
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist

# Columns of the per-rank row exchanged by `exchange_layout`.
_FIELDS = ("error", "start", "size", "rows", "hidden", "target_min", "target_max", "target_hash")
_NO_TARGET_MIN = torch.iinfo(torch.int64).max


@dataclass(frozen=True)
class VocabShard:
    """This rank's contiguous slice [start, start + size) of a vocabulary of `total` ids, and its group."""

    group: object
    start: int
    size: int
    total: int


def world_size(group) -> int:
    return dist.get_world_size(group)


def all_gather_stack(t: torch.Tensor, group) -> torch.Tensor:
    """[P, *t.shape]: every rank's t, stacked in rank order (one collective)."""
    p = world_size(group)
    # Gathered as a concatenation along dim 0 (the form every backend accepts), then viewed as a stack.
    out = t.new_empty((p * t.shape[0],) + tuple(t.shape[1:]))
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.11
    gather(out, t.contiguous(), group=group)
    return out.view((p,) + tuple(t.shape))


def all_reduce_sum_(t: torch.Tensor, group) -> torch.Tensor:
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


class CopyToGroup(torch.autograd.Function):
    """Identity on a tensor every rank holds (replicated); backward sums the ranks' gradients, since each
    rank's gradient is only its shard's share."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return all_reduce_sum_(grad.clone(), ctx.group), None


class GatherFromGroup(torch.autograd.Function):
    """all_gather into [P, ...]; backward keeps this rank's slice: every rank computes the same (replicated)
    function of the gathered tensor, so summing the ranks' gradients would count it P times."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.rank = dist.get_rank(group)
        return all_gather_stack(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.rank].clone(), None


def _target_summary(targets, ignore_index):
    """(min, max) of the non-ignored targets ((big, -1) if none) and a position-weighted hash, as 0-d int64
    tensors (no host sync). The hash tells whether every rank got the same targets."""
    valid = targets != ignore_index
    t_min = torch.where(valid, targets, torch.full_like(targets, _NO_TARGET_MIN)).amin()
    t_max = torch.where(valid, targets, torch.full_like(targets, -1)).amax()
    position = torch.arange(1, targets.numel() + 1, dtype=torch.int64, device=targets.device)
    return t_min, t_max, (targets * position).sum()


def exchange_layout(group, vocab_start, local_vocab, hidden, targets, ignore_index, local_error=None) -> VocabShard:
    """Check that the ranks' shards tile [0, V) and agree on the batch; raise the same error on every rank.

    One small all_gather of (error flag, start, size, rows, hidden size, target min/max/hash) per rank and
    one host read: a rank whose own inputs failed validation (`local_error`) still joins it, so the others
    raise too instead of waiting for it in the next collective.
    """
    device = hidden.device if isinstance(hidden, torch.Tensor) else torch.device("cpu")
    info = torch.zeros(len(_FIELDS), dtype=torch.int64, device=device)
    info[5] = _NO_TARGET_MIN
    info[6] = -1
    if local_error is None:
        info[1:5] = torch.tensor([vocab_start, local_vocab, hidden.shape[0], hidden.shape[-1]])
        if targets.numel():
            info[5], info[6], info[7] = _target_summary(targets, ignore_index)
    else:
        info[0] = 1
    table = [dict(zip(_FIELDS, row)) for row in all_gather_stack(info, group).tolist()]
    if local_error is not None:
        raise local_error
    failed = [r for r, row in enumerate(table) if row["error"]]
    if failed:
        raise ValueError(f"vocab-parallel call stopped on every rank: rank(s) {failed} rejected their inputs "
                         "(see the error raised there)")
    total = _check_tiling(table)
    _check_batch(table, total, ignore_index)
    return VocabShard(group, int(vocab_start), int(local_vocab), total)


def _check_tiling(table) -> int:
    spans = ", ".join(f"rank {r}: [{row['start']}, {row['start'] + row['size']})" for r, row in enumerate(table))
    empty = [r for r, row in enumerate(table) if row["size"] <= 0]
    if empty:
        raise ValueError(f"every rank needs a non-empty vocabulary shard (weight [V_r > 0, H]); rank(s) {empty} "
                         f"have none. Shards: {spans}")
    end = 0
    for row in sorted(table, key=lambda row: row["start"]):
        if row["start"] != end:
            what = "gap" if row["start"] > end else "overlap"
            raise ValueError(f"vocabulary shards (vocab_start, weight.shape[0]) must tile [0, V) contiguously; "
                             f"{what} at id {min(end, row['start'])}. Shards: {spans}")
        end += row["size"]
    return end


def _check_batch(table, total, ignore_index):
    for field, what in (("rows", "tokens (hidden.shape[:-1])"), ("hidden", "hidden size")):
        values = [row[field] for row in table]
        if len(set(values)) > 1:
            raise ValueError(f"every rank must hold the same (replicated) hidden states: {what} per rank {values}")
    if len({row["target_hash"] for row in table}) > 1:
        raise ValueError("every rank must pass the same (replicated) targets; they differ between ranks")
    low = min(row["target_min"] for row in table)
    high = max(row["target_max"] for row in table)
    if (high >= 0 and high >= total) or low < 0:
        bad = low if low < 0 else high
        raise ValueError(f"targets must be global token ids in [0, {total}) or ignore_index={ignore_index}; "
                         f"got {bad}")
