"""group_advantages dispatch: the native gro_C op (CPU) equals the torch path and the fp64 loop spec
through the same index -> offsets wiring the CUDA paths use, and the rule that picks Triton / native /
torch (availability patched; a FakeTensor stands in for a CUDA index, no GPU needed)."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import gro_kernels
from gro_kernels import _ext
from gro_kernels.ops.group_advantages import function, naive

native_cpu = pytest.mark.skipif(not function._native_usable("cpu"), reason=_ext.native_status())
SIZES = [1, 5, 8, 3, 40, 2, 1, 16]  # ragged, groups of one at 0 and 6, one group beyond a warp
MODES = [("grpo", "group"), ("grpo", "batch"), ("grpo", "none"), ("dr_grpo", "group"), ("rloo", "group")]


def _batch(layout, seed=0):
    """(rewards, index, groups); group 2 holds identical rewards."""
    g = torch.Generator().manual_seed(seed)
    ids, groups = torch.arange(len(SIZES)), len(SIZES)
    if layout == "empty_groups":  # ids 1, 3, 5, ... used, even ids empty (gro_loss's mixed batches)
        ids, groups = 2 * ids + 1, 2 * groups + 1
    index = torch.repeat_interleave(ids, torch.tensor(SIZES))
    if layout == "unsorted":
        index = index[torch.randperm(index.numel(), generator=g)]
    rewards = torch.randn(index.numel(), generator=g) * 3
    rewards[index == ids[2]] = 0.75
    return rewards, index, groups


def _native(rewards, index, groups, mode, scale, presorted):
    return function.segmented_advantages(function._native_kernel, rewards, index, groups, mode, eps=1e-6,
                                         scale_rewards=scale, presorted=presorted)


@native_cpu
@pytest.mark.parametrize("layout", ["sorted", "unsorted", "empty_groups"])
@pytest.mark.parametrize("mode,scale", MODES)
def test_native_matches_torch_and_spec(layout, mode, scale):
    rewards, index, groups = _batch(layout)
    got = _native(rewards, index, groups, mode, scale, presorted=layout != "unsorted")
    spec = naive.group_advantages_naive(rewards, index, mode, eps=1e-6, scale_rewards=scale)
    torch_path = function.torch_advantages(rewards, index, groups, mode, eps=1e-6, scale_rewards=scale)
    assert got.dtype == torch.float32 and got.shape == rewards.shape
    torch.testing.assert_close(got.double(), spec, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, torch_path, rtol=1e-5, atol=1e-6)
    sizes = torch.bincount(index)
    same = rewards == 0.75
    assert same.sum() == SIZES[2] and (got[same] == 0).all(), "identical rewards must give exactly 0"
    assert (got[sizes[index] == 1] == 0).all(), "a group of one gets 0"


@native_cpu
def test_presorted_shortcut_is_bitwise_the_sorted_path():
    rewards, index, groups = _batch("sorted")
    for mode, scale in MODES:
        assert torch.equal(_native(rewards, index, groups, mode, scale, True),
                           _native(rewards, index, groups, mode, scale, False))


@native_cpu
def test_public_api_runs_native_for_grouped_rows_only(monkeypatch):
    calls, native_kernel = [], function._native_kernel

    def spy(rewards, offsets, mode, *, eps):
        calls.append(mode)
        return native_kernel(rewards, offsets, mode, eps=eps)

    monkeypatch.setattr(function, "_native_kernel", spy)
    rewards, index, _ = _batch("sorted")
    assert function.select_impl(index, "grpo") == "native"
    got = gro_kernels.group_advantages(rewards, group_size=SIZES, mode="grpo", scale_rewards="batch")
    assert calls == ["dr_grpo"]  # grpo without group scaling = the kernel's dr_grpo, then / batch std
    torch.testing.assert_close(got.double(), naive.group_advantages_naive(rewards, index, "grpo",
                                                                          scale_rewards="batch"), rtol=1e-5, atol=1e-6)
    shuffled, ids, _ = _batch("unsorted")
    assert function.select_impl(ids, "rloo") == "torch"
    gro_kernels.group_advantages(shuffled, group_ids=ids, mode="rloo")
    assert calls == ["dr_grpo"], "unsorted rows must stay on the torch path on CPU"


@pytest.fixture
def rule(monkeypatch):
    monkeypatch.delenv("GRO_BACKEND", raising=False)

    def apply(*, triton: bool, native: bool):
        monkeypatch.setattr(function, "_triton_impl", lambda: object() if triton else None)
        monkeypatch.setattr(function, "_native_usable", lambda device_type: native)

    return apply


def _cuda_index(n=6):
    with FakeTensorMode():  # a tensor on a CUDA device object; the CUDA rule never reads its values
        return torch.zeros(n, dtype=torch.int64, device="cuda")


@pytest.mark.parametrize("triton,native,expected", [(True, True, "triton"), (True, False, "triton"),
                                                    (False, True, "native"), (False, False, "torch")])
def test_rule_on_cuda(rule, triton, native, expected):
    rule(triton=triton, native=native)
    assert function.select_impl(_cuda_index(), "grpo") == expected
    for mode in ("remax", "none", "reinforce_pp"):
        assert function.select_impl(_cuda_index(), mode) == "torch"


def test_rule_on_cpu(rule):
    rule(triton=True, native=True)
    grouped, shuffled = torch.tensor([0, 0, 1, 1, 1, 2]), torch.tensor([0, 1, 0, 2, 1, 1])
    assert function.select_impl(grouped, "rloo") == "native"
    assert function.select_impl(shuffled, "rloo") == "torch"
    assert function.select_impl(None, "grpo") == "torch"
    rule(triton=True, native=False)
    assert function.select_impl(grouped, "rloo") == "torch"


def test_gro_backend_env_overrides(rule, monkeypatch):
    rule(triton=True, native=True)
    grouped = torch.tensor([0, 0, 1])
    for env, cpu, cuda in [("naive", "torch", "torch"), ("chunked", "native", "native"),
                           ("triton", "triton", "triton"), ("auto", "native", "triton")]:
        monkeypatch.setenv("GRO_BACKEND", env)
        assert (function.select_impl(grouped, "dr_grpo"), function.select_impl(_cuda_index(), "dr_grpo")) == (cpu, cuda)
    monkeypatch.setenv("GRO_BACKEND", "fast")
    with pytest.raises(ValueError, match="GRO_BACKEND must be one of"):
        function.select_impl(grouped, "grpo")
    monkeypatch.setenv("GRO_BACKEND", "triton")
    rule(triton=False, native=True)
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        function.select_impl(grouped, "grpo")


def test_bad_scale_rewards_refused_before_any_kernel():
    with pytest.raises(ValueError, match="scale_rewards must be one of"):
        function.group_advantages(torch.ones(4), torch.tensor([0, 0, 1, 1]), 2, "grpo", eps=1e-6,
                                  scale_rewards="std")
