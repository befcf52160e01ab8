"""Thin nn.Modules over the functional API: options in __init__, the call in forward."""

from typing import Optional

import torch

from . import functional as F
from .presets import GROObjective


class LinearLogprobs(torch.nn.Module):
    """Token logprobs (and entropy) from hidden states and a given LM head, without [N, V] logits."""

    def __init__(self, *, temperature: float = 1.0, ignore_index: int = -100, return_entropy: bool = False,
                 backend: str = "auto", chunk_size: Optional[int] = None):
        super().__init__()
        self.options = dict(temperature=temperature, ignore_index=ignore_index, return_entropy=return_entropy,
                            backend=backend, chunk_size=chunk_size)

    def forward(self, hidden, weight, targets, bias=None):
        return F.linear_logprobs(hidden, weight, targets, bias, **self.options)


class GROLoss(torch.nn.Module):
    """gro_loss with its preset/config and options fixed at construction; per-batch tensors in forward.

    GROLoss("dapo", beta=0.04, epsilon_high=0.28)(hidden, weight, targets, mask=mask, advantages=adv, ...)
    """

    def __init__(self, preset: str = "grpo", *, config: Optional[GROObjective] = None, **options):
        super().__init__()
        self.preset, self.config, self.options = preset, config, options

    def forward(self, hidden, weight, targets, bias=None, **batch):
        clash = sorted(set(batch) & set(self.options))
        if clash:
            raise TypeError(f"GROLoss got {clash} both at construction and in forward; pass each once")
        return F.gro_loss(hidden, weight, targets, bias, preset=self.preset, config=self.config, **self.options,
                          **batch)

    def extra_repr(self) -> str:
        return f"preset={self.preset!r}" if self.config is None else f"config={self.config}"
