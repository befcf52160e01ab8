"""Preference losses of a [B, T] batch: sequence scores, pairing by pair id, reduction, metrics.

Pairing without a host sync: rows are stably sorted by pair id, then offline rows moved first, so
(after validation that every pair id appears exactly twice with one chosen row) sorted positions
(2k, 2k+1) hold pair k. Pairs with an online row are masked out rather than sliced away, so no
data-dependent shape appears and the mixed online/offline batch stays one graph.
"""

from dataclasses import dataclass
from typing import Optional

import torch

from . import cpo_family, dpo_family, naive

UNPAIRED = ("kto", "apo_zero_unpaired")  # one row at a time (TRL's KTOTrainer), desirable= instead of pairs
LOSSES = ("dpo", "ipo", "simpo", "kto", "cpl") + tuple(
    n for n in dpo_family.DPO_LOSSES + cpo_family.CPO_LOSSES + UNPAIRED if n not in ("dpo", "ipo", "simpo", "kto"))
NEEDS_REFERENCE = tuple(n for n in dpo_family.DPO_LOSSES if n != "sft") + UNPAIRED


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
    # TRL's DPOConfig / CPOConfig fields (docs/math.md §4): loss is then one name or a tuple of DPO loss types
    loss_weights: Optional[tuple] = None
    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 0.5
    ld_alpha: Optional[float] = None
    use_weighting: bool = False
    discopop_tau: float = 0.05
    rpo_alpha: Optional[float] = None
    cpo_alpha: float = 0.0
    alpha: float = 0.0


def loss_types(cfg) -> tuple:
    """The loss names of a config, as a tuple (one name, or TRL's list of DPO loss types)."""
    return (cfg.loss,) if isinstance(cfg.loss, str) else tuple(cfg.loss)


def is_unpaired(cfg) -> bool:
    return loss_types(cfg)[0] in UNPAIRED


def needs_reference(cfg) -> bool:
    return any(n in NEEDS_REFERENCE for n in loss_types(cfg))


def _dpo_types_and_weights(cfg):
    """TRL's loss_type list with loss_weights (default 1 each); rpo_alpha a adds ("sft", a), as RPO."""
    types = loss_types(cfg)
    weights = tuple(float(w) for w in cfg.loss_weights) if cfg.loss_weights is not None else (1.0,) * len(types)
    if cfg.rpo_alpha is not None:
        types, weights = types + ("sft",), weights + (float(cfg.rpo_alpha),)
    return types, weights


def cpl_scores(logprobs, mask, cfg: PreferenceConfig):
    """CPL S_i = beta * sum_t gamma^t m l_t, t counted over the valid tokens (docs/math.md §4)."""
    m = mask.to(torch.float32)
    l = torch.where(mask, logprobs.float(), 0.0)
    position = (m.cumsum(1) - 1.0).clamp(min=0.0)
    return cfg.beta * (l * torch.pow(cfg.cpl_discount, position)).sum(1)


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
                    desirable=None, kto_z0=None, kl_logps=None, ref_kl_logps=None, log_sum_sq_probs=None):
    """Mean preference loss over the pairs (or, for KTO, the rows) made of offline rows, and metrics.

    A fully masked response cannot be compared: its pair (or KTO row) is left out, so it contributes
    zero loss and zero gradient, and an all-masked batch gives loss 0.
    """
    nonempty = mask.any(1)
    if is_unpaired(cfg):
        return _unpaired_loss(logprobs, mask, ref_logprobs, offline & nonempty, cfg, desirable, kto_z0, kl_logps,
                              ref_kl_logps)
    win, lose, valid = pair_up(pair_ids, chosen, offline)
    valid = valid & nonempty[win] & nonempty[lose]
    name = loss_types(cfg)[0]
    if name in cpo_family.CPO_LOSSES:
        loss, reward, metrics = cpo_family.pair_losses(logprobs, mask, win, lose, valid, cfg, name)
    elif name == "cpl":
        reward = cpl_scores(logprobs, mask, cfg)
        loss = _masked_mean(naive.cpl_loss(reward[win], reward[lose], cfg.cpl_lambda), valid)
        reward, metrics = reward.detach(), {}
    else:
        types, weights = _dpo_types_and_weights(cfg)
        loss, reward, metrics = dpo_family.pair_losses(logprobs, ref_logprobs, mask, win, lose, valid, cfg, types,
                                                       weights, log_sum_sq_probs)
    r_w, r_l = reward[win], reward[lose]
    metrics = {"rewards_chosen": _masked_mean(r_w, valid), "rewards_rejected": _masked_mean(r_l, valid),
               "reward_margin": _masked_mean(r_w - r_l, valid),
               "reward_accuracy": _masked_mean((r_w > r_l).float(), valid), **metrics}
    return loss, metrics


def _unpaired_loss(logprobs, mask, ref_logprobs, rows, cfg, desirable, kto_z0, kl_logps, ref_kl_logps):
    """KTO (against the reference point z0) and TRL's apo_zero_unpaired (no z0), per row. z0: kto_z0 when given;
    TRL's way from kl_logps / ref_kl_logps (sequence logprobs of mismatched prompt-completion pairs): the
    detached mean of their log-ratio clamped at 0; otherwise the same statistic of the batch's own rows."""
    l = torch.where(mask, logprobs.float(), 0.0)
    g = (l - torch.where(mask, ref_logprobs.float(), 0.0)).sum(1)
    good, bad = rows & desirable, rows & ~desirable
    metrics = {}
    if cfg.loss == "kto":
        if kto_z0 is None and kl_logps is not None:
            kto_z0 = (kl_logps.float() - ref_kl_logps.float()).mean().clamp(min=0.0)
        elif kto_z0 is None:
            kto_z0 = _masked_mean(g.detach(), rows).clamp(min=0.0)
        z0 = torch.as_tensor(kto_z0, dtype=torch.float32, device=g.device).detach()
        losses = naive.kto_loss(g, desirable, z0, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)
        metrics["kto_z0"] = z0
    else:
        losses = naive.apo_zero_unpaired_loss(g, desirable, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)
    reward = cfg.beta * g.detach()
    metrics.update(rewards_chosen=_masked_mean(reward, good), rewards_rejected=_masked_mean(reward, bad))
    return _masked_mean(losses, rows), metrics
