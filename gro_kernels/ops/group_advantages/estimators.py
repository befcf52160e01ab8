"""verl's further advantage estimators in segmented torch ops (no Python loop over groups): grpo_passk, opo,
gpg, reinforce_pp_baseline, discounted REINFORCE++ returns, gae, optimal_token_baseline and its turn-aligned
form. The math and each peer's own behaviour: naive.py (the spec) and docs/math.md §2.

Every grouped estimator here gives a group of one 0, as gro's grpo and rloo do (a single answer has nothing
to be compared with); verl gives it its own reward or return in most of them. Deviations are taken around
the group minimum (function._group_centered), so identical rewards give exact zeros.
"""

import torch

from .function import _group_centered, _segment_sum, reinforce_pp_advantages, whiten_tokens
from .function import group_advantages as _segmented

_NEG_INF = float("-inf")

# Modes on top of function.MODES. Sequence-level: grpo_passk, opo, gpg ([B]); token-level ([B, T], need mask=):
# the rest. verl's adv_estimator names map onto gro's modes in VERL_ESTIMATORS.
MODES = ("grpo_passk", "opo", "gpg", "reinforce_pp_baseline", "gae", "optimal_token_baseline",
         "tir_optimal_token_baseline", "gdpo", "normalize_then_sum")
TOKEN_MODES = ("reinforce_pp", "reinforce_pp_baseline", "gae", "optimal_token_baseline", "tir_optimal_token_baseline",
               "gdpo")
VERL_ESTIMATORS = {"gae": "gae", "grpo": "grpo", "grpo_vectorized": "grpo", "reinforce_plus_plus": "reinforce_pp",
                   "reinforce_plus_plus_baseline": "reinforce_pp_baseline", "remax": "remax", "rloo": "rloo",
                   "rloo_vectorized": "rloo", "opo": "opo", "grpo_passk": "grpo_passk", "gpg": "gpg",
                   "optimal_token_baseline": "optimal_token_baseline",
                   "tir_optimal_token_baseline": "tir_optimal_token_baseline", "gdpo": "gdpo"}


def _segment_extreme(values, index, groups, reduce, fill):
    out = torch.full((groups,), fill, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, index, values, reduce=reduce)


def grpo_passk(rewards, index, groups: int, *, eps: float, scale_rewards: str = "group"):
    """Pass@k: only the best row of each group moves, by r_max - r_second (over the group std + eps when
    scale_rewards="group"); every other row gets 0. Ties give 0 (r_max = r_second), so which tied row is the
    best does not matter."""
    r = rewards.to(torch.float32)
    rows = torch.arange(r.shape[0], device=r.device)
    top = _segment_extreme(r, index, groups, "amax", _NEG_INF)
    first_best = _segment_extreme(torch.where(r == top[index], rows, r.shape[0]), index, groups, "amin", r.shape[0])
    is_best = rows == first_best[index]
    second = _segment_extreme(torch.where(is_best, _NEG_INF, r), index, groups, "amax", _NEG_INF)
    gap = torch.where(is_best, top[index] - second[index], 0.0)
    centered, n, scale = _group_centered(r, index, groups)
    if scale_rewards == "group":
        std = (_segment_sum(centered.square(), index, groups)[index] / (n - 1.0).clamp(min=1.0)).sqrt() * scale
        gap = gap / (std + eps)
    elif scale_rewards != "none":
        raise ValueError(f"mode='grpo_passk' takes scale_rewards 'group' or 'none', got {scale_rewards!r}")
    return torch.where((n > 1) & is_best, gap, 0.0)


def opo(rewards, index, groups: int, lengths):
    """OPO: r_i minus the length-weighted group mean sum_j |o_j| r_j / sum_j |o_j| (|o| = valid tokens). A group
    whose rows have no tokens at all falls back to the plain mean (its rows carry no loss anyway)."""
    r = rewards.to(torch.float32)
    centered, n, scale = _group_centered(r, index, groups)
    length = lengths.to(torch.float32)
    total = _segment_sum(length, index, groups)
    weighted = _segment_sum(length * centered, index, groups) / total.clamp(min=1.0)
    baseline = torch.where(total > 0, weighted, 0.0)[index]
    return torch.where(n > 1, (centered - baseline) * scale, 0.0)


def gpg(rewards, index, groups: int):
    """GPG: alpha (r_i - mean_g r) with alpha = B / (number of rows with a nonzero reward, at least 1)."""
    r = rewards.to(torch.float32)
    centered, n, scale = _group_centered(r, index, groups)
    alpha = r.shape[0] / (r != 0).sum().clamp(min=1).to(torch.float32)
    return torch.where(n > 1, alpha * centered * scale, 0.0)


def sequence_scores(rewards, mask, token_kl=None, kl_coef: float = 0.0):
    """verl's per-sequence score sum_t token_reward_t: the reward minus kl_coef * sum of k1 over valid tokens."""
    r = rewards.to(torch.float32)
    if token_kl is None or kl_coef == 0.0:
        return r
    return r - kl_coef * torch.where(mask, token_kl.to(torch.float32), 0.0).sum(1)


def reinforce_pp_baseline(rewards, mask, index, groups: int, *, token_kl=None, kl_coef: float = 0.0,
                          eps: float = 1e-6):
    """verl's reinforce_plus_plus_baseline: the KL-shaped score summed per sequence, minus its group mean
    (before, not after, the KL enters: unlike reinforce_pp, whose per-token return keeps the KL tail), the
    same value on every valid token, whitened over the valid tokens of the batch."""
    score = sequence_scores(rewards, mask, token_kl, kl_coef)
    if index is not None:
        centered, n, scale = _group_centered(score, index, groups)
        score = torch.where(n > 1, centered * scale, 0.0)
    return reinforce_pp_advantages(score, mask, eps=eps)


def token_rewards(rewards, mask, token_kl=None, kl_coef: float = 0.0):
    """Per-token rewards [B, T] as verl builds them: -kl_coef * k1 on valid tokens, plus the sequence reward on
    the last valid token (rows without valid tokens get none)."""
    m = mask.to(torch.bool)
    x = torch.zeros(m.shape, dtype=torch.float32, device=m.device)
    if token_kl is not None and kl_coef != 0.0:
        x = torch.where(m, -kl_coef * token_kl.to(torch.float32), 0.0)
    cols = torch.arange(m.shape[1], device=m.device)
    last = torch.where(m, cols, -1).amax(1, keepdim=True) if m.shape[1] else torch.full((m.shape[0], 1), -1)
    return x + torch.where(cols == last, rewards.to(torch.float32).unsqueeze(1), 0.0)


def discounted_returns(x, mask, gamma: float):
    """G_t = x_t + gamma G_{next valid}: the running return skips masked tokens unchanged (verl's REINFORCE++,
    so rewards reach past observation spans); 0 on masked tokens. A loop over T of [B] ops: the recursion
    does not vectorize without gamma^-t, which overflows for long sequences."""
    m = mask.to(torch.bool)
    out = torch.zeros_like(x)
    running = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for t in reversed(range(x.shape[1])):
        running = torch.where(m[:, t], x[:, t] + gamma * running, running)
        out[:, t] = torch.where(m[:, t], running, 0.0)
    return out


def reinforce_pp_discounted(rewards, mask, *, index=None, groups=0, token_kl=None, kl_coef: float = 0.0,
                            gamma: float = 1.0, eps: float = 1e-6):
    """reinforce_pp with a discount: the (group-centred, when groups are given) reward on the last valid token,
    -kl_coef k1 on every valid token, discounted returns, whitened over valid tokens. gamma = 1 is
    function.reinforce_pp_advantages."""
    if gamma == 1.0:
        return reinforce_pp_advantages(rewards, mask, index=index, groups=groups, token_kl=token_kl,
                                       kl_coef=kl_coef, eps=eps)
    r = rewards.to(torch.float32)
    if index is not None:
        centered, _, scale = _group_centered(r, index, groups)
        r = centered * scale
    m = mask.to(torch.bool)
    ret = discounted_returns(token_rewards(r, m, token_kl, kl_coef), m, gamma)
    return whiten_tokens(ret, m, eps)


def gae(rewards, mask, values, *, gamma: float, lam: float, token_kl=None, kl_coef: float = 0.0,
        eps: float = 1e-6):
    """GAE over valid tokens (verl compute_gae_advantage_return): delta_t = x_t + gamma V_next - V_t,
    A_t = delta_t + gamma lam A_next, where "next" is the next valid token (masked tokens are skipped, their
    value and TD error unused), then whitened over the valid tokens. x: token_rewards."""
    m = mask.to(torch.bool)
    x = token_rewards(rewards, m, token_kl, kl_coef)
    v = values.to(torch.float32)
    adv = torch.zeros_like(x)
    next_value = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    last = torch.zeros_like(next_value)
    for t in reversed(range(x.shape[1])):
        step = x[:, t] + gamma * next_value - v[:, t] + gamma * lam * last
        next_value = torch.where(m[:, t], v[:, t], next_value)
        last = torch.where(m[:, t], step, last)
        adv[:, t] = last
    return whiten_tokens(adv, m, eps)


def path_weights(old_logprobs, sum_pi_squared, mask, rollout_is_weights=None):
    """W_t = sum_{j <= t, valid} (1 - 2 pi_j + sum_v pi_v^2) rho_j^2: OTB's cumulative path-variance proxy."""
    w = 1.0 - 2.0 * old_logprobs.to(torch.float32).exp() + sum_pi_squared.to(torch.float32)
    if rollout_is_weights is not None:
        w = w * rollout_is_weights.to(torch.float32).square()
    return torch.where(mask, w, 0.0).cumsum(1)


def _otb(returns, weights, mask, index, groups: int, member, *, eps: float, handle_zero_tail: bool):
    """A_t = G_t - B_t with B_t = sum_g G_t W_t / (sum_g W_t + eps) per group and column. member: the rows that
    count in a group (a group of one member gets 0). handle_zero_tail: the single longest member of a group,
    longer than the second, gets no baseline from the second one's length on."""
    m = mask.to(torch.bool)
    cols = m.shape[1]
    g = index
    num = torch.zeros(groups, cols, dtype=torch.float32, device=m.device)
    den = torch.zeros_like(num)
    num.index_add_(0, g, torch.where(m, returns * weights, 0.0))
    den.index_add_(0, g, torch.where(m, weights, 0.0))
    baseline = (num / (den + eps))[g]
    n = _segment_sum(member.to(torch.float32), g, groups)[g]
    if handle_zero_tail:
        length = torch.where(member, m.sum(1), -1)
        longest = _segment_extreme(length, g, groups, "amax", -1)
        at_longest = _segment_sum((length == longest[g]).to(torch.int64), g, groups)
        second = _segment_extreme(torch.where(length == longest[g], -1, length), g, groups, "amax", -1)
        lone = member & (length == longest[g]) & (at_longest[g] == 1) & (second[g] >= 0)
        tail = torch.arange(cols, device=m.device).unsqueeze(0) >= second[g].unsqueeze(1)
        baseline = torch.where(lone.unsqueeze(1) & tail, 0.0, baseline)
    adv = torch.where(m, returns - baseline, 0.0)
    return torch.where((n > 1).unsqueeze(1) & member.unsqueeze(1), adv, 0.0)


def optimal_token_baseline(rewards, mask, index, groups: int, old_logprobs, sum_pi_squared, *,
                           rollout_is_weights=None, token_kl=None, kl_coef: float = 0.0, eps: float = 1e-8,
                           handle_zero_tail: bool = True, aligned: bool = False):
    """verl's optimal_token_baseline (aligned=False: rows compared column by column) or
    tir_optimal_token_baseline (aligned=True: the k-th valid token of each row with the k-th of the others,
    rows without valid tokens left out of their group). Returns G_t - B_t [B, T], not whitened."""
    m = mask.to(torch.bool)
    x = torch.where(m, token_rewards(rewards, m, token_kl, kl_coef), 0.0)
    returns = x.flip(1).cumsum(1).flip(1)  # undiscounted: a reverse cumsum (read on valid tokens only)
    weights = path_weights(old_logprobs, sum_pi_squared, m, rollout_is_weights)
    if not aligned:
        return _otb(returns, weights, m, index, groups, torch.ones_like(m[:, 0]), eps=eps,
                    handle_zero_tail=handle_zero_tail)
    lengths = m.sum(1)
    width = int(lengths.max()) if lengths.numel() else 0
    row, col = m.nonzero(as_tuple=True)  # once: the valid cells, row-major
    pos = (m.cumsum(1) - 1)[row, col]    # k: the k-th valid token of its row

    def packed(t):
        return torch.zeros(m.shape[0], width, dtype=t.dtype, device=m.device).index_put_((row, pos), t[row, col])

    packed_mask = torch.arange(width, device=m.device).unsqueeze(0) < lengths.unsqueeze(1)
    adv = _otb(packed(returns), packed(weights), packed_mask, index, groups, lengths > 0, eps=eps,
               handle_zero_tail=handle_zero_tail)
    out = torch.zeros(m.shape, dtype=torch.float32, device=m.device)
    out[row, col] = adv[row, pos]
    return out


def normalize_rows(adv, rows, eps: float):
    """(A - mean) / (std + eps) over the rows marked in rows [B] bool (std unbiased; TRL RLOO's
    normalize_advantages), 0 on the others and when fewer than two rows are marked."""
    return whiten_tokens(adv.to(torch.float32).unsqueeze(1), rows.to(torch.bool).unsqueeze(1), eps).squeeze(1)


def gdpo(rewards, mask, index, groups: int, *, weights=None, eps: float = 1e-6, scale_rewards: str = "group"):
    """GDPO: each reward column [B, K] gets its own grpo advantage (group std, or none), the columns are summed with
    weights [K] (default 1), and the sum, on every valid token, is whitened over the valid tokens."""
    r = rewards.to(torch.float32)
    w = torch.ones(r.shape[1], dtype=torch.float32, device=r.device) if weights is None else weights.to(torch.float32)
    total = torch.zeros(r.shape[0], dtype=torch.float32, device=r.device)
    for k in range(r.shape[1]):  # K reward components: a handful
        column = _segmented(r[:, k].contiguous(), index, groups, "grpo", eps=eps, scale_rewards=scale_rewards)
        total = total + w[k] * column
    return reinforce_pp_advantages(total, mask, eps=eps)


def normalize_then_sum(rewards, index, groups: int, *, weights=None, eps: float = 1e-4):
    """TRL GRPO's multi_objective_aggregation="normalize_then_sum": each reward column [B, K] is normalized within
    its group ((r - mean_g) / (std_g + eps)), the columns are summed with weights [K] (default 1), and the sum is
    whitened over the rows ((x - mean) / (std + eps), std unbiased). Row-level [B], unlike gdpo's token whitening."""
    r = rewards.to(torch.float32)
    w = torch.ones(r.shape[1], dtype=torch.float32, device=r.device) if weights is None else weights.to(torch.float32)
    total = torch.zeros(r.shape[0], dtype=torch.float32, device=r.device)
    for k in range(r.shape[1]):  # K reward functions: a handful
        total = total + w[k] * _segmented(r[:, k].contiguous(), index, groups, "grpo", eps=eps, scale_rewards="group")
    return normalize_rows(total, torch.ones(r.shape[0], dtype=torch.bool, device=r.device), eps)
