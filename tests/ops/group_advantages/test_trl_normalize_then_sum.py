"""mode="normalize_then_sum" against TRL 1.16's multi_objective_aggregation="normalize_then_sum".

Reference transcribed from trl/trainer/grpo_trainer.py, GRPOTrainer._generate_and_score_completions (the
`elif self.multi_objective_aggregation == "normalize_then_sum"` branch): per reward function, group mean and
nanstd (unbiased) over num_generations, (r - mean) / (std + 1e-4); weighted nansum over functions; then
(x - mean) / (nanstd + 1e-4) over the batch."""

import pytest
import torch

import gro_kernels
from gro_kernels.ops.group_advantages import naive as N


def trl_normalize_then_sum(rewards_per_func, weights, num_generations):
    grouped = rewards_per_func.view(-1, num_generations, rewards_per_func.shape[1])
    mean_k = grouped.mean(dim=1, keepdim=True)
    std_k = grouped.std(dim=1, keepdim=True) if num_generations > 1 else torch.zeros_like(mean_k)
    reward_k = ((grouped - mean_k) / (std_k + 1e-4)).view(-1, rewards_per_func.shape[1])
    rewards = (reward_k * weights.unsqueeze(0)).sum(dim=1)
    return (rewards - rewards.mean()) / (rewards.std() + 1e-4)


@pytest.mark.parametrize("num_generations", [2, 4])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_trl(num_generations, weighted):
    g = torch.Generator().manual_seed(num_generations)
    rewards = torch.randn(4 * num_generations, 3, generator=g, dtype=torch.float64)
    weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64) if weighted else torch.ones(3, dtype=torch.float64)
    want = trl_normalize_then_sum(rewards, weights, num_generations)
    got = gro_kernels.group_advantages(rewards.float(), group_size=num_generations, mode="normalize_then_sum",
                                       eps=1e-4, reward_weights=weights.float().tolist() if weighted else None)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_ragged_groups_and_a_group_of_one_match_the_spec():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(7, 2, generator=g)
    ids = torch.tensor([3, 3, 3, 9, 9, 5, 3])  # ragged, shuffled, and group 5 has one row (advantage part 0)
    got = gro_kernels.group_advantages(rewards, group_ids=ids, mode="normalize_then_sum", eps=1e-4)
    want = N.normalize_then_sum_naive(rewards, ids, eps=1e-4)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="normalize_then_sum.*2-D"):
        gro_kernels.group_advantages(torch.randn(4), group_size=2, mode="normalize_then_sum")
    with pytest.raises(ValueError, match="group_ids"):
        gro_kernels.group_advantages(torch.randn(4, 2), mode="normalize_then_sum")
    with pytest.raises(ValueError, match="reward_weights"):
        gro_kernels.group_advantages(torch.randn(4, 2), group_size=2, mode="normalize_then_sum", reward_weights=[1.0])
