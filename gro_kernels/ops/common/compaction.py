"""Row compaction: run the LM-head GEMMs and epilogues only on the rows that count.

Ignored or masked rows (padding of a ragged batch, prompt tokens) would otherwise cost as much as
live ones, and a non-finite hidden state in such a row would reach dweight through the dW GEMM even
though its own gradient is zero (0 * NaN = NaN). The ops gather the live rows, run on them, and
scatter their per-row outputs back (0 elsewhere); autograd carries the gradient back to the live
rows only, so dead rows get exact zeros.

Finding the live rows needs their count on the host: one device sync per call on CUDA (the public
target-range check already syncs once in eager mode). While torch.compile traces, the count is not
available; rows are then kept in place and dead rows' hidden states are zeroed instead, which keeps
their values out of the GEMMs without changing shapes.
"""

from typing import Optional

import torch


def live_rows(valid: torch.Tensor) -> Optional[torch.Tensor]:
    """int64 indices of the True rows of `valid` [N], or None when every row is live (nothing to do)."""
    if torch.compiler.is_compiling():
        return None
    index = valid.nonzero().squeeze(1)
    return None if index.numel() == valid.numel() else index


def take(index: Optional[torch.Tensor], *tensors):
    """The live rows of each tensor (None passes through); all of them when index is None."""
    if index is None:
        return tensors
    return tuple(None if t is None else t.index_select(0, index) for t in tensors)


def put(index: Optional[torch.Tensor], n: int, *values):
    """Per-row outputs of the live rows back at their rows of an N-row result, 0 elsewhere."""
    if index is None:
        return values
    out = []
    for v in values:
        if v is None or v.shape[0] != index.shape[0]:
            out.append(v)  # not a per-row output (e.g. an empty entropy placeholder)
        else:
            out.append(v.new_zeros((n,) + tuple(v.shape[1:])).index_copy(0, index, v))
    return tuple(out)


def take_targeted(targets: torch.Tensor, ignore_index: int, hidden: torch.Tensor, *tensors):
    """(live index or None, hidden, targets, *tensors) restricted to the rows whose target is not ignore_index,
    for the ops that mark dead rows by their target; under torch.compile dead rows' hidden states are zeroed."""
    valid = targets != ignore_index
    live = live_rows(valid)
    if live is None:
        return (None, zero_dead_rows(hidden, valid), targets) + tensors
    return (live,) + take(live, hidden, targets, *tensors)


def take_masked(mask: Optional[torch.Tensor], *tensors):
    """(live index or None, the tensors' live rows, the mask left to apply) for ops with a row `mask`:
    compacted rows need no mask; under torch.compile the mask stays and dead rows are zeroed."""
    live = None if mask is None else live_rows(mask)
    if live is not None:
        return live, take(live, *tensors), None
    if mask is not None:
        tensors = tuple(zero_dead_rows(t, mask) for t in tensors)
    return None, tensors, mask


def zero_dead_rows(hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Under torch.compile (no compaction): dead rows' hidden states replaced by 0 before the GEMMs."""
    if not torch.compiler.is_compiling():
        return hidden
    return torch.where(valid.unsqueeze(1), hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device))
