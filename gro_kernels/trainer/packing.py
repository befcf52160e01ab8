"""Padding-free (packed) micro-batches: the real tokens of several sequences laid end to end in ONE row.

A sequence is its real prompt tokens (attention_mask 1) then its completion tokens up to and including the
first EOS (completion_mask 1). position_ids restart at 0 for each sequence and no attention_mask is passed:
transformers (masking_utils.find_packed_sequence_indices, called from _preprocess_mask_arguments when the 2D
mask is None and there is no cache) then reads the restarts as sequence boundaries and builds a
block-diagonal causal mask for eager / sdpa attention, so each token sees exactly what it sees in the padded
row. The positions are those of the padded path (policy.position_ids), so the hidden states agree.

Per-token tensors [b, C] of the trainer (mask, old/ref logprobs, per-token advantages) become [N_total] by
`flatten` (the completion-mask cells, row-major: the order of the packed completion tokens).
"""

from dataclasses import dataclass

import torch

# Attention implementations whose masks transformers builds through masking_utils from packed position_ids
# (verified for eager and sdpa in transformers 5.x; flash/flex attention read packing differently, untested).
PACKED_ATTENTION = ("eager", "sdpa")


@dataclass
class Packed:
    input_ids: torch.Tensor     # [1, L] the real tokens of every sequence, end to end
    position_ids: torch.Tensor  # [1, L] 0, 1, ... restarting at each sequence
    index: torch.Tensor         # [N_total] positions in the row whose hidden state predicts a completion token
    targets: torch.Tensor       # [N_total] those completion tokens
    cu_seqlens: torch.Tensor    # [b + 1] int64 offsets of each sequence's completion tokens in index/targets
    keep: torch.Tensor          # [b, C] bool completion mask: where the [N_total] values sit in the [b, C] grid


def pack(input_ids, attention_mask, completion_mask, prompt_width: int) -> Packed:
    """One packed row for rows of a padded rollout ([b, P + C] left-padded prompts, then completions)."""
    keep = completion_mask.bool()
    # A row's real tokens: the prompt's (attention_mask) and the completion's up to EOS (completion_mask).
    # Both are contiguous in the padded row (left-padded prompt, right-padded completion).
    real = torch.cat([attention_mask[:, :prompt_width].bool(), keep], dim=1)
    lengths = real.sum(1)
    prompt_lengths = attention_mask[:, :prompt_width].sum(1)
    starts = torch.cumsum(lengths, 0) - lengths
    completion_lengths = keep.sum(1)
    # Token c of a completion is predicted by the hidden state just before it in the packed row: that of
    # packed position start + prompt_length - 1 + c.
    rows = torch.repeat_interleave(torch.arange(keep.shape[0], device=keep.device), completion_lengths)
    cu = torch.zeros(keep.shape[0] + 1, dtype=torch.long, device=keep.device)
    cu[1:] = torch.cumsum(completion_lengths, 0)
    cols = torch.arange(int(cu[-1]), device=keep.device) - cu[:-1].index_select(0, rows)
    index = starts.index_select(0, rows) + prompt_lengths.index_select(0, rows) - 1 + cols
    total = int(lengths.sum())
    positions = torch.arange(total, device=keep.device) - torch.repeat_interleave(starts, lengths, output_size=total)
    return Packed(input_ids=input_ids[real][None], position_ids=positions[None], index=index,
                  targets=input_ids[:, prompt_width:][keep], cu_seqlens=cu, keep=keep)


def flatten(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """A per-token [b, C] tensor -> [N_total] in packed order; anything else (per-sequence [b], numbers) as is."""
    return x[keep] if isinstance(x, torch.Tensor) and x.shape == keep.shape else x


def scatter(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """[N_total] packed values -> [b, C] (0 outside the completion mask), the padded layout's shape."""
    return values.new_zeros(keep.shape).masked_scatter(keep, values)


def check_model(model, who: str = "model"):
    """A ValueError unless the model's decoder turns packed position_ids into a block-diagonal mask."""
    cfg = getattr(model, "config", None)
    attn = getattr(cfg, "_attn_implementation", None)
    if attn not in PACKED_ATTENTION:
        raise ValueError(f"padding_free=True needs an attention implementation that builds its mask from packed "
                         f"position_ids {list(PACKED_ATTENTION)}, but the {who} ({type(model).__name__}) uses "
                         f"attn_implementation={attn!r}; set padding_free: false or load the model with "
                         f"attn_implementation='sdpa'")
    reason = _unsupported_layout(cfg)
    if reason:
        raise ValueError(f"padding_free=True is not supported for the {who} ({type(model).__name__}, "
                         f"attn_implementation={attn!r}): {reason}; set padding_free: false")
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError:
        raise ValueError("padding_free=True needs transformers >= 4.53 (masking_utils.find_packed_sequence_indices "
                         "detects packed sequences); set padding_free: false or upgrade transformers") from None


def _unsupported_layout(cfg) -> str:
    """Why the packed mask may not apply (conservative: only plain full causal attention is accepted)."""
    if not getattr(cfg, "is_causal", True):
        return "its attention is bidirectional (is_causal=False)"
    layers = set(getattr(cfg, "layer_types", None) or ["full_attention"])
    if layers != {"full_attention"}:
        return f"layer_types {sorted(layers)} are not all 'full_attention' (sliding/linear layers are unverified)"
    if getattr(cfg, "sliding_window", None) is not None and getattr(cfg, "use_sliding_window", True):
        return f"sliding_window={cfg.sliding_window} (sliding-window masks with packing are unverified)"
    return ""
