"""The spec of group advantages: a plain loop over groups (docs/math.md §2). The test oracle."""

import torch


def group_advantages_naive(rewards, group_index, mode, *, eps=1e-6, baseline=None, scale_rewards="group"):
    """Advantage A_i of each sequence from its reward and its group (group_index[i] in [0, G)).

    grpo      (r_i - mean_g r) / (std_g r + eps), std unbiased (scale_rewards "batch": std of the
              whole batch; "none": no division); a group of one gets 0
    dr_grpo   r_i - mean_g r
    rloo      r_i - mean_{j in g, j != i} r_j; a group of one gets 0
    remax     r_i - baseline_i
    none      r_i
    Computed in fp64 with Python loops; returns fp64 [B].
    """
    r = rewards.double().cpu()
    idx = group_index.cpu().tolist()
    out = torch.zeros_like(r)
    if mode == "none":
        return r.clone()
    if mode == "remax":
        return r - baseline.double().cpu()
    batch_std = r.std() if r.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
    for g in set(idx):
        rows = [i for i, gi in enumerate(idx) if gi == g]
        vals = r[rows]
        n = len(rows)
        mean = vals.mean()
        for i in rows:
            if mode == "dr_grpo":
                out[i] = r[i] - mean
            elif mode == "rloo":
                out[i] = 0.0 if n == 1 else r[i] - (vals.sum() - r[i]) / (n - 1)
            elif mode == "grpo":
                if n == 1:
                    continue
                std = {"group": vals.std(), "batch": batch_std, "none": None}[scale_rewards]
                out[i] = (r[i] - mean) if std is None else (r[i] - mean) / (std + eps)
            else:
                raise ValueError(mode)
    return out


def reinforce_pp_naive(rewards, mask, *, group_index=None, token_kl=None, kl_coef=0.0, eps=1e-6):
    """REINFORCE++ token advantages: A_t = r_i - kl_coef * sum_{s >= t} k1_s (valid s), minus the group
    mean reward when group_index is given, then whitened over all valid tokens of the batch:
    (x - mean) / (std + eps), std unbiased; masked tokens get 0. fp64 [B, T]."""
    r = rewards.double().cpu()
    m = mask.bool().cpu()
    if group_index is not None:
        idx = group_index.cpu().tolist()
        means = {g: r[[i for i, gi in enumerate(idx) if gi == g]].mean() for g in set(idx)}
        r = torch.stack([r[i] - means[idx[i]] for i in range(len(idx))])
    B, T = m.shape
    ret = torch.zeros(B, T, dtype=torch.float64)
    for i in range(B):
        tail = 0.0
        for t in reversed(range(T)):
            if not m[i, t]:
                continue
            if token_kl is not None:
                tail += float(token_kl[i, t])
            ret[i, t] = r[i] - kl_coef * tail
    vals = ret[m]
    if vals.numel() < 2:
        return torch.zeros(B, T, dtype=torch.float64)
    out = (ret - vals.mean()) / (vals.std() + eps)
    return torch.where(m, out, torch.zeros_like(out))
