"""Prompt encoding and sampling: left-padded prompts, G completions each, completion masks up to EOS."""

import warnings
from dataclasses import dataclass
from typing import List, Optional

import torch


@dataclass
class Rollout:
    """One sampled batch. Rows are grouped by prompt: row r answers prompt `prompt_index[r]`."""

    input_ids: torch.Tensor        # [B, P + C] left-padded prompt, then completion (pad after EOS)
    attention_mask: torch.Tensor   # [B, P + C] 1 on real prompt tokens and on completion tokens up to EOS
    prompt_width: int              # P
    completion_mask: torch.Tensor  # [B, C] float, 1 up to and including the first EOS
    completions: List[str]
    prompt_index: List[int]

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width:]

    def num_tokens(self) -> int:
        return int(self.completion_mask.sum())


def encode_prompts(tokenizer, prompts: List[str], max_length: int, truncate: bool) -> List[List[int]]:
    """Token ids per prompt. Over-long prompts keep their last `max_length` tokens (with a warning) or,
    with truncate=False, raise naming the prompt."""
    encoded = []
    for i, text in enumerate(prompts):
        if not isinstance(text, str):
            raise TypeError(f"prompt {i} must be a str, got {type(text).__name__}")
        ids = tokenizer.encode(text)
        if len(ids) == 0:
            raise ValueError(f"prompt {i} encodes to zero tokens: {text!r}")
        if len(ids) > max_length:
            if not truncate:
                raise ValueError(f"prompt {i} has {len(ids)} tokens > max_prompt_length={max_length} "
                                 f"(set truncate_prompts: true to keep its last {max_length} tokens)")
            warnings.warn(f"prompt {i} has {len(ids)} tokens > max_prompt_length={max_length}; "
                          f"keeping the last {max_length}", stacklevel=2)
            ids = ids[-max_length:]
        encoded.append(ids)
    return encoded


def pad_left(sequences: List[List[int]], pad_id: int, device) -> tuple:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for r, s in enumerate(sequences):
        ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[r, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def pad_right(sequences: List[List[int]], pad_id: int, device) -> tuple:
    width = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.float32)
    for r, s in enumerate(sequences):
        ids[r, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, :len(s)] = 1.0
    return ids.to(device), mask.to(device)


def special_ids(tokenizer) -> tuple:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; completions could never end")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return eos, pad


@torch.no_grad()
def sample(model, tokenizer, prompt_ids: List[List[int]], num_generations: int, *, temperature: float,
           top_p: float, max_new_tokens: int, greedy: bool = False) -> Rollout:
    """`num_generations` completions per prompt with model.generate (no top-k; top_p as given)."""
    from transformers import GenerationConfig

    eos, pad = special_ids(tokenizer)
    device = next(model.parameters()).device
    ids, mask = pad_left(prompt_ids, pad, device)
    ids = ids.repeat_interleave(num_generations, dim=0)
    mask = mask.repeat_interleave(num_generations, dim=0)
    # Every sampling knob is explicit: unset fields would be filled from the checkpoint's generation config
    # or Hugging Face defaults (top_k=50), and the sampled distribution must be softmax(z / T) (top_p aside),
    # the one the trainer's logprobs describe.
    gen = GenerationConfig(do_sample=not greedy, temperature=None if greedy else temperature,
                           top_p=None if greedy else top_p, top_k=0, typical_p=1.0, min_p=None,
                           repetition_penalty=1.0, no_repeat_ngram_size=0, max_new_tokens=max_new_tokens,
                           min_new_tokens=0, eos_token_id=eos, pad_token_id=pad, bos_token_id=tokenizer.bos_token_id)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
    completion = out[:, ids.shape[1]:]
    index = [r // num_generations for r in range(ids.shape[0])]
    return assemble(tokenizer, ids, mask, completion, index)


def assemble(tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion: torch.Tensor,
             prompt_index: List[int]) -> Rollout:
    """Cut each completion after its first EOS (kept: the model must learn to stop), pad the rest."""
    eos, pad = special_ids(tokenizer)
    if completion.shape[1] == 0:
        completion = torch.full((prompt_ids.shape[0], 1), pad, dtype=torch.long, device=prompt_ids.device)
        keep = torch.zeros_like(completion, dtype=torch.bool)
    else:
        is_eos = completion == eos
        first = torch.where(is_eos.any(1), is_eos.float().argmax(1), completion.shape[1])
        pos = torch.arange(completion.shape[1], device=completion.device)
        keep = pos[None, :] <= first[:, None]
    completion = completion.masked_fill(~keep, pad)
    # The reward sees every generated token before the EOS, special ones included (as their literal text):
    # skipping them would let a policy pad its answer with invisible tokens for free.
    lengths = (keep & (completion != eos)).sum(1).tolist()
    texts = [tokenizer.decode(row[:n], skip_special_tokens=False) for row, n in zip(completion.tolist(), lengths)]
    return Rollout(input_ids=torch.cat([prompt_ids, completion], 1),
                   attention_mask=torch.cat([prompt_mask, keep.long()], 1), prompt_width=prompt_ids.shape[1],
                   completion_mask=keep.float(), completions=texts, prompt_index=list(prompt_index))


def from_texts(tokenizer, prompt_ids: List[List[int]], responses: List[str], prompt_index: List[int],
               max_new_tokens: int, device) -> Rollout:
    """A Rollout for given (offline) responses: each gets EOS appended, cut to max_new_tokens."""
    eos, pad = special_ids(tokenizer)
    rows = [prompt_ids[i] for i in prompt_index]
    ids, mask = pad_left(rows, pad, device)
    tokens = [(tokenizer.encode(t, add_special_tokens=False) + [eos])[:max_new_tokens] for t in responses]
    completion, _ = pad_right(tokens, pad, device)
    return assemble(tokenizer, ids, mask, completion, prompt_index)


def concat(parts: List[Rollout], pad_id: int) -> Optional[Rollout]:
    """Join rollouts row-wise (prompt and completion parts padded to common widths)."""
    parts = [p for p in parts if p is not None]
    if len(parts) == 1:
        return parts[0]
    P = max(p.prompt_width for p in parts)
    C = max(p.completion_mask.shape[1] for p in parts)
    ids, att, cm = [], [], []
    for p in parts:
        lp, rc = P - p.prompt_width, C - p.completion_mask.shape[1]
        row_ids = torch.nn.functional.pad(p.input_ids, (lp, rc), value=pad_id)
        row_att = torch.nn.functional.pad(p.attention_mask, (lp, rc), value=0)
        ids.append(row_ids)
        att.append(row_att)
        cm.append(torch.nn.functional.pad(p.completion_mask, (0, rc), value=0.0))
    offsets, index, texts = 0, [], []
    for p in parts:
        index += [i + offsets for i in p.prompt_index]
        offsets += max(p.prompt_index) + 1
        texts += p.completions
    return Rollout(torch.cat(ids), torch.cat(att), P, torch.cat(cm), texts, index)
