"""Held-out evaluation of a policy, the same for every method: greedy accuracy and reward, and the exact
per-token KL to the initial policy and entropy (full softmax over the tiny vocabulary) on sampled answers."""

import torch

from gro_kernels.trainer import policy
from gro_kernels.trainer import rewards as rw
from gro_kernels.trainer import rollout as ro


@torch.no_grad()
def evaluate(model, reference, tokenizer, records, reward_fn, max_new_tokens: int, max_prompt_length: int) -> dict:
    """Greedy: exact-match accuracy and mean reward. Sampled (T = 1): mean over completion tokens of
    KL(policy || initial) and policy entropy. The global RNG is restored afterwards, so evaluating does not
    change the training run's samples."""
    state = torch.get_rng_state()
    try:
        prompt_ids = ro.encode_prompts(tokenizer, [r["prompt"] for r in records], max_prompt_length, True)
        greedy = ro.sample(model, tokenizer, prompt_ids, 1, temperature=1.0, top_p=1.0,
                           max_new_tokens=max_new_tokens, greedy=True)
        scores = rw.score([reward_fn], [1.0], records, greedy.completions, greedy.prompt_index)
        exact = [c == records[i]["target"] for c, i in zip(greedy.completions, greedy.prompt_index)]
        torch.manual_seed(12345)
        sampled = ro.sample(model, tokenizer, prompt_ids, 1, temperature=1.0, top_p=1.0,
                            max_new_tokens=max_new_tokens)
        kl, entropy = _kl_and_entropy(model, reference, sampled)
    finally:
        torch.set_rng_state(state)
    return {"eval_accuracy": sum(exact) / len(exact), "eval_reward": float(scores.mean()), "kl_to_initial": kl,
            "entropy": entropy}


def _completion_logp(model, r: ro.Rollout) -> torch.Tensor:
    """log-softmax [B, C, V] of the positions that predict the completion tokens."""
    out = model(input_ids=r.input_ids, attention_mask=r.attention_mask,
                position_ids=policy.position_ids(r.attention_mask))
    logits = out.logits[:, r.prompt_width - 1:-1].float()
    return torch.log_softmax(logits, dim=-1)


def _kl_and_entropy(model, reference, r: ro.Rollout):
    lp, lq = _completion_logp(model, r), _completion_logp(reference, r)
    p = lp.exp()
    mask = r.completion_mask
    count = mask.sum().clamp(min=1.0)
    kl = ((p * (lp - lq)).sum(-1) * mask).sum() / count
    entropy = (-(p * lp).sum(-1) * mask).sum() / count
    return float(kl), float(entropy)
