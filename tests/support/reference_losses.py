"""Independent fp64 reference for the loss layer, written plainly: materialized logits, Python loops
over groups and pairs, plain autograd for every gradient. Formulas from docs/math.md §2-§5 and TRL."""

import torch
import torch.nn.functional as F


def token_logprobs(hidden, weight, bias, targets, *, temperature=1.0, ignore_index=-100):
    """[B, T] logprobs and entropy from [B, T, H] hidden via full [B, T, V] logits (fp64)."""
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    logp = torch.log_softmax(logits / temperature, dim=-1)
    valid = targets != ignore_index
    lp = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    return torch.where(valid, lp, 0.0), torch.where(valid, ent, 0.0), logp


def exact_kl(logp, ref_logp):
    return (logp.exp() * (logp - ref_logp)).sum(-1)


def advantages(mode, rewards, groups, *, eps=1e-6, baseline=None, scale="group"):
    """Per-row advantages with a Python loop over the groups (list of row lists)."""
    r = rewards.double()
    out = torch.zeros_like(r)
    if mode == "none":
        return r.clone()
    if mode == "remax":
        return r - baseline.double()
    for rows in groups:
        vals = r[rows]
        n = len(rows)
        for i in rows:
            if n == 1:
                continue
            others = (vals.sum() - r[i]) / (n - 1)
            if mode == "rloo":
                out[i] = r[i] - others
            elif mode == "dr_grpo":
                out[i] = r[i] - vals.mean()
            elif mode == "grpo":
                std = {"group": vals.std(), "batch": r.std()}.get(scale)
                out[i] = r[i] - vals.mean() if std is None else (r[i] - vals.mean()) / (std + eps)
    return out


def kl_estimate(lp, ref, estimator):
    d = lp - ref
    k3 = torch.exp(ref - lp) - (ref - lp) - 1
    if estimator == "k1":
        return d
    if estimator == "k2":
        return d ** 2 / 2
    if estimator == "k3":
        return k3
    if estimator == "k3_st":
        return d ** 2 / 2 + (k3 - d ** 2 / 2).detach()
    raise ValueError(estimator)


def policy_per_token(lp, adv, mask, *, old=None, ref=None, rollout=None, ent=None, surrogate="clip", eps_low=0.2,
                     eps_high=0.2, dual_clip=None, is_level="token", kl_coef=0.0, kl_estimator="k3", ent_coef=0.0,
                     tis_cap=None):
    """[B, T] per-token loss x_t (before aggregation)."""
    m = mask.double()
    old_ = lp.detach() if old is None else old
    if is_level == "token":
        log_ratio = lp - old_
    else:
        seq = ((lp - old_) * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
        log_ratio = seq.expand_as(lp)
        if is_level == "sequence_token":
            log_ratio = lp - lp.detach() + seq.detach()
    rho = torch.exp(torch.clamp(log_ratio, -20, 20))
    a = adv if adv.dim() == 2 else adv.unsqueeze(1).expand_as(lp)
    if surrogate == "clip":
        pg = -torch.min(rho * a, torch.clamp(rho, 1 - eps_low, 1 + eps_high) * a)
        if dual_clip is not None:
            pg = torch.where(a < 0, torch.min(pg, -dual_clip * a), pg)
    elif surrogate == "cispo":
        pg = -torch.clamp(rho, max=eps_high).detach() * a * lp
    else:
        pg = -a * lp
    if tis_cap is not None:
        pg = pg * torch.clamp(torch.exp(old_ - rollout), max=tis_cap).detach()
    x = pg
    if kl_coef:
        x = x + kl_coef * kl_estimate(lp, ref, kl_estimator)
    if ent_coef:
        x = x - ent_coef * ent
    return x, rho


def aggregate(x, mask, mode, *, global_count=None, max_len=None, num_seq=None):
    m = mask.double()
    rows = x.shape[0] if num_seq is None else num_seq
    if mode == "token_mean":
        denom = m.sum().clamp(min=1) if global_count is None else global_count
        return (x * m).sum() / denom
    if mode == "seq_mean_token_mean":
        return ((x * m).sum(1) / m.sum(1).clamp(min=1)).sum() / rows
    if mode == "seq_mean_token_sum":
        return (x * m).sum(1).sum() / rows
    if mode == "seq_mean_token_sum_norm":
        return (x * m).sum() / (rows * (x.shape[1] if max_len is None else max_len))
    raise ValueError(mode)


def clip_metrics(rho, adv, mask, eps_low, eps_high, surrogate="clip"):
    m = mask.bool()
    a = adv if adv.dim() == 2 else adv.unsqueeze(1).expand_as(rho)
    if surrogate == "cispo":
        low, high = torch.zeros_like(m), (rho > eps_high) & (a > 0)
    elif surrogate == "reinforce":  # no ratio, nothing clipped
        low, high = torch.zeros_like(m), torch.zeros_like(m)
    else:
        low, high = (rho < 1 - eps_low) & (a < 0), (rho > 1 + eps_high) & (a > 0)
    n = m.sum().clamp(min=1)
    return {"clip_ratio_low": (low & m).sum() / n, "clip_ratio_high": (high & m).sum() / n,
            "ratio": (rho * m).sum() / n}


def preference(loss, lp, mask, ref, *, pairs=None, desirable=None, beta=0.1, label_smoothing=0.0, simpo_gamma=0.5,
               cpl_lambda=0.5, cpl_discount=1.0, kto_z0=None, dw=1.0, uw=1.0):
    """Mean loss over pairs [(chosen_row, rejected_row), ...] or, for KTO, over the rows."""
    m = mask.double()
    B = lp.shape[0]

    def score(i):
        if loss in ("dpo", "ipo", "kto"):
            return ((lp[i] - ref[i]) * m[i]).sum()
        if loss == "simpo":
            return (lp[i] * m[i]).sum() / m[i].sum().clamp(min=1)
        t, s = 0, 0.0
        for j in range(lp.shape[1]):
            if m[i, j] > 0:
                s = s + cpl_discount ** t * lp[i, j]
                t += 1
        return beta * s

    if loss == "kto":
        g = [score(i) for i in range(B)]
        z0 = kto_z0 if kto_z0 is not None else torch.clamp(torch.stack(g).detach().mean(), min=0)
        terms = [dw * (1 - torch.sigmoid(beta * (g[i] - z0))) if desirable[i] else
                 uw * (1 - torch.sigmoid(beta * (z0 - g[i]))) for i in range(B)]
        return torch.stack(terms).mean()
    terms = []
    for w, l_ in pairs:
        sw, sl = score(w), score(l_)
        if loss == "dpo":
            z = beta * (sw - sl)
            terms.append(-(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z))
        elif loss == "ipo":
            terms.append((sw - sl - 1 / (2 * beta)) ** 2)
        elif loss == "simpo":
            z = beta * (sw - sl) - simpo_gamma
            terms.append(-(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z))
        else:
            terms.append(-F.logsigmoid(sw - cpl_lambda * sl))
    return torch.stack(terms).mean()
