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


def _groups(idx):
    """{group: [rows]} in row order."""
    out = {}
    for i, g in enumerate(idx):
        out.setdefault(g, []).append(i)
    return out


def grpo_passk_naive(rewards, group_index, *, eps=1e-6, scale_rewards="group"):
    """Only the first best row of each group (n >= 2) gets r_max - r_second (over std_g + eps for "group");
    the others, and groups of one, 0."""
    r = rewards.double().cpu()
    out = torch.zeros_like(r)
    for rows in _groups(group_index.cpu().tolist()).values():
        if len(rows) < 2:
            continue
        vals = sorted(((float(r[i]), -i) for i in rows), reverse=True)
        best = -vals[0][1]
        adv = vals[0][0] - vals[1][0]
        if scale_rewards == "group":
            adv = adv / (float(r[rows].std()) + eps)
        out[best] = adv
    return out


def opo_naive(rewards, group_index, lengths):
    """r_i - sum_j |o_j| r_j / sum_j |o_j| over the group (n >= 2; plain mean when no row has tokens)."""
    r = rewards.double().cpu()
    length = lengths.double().cpu()
    out = torch.zeros_like(r)
    for rows in _groups(group_index.cpu().tolist()).values():
        if len(rows) < 2:
            continue
        total = float(length[rows].sum())
        base = float((length[rows] * r[rows]).sum()) / total if total > 0 else float(r[rows].mean())
        for i in rows:
            out[i] = r[i] - base
    return out


def gpg_naive(rewards, group_index):
    """B / max(#nonzero rewards, 1) * (r_i - mean_g r) (n >= 2)."""
    r = rewards.double().cpu()
    alpha = r.numel() / max(int((r != 0).sum()), 1)
    out = torch.zeros_like(r)
    for rows in _groups(group_index.cpu().tolist()).values():
        if len(rows) > 1:
            for i in rows:
                out[i] = alpha * (r[i] - r[rows].mean())
    return out


def _whiten_naive(x, m, eps):
    vals = x[m]
    if vals.numel() < 2:
        return torch.zeros_like(x)
    return torch.where(m, (x - vals.mean()) / (vals.std() + eps), torch.zeros_like(x))


def _token_rewards_naive(r, m, token_kl, kl_coef):
    B, T = m.shape
    x = torch.zeros(B, T, dtype=torch.float64)
    for i in range(B):
        valid = [t for t in range(T) if m[i, t]]
        for t in valid:
            x[i, t] = -kl_coef * float(token_kl[i, t]) if token_kl is not None else 0.0
        if valid:
            x[i, valid[-1]] += float(r[i])
    return x


def reinforce_pp_baseline_naive(rewards, mask, *, group_index=None, token_kl=None, kl_coef=0.0, eps=1e-6):
    """s_i = r_i - kl_coef sum_t k1_t (valid t), minus the group mean of s (a group of one: 0), on every valid
    token, whitened over the valid tokens."""
    m = mask.bool().cpu()
    s = rewards.double().cpu().clone()
    if token_kl is not None:
        s = s - kl_coef * torch.where(m, token_kl.double().cpu(), torch.zeros(m.shape, dtype=torch.float64)).sum(1)
    if group_index is not None:
        c = torch.zeros_like(s)
        for rows in _groups(group_index.cpu().tolist()).values():
            if len(rows) > 1:
                c[rows] = s[rows] - s[rows].mean()
        s = c
    return _whiten_naive(s.unsqueeze(1).expand(m.shape).clone(), m, eps)


def reinforce_pp_gamma_naive(rewards, mask, *, gamma, group_index=None, token_kl=None, kl_coef=0.0, eps=1e-6):
    """Token rewards (-kl_coef k1_t, plus the group-centred reward on the last valid token), G_t = x_t +
    gamma G_next over valid tokens (masked tokens carry G through), whitened over the valid tokens."""
    m = mask.bool().cpu()
    r = rewards.double().cpu()
    if group_index is not None:
        idx = group_index.cpu().tolist()
        means = {g: r[rows].mean() for g, rows in _groups(idx).items()}
        r = torch.stack([r[i] - means[idx[i]] for i in range(len(idx))])
    x = _token_rewards_naive(r, m, token_kl, kl_coef)
    ret = torch.zeros_like(x)
    for i in range(m.shape[0]):
        running = 0.0
        for t in reversed(range(m.shape[1])):
            if m[i, t]:
                running = float(x[i, t]) + gamma * running
                ret[i, t] = running
    return _whiten_naive(ret, m, eps)


def gae_naive(rewards, mask, values, *, gamma, lam, token_kl=None, kl_coef=0.0, eps=1e-6):
    """GAE per row over its valid tokens (next = next valid token; V = 0 after the last), whitened."""
    m = mask.bool().cpu()
    x = _token_rewards_naive(rewards.double().cpu(), m, token_kl, kl_coef)
    v = values.double().cpu()
    adv = torch.zeros_like(x)
    for i in range(m.shape[0]):
        nxt, acc = 0.0, 0.0
        for t in reversed(range(m.shape[1])):
            if m[i, t]:
                acc = float(x[i, t]) + gamma * nxt - float(v[i, t]) + gamma * lam * acc
                nxt = float(v[i, t])
                adv[i, t] = acc
    return _whiten_naive(adv, m, eps)


def optimal_token_baseline_naive(rewards, mask, group_index, old_logprobs, sum_pi_squared, *,
                                 rollout_is_weights=None, token_kl=None, kl_coef=0.0, eps=1e-8,
                                 handle_zero_tail=True, aligned=False):
    """G_t - B_t, B_t = sum_g G_t W_t / (sum_g W_t + eps), W_t = sum_{j<=t valid} (1 - 2 pi_j + sum pi^2) rho_j^2.
    aligned: positions are the k-th valid token of each row, empty rows sit out. Groups of one member: 0."""
    m = mask.bool().cpu()
    B, T = m.shape
    x = _token_rewards_naive(rewards.double().cpu(), m, token_kl, kl_coef)
    w = 1 - 2 * old_logprobs.double().cpu().exp() + sum_pi_squared.double().cpu()
    if rollout_is_weights is not None:
        w = w * rollout_is_weights.double().cpu() ** 2
    seqs = []  # per row: list of (column, G, W) over valid tokens
    for i in range(B):
        valid = [t for t in range(T) if m[i, t]]
        g_vals, acc = {}, 0.0
        for t in reversed(valid):
            acc += float(x[i, t])
            g_vals[t] = acc
        cum, items = 0.0, []
        for t in valid:
            cum += float(w[i, t])
            items.append((t, g_vals[t], cum))
        seqs.append(items)
    out = torch.zeros(B, T, dtype=torch.float64)
    for rows in _groups(group_index.cpu().tolist()).values():
        members = [i for i in rows if seqs[i]] if aligned else rows
        if len(members) < 2:
            continue
        pos = (lambda k, it: k) if aligned else (lambda k, it: it[0])
        num, den = {}, {}
        for i in members:
            for k, it in enumerate(seqs[i]):
                p = pos(k, it)
                num[p] = num.get(p, 0.0) + it[1] * it[2]
                den[p] = den.get(p, 0.0) + it[2]
        lengths = sorted(len(seqs[i]) for i in members)
        lone = None
        if handle_zero_tail and lengths.count(lengths[-1]) == 1:
            lone = next(i for i in members if len(seqs[i]) == lengths[-1])
        for i in members:
            for k, it in enumerate(seqs[i]):
                p = pos(k, it)
                base = num[p] / (den[p] + eps)
                if i == lone and p >= lengths[-2]:
                    base = 0.0
                out[i, it[0]] = it[1] - base
    return out


def gdpo_naive(rewards, mask, group_index, *, weights=None, eps=1e-6, scale_rewards="group"):
    """sum_k w_k grpo(r[:, k]) (a group of one: 0), on every valid token, whitened over the valid tokens."""
    r = rewards.double().cpu()
    w = torch.ones(r.shape[1], dtype=torch.float64) if weights is None else weights.double().cpu()
    total = sum(w[k] * group_advantages_naive(r[:, k], group_index, "grpo", eps=eps, scale_rewards=scale_rewards)
                for k in range(r.shape[1]))
    m = mask.bool().cpu()
    return _whiten_naive(total.unsqueeze(1).expand(m.shape).clone(), m, eps)


def normalize_then_sum_naive(rewards, group_index, *, weights=None, eps=1e-4):
    """sum_k w_k (r_k - mean_g) / (std_g + eps) (a group of one: 0), then (x - mean) / (std + eps) over the rows."""
    r = rewards.double().cpu()
    w = torch.ones(r.shape[1], dtype=torch.float64) if weights is None else weights.double().cpu()
    total = sum(w[k] * group_advantages_naive(r[:, k], group_index, "grpo", eps=eps) for k in range(r.shape[1]))
    return _whiten_naive(total.unsqueeze(1), torch.ones(r.shape[0], 1, dtype=torch.bool), eps).squeeze(1)
