"""The policy side of the loss: decoder hidden states at completion positions and the LM head.

The model's decoder runs on the whole sequence; only the hidden states that predict completion tokens
are kept, and they meet `lm_head.weight` inside the fused ops. No forward that builds logits runs here.
"""

import copy
from dataclasses import dataclass
from typing import Optional

import torch

import gro_kernels

from . import packing

IGNORE_INDEX = -100


@dataclass
class HeadInputs:
    hidden: torch.Tensor            # [B, C, H] decoder output at the positions predicting completion tokens
    weight: torch.Tensor            # [V, H] lm_head weight
    bias: Optional[torch.Tensor]    # [V] or None
    targets: torch.Tensor           # [B, C] completion tokens, IGNORE_INDEX outside the completion mask


def check_model(model):
    """Reject models whose logits are not `lm_head(decoder(x))` (softcapping, logit scales)."""
    if not callable(getattr(model, "get_decoder", None)) or not callable(getattr(model, "get_output_embeddings", None)):
        raise TypeError(f"model must be a Hugging Face causal LM with get_decoder() and get_output_embeddings(), "
                        f"got {type(model).__name__}")
    head = model.get_output_embeddings()
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise TypeError(f"{type(model).__name__} has no linear output head (get_output_embeddings().weight)")
    cfg = getattr(model, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        value = getattr(cfg, attr, None)
        if value not in (None, 1, 1.0):
            raise NotImplementedError(f"{type(model).__name__} transforms its logits ({attr}={value}); the fused "
                                      f"loss assumes logits = lm_head(hidden)")


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """The positions model.generate used for left-padded prompts: count of real tokens so far."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def head_inputs(model, input_ids, attention_mask, completion_mask, prompt_width) -> HeadInputs:
    """Hidden states that predict completion tokens (shifted by one), the head, and masked targets."""
    decoder = model.get_decoder()
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                  use_cache=False)
    hidden = out.last_hidden_state[:, prompt_width - 1:-1]
    targets = input_ids[:, prompt_width:].masked_fill(completion_mask == 0, IGNORE_INDEX)
    head = model.get_output_embeddings()
    return HeadInputs(hidden, head.weight, getattr(head, "bias", None), targets)


def packed_head_inputs(model, packed: "packing.Packed") -> HeadInputs:
    """head_inputs for one packed row: hidden [N_total, H] at the completion positions, targets [N_total]."""
    out = model.get_decoder()(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False)
    hidden = out.last_hidden_state[0].index_select(0, packed.index)
    head = model.get_output_embeddings()
    return HeadInputs(hidden, head.weight, getattr(head, "bias", None), packed.targets)


@torch.no_grad()
def completion_logprobs(model, input_ids, attention_mask, completion_mask, prompt_width, *, temperature: float,
                        micro_batch_size: int, padding_free: bool = False) -> torch.Tensor:
    """fp32 [B, C] logprobs of the completion tokens (0 outside the mask), through the no-grad fused path,
    in micro-batches of rows so the decoder activations stay bounded. padding_free: each micro-batch runs
    as one packed row (packing.py), the same forward the training loss then runs."""
    parts = []
    for start in range(0, input_ids.shape[0], micro_batch_size):
        rows = slice(start, start + micro_batch_size)
        args = (input_ids[rows], attention_mask[rows], completion_mask[rows], prompt_width)
        if padding_free:
            packed = packing.pack(*args)
            h = packed_head_inputs(model, packed)
        else:
            h = head_inputs(model, *args)
        lp = gro_kernels.linear_logprobs_no_grad(h.hidden, h.weight, h.targets, h.bias, temperature=temperature,
                                                 ignore_index=IGNORE_INDEX)
        parts.append(packing.scatter(lp, packed.keep) if padding_free else lp)
    return torch.cat(parts)


def copy_as_reference(model):
    """A frozen deep copy of `model` (for iterative DPO, or a reference taken from the initial policy)."""
    return copy.deepcopy(model).eval().requires_grad_(False)
