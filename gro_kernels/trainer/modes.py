"""What each mode trains on: rollouts turned into rows of one GRO batch (the math stays in the library).

online              G samples per prompt; rewards and group ids (advantages are computed by the trainer
                    over the whole batch once old/reference logprobs are known)
iterative_dpo       G samples per prompt; best vs worst by reward become a preference pair (ties dropped)
rejection_sampling  G samples per prompt; the best `rejection_keep` (at or above `rejection_min_reward`)
                    are trained with weight 1, the rest are dropped (weight 0)
hybrid              online rows plus offline records (preference pairs or labelled responses)
"""

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from . import rewards as rw
from . import rollout as ro


@dataclass
class TrainBatch:
    rollout: Optional[ro.Rollout]      # None: nothing to learn this step (no pair formed, nothing kept)
    rows: dict                         # per-row loss inputs ([B] or [B, C] tensors), e.g. rewards, group_ids
    units: List[List[int]]             # rows that must share a micro-batch (a pair), in order
    stats: dict = field(default_factory=dict)
    old_logprobs: Optional[torch.Tensor] = None
    ref_logprobs: Optional[torch.Tensor] = None

    @property
    def num_rows(self) -> int:
        return self.rollout.input_ids.shape[0]


def _sample_and_score(tr, records, dataset_index, num_generations, greedy=False):
    prompt_ids = ro.encode_prompts(tr.tokenizer, [r["prompt"] for r in records], tr.config.max_prompt_length,
                                   tr.config.truncate_prompts)
    c = tr.config
    sampled = tr.sample_fn(tr.model, tr.tokenizer, prompt_ids, num_generations, temperature=c.temperature,
                           top_p=c.top_p, max_new_tokens=c.max_new_tokens, greedy=greedy)
    scores = rw.score(tr.reward_fns, tr.reward_weights, records, sampled.completions, sampled.prompt_index,
                      dataset_index)
    return prompt_ids, sampled, scores


def _reward_stats(scores: torch.Tensor, rollout: ro.Rollout) -> dict:
    lengths = rollout.completion_mask.sum(1)
    return {"reward_mean": float(scores.mean()), "reward_std": float(scores.std()) if scores.numel() > 1 else 0.0,
            "reward_max": float(scores.max()), "completion_len": float(lengths.mean()),
            "empty_completion_frac": float((lengths <= 1).float().mean())}


def online(tr, records, dataset_index) -> TrainBatch:
    _, sampled, scores = _sample_and_score(tr, records, dataset_index, tr.config.num_generations)
    rows = {"rewards": scores, "group_ids": torch.tensor(sampled.prompt_index, dtype=torch.long)}
    if tr.preset.anchor == "greedy":  # ReMax: the baseline is the reward of the greedy answer
        _, greedy, greedy_scores = _sample_and_score(tr, records, dataset_index, 1, greedy=True)
        rows["baseline"] = greedy_scores[rows["group_ids"]]
    return TrainBatch(sampled, rows, [[r] for r in range(len(scores))], _reward_stats(scores, sampled))


def iterative_dpo(tr, records, dataset_index) -> TrainBatch:
    _, sampled, scores = _sample_and_score(tr, records, dataset_index, tr.config.num_generations)
    stats = _reward_stats(scores, sampled)
    order, pair_ids, chosen = [], [], []
    for p in range(len(records)):
        rows = [r for r, i in enumerate(sampled.prompt_index) if i == p]
        best = max(rows, key=lambda r: float(scores[r]))
        worst = min(rows, key=lambda r: float(scores[r]))
        if float(scores[best]) == float(scores[worst]):
            continue  # no preference to learn from
        pair = len(pair_ids) // 2
        order += [best, worst]
        pair_ids += [pair, pair]
        chosen += [True, False]
    stats["num_pairs"] = len(order) // 2
    if not order:
        return TrainBatch(None, {}, [], stats)
    picked = _select_rows(sampled, order)
    rows = {"pair_ids": torch.tensor(pair_ids), "chosen": torch.tensor(chosen)}
    return TrainBatch(picked, rows, [[2 * k, 2 * k + 1] for k in range(len(order) // 2)], stats)


def rejection_sampling(tr, records, dataset_index) -> TrainBatch:
    _, sampled, scores = _sample_and_score(tr, records, dataset_index, tr.config.num_generations)
    stats = _reward_stats(scores, sampled)
    c, keep = tr.config, []
    for p in range(len(records)):
        rows = sorted((r for r, i in enumerate(sampled.prompt_index) if i == p), key=lambda r: -float(scores[r]))
        keep += [r for r in rows[:c.rejection_keep]
                 if c.rejection_min_reward is None or float(scores[r]) >= c.rejection_min_reward]
    stats["kept_frac"] = len(keep) / max(len(scores), 1)
    if not keep:
        return TrainBatch(None, {}, [], stats)
    picked = _select_rows(sampled, sorted(keep))
    rows = {"advantages": torch.ones(len(keep))}
    return TrainBatch(picked, rows, [[r] for r in range(len(keep))], stats)


def _select_rows(rollout: ro.Rollout, order: List[int]) -> ro.Rollout:
    idx = torch.tensor(order, dtype=torch.long, device=rollout.input_ids.device)
    return ro.Rollout(rollout.input_ids[idx], rollout.attention_mask[idx], rollout.prompt_width,
                      rollout.completion_mask[idx], [rollout.completions[i] for i in order],
                      [rollout.prompt_index[i] for i in order])


def hybrid(tr, records, dataset_index) -> TrainBatch:
    """Online rows (as in `online`) followed by this step's offline records, in one mixed GRO batch."""
    on = online(tr, records, dataset_index)
    c = tr.config
    offline = [tr.offline[i] for i in tr.stream(len(tr.offline), c.offline_per_step, tr.step, salt=1)]
    prompt_ids = ro.encode_prompts(tr.tokenizer, [r["prompt"] for r in offline], c.max_prompt_length,
                                   c.truncate_prompts)
    pairs = "chosen" in offline[0]
    if pairs:
        texts = [t for r in offline for t in (r["chosen"], r["rejected"])]
        index = [k for k in range(len(offline)) for _ in range(2)]
    else:
        texts, index = [r["completion"] for r in offline], list(range(len(offline)))
    device = on.rollout.input_ids.device
    off = ro.from_texts(tr.tokenizer, prompt_ids, texts, index, c.max_new_tokens, device)
    n_on, n_off = on.num_rows, len(texts)
    rollout = ro.concat([on.rollout, off], ro.special_ids(tr.tokenizer)[1])
    zeros = torch.zeros(n_off)
    rows = {"rewards": torch.cat([on.rows["rewards"], zeros]),
            "group_ids": torch.cat([on.rows["group_ids"], on.rows["group_ids"].max() + 1 + torch.arange(n_off)]),
            "online": torch.cat([torch.ones(n_on, dtype=torch.bool), torch.zeros(n_off, dtype=torch.bool)])}
    if "baseline" in on.rows:
        rows["baseline"] = torch.cat([on.rows["baseline"], zeros])
    if pairs:
        rows["pair_ids"] = torch.cat([torch.full((n_on,), -1), torch.tensor(index)])
        rows["chosen"] = torch.cat([torch.zeros(n_on, dtype=torch.bool),
                                    torch.tensor([k % 2 == 0 for k in range(n_off)])])
        units = on.units + [[n_on + 2 * k, n_on + 2 * k + 1] for k in range(len(offline))]
    else:
        rows["desirable"] = torch.cat([torch.zeros(n_on, dtype=torch.bool),
                                       torch.tensor([bool(r["label"]) for r in offline])])
        units = on.units + [[n_on + k] for k in range(n_off)]
    stats = dict(on.stats, offline_rows=n_off)
    return TrainBatch(rollout, rows, units, stats)
