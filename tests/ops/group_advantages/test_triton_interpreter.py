"""Triton segmented group advantages under the interpreter vs naive.group_advantages_naive (the fp64
loop spec of docs/math.md §2), with ragged groups, groups of one, identical rewards, a group larger
than one BLOCK (several chunks per program) and an unsorted group index."""

import pytest
import torch

from gro_kernels.ops.group_advantages import function, naive, triton_impl

pytestmark = pytest.mark.interpreter


def _ragged(seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = [1, 5, 8, 3, 300, 2, 1, 16]  # 300 > BLOCK = 256: a program loops over two chunks
    index = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    index = index[torch.randperm(index.numel(), generator=g)]  # groups interleaved in the batch
    rewards = torch.randn(index.numel(), generator=g)
    rewards[index == 2] = 0.75  # identical rewards
    return rewards, index, len(sizes)


@pytest.mark.parametrize("mode,scale", [("grpo", "group"), ("grpo", "batch"), ("grpo", "none"),
                                        ("dr_grpo", "group"), ("rloo", "group")])
def test_matches_naive(mode, scale):
    rewards, index, groups = _ragged()
    got = function.segmented_advantages(triton_impl.segmented_advantages, rewards, index, groups, mode, eps=1e-6,
                                        scale_rewards=scale)
    ref = naive.group_advantages_naive(rewards, index, mode, eps=1e-6, scale_rewards=scale)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    assert (got[index == 2] == 0).all(), "identical rewards must give exactly 0"
    if mode != "dr_grpo":
        assert (got[(index == 0) | (index == 6)] == 0).all(), "a group of one gets 0"


def test_segments_given_as_offsets():
    rewards = torch.tensor([1.0, 2.0, 4.0, 3.0, 3.0, 7.0])
    offsets = torch.tensor([0, 3, 5, 6])
    got = triton_impl.segmented_advantages(rewards, offsets, "grpo", eps=1e-6)
    index = torch.tensor([0, 0, 0, 1, 1, 2])
    ref = naive.group_advantages_naive(rewards, index, "grpo", eps=1e-6)
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-7)


def test_bad_mode():
    rewards, _, _ = _ragged()
    with pytest.raises(ValueError, match="mode"):
        triton_impl.segmented_advantages(rewards, torch.tensor([0, rewards.numel()]), "bogus")


@pytest.mark.parametrize("mode,scale", [("grpo", "group"), ("grpo", "batch"), ("grpo", "none"),
                                        ("dr_grpo", "group"), ("rloo", "group")])
def test_large_rewards_keep_their_advantages(mode, scale):
    """Rewards ~1e19: their fp32 squares overflow, and the group std used to come out inf (advantages 0)."""
    rewards = torch.tensor([0.0, 1e19, 2e19, 3e19, 5.0, -1.5e38, 1.5e38, 1.0])
    index = torch.tensor([0, 0, 0, 0, 1, 2, 2, 2])
    got = function.segmented_advantages(triton_impl.segmented_advantages, rewards, index, 3, mode, eps=1e-6,
                                        scale_rewards=scale)
    ref = naive.group_advantages_naive(rewards, index, mode, eps=1e-6, scale_rewards=scale)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6 * ref.abs().max().item())
    assert torch.isfinite(got).all() and (got[:4] != 0).all()
