"""Thin nn.Modules over the functional API: options in __init__, the call in forward."""

from typing import Optional

import torch

from . import functional as F
from .losses import gro_loss
from .losses.gro import check_options
from .presets import GROObjective


class LinearLogprobs(torch.nn.Module):
    """Token logprobs (and entropy) from hidden states and a given LM head, without [N, V] logits."""

    def __init__(self, *, temperature: float = 1.0, ignore_index: int = -100, return_entropy: bool = False,
                 backend: str = "auto", chunk_size: Optional[int] = None):
        super().__init__()
        F.check_head_options(temperature=temperature, ignore_index=ignore_index, chunk_size=chunk_size,
                             backend=backend)
        if not isinstance(return_entropy, bool):
            raise TypeError(f"return_entropy must be True or False, got {type(return_entropy).__name__}")
        self.options = dict(temperature=temperature, ignore_index=ignore_index, return_entropy=return_entropy,
                            backend=backend, chunk_size=chunk_size)

    def forward(self, hidden, weight, targets, bias=None):
        return F.linear_logprobs(hidden, weight, targets, bias, **self.options)


class GROLoss(torch.nn.Module):
    """gro_loss with its preset/config and options fixed at construction; per-batch tensors in forward.

    GROLoss("dapo", beta=0.04, epsilon_high=0.28)(hidden, weight, targets, mask=mask, advantages=adv, ...)
    preset (default "grpo") or config, not both. The options are checked here, as gro_loss would check them.
    """

    def __init__(self, preset: Optional[str] = None, *, config: Optional[GROObjective] = None, **options):
        super().__init__()
        check_options(preset, config, **options)
        self.preset, self.config, self.options = preset, config, options

    def forward(self, hidden, weight, targets, bias=None, **batch):
        clash = sorted(set(batch) & set(self.options))
        if clash:
            raise TypeError(f"GROLoss got {clash} both at construction and in forward; pass each once")
        return gro_loss(hidden, weight, targets, bias, preset=self.preset, config=self.config, **self.options,
                          **batch)

    def extra_repr(self) -> str:
        return f"preset={self.preset or 'grpo'!r}" if self.config is None else f"config={self.config}"


class GROModelLoss(torch.nn.Module):
    """A causal LM's decoder and the fused GRO loss in ONE forward (the supported way under DDP / FSDP2).

    Wrappers act on module forwards: DDP arms its gradient all-reduce when its forward runs, and FSDP2
    (`fully_shard`) / ZeRO-3 gather sharded parameters only for the forward of the module that owns them.
    A loss that reads `lm_head.weight` outside any forward gets no gradient sync (DDP) or a sharded
    tensor (FSDP2). Wrap this module instead: `DDP(GROModelLoss(model))`, or `fully_shard` each decoder
    layer and then `fully_shard(GROModelLoss(model))` as the root, so the head stays in the root unit
    (do not `fully_shard` the head on its own: it would be gathered only for its own forward, which the
    fused loss never calls; that case raises a clear error).

    model: Hugging Face-style causal LM: get_decoder() (returns .last_hidden_state) and
    get_output_embeddings() (a linear head, weight [V, H], optional bias). preset and options as for GROLoss,
    checked here.
    grad_in_forward=None: off under fully_shard (FSDP2) or for DeepSpeed ZeRO-3 parameters, where the
    head's gradient must come from the backward (a full-size dW held from forward to backward would also
    undo the sharding); otherwise gro_loss's default.
    forward(input_ids, attention_mask=None, *, targets, first_position=0, position_ids=None, **batch):
    targets [B, C] are the tokens predicted by the hidden states at positions first_position + c
    (ignore_index elsewhere); batch holds gro_loss's per-batch tensors. Returns GROOutput.
    Packed (padding-free) mode: forward(input_ids [1, L], *, position_ids [1, L] restarting at 0 for each
    sequence, targets [N_total], targets_index [N_total], cu_seqlens [B + 1], **batch) with no attention_mask
    (transformers then builds a block-diagonal causal mask from the position_ids): the hidden states at the
    positions targets_index predict targets, sequence i being rows [cu_seqlens[i], cu_seqlens[i + 1]); batch's
    per-token tensors are [N_total], as for gro_loss(..., cu_seqlens=).
    """

    def __init__(self, model: torch.nn.Module, preset: Optional[str] = None, *, config: Optional[GROObjective] = None,
                 grad_in_forward: Optional[bool] = None, **options):
        super().__init__()
        missing = [m for m in ("get_decoder", "get_output_embeddings") if not callable(getattr(model, m, None))]
        if missing:
            raise TypeError(f"model must be a causal LM with get_decoder() and get_output_embeddings() (a Hugging "
                            f"Face-style model); {type(model).__name__} has no {' or '.join(missing)}")
        check_options(preset, config, grad_in_forward=grad_in_forward, **options)
        self.model, self.preset, self.config, self.options = model, preset, config, options
        self.grad_in_forward = grad_in_forward

    def forward(self, input_ids, attention_mask=None, *, targets, first_position: int = 0, position_ids=None,
                targets_index=None, **batch):
        clash = sorted(set(batch) & set(self.options))
        if clash:
            raise TypeError(f"GROModelLoss got {clash} both at construction and in forward; pass each once")
        if targets_index is not None:
            _check_packed_call(input_ids, attention_mask, position_ids, targets_index, batch)
        out = self.model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                       position_ids=position_ids, use_cache=False)
        if targets_index is None:
            hidden = out.last_hidden_state[:, first_position:first_position + targets.shape[1]]
        else:  # the one packed row's hidden states at the completion positions: [N_total, H]
            hidden = out.last_hidden_state[0].index_select(0, targets_index)
        head = self.model.get_output_embeddings()
        _require_gathered(head.weight)
        return gro_loss(hidden, head.weight, targets, getattr(head, "bias", None), preset=self.preset,
                          config=self.config, grad_in_forward=self._grad_in_forward(head.weight), **self.options,
                          **batch)

    def _grad_in_forward(self, weight):
        if self.grad_in_forward is not None:
            return self.grad_in_forward
        sharded = _fully_sharded(self) or hasattr(weight, "ds_id")  # ds_id: a DeepSpeed ZeRO-3 parameter
        return False if sharded else None


def _check_packed_call(input_ids, attention_mask, position_ids, targets_index, batch):
    """Packed mode's contract; transformers detects packing only without a 2D mask and from position_ids."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"GROModelLoss packed mode (targets_index given) takes input_ids [1, L] (one packed row), "
                         f"got shape {tuple(input_ids.shape)}")
    if attention_mask is not None:
        raise ValueError("GROModelLoss packed mode (targets_index given) takes attention_mask=None: with a mask "
                         "transformers does not build the per-sequence (block-diagonal) causal mask")
    if position_ids is None or tuple(position_ids.shape) != tuple(input_ids.shape):
        got = None if position_ids is None else tuple(position_ids.shape)
        raise ValueError(f"GROModelLoss packed mode needs position_ids of input_ids' shape {tuple(input_ids.shape)}, "
                         f"restarting at 0 for each sequence; got {got}")
    if batch.get("cu_seqlens") is None:
        raise ValueError("GROModelLoss packed mode (targets_index given) needs cu_seqlens [B + 1] of the completions")
    if targets_index.dim() != 1:
        raise ValueError(f"targets_index must be 1-D [N_total], got shape {tuple(targets_index.shape)}")


def _fully_sharded(module) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _require_gathered(weight):
    if not torch.distributed.is_available():
        return
    from torch.distributed.tensor import DTensor

    if isinstance(weight, DTensor):
        raise RuntimeError("GROModelLoss: the LM head weight is still a sharded DTensor inside the forward: the head "
                           "was fully_shard-ed as its own unit, so FSDP2 gathers it only for the head's own forward. "
                           "Leave the head in the unit of the module that computes the loss (fully_shard the decoder "
                           "layers, then fully_shard(GROModelLoss(model)) as the root)")
