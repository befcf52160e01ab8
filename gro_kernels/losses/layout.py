"""Where gro_loss's tokens sit: the head's rows (what the LM head runs on) and the [B, T] grid of the loss math.

A padded batch ([B, T, H] hidden) is its own grid. A packed batch (flat [N_total, H] hidden with
flash-attention style cu_seqlens [B + 1]) runs the LM head on its flat rows (the head is row-wise, so
packing changes nothing there, and hidden states are never padded); only the per-token *scalars*
(logprobs, entropy, mask, old/ref/rollout logprobs, per-token advantages) are scattered into a
[B, T_max] grid with mask False on the padding, where the O(tokens) loss math of docs/math.md §2-§5
runs unchanged. Gradients and per-token arguments come back through the same index map.
"""

from typing import Optional

import torch

from .. import _validate as v


class Layout:
    """The map between head rows and grid cells. index is None for a padded batch (the grid flattened is
    the head's row order), else int64 [N_total]: the flat grid cell (row * T_max + column) of each token."""

    def __init__(self, batch: int, width: int, head_shape, index: Optional[torch.Tensor]):
        self.batch, self.width, self.head_shape, self.index = batch, width, tuple(head_shape), index

    @property
    def packed(self) -> bool:
        return self.index is not None

    @property
    def grid_shape(self):
        return (self.batch, self.width)

    def grid(self, x: torch.Tensor, fill=0) -> torch.Tensor:
        """Head-order values (head_shape) -> [B, T] grid, `fill` on padding; differentiable in x."""
        if self.index is None:
            return x.reshape(self.grid_shape)
        out = x.new_full((self.batch * self.width,), fill)
        return out.index_copy(0, self.index, x.reshape(-1)).view(self.grid_shape)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T] grid -> head order (head_shape): the tokens' cells, padding dropped; differentiable in x."""
        if self.index is None:
            return x.reshape(self.head_shape)
        return x.reshape(-1).index_select(0, self.index)


def padded(batch: int, width: int) -> Layout:
    return Layout(batch, width, (batch, width), None)


def packed(hidden, targets, cu_seqlens) -> Layout:
    """The layout of a packed batch, cu_seqlens checked (_validate.check_packed_head). T_max, the longest
    sequence, is the grid width: what a padded batch of the same sequences would have."""
    cu = v.check_packed_head(hidden, targets, cu_seqlens)
    n_total, batch = hidden.shape[0], cu.numel() - 1
    lengths = cu[1:] - cu[:-1]
    width = int(lengths.max()) if batch > 0 else 0
    rows = torch.repeat_interleave(torch.arange(batch), lengths, output_size=n_total)
    cols = torch.arange(n_total) - cu[:-1].index_select(0, rows)
    index = (rows * width + cols).to(hidden.device)
    return Layout(batch, width, (n_total,), index)
