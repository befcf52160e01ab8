"""TRL DPOTrainer's loss types on the pairs of a batch (docs/math.md §4, "TRL's DPO loss types"): the
per-row log-ratio (optionally LD-DPO weighted), its f-divergence score, each loss type of the list with its
weight, WPO pair weights, and the masked mean over valid pairs. The per-pair formulas are in naive.py."""

import torch

from . import naive

DPO_LOSSES = ("dpo", "ipo", "ipo_norm", "hinge", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
# Built on the chosen-minus-rejected score difference: the only ones where f-DPO's log Z(x) term cancels.
F_DIVERGENCE_LOSSES = ("dpo", "ipo", "ipo_norm", "hinge", "exo_pair", "robust", "discopop", "sft", "sigmoid_norm")
USES_LABEL_SMOOTHING = ("dpo", "robust", "exo_pair", "aot", "aot_unpaired")
SORTED = ("aot", "aot_unpaired")  # sort across the batch's pairs: WPO pair weights would not line up


def ld_token_weights(mask, partner_length, ld_alpha: float):
    """LD-DPO: weight 1 on a response's first min(n, n_partner) valid tokens, ld_alpha on the rest."""
    position = mask.to(torch.float32).cumsum(1)  # 1-based among the valid tokens: padding does not count
    shared = torch.minimum(mask.sum(1).to(torch.float32), partner_length)
    weight = torch.where(position <= shared.unsqueeze(1), 1.0, ld_alpha)
    return torch.where(mask, weight, 0.0)


def _partner(values, win, lose):
    """Each paired row's partner's value (unpaired rows keep their own)."""
    return values.index_copy(0, win, values[lose]).index_copy(0, lose, values[win])


def _sorted_gap(x_w, x_l, valid):
    """aot: sort(x_w) - sort(x_l) over the valid pairs only; (gap, mask of its valid positions)."""
    big = torch.finfo(x_w.dtype).max
    gap = torch.sort(torch.where(valid, x_w, big)).values - torch.sort(torch.where(valid, x_l, big)).values
    keep = torch.arange(valid.shape[0], device=valid.device) < valid.sum()
    return torch.where(keep, gap, 0.0), keep


def pair_losses(lp, ref, mask, win, lose, valid, cfg, types, weights, log_sum_sq_probs=None):
    """(loss, per-row implicit reward beta * g detached, extra metrics) for the DPO-family loss `types`
    with `weights`. lp, ref: [B, T] (ref None only for sft alone); valid: [B//2] pairs that count."""
    m = mask.to(torch.float32)
    l = torch.where(mask, lp.float(), 0.0)
    r = torch.zeros_like(l) if ref is None else torch.where(mask, ref.float(), 0.0)
    length = m.sum(1)
    w_tok = m if cfg.ld_alpha is None else ld_token_weights(mask, _partner(length, win, lose), cfg.ld_alpha)
    L, R = (l * w_tok).sum(1), (r * w_tok).sum(1)
    g = L - R
    s = naive.f_divergence_score(g, cfg.f_divergence_type, cfg.f_alpha_divergence_coef)
    n = length.clamp(min=1.0)
    g_w, g_l, s_w, s_l, n_w, n_l = g[win], g[lose], s[win], s[lose], n[win], n[lose]
    delta, beta, eps = s_w - s_l, cfg.beta, cfg.label_smoothing
    pair_weight = torch.ones_like(g_w)
    if cfg.use_weighting:
        with torch.no_grad():  # WPO: exp of the mean per-token log(p / sqrt(sum_v p_v^2)), a constant per row
            aligned = (torch.where(mask, lp.float() - log_sum_sq_probs.float(), 0.0)).sum(1) / n
            pair_weight = torch.exp(aligned)[win] * torch.exp(aligned)[lose]
    count = valid.sum().clamp(min=1).to(torch.float32)
    total, metrics = torch.zeros((), dtype=torch.float32, device=lp.device), {}
    for name, weight in zip(types, weights):
        keep = valid
        if name == "dpo":
            per_pair = naive.sigmoid_loss(beta * delta, eps)
        elif name == "ipo":
            per_pair = naive.ipo_loss(s_w, s_l, beta)
        elif name == "ipo_norm":
            per_pair = naive.ipo_norm_loss(s_w, s_l, n_w, n_l, beta)
        elif name == "hinge":
            per_pair = naive.hinge_loss(delta, beta)
        elif name == "exo_pair":
            per_pair = naive.exo_pair_loss(delta, beta, eps)
        elif name == "nca_pair":
            per_pair = naive.nca_pair_loss(g_w, g_l, beta)
        elif name == "robust":
            per_pair = naive.robust_loss(delta, beta, eps)
        elif name == "bco_pair":
            per_pair = naive.bco_pair_loss(g_w, g_l, beta)
        elif name == "sppo_hard":
            per_pair = naive.sppo_hard_loss(g_w, g_l, beta)
        elif name in SORTED:
            x_w, x_l = (L[win] - L[lose], R[win] - R[lose]) if name == "aot" else (g_w, g_l)
            gap, keep = _sorted_gap(x_w, x_l, valid)
            per_pair = naive.sigmoid_loss(beta * gap, eps)
        elif name == "apo_zero":
            per_pair = naive.apo_zero_loss(g_w, g_l, beta)
        elif name == "apo_down":
            per_pair = naive.apo_down_loss(g_w, g_l, beta)
        elif name == "discopop":
            per_pair = naive.discopop_loss(delta, beta, cfg.discopop_tau)
        elif name == "sigmoid_norm":
            per_pair = naive.sigmoid_norm_loss(s_w, s_l, n_w, n_l, beta)
        elif name == "sft":
            nll = naive.chosen_nll(l, m, win, valid)
            metrics["nll_loss"] = nll.detach()
            per_pair = nll.expand_as(g_w)
        else:
            raise ValueError(f"not a DPO loss type: {name!r}")
        if name not in SORTED:
            per_pair = per_pair * pair_weight
        total = total + weight * torch.where(keep, per_pair, 0.0).sum() / count
    if cfg.use_weighting:
        metrics["wpo_weight"] = (torch.where(valid, pair_weight, 0.0).sum() / count).detach()
    return total, beta * g.detach(), metrics
