"""Group advantages: dispatch to a segmented kernel (Triton, native gro_C op) or segmented torch ops.

Groups arrive as a dense index g(i) in [0, G) (the public layer maps ids or sizes to it). All paths
handle ragged groups without a Python loop over groups or a host sync (except the CPU-only check
whether rows come group by group). The torch path takes means around the group minimum and the
kernels sum in double (native) or around the minimum (Triton), so identical rewards give deviations
of exactly 0 everywhere (a plain fp32 sum / n can be off by an ulp, which the division by a tiny std
would turn into a visible advantage). Sums of squares are taken on rewards divided by a power of two
near the group's (or batch's) largest |r| (pow2_scale): an exact rescaling, so the results are bitwise
those of the plain formulas wherever those do not overflow, and rewards up to the fp32 range (~1e19 and
beyond, whose squares overflow fp32) still get their advantages instead of 0. select_impl tells which
implementation runs.
"""

import functools

import torch

from ... import _ext
from ..common import dispatch

MODES = ("grpo", "dr_grpo", "rloo", "remax", "reinforce_pp", "none")
SCALES = ("group", "batch", "none")
KERNEL_MODES = ("grpo", "dr_grpo", "rloo")  # the segmented kernels' modes; the others are torch ops
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


@functools.cache
def _triton_impl():
    return dispatch.optional_triton_impl(__package__)


def _native_usable(device_type: str) -> bool:
    key = _DISPATCH_KEYS.get(device_type)
    return (key is not None and _ext.native_available(device_type)
            and torch._C._dispatch_has_kernel_for_dispatch_key("gro_C::group_advantages", key))


def _rows_grouped(index) -> bool:
    """Rows come group by group (index non-decreasing). CPU only: reading the answer is free there."""
    return bool((index[1:] >= index[:-1]).all())


def select_impl(index, mode: str) -> str:
    """"triton", "native" or "torch": which implementation group_advantages runs (GRO_BACKEND steers
    it, see ops/common/dispatch.py). CUDA: Triton when importable, else the native CUDA op, else torch.
    CPU: the native op when built and rows come group by group; unsorted rows stay in torch, because
    sorting them (a host-side argsort and two gathers) cost more than the native op saved when measured."""
    if index is None or mode not in KERNEL_MODES:
        return "torch"
    backend = dispatch.requested_backend()
    if backend == "triton" and _triton_impl() is None:
        raise RuntimeError(dispatch.TRITON_MISSING)
    if backend in ("triton", "naive"):
        return "torch" if backend == "naive" else "triton"
    device = index.device
    if device.type == "cuda" and backend == "auto" and _triton_impl() is not None:
        return "triton"
    if not _native_usable(device.type) or (device.type == "cpu" and not _rows_grouped(index)):
        return "torch"
    return "native"


def group_advantages(rewards, index, groups: int, mode: str, *, eps: float, baseline=None,
                     scale_rewards: str = "group"):
    """fp32 [B] advantages for modes grpo, dr_grpo, rloo, remax, none (see naive.py for the math)."""
    if scale_rewards not in SCALES:
        raise ValueError(f"scale_rewards must be one of {SCALES}, got {scale_rewards!r}")
    impl = select_impl(index, mode)
    if impl == "torch":
        return torch_advantages(rewards, index, groups, mode, eps=eps, baseline=baseline,
                                scale_rewards=scale_rewards)
    kernel = _native_kernel if impl == "native" else _triton_impl().segmented_advantages
    # CPU picks the native op only for grouped rows (select_impl); CUDA never reads the index on the host.
    return segmented_advantages(kernel, rewards, index, groups, mode, eps=eps, scale_rewards=scale_rewards,
                                presorted=impl == "native" and index.device.type == "cpu")


def _native_kernel(rewards, offsets, mode, *, eps):
    return torch.ops.gro_C.group_advantages(rewards, offsets, mode, eps)


def segmented_advantages(kernel, rewards, index, groups: int, mode: str, *, eps: float,
                         scale_rewards: str = "group", presorted: bool = False):
    """Advantages (modes KERNEL_MODES) from a segmented kernel(rewards, offsets, mode, eps=) that wants
    rows sorted by group: offsets by counting (no host sync), a stable sort unless presorted, the
    kernel, a scatter back. grpo without group scaling runs the kernel's dr_grpo (a group of one has a
    deviation of exactly 0 there too), then divides by the batch std for scale_rewards="batch"."""
    r = rewards.to(torch.float32).contiguous()
    kernel_mode = "dr_grpo" if mode == "grpo" and scale_rewards != "group" else mode
    counts = _segment_sum(torch.ones_like(index), index, groups)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    if presorted:
        out = kernel(r, offsets, kernel_mode, eps=eps)
    else:
        order = torch.argsort(index, stable=True)
        out = torch.empty_like(r).index_copy_(0, order, kernel(r[order], offsets, kernel_mode, eps=eps))
    if mode == "grpo" and scale_rewards == "batch":
        out = _over_std(out, *_batch_std(r), eps)
    return out


def _segment_sum(values, index, groups):
    return torch.zeros(groups, dtype=values.dtype, device=values.device).index_add_(0, index, values)


def pow2_scale(absmax):
    """The power of two at or below each fp32 |x| (its exponent bits), 1 for 0, subnormals and inf. Dividing
    by it is exact, and it brings |x| into [1, 2): the squares of values a few times that size cannot
    overflow, where x^2 does for |x| > ~1.8e19."""
    scale = (absmax.to(torch.float32).contiguous().view(torch.int32) & 0x7F800000).view(torch.float32)
    return torch.where((scale > 0) & torch.isfinite(scale), scale, 1.0)


def _finite_extreme(values, reduce: str, empty: float):
    """amax / amin of all values, `empty` when there are none (torch refuses the reduction of an empty tensor)."""
    padded = torch.cat([values.reshape(-1), values.new_full((1,), empty)])
    return padded.amax() if reduce == "amax" else padded.amin()


def _over_std(x, std_scaled, scale, eps):
    """x / (std + eps) with std = std_scaled * scale, computed as (x / scale) / (std_scaled + eps / scale): the
    same bits when nothing overflows, and std itself need not be representable. 0 where the denominator is 0
    (then every deviation is 0 too: all rewards equal, an eps that underflowed)."""
    den = std_scaled + eps / scale
    return torch.where(den > 0, (x / scale) / torch.where(den > 0, den, 1.0), 0.0)


def _group_centered(r, index, groups):
    """(r_i - mean_g r in units of scale_g, group size n_g per row, scale_g per row) with exact zeros for
    equal rewards: scale_g is pow2_scale of the group's largest |r|, so nothing below overflows."""
    big = torch.zeros(groups, dtype=r.dtype, device=r.device).scatter_reduce(0, index, r.abs(), reduce="amax")
    scale = pow2_scale(big)[index]
    r = r / scale
    low = torch.full((groups,), float("inf"), dtype=r.dtype, device=r.device)
    low = low.scatter_reduce(0, index, r, reduce="amin")
    shifted = r - low[index]
    counts = _segment_sum(torch.ones_like(r), index, groups)
    mean_shift = _segment_sum(shifted, index, groups) / counts.clamp(min=1.0)
    return shifted - mean_shift[index], counts[index], scale


def torch_advantages(rewards, index, groups: int, mode: str, *, eps: float, baseline=None,
                     scale_rewards: str = "group"):
    """group_advantages in segmented torch ops (every mode but reinforce_pp; any device)."""
    r = rewards.to(torch.float32)
    if mode == "none":
        return r.clone()
    if mode == "remax":
        return r - baseline.to(torch.float32)
    centered, n, scale = _group_centered(r, index, groups)
    if mode == "dr_grpo":
        return centered * scale
    single = n <= 1
    if mode == "rloo":  # r_i - mean of the others = n / (n - 1) (r_i - mean)
        return torch.where(single, 0.0, centered * n / (n - 1.0).clamp(min=1.0) * scale)
    if mode != "grpo":
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if scale_rewards == "none":
        return torch.where(single, 0.0, centered * scale)
    if scale_rewards == "batch":
        return torch.where(single, 0.0, _over_std(centered * scale, *_batch_std(r), eps))
    if scale_rewards == "group":
        std = (_segment_sum(centered.square(), index, groups)[index] / (n - 1.0).clamp(min=1.0)).sqrt()
        return torch.where(single, 0.0, _over_std(centered, std, 1.0, eps / scale))
    raise ValueError(f"scale_rewards must be one of {SCALES}, got {scale_rewards!r}")


def _batch_std(r):
    """Unbiased std of the whole batch as (std / scale, scale), centred around the minimum first (exact 0 for
    equal rewards); scale = pow2_scale of the largest |r|."""
    scale = pow2_scale(_finite_extreme(r.abs(), "amax", 0.0))
    x = r / scale
    centered = x - _finite_extreme(x, "amin", 0.0)
    centered = centered - centered.mean()
    return (centered.square().sum() / max(r.numel() - 1, 1)).sqrt(), scale


def reinforce_pp_advantages(rewards, mask, *, index=None, groups=0, token_kl=None, kl_coef: float = 0.0,
                            eps: float = 1e-6):
    """REINFORCE++ token advantages [B, T] fp32: KL-shaped return r_i - kl_coef * sum_{s>=t} k1_s,
    optionally minus the group mean reward, whitened over the valid tokens of the batch."""
    m = mask.to(torch.bool)
    r = rewards.to(torch.float32)
    if index is not None:
        centered, _, scale = _group_centered(r, index, groups)
        r = centered * scale
    ret = r.unsqueeze(1).expand(m.shape)
    if token_kl is not None and kl_coef != 0.0:
        k = torch.where(m, token_kl.to(torch.float32), 0.0)
        tail = k.flip(1).cumsum(1).flip(1)  # sum over s >= t
        ret = ret - kl_coef * tail
    return whiten_tokens(ret, m, eps)


def whiten_tokens(ret, m, eps: float):
    """(x - mean) / (std + eps) over the valid tokens m of the batch (std unbiased); 0 on masked tokens and when
    fewer than two are valid. Exact zeros for equal values (centred around their minimum)."""
    count = m.to(torch.float32).sum()
    # Whitened in units of a power of two near the largest |return| (see pow2_scale); an empty batch has none.
    scale = pow2_scale(_finite_extreme(torch.where(m, ret.abs(), 0.0), "amax", 0.0))
    ret = ret / scale
    low = _finite_extreme(torch.where(m, ret, float("inf")), "amin", float("inf"))
    low = torch.where(count > 0, low, 0.0)
    shifted = torch.where(m, ret - low, 0.0)
    centered = shifted - shifted.sum() / count.clamp(min=1.0)
    var = torch.where(m, centered, 0.0).square().sum() / (count - 1.0).clamp(min=1.0)
    out = torch.where(m & (count > 1), _over_std(centered, var.sqrt(), 1.0, eps / scale), 0.0)
    return out
