"""Triton segmented (ragged) group advantages: one program per group, no host sync, no padding.

Same math and numerics contract as function.group_advantages (deviations taken around the group
minimum, so identical rewards give exact zeros; unbiased std; a group of one gets 0; rewards scaled
by a power of two near the group's max |r|, so large rewards do not overflow). Groups are
contiguous segments given by offsets [G + 1]; a dense group index is sorted into segments first.
Modes grpo (scale_rewards group / batch / none), dr_grpo and rloo run in the kernel; remax and
none are a subtraction / copy. Triton is imported only when this module is.
"""

import torch
import triton
import triton.language as tl

from ..common.triton_helpers import require_launchable

BLOCK = 256
_MODES = {"grpo": 0, "grpo_unscaled": 1, "dr_grpo": 2, "rloo": 3}


@triton.jit
def _pow2_scale(absmax):
    """function.pow2_scale: the power of two at or below absmax (its exponent bits), 1 for 0, subnormals, inf."""
    scale = (absmax.to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)
    return tl.where((scale > 0.0) & (scale < float("inf")), scale, 1.0)


@triton.jit
def _segment_advantage_kernel(r_ptr, offsets_ptr, out_ptr, eps, MODE: tl.constexpr, BLOCK: tl.constexpr):
    """Grid (G,): program g reads rewards[offsets[g]:offsets[g+1]] in BLOCK chunks three times (min and max |r|,
    mean, variance) and writes that segment's advantages. MODE: 0 grpo (group std), 1 grpo without scaling,
    2 dr_grpo, 3 rloo. Rewards are divided by a power of two near the group's max |r| (exact), so the squares
    of rewards ~1e19 do not overflow fp32. Offsets are int64, so segments may sit beyond 2^31."""
    g = tl.program_id(0)
    start = tl.load(offsets_ptr + g)
    n = tl.load(offsets_ptr + g + 1) - start
    chunks = tl.cdiv(n, BLOCK)
    lane = tl.arange(0, BLOCK)
    low = tl.full((BLOCK,), float("inf"), tl.float32)
    big = tl.zeros((BLOCK,), tl.float32)
    for c in range(0, chunks):
        ok = c * BLOCK + lane < n
        x = tl.load(r_ptr + start + c * BLOCK + lane, mask=ok, other=float("inf")).to(tl.float32)
        low = tl.minimum(low, x)
        big = tl.maximum(big, tl.where(ok, tl.abs(x), 0.0))
    scale = _pow2_scale(tl.max(big, axis=0))
    inv = 1.0 / scale
    low_g = tl.min(low, axis=0) * inv
    acc = tl.zeros((BLOCK,), tl.float32)
    for c in range(0, chunks):
        ok = c * BLOCK + lane < n
        x = tl.load(r_ptr + start + c * BLOCK + lane, mask=ok, other=0.0).to(tl.float32) * inv
        acc += tl.where(ok, x - low_g, 0.0)
    nf = n.to(tl.float32)
    mean_shift = tl.sum(acc, axis=0) / tl.maximum(nf, 1.0)
    std = 1.0
    if MODE == 0:
        sq = tl.zeros((BLOCK,), tl.float32)
        for c in range(0, chunks):
            ok = c * BLOCK + lane < n
            x = tl.load(r_ptr + start + c * BLOCK + lane, mask=ok, other=0.0).to(tl.float32) * inv - low_g - mean_shift
            sq += tl.where(ok, x * x, 0.0)
        std = tl.sqrt(tl.sum(sq, axis=0) / tl.maximum(nf - 1.0, 1.0)) + eps * inv
        std = tl.where(std > 0.0, std, 1.0)  # 0 only when every deviation is 0 and eps * inv underflowed
    factor = 1.0
    if MODE == 3:  # r_i - mean of the others = n / (n - 1) (r_i - mean)
        factor = nf / tl.maximum(nf - 1.0, 1.0)
    for c in range(0, chunks):
        ok = c * BLOCK + lane < n
        x = tl.load(r_ptr + start + c * BLOCK + lane, mask=ok, other=0.0).to(tl.float32) * inv - low_g - mean_shift
        if MODE == 0:
            x = x / std  # both in units of scale: the advantage itself
        else:
            x = x * factor * scale  # back to reward units (exact: scale is a power of two)
        if MODE != 2:
            x = tl.where(n > 1, x, 0.0)
        tl.store(out_ptr + start + c * BLOCK + lane, x, mask=ok)


def segmented_advantages(rewards, offsets, mode: str, *, eps: float = 1e-6):
    """fp32 advantages of rewards [B] grouped in contiguous segments offsets [G + 1] (int64, offsets[0]
    = 0, offsets[G] = B). mode: grpo | grpo_unscaled | dr_grpo | rloo."""
    require_launchable("rewards", rewards)
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {tuple(_MODES)}, got {mode!r}")
    out = torch.empty(rewards.shape[0], dtype=torch.float32, device=rewards.device)
    groups = offsets.shape[0] - 1
    if groups > 0 and rewards.shape[0] > 0:
        torch.library.wrap_triton(_segment_advantage_kernel)[(groups,)](
            rewards.contiguous(), offsets.to(torch.int64).contiguous(), out, float(eps), MODE=_MODES[mode],
            BLOCK=BLOCK, num_warps=4)
    return out


def compile_specs(target: str):
    """Kernel variants for the AOT tests (one config on both targets: a memory-bound segmented pass)."""
    from ..common.triton_aot import KernelSpec

    types = dict(r_ptr="*fp32", offsets_ptr="*i64", out_ptr="*fp32", eps="fp32")
    return [KernelSpec(f"group_adv[{mode}]", _segment_advantage_kernel, types, dict(MODE=code, BLOCK=BLOCK),
                       ("r_ptr", "offsets_ptr", "out_ptr"), 4, 1) for mode, code in _MODES.items()]
