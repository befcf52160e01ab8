"""Plain-torch references of the peers' policy losses, written here from their formulas (autograd gives the
gradients). TRL 1.16.0: trl/trainer/grpo_trainer.py GRPOTrainer._compute_loss, get_high_entropy_mask,
get_off_policy_mask, get_gamma_weights, and the vLLM IS ratio of _generate_and_score_completions.
verl 0.9.1: verl/trainer/ppo/core_algos.py agg_loss, compute_policy_loss_{vanilla,sapo,gpg,cispo,dppo_tv,
dppo_kl,dro}, kl_penalty / kl_penalty_forward. All tensors [B, T]; mask float 0/1."""

import math

import torch


# ---- TRL ----

def trl_vllm_is_ratio(old, rollout, mask, mode, clip_min, clip_max):
    diff = (old - rollout) * mask
    if mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True)
    w = torch.exp(diff)
    if mode.endswith("truncate"):
        return torch.clamp(w, min=clip_min, max=clip_max)
    lo = clip_min if clip_min is not None else -math.inf
    hi = clip_max if clip_max is not None else math.inf
    return w.masked_fill((w < lo) | (w > hi), 0.0)


def trl_high_entropy_mask(entropies, mask, threshold):
    local = entropies[mask.bool()].float()
    if local.numel() == 0:
        return torch.zeros_like(entropies, dtype=torch.bool)
    t = torch.quantile(local, threshold)
    return ((entropies * mask.float()) >= t) & mask.bool()


def trl_gamma_weights(adv, log_ratio, mask, is_ratio, k_pos=2.0, lam_pos=3.0, k_neg=3.0, lam_neg=2.0):
    lower = math.log(1e-8)
    seq = torch.sum(torch.clamp(log_ratio, -20.0, 20.0) * mask, dim=-1, keepdim=True)
    if is_ratio is not None:
        seq = seq + torch.sum(torch.clamp(torch.log(is_ratio), lower, 20.0), dim=-1, keepdim=True)
    log_w = torch.clamp(seq, lower, 20.0)
    nonneg = adv >= 0
    k = torch.where(nonneg, k_pos, k_neg)
    lam = torch.where(nonneg, lam_pos, lam_neg).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).detach()


def trl_grpo_loss(l, old, adv, mask, *, loss_type="grpo", eps_low=0.2, eps_high=0.2, delta=None, beta=0.0, ref=None,
                  bias_correction_kl=True, sapo_pos=1.0, sapo_neg=1.05, is_ratio=None, entropy=None,
                  top_entropy_quantile=1.0, off_policy_threshold=None, sampling=None, entropy_coef=0.0,
                  max_completion_length=None, num_items=None, importance_sampling_level="token"):
    """GRPOTrainer._compute_loss, one process, no accumulation."""
    adv = adv.unsqueeze(1) if adv.dim() == 1 else adv
    entropy_mask = None
    if top_entropy_quantile < 1.0:
        entropy_mask = trl_high_entropy_mask(entropy, mask, 1 - top_entropy_quantile)
    if off_policy_threshold is not None:
        s = old if sampling is None else sampling
        kl = (s - l.detach()) * mask
        avg = kl.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1.0)
        opm = ((adv >= 0) | (avg <= off_policy_threshold)).to(mask.dtype)
    log_ratio = l - old
    if importance_sampling_level == "sequence":
        coef_1 = torch.exp(((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1))
    else:
        coef_1 = torch.exp(log_ratio)
    if beta != 0.0:
        per_token_kl = torch.exp(ref - l) - (ref - l) - 1
        if bias_correction_kl:
            per_token_kl = per_token_kl * coef_1
    if loss_type == "cispo":
        per_token_loss = -torch.clamp(coef_1, max=eps_high).detach() * adv * l
    elif loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo"):
        coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
        if delta is not None:
            coef_1 = torch.clamp(coef_1, max=delta)
        per_token_loss = -torch.min(coef_1 * adv, coef_2 * adv)
    elif loss_type == "sapo":
        temps = torch.where(adv > 0, sapo_pos, sapo_neg)
        per_token_loss = -(torch.sigmoid(temps * (coef_1 - 1)) * 4 / temps) * adv
    elif loss_type == "vespo":
        phi = trl_gamma_weights(adv, log_ratio, mask, is_ratio)
        per_token_loss = -phi * adv * l
    if off_policy_threshold is not None:
        per_token_loss = per_token_loss * opm
    if entropy_mask is not None:
        per_token_loss = per_token_loss * entropy_mask
    if is_ratio is not None and loss_type != "vespo":
        per_token_loss = per_token_loss * is_ratio
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * per_token_kl
    if loss_type in ("grpo", "sapo"):
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_completion_length)
    elif loss_type in ("cispo", "dapo", "vespo"):
        loss = (per_token_loss * mask).sum() / (mask.sum() if num_items is None else num_items).clamp(min=1.0)
    elif loss_type == "luspo":
        loss = (per_token_loss * mask).sum(-1).mean()
    if entropy_coef != 0.0:
        eff = mask if entropy_mask is None else mask * entropy_mask
        loss = loss - entropy_coef * (entropy * eff).sum() / eff.sum().clamp(min=1.0)
    return loss


# ---- verl ----

def verl_agg_loss(loss_mat, loss_mask, mode, dp_size=1, batch_num_tokens=None, global_batch_size=None):
    masked_sum = lambda x, m: (x * m).sum()  # noqa: E731
    if mode == "token-mean":
        n = loss_mask.sum() if batch_num_tokens is None else batch_num_tokens
        return masked_sum(loss_mat, loss_mask) / n * dp_size
    if mode == "token-sum":
        return masked_sum(loss_mat, loss_mask) * dp_size
    if mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm"):
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1)
        seq_mask = (torch.sum(loss_mask, dim=-1) > 0).float()
        n = seq_mask.sum() if global_batch_size is None else global_batch_size
        loss = masked_sum(seq_losses, seq_mask) / n * dp_size
        if mode == "seq-mean-token-sum-norm":
            loss = loss / loss_mask.shape[-1]
        return loss
    if mode == "seq-mean-token-mean":
        n = torch.sum(loss_mask, dim=-1)
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1) / (n + 1e-8)
        seq_mask = (n > 0).float()
        count = seq_mask.sum() if global_batch_size is None else global_batch_size
        return masked_sum(seq_losses, seq_mask) / count * dp_size
    raise ValueError(mode)


def verl_pg_losses(old, l, adv, mode, *, low=0.2, high=0.2, clip_ratio_c=None, tau_pos=1.0, tau_neg=1.05,
                   dro_beta=None):
    """The per-token pg_losses matrix of compute_policy_loss_<mode> (before agg_loss)."""
    nkl = torch.clamp(l - old, min=-20.0, max=20.0)
    ratio = torch.exp(nkl)
    if mode == "vanilla":
        c = 3.0 if clip_ratio_c is None else clip_ratio_c
        p1 = -adv * ratio
        p2 = -adv * torch.clamp(ratio, 1 - low, 1 + high)
        cp1 = torch.maximum(p1, p2)
        cp2 = torch.min(-adv * c, cp1)
        return torch.where(adv < 0, cp2, cp1)
    if mode == "sapo":
        taus = torch.where(adv > 0, tau_pos, tau_neg)
        return -(torch.sigmoid(taus * (ratio - 1.0)) * (4.0 / taus)) * adv
    if mode == "gpg":
        return -l * adv
    if mode == "cispo":
        return -torch.clamp(ratio, 1 - low, 1 + high).detach() * adv * l
    if mode in ("dppo_tv", "dppo_kl"):
        c = 20.0 if clip_ratio_c is None else clip_ratio_c
        truncated = torch.clamp(ratio, max=c).detach()
        prob, old_prob = torch.exp(l), torch.exp(old)
        if mode == "dppo_tv":
            pos, neg = (prob - old_prob) <= high, (prob - old_prob) >= -low
        else:
            bkl = old_prob * (old - l) + (1 - old_prob) * torch.log((1.0 - old_prob + 1e-8) / (1.0 - prob + 1e-8))
            pos, neg = (bkl <= high) | (prob <= old_prob), (bkl <= low) | (prob >= old_prob)
        valid = torch.where(adv > 0, pos, neg).detach().float()
        return -adv * truncated * l * valid
    if mode == "dro":
        r = l - old
        return -(l * adv - 0.5 * dro_beta * r.square())
    raise ValueError(mode)


def verl_kl_penalty(logprob, ref_logprob, kl_penalty):
    base = kl_penalty[:-1] if kl_penalty.endswith("+") else kl_penalty
    if base in ("kl", "k1"):
        fwd = logprob - ref_logprob
    elif base == "abs":
        fwd = (logprob - ref_logprob).abs()
    elif base in ("mse", "k2"):
        fwd = 0.5 * (logprob - ref_logprob).square()
    elif base in ("low_var_kl", "k3"):
        kl = torch.clamp(ref_logprob - logprob, min=-20, max=20)
        fwd = torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)
    if not kl_penalty.endswith("+") or kl_penalty in ("mse", "k2"):
        return fwd
    back = 0.5 * (logprob - ref_logprob).square()
    return back - back.detach() + fwd.detach()


def verl_geo_mean(old, l, adv, mask, low=0.2, high=0.2):
    """compute_policy_loss_geo_mean (its loss ignores loss_agg_mode: a mean over the B rows)."""
    nkl = l - old
    sgn = torch.sign(adv)
    clamp = torch.clamp(nkl, -low, high)
    nmin = sgn * torch.min(sgn * nkl, sgn * clamp)
    n = mask.sum(-1)
    ratio = torch.exp((nmin * mask).sum(-1) / (n + 1e-8))
    a = (adv * mask).sum(-1) / (n + 1e-8)
    return torch.mean(-a * ratio)


def _masked_mean(x, m):
    return (x * m).sum() / m.sum()


def verl_clip_cov(old, l, adv, mask, low=0.2, high=0.2, clip_cov_ratio=2e-4, lb=1.0, ub=5.0):
    """compute_policy_loss_clip_cov's pg_losses matrix (torch.randperm on the global RNG)."""
    ratio = torch.exp(l - old)
    p1 = -adv * ratio
    corr = torch.ones_like(adv)
    p2 = -adv * torch.clamp(ratio, 1 - low, 1 + high)
    clip_by_origin = (p2 > p1) & (mask > 0)
    cov_all = (adv - _masked_mean(adv, mask)) * (l - _masked_mean(l.detach(), mask))
    cov_all = cov_all.detach().clone()
    cov_all[mask == 0] = -torch.inf
    cov_all[clip_by_origin] = -torch.inf
    clip_num = max(int(clip_cov_ratio * mask.sum().item()), 1)
    idx = torch.nonzero((cov_all < ub) & (cov_all > lb) & (mask > 0))
    if len(idx) > 0:
        perm = torch.randperm(len(idx))
        idx = idx[perm[: min(clip_num, len(idx))]]
    else:
        idx = torch.empty((0, 2), dtype=torch.long)
    corr[idx[:, 0], idx[:, 1]] = 0
    return torch.maximum(p1, p2) * corr


def verl_kl_cov(old, l, adv, mask, kl_cov_ratio=2e-4, ppo_kl_coef=0.1):
    """compute_policy_loss_kl_cov's pg_losses matrix."""
    nkl = l - old
    ratio = torch.exp(nkl)
    p1 = -adv * ratio
    pkl = -adv * ratio + ppo_kl_coef * nkl.abs()
    pg = p1.clone()
    valid = mask > 0
    vidx = torch.nonzero(valid.reshape(-1), as_tuple=True)[0]
    va = adv[valid].detach().reshape(-1)
    vl = l[valid].detach().reshape(-1)
    if len(va) != 0:
        cov = (va - va.mean()) * (vl - vl.mean())
        k = max(1, int(len(cov) * kl_cov_ratio))
        big = vidx[torch.topk(cov, k, largest=True).indices]
        r, c = big // adv.shape[1], big % adv.shape[1]
        pg[r, c] = pkl[r, c]
    return pg
