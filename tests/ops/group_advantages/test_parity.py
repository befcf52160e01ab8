"""group_advantages against the plain loop spec (naive.py) and hand-computed values."""

import pytest
import torch

import gro_kernels
from gro_kernels.ops.group_advantages.naive import group_advantages_naive, reinforce_pp_naive

RAGGED_IDS = torch.tensor([4, 4, 9, 4, 1, 9, 1, 1, 1, 3])  # sizes 3, 2, 4, 1; interleaved rows


@pytest.mark.parametrize("mode", ["grpo", "dr_grpo", "rloo", "none"])
@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_matches_naive_on_ragged_groups(mode, scale_rewards):
    rewards = torch.randn(10)
    out = gro_kernels.group_advantages(rewards, group_ids=RAGGED_IDS, mode=mode, scale_rewards=scale_rewards)
    assert out.dtype == torch.float32 and out.shape == (10,)
    expected = group_advantages_naive(rewards, RAGGED_IDS, mode, scale_rewards=scale_rewards)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


def test_hand_computed_values():
    r = torch.tensor([1.0, 0.0, 0.0, 3.0])
    ids = torch.tensor([0, 0, 0, 1])
    grpo = gro_kernels.group_advantages(r, group_ids=ids)
    std = torch.tensor([1.0, 0.0, 0.0]).std()
    torch.testing.assert_close(grpo[:3], (torch.tensor([1.0, 0.0, 0.0]) - 1 / 3) / (std + 1e-6))
    assert grpo[3] == 0.0  # a group of one
    rloo = gro_kernels.group_advantages(r, group_ids=ids, mode="rloo")
    torch.testing.assert_close(rloo, torch.tensor([1.0, -0.5, -0.5, 0.0]))
    remax = gro_kernels.group_advantages(r, mode="remax", baseline=torch.tensor([0.5, 0.5, 0.0, 3.0]))
    torch.testing.assert_close(remax, torch.tensor([0.5, -0.5, 0.0, 0.0]))


@pytest.mark.parametrize("value", [0.1, 1e6, -7.3, 0.0])
@pytest.mark.parametrize("mode", ["grpo", "dr_grpo", "rloo"])
def test_identical_rewards_give_exactly_zero(value, mode):
    r = torch.full((7,), value)
    out = gro_kernels.group_advantages(r, group_size=[3, 1, 3], mode=mode)
    assert torch.equal(out, torch.zeros(7))


def test_group_size_int_and_list_equal_ids():
    r = torch.randn(6)
    a = gro_kernels.group_advantages(r, group_size=3)
    b = gro_kernels.group_advantages(r, group_size=[3, 3])
    c = gro_kernels.group_advantages(r, group_ids=torch.tensor([0, 0, 0, 1, 1, 1]))
    assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("grouped", [False, True])
def test_reinforce_pp_matches_naive(grouped):
    r = torch.randn(4)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1, 2:] = False
    mask[3, :] = False
    kl = torch.randn(4, 5) * 0.1
    ids = torch.tensor([0, 0, 1, 1]) if grouped else None
    out = gro_kernels.group_advantages(r, group_ids=ids, mode="reinforce_pp", mask=mask, token_kl=kl, kl_coef=0.3)
    expected = reinforce_pp_naive(r, mask, group_index=ids, token_kl=kl, kl_coef=0.3)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(out[~mask]) == 0


def test_reinforce_pp_degenerate_batches_are_zero_not_nan():
    mask = torch.zeros(3, 4, dtype=torch.bool)
    assert torch.equal(gro_kernels.group_advantages(torch.randn(3), mode="reinforce_pp", mask=mask), torch.zeros(3, 4))
    mask[0, 0] = True  # one valid token: nothing to whiten against
    assert torch.equal(gro_kernels.group_advantages(torch.randn(3), mode="reinforce_pp", mask=mask), torch.zeros(3, 4))


LARGE = torch.tensor([0.0, 1e19, 2e19, 3e19, 5.0, -1.5e38, 1.5e38, 1.0])
LARGE_IDS = torch.tensor([0, 0, 0, 0, 1, 2, 2, 2])


@pytest.mark.parametrize("backend", ["naive", "auto"])  # naive: the torch ops; auto on CPU: the native op
@pytest.mark.parametrize("mode,scale_rewards", [("grpo", "group"), ("grpo", "batch"), ("grpo", "none"),
                                                ("dr_grpo", "group"), ("rloo", "group")])
def test_large_rewards_keep_their_advantages(monkeypatch, backend, mode, scale_rewards):
    """fp32 squares of rewards ~1e19 overflow: the torch path's group std came out inf, its advantages 0."""
    monkeypatch.setenv("GRO_BACKEND", backend)
    out = gro_kernels.group_advantages(LARGE, group_ids=LARGE_IDS, mode=mode, scale_rewards=scale_rewards)
    expected = group_advantages_naive(LARGE, LARGE_IDS, mode, scale_rewards=scale_rewards)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())
    assert torch.isfinite(out).all() and (out[:4] != 0).all()


def test_large_rewards_reinforce_pp():
    r = torch.tensor([1e19, 2e19, 4e19, 8e19])
    mask = torch.ones(4, 3, dtype=torch.bool)
    out = gro_kernels.group_advantages(r, mode="reinforce_pp", mask=mask)
    torch.testing.assert_close(out.double(), reinforce_pp_naive(r, mask), rtol=1e-5, atol=1e-6)
    assert (out != 0).all()


def test_empty_batch_gives_empty_advantages():
    for mode in ("grpo", "rloo", "dr_grpo"):
        assert gro_kernels.group_advantages(torch.zeros(0), group_size=[], mode=mode).shape == (0,)
    out = gro_kernels.group_advantages(torch.zeros(0), mode="reinforce_pp", mask=torch.ones(0, 5, dtype=torch.bool))
    assert out.shape == (0, 5)
