"""The fixed offline data of a (task, seed): G answers per training prompt sampled once from the INITIAL policy.

Offline DPO trains on it through the trainer's iterative_dpo mode with a sampler that replays the pool instead
of sampling and a reference that is never refreshed (so: best-vs-worst pairs of the initial policy's answers,
DPO against the initial policy). GRO hybrid mixes the same best-vs-worst pairs into its online batches.
"""

import time
from dataclasses import dataclass
from typing import Dict, List

import torch

from gro_kernels.trainer import rewards as rw
from gro_kernels.trainer import rollout as ro


@dataclass
class Pool:
    completions: Dict[tuple, List[torch.Tensor]]   # prompt ids -> one [G, C] completion-id block per occurrence
    pairs: List[dict]                               # {"prompt", "chosen", "rejected"}: best vs worst, ties dropped
    tokens: int                                     # completion tokens sampled (EOS included), the pool's cost
    seconds: float                                  # wall time to sample and score it


@torch.no_grad()
def build_pool(model, tokenizer, records, reward_fn, num_generations: int, max_new_tokens: int,
               max_prompt_length: int, batch_prompts: int = 128) -> Pool:
    start = time.perf_counter()
    _, pad = ro.special_ids(tokenizer)
    completions, pairs, tokens = {}, [], 0
    for lo in range(0, len(records), batch_prompts):
        chunk = records[lo:lo + batch_prompts]
        prompt_ids = ro.encode_prompts(tokenizer, [r["prompt"] for r in chunk], max_prompt_length, True)
        r = ro.sample(model, tokenizer, prompt_ids, num_generations, temperature=1.0, top_p=1.0,
                      max_new_tokens=max_new_tokens)
        scores = rw.score([reward_fn], [1.0], chunk, r.completions, r.prompt_index)
        tokens += r.num_tokens()
        ids = torch.nn.functional.pad(r.completion_ids, (0, max_new_tokens - r.completion_ids.shape[1]), value=pad)
        for k, rec in enumerate(chunk):
            rows = [i for i, p in enumerate(r.prompt_index) if p == k]
            completions.setdefault(tuple(prompt_ids[k]), []).append(ids[rows].clone())
            best = max(rows, key=lambda i: float(scores[i]))
            worst = min(rows, key=lambda i: float(scores[i]))
            if float(scores[best]) > float(scores[worst]):
                pairs.append({"prompt": rec["prompt"], "chosen": r.completions[best],
                              "rejected": r.completions[worst]})
    return Pool(completions, pairs, tokens, time.perf_counter() - start)


def replay_sampler(pool: Pool):
    """A trainer sample_fn that answers each prompt with its next pooled block (cycling over occurrences), so
    the trainer's iterative_dpo mode sees the initial policy's samples and never samples itself."""
    cursor = {}

    def sample(model, tokenizer, prompt_ids, num_generations, *, temperature, top_p, max_new_tokens, greedy=False):
        if greedy:
            raise ValueError("replay_sampler replays sampled answers; greedy decoding is not in the pool")
        eos, pad = ro.special_ids(tokenizer)
        blocks = []
        for ids in prompt_ids:
            key = tuple(ids)
            if key not in pool.completions:
                raise ValueError(f"prompt ids {list(ids)} are not in the offline pool")
            held = pool.completions[key]
            k = cursor.get(key, 0)
            cursor[key] = k + 1
            block = held[k % len(held)]
            if block.shape[0] != num_generations:
                raise ValueError(f"the pool holds {block.shape[0]} answers per prompt, the trainer asks for "
                                 f"num_generations={num_generations}")
            blocks.append(block)
        device = next(model.parameters()).device
        rows = [ids for ids in prompt_ids for _ in range(num_generations)]
        ids, mask = ro.pad_left(rows, pad, device)
        index = [r // num_generations for r in range(len(rows))]
        return ro.assemble(tokenizer, ids, mask, torch.cat(blocks).to(device), index)

    return sample
