"""Preference losses of a [B, T] batch: sequence scores, pairing by pair id, reduction, metrics.

Pairing without a host sync: rows are stably sorted by pair id, then offline rows moved first, so
(after validation that every pair id appears exactly twice with one chosen row) sorted positions
(2k, 2k+1) hold pair k. Pairs with an online row are masked out rather than sliced away, so no
data-dependent shape appears and the mixed online/offline batch stays one graph.
"""

from dataclasses import dataclass

import torch

from . import naive

LOSSES = ("dpo", "ipo", "simpo", "kto", "cpl")
NEEDS_REFERENCE = ("dpo", "ipo", "kto")


@dataclass(frozen=True)
class PreferenceConfig:
    loss: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    cpl_lambda: float = 0.5
    cpl_discount: float = 1.0
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0


def sequence_scores(logprobs, mask, ref_logprobs, cfg: PreferenceConfig):
    """Implicit reward of each row (docs/math.md §4), differentiable in logprobs:
    dpo/ipo/kto g_i = sum_t m (l - l_ref) (times beta where it is the margin's scale, in the loss);
    simpo L_i / |y_i|; cpl S_i = beta * sum_t gamma^t m l_t, t counted over the valid tokens."""
    m = mask.to(torch.float32)
    l = torch.where(mask, logprobs.float(), 0.0)
    if cfg.loss in NEEDS_REFERENCE:
        return (l - torch.where(mask, ref_logprobs.float(), 0.0)).sum(1)
    if cfg.loss == "simpo":
        return l.sum(1) / m.sum(1).clamp(min=1.0)
    if cfg.loss == "cpl":
        position = (m.cumsum(1) - 1.0).clamp(min=0.0)
        return cfg.beta * (l * torch.pow(cfg.cpl_discount, position)).sum(1)
    raise ValueError(f"preference loss must be one of {LOSSES}, got {cfg.loss!r}")


def pair_up(pair_ids, chosen, offline):
    """(winner rows [B//2], loser rows [B//2], valid pair flags [B//2]) from per-row pair ids."""
    order = torch.sort(pair_ids, stable=True).indices
    order = order[torch.sort((~offline[order]).to(torch.int8), stable=True).indices]
    half = pair_ids.shape[0] // 2
    a, b = order[0:2 * half:2], order[1:2 * half:2]
    valid = offline[a] & offline[b]
    a_wins = chosen[a]
    return torch.where(a_wins, a, b), torch.where(a_wins, b, a), valid


def _masked_mean(values, valid):
    w = valid.to(values.dtype)
    return (values * w).sum() / w.sum().clamp(min=1.0)


def preference_loss(logprobs, mask, ref_logprobs, offline, cfg: PreferenceConfig, *, pair_ids=None, chosen=None,
                    desirable=None, kto_z0=None):
    """Mean preference loss over the pairs (or, for KTO, the rows) made of offline rows, and metrics.

    A fully masked response cannot be compared: its pair (or KTO row) is left out, so it contributes
    zero loss and zero gradient, and an all-masked batch gives loss 0.
    """
    score = sequence_scores(logprobs, mask, ref_logprobs, cfg)
    nonempty = mask.any(1)
    reward = score.detach() * (cfg.beta if cfg.loss in ("dpo", "ipo", "kto", "simpo") else 1.0)
    if cfg.loss == "kto":
        offline = offline & nonempty
        if kto_z0 is None:
            kto_z0 = _masked_mean(score.detach(), offline).clamp(min=0.0)
        z0 = torch.as_tensor(kto_z0, dtype=torch.float32, device=score.device).detach()
        losses = naive.kto_loss(score, desirable, z0, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)
        good, bad = offline & desirable, offline & ~desirable
        metrics = {"kto_z0": z0, "rewards_chosen": _masked_mean(reward, good),
                   "rewards_rejected": _masked_mean(reward, bad)}
        return _masked_mean(losses, offline), metrics
    win, lose, valid = pair_up(pair_ids, chosen, offline)
    valid = valid & nonempty[win] & nonempty[lose]
    s_w, s_l = score[win], score[lose]
    if cfg.loss == "dpo":
        losses = naive.dpo_loss(s_w, s_l, cfg.beta, cfg.label_smoothing)
    elif cfg.loss == "ipo":
        losses = naive.ipo_loss(s_w, s_l, cfg.beta)
    elif cfg.loss == "simpo":
        losses = naive.simpo_loss(s_w, s_l, cfg.beta, cfg.simpo_gamma, cfg.label_smoothing)
    else:
        losses = naive.cpl_loss(s_w, s_l, cfg.cpl_lambda)
    r_w, r_l = reward[win], reward[lose]
    metrics = {"rewards_chosen": _masked_mean(r_w, valid), "rewards_rejected": _masked_mean(r_l, valid),
               "reward_margin": _masked_mean(r_w - r_l, valid),
               "reward_accuracy": _masked_mean((r_w > r_l).float(), valid)}
    return _masked_mean(losses, valid), metrics
