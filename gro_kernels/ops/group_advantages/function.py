"""Group advantages with segmented torch ops: ragged groups, no Python loop over groups, no host sync.

Groups arrive as a dense index g(i) in [0, G) (the public layer maps ids or sizes to it). Means
are taken around the group minimum, so identical rewards give deviations of exactly 0 (a plain
sum / n can be off by an ulp, which the division by a tiny std would turn into a visible advantage).
"""

import torch

MODES = ("grpo", "dr_grpo", "rloo", "remax", "reinforce_pp", "none")
SCALES = ("group", "batch", "none")


def _segment_sum(values, index, groups):
    return torch.zeros(groups, dtype=values.dtype, device=values.device).index_add_(0, index, values)


def _group_centered(r, index, groups):
    """(r_i - mean_g r, group size n_g per row, per-group min) with exact zeros for equal rewards."""
    low = torch.full((groups,), float("inf"), dtype=r.dtype, device=r.device)
    low = low.scatter_reduce(0, index, r, reduce="amin")
    shifted = r - low[index]
    counts = _segment_sum(torch.ones_like(r), index, groups)
    mean_shift = _segment_sum(shifted, index, groups) / counts.clamp(min=1.0)
    return shifted - mean_shift[index], counts[index]


def group_advantages(rewards, index, groups: int, mode: str, *, eps: float, baseline=None,
                     scale_rewards: str = "group"):
    """fp32 [B] advantages for modes grpo, dr_grpo, rloo, remax, none (see naive.py for the math)."""
    r = rewards.to(torch.float32)
    if mode == "none":
        return r.clone()
    if mode == "remax":
        return r - baseline.to(torch.float32)
    centered, n = _group_centered(r, index, groups)
    if mode == "dr_grpo":
        return centered
    single = n <= 1
    if mode == "rloo":  # r_i - mean of the others = n / (n - 1) (r_i - mean)
        return torch.where(single, 0.0, centered * n / (n - 1.0).clamp(min=1.0))
    if mode != "grpo":
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if scale_rewards == "none":
        return torch.where(single, 0.0, centered)
    if scale_rewards == "batch":
        batch_centered = r - r.min()
        batch_centered = batch_centered - batch_centered.mean()
        std = (batch_centered.square().sum() / max(r.numel() - 1, 1)).sqrt()
    elif scale_rewards == "group":
        var = _segment_sum(centered.square(), index, groups)[index] / (n - 1.0).clamp(min=1.0)
        std = var.sqrt()
    else:
        raise ValueError(f"scale_rewards must be one of {SCALES}, got {scale_rewards!r}")
    return torch.where(single, 0.0, centered / (std + eps))


def reinforce_pp_advantages(rewards, mask, *, index=None, groups=0, token_kl=None, kl_coef: float = 0.0,
                            eps: float = 1e-6):
    """REINFORCE++ token advantages [B, T] fp32: KL-shaped return r_i - kl_coef * sum_{s>=t} k1_s,
    optionally minus the group mean reward, whitened over the valid tokens of the batch."""
    m = mask.to(torch.bool)
    r = rewards.to(torch.float32)
    if index is not None:
        r, _ = _group_centered(r, index, groups)
    ret = r.unsqueeze(1).expand(m.shape)
    if token_kl is not None and kl_coef != 0.0:
        k = torch.where(m, token_kl.to(torch.float32), 0.0)
        tail = k.flip(1).cumsum(1).flip(1)  # sum over s >= t
        ret = ret - kl_coef * tail
    fm = m.to(torch.float32)
    count = fm.sum()
    low = torch.where(m, ret, float("inf")).amin()
    low = torch.where(count > 0, low, 0.0)
    shifted = torch.where(m, ret - low, 0.0)
    centered = shifted - shifted.sum() / count.clamp(min=1.0)
    var = torch.where(m, centered, 0.0).square().sum() / (count - 1.0).clamp(min=1.0)
    out = torch.where(m & (count > 1), centered / (var.sqrt() + eps), 0.0)
    return out
