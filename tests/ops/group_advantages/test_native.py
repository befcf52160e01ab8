"""gro_C.group_advantages (segmented, offsets-based) on CPU against a plainly written reference.

The CPU op runs csrc/common/group_math.h, the same per-group math as the CUDA kernel.
"""

import math

import pytest
import torch

from gro_kernels import _ext

pytestmark = pytest.mark.skipif(not _ext.native_available("cpu"), reason=_ext.native_status())

MODES = ("grpo", "dr_grpo", "rloo")


def _reference(rewards, sizes, mode, eps):
    """docs/math.md §2, one reward at a time, in Python floats (double)."""
    out, start = [], 0
    for n in sizes:
        group = [float(r) for r in rewards[start:start + n]]
        start += n
        mean = sum(group) / n if n else 0.0
        for i, r in enumerate(group):
            if mode == "dr_grpo":
                out.append(r - mean)
            elif n < 2:
                out.append(0.0)
            elif mode == "rloo":
                out.append(r - (sum(group) - r) / (n - 1))
            else:
                std = math.sqrt(sum((x - mean) ** 2 for x in group) / (n - 1))
                out.append(0.0 if std == 0 else (r - mean) / (std + eps))
    return torch.tensor(out, dtype=torch.float64)


def _native(rewards, sizes, mode, eps=1e-6):
    offsets = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()], dtype=torch.int64)
    return torch.ops.gro_C.group_advantages(rewards, offsets, mode, eps)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sizes", [[4, 4, 4], [1, 5, 2, 1, 40, 3], [1], [2, 0, 3]],
                         ids=["uniform", "ragged", "single-group-of-one", "empty-group"])
def test_matches_reference(mode, sizes):
    rewards = torch.randn(sum(sizes), generator=torch.Generator().manual_seed(len(sizes))) * 3
    got = _native(rewards, sizes, mode)
    assert got.dtype == torch.float32 and got.shape == rewards.shape
    torch.testing.assert_close(got.double(), _reference(rewards, sizes, mode, 1e-6), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("eps", [1e-6, 0.0])
def test_identical_rewards_give_exact_zero(mode, eps):
    # 0.1 is not representable: a float32 mean would round away from it and give tiny non-zeros.
    rewards = torch.full((7,), 0.1)
    rewards[3:] = -2.3
    got = _native(rewards, [3, 4], mode, eps)
    assert torch.equal(got, torch.zeros(7))


@pytest.mark.parametrize("mode", MODES)
def test_group_of_one_is_zero(mode):
    assert torch.equal(_native(torch.tensor([5.0, 1.0, 2.0]), [1, 2], mode)[:1], torch.zeros(1))


def test_grpo_eps_enters_the_denominator():
    got = _native(torch.tensor([0.0, 2.0]), [2], "grpo", eps=1.0)  # std = sqrt(2)
    torch.testing.assert_close(got, torch.tensor([-1.0, 1.0]) / (math.sqrt(2) + 1.0))


def test_nan_reward_poisons_only_its_group():
    got = _native(torch.tensor([1.0, float("nan"), 2.0, 4.0]), [2, 2], "grpo")
    assert torch.isnan(got[:2]).all() and torch.isfinite(got[2:]).all()


def test_empty_batch():
    assert _native(torch.empty(0), [], "grpo").shape == (0,)


def test_meta_kernel_gives_shape():
    out = torch.ops.gro_C.group_advantages(torch.empty(6, device="meta"), torch.empty(3, dtype=torch.int64,
                                                                                    device="meta"), "rloo", 0.0)
    assert out.shape == (6,) and out.device.type == "meta"


BAD = [
    pytest.param(torch.ones(4), [0, 3, 2, 4], "grpo", 1e-6, "non-decreasing", id="descending-offsets"),
    pytest.param(torch.ones(4), [0, 3], "grpo", 1e-6, "end at rewards.size", id="offsets-short"),
    pytest.param(torch.ones(4), [1, 4], "grpo", 1e-6, "start at 0", id="offsets-not-from-0"),
    pytest.param(torch.ones(4, dtype=torch.float64), [0, 4], "grpo", 1e-6, "float32", id="double-rewards"),
    pytest.param(torch.ones(2, 2), [0, 4], "grpo", 1e-6, "1-D", id="2d-rewards"),
    pytest.param(torch.ones(4), [0, 4], "ppo", 1e-6, "mode must be one of", id="unknown-mode"),
    pytest.param(torch.ones(4), [0, 4], "grpo", -1.0, "eps must be >= 0", id="negative-eps"),
]


@pytest.mark.parametrize("rewards,offsets,mode,eps,message", BAD)
def test_bad_input_is_refused(rewards, offsets, mode, eps, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.gro_C.group_advantages(rewards, torch.tensor(offsets, dtype=torch.int64), mode, eps)


def test_int32_offsets_are_refused():
    with pytest.raises(RuntimeError, match="offsets must be int64"):
        torch.ops.gro_C.group_advantages(torch.ones(2), torch.tensor([0, 2], dtype=torch.int32), "grpo", 0.0)
