"""verl's policy losses whose per-token term reads the whole batch or sequence (docs/math.md §3, "Coupled
surrogates"): geo_mean (GMPO), clip_cov and kl_cov (covariance-selected tokens). Plain autograd ops on
[B, T]; they replace pg_t, the KL and entropy terms stay with the token function (function.policy_loss).
They run on the plain path only (GROObjective.token_separable is False for them)."""

from dataclasses import dataclass
from typing import Optional

import torch

COUPLED_SURROGATES = ("geo_mean", "clip_cov", "kl_cov")


@dataclass(frozen=True)
class CoupledConfig:
    """One coupled surrogate and its options (verl ActorConfig / PolicyLossConfig defaults)."""

    surrogate: str
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    clip_cov_ratio: float = 2e-4
    clip_cov_lb: float = 1.0
    clip_cov_ub: float = 5.0
    kl_cov_ratio: float = 2e-4
    ppo_kl_coef: float = 0.1
    generator: Optional[torch.Generator] = None  # clip_cov's random pick among the candidate tokens


def _masked_mean(x, m):
    return (x * m).sum() / m.sum().clamp(min=1.0)


def geo_mean_loss(l, old, adv, mask, cfg: CoupledConfig, num_sequences):
    """GMPO (verl compute_policy_loss_geo_mean): per sequence, -mean_t(A) exp(mean_t sgn(A) min(sgn(A) r,
    sgn(A) clip(r, -eps_low, eps_high))), r = l - old, averaged over num_sequences (verl: all B rows; it
    ignores loss_agg_mode)."""
    m = mask.float()
    r = l - old
    sgn = torch.sign(adv)
    r_min = sgn * torch.minimum(sgn * r, sgn * r.clamp(-cfg.epsilon_low, cfg.epsilon_high))
    length = m.sum(-1)
    ratio = torch.exp((r_min * m).sum(-1) / (length + 1e-8))
    seq_adv = (adv * m).sum(-1) / (length + 1e-8)
    return (-seq_adv * ratio).sum() / num_sequences


def clip_cov_terms(l, old, adv, mask, cfg: CoupledConfig):
    """verl compute_policy_loss_clip_cov: the PPO clip loss per token, with up to max(1, ratio * tokens) of the
    unclipped tokens whose centred cov (A - mean A)(l - mean l) lies in (lb, ub) picked at random and zeroed."""
    m = mask.float()
    ratio = torch.exp(l - old)
    p1 = -adv * ratio
    p2 = -adv * torch.clamp(ratio, 1 - cfg.epsilon_low, 1 + cfg.epsilon_high)
    clipped = (p2 > p1) & mask
    with torch.no_grad():
        cov = (adv - _masked_mean(adv, m)) * (l - _masked_mean(l, m))
        cov = cov.masked_fill(~mask | clipped, -torch.inf)
        count = max(int(cfg.clip_cov_ratio * int(mask.sum())), 1)
        candidates = torch.nonzero((cov < cfg.clip_cov_ub) & (cov > cfg.clip_cov_lb) & mask)
        if len(candidates) > 0:
            perm = torch.randperm(len(candidates), generator=cfg.generator)
            candidates = candidates[perm[: min(count, len(candidates))]]
        keep = torch.ones_like(adv)
        keep[candidates[:, 0], candidates[:, 1]] = 0.0
    return torch.maximum(p1, p2) * keep


def kl_cov_terms(l, old, adv, mask, cfg: CoupledConfig):
    """verl compute_policy_loss_kl_cov: -A rho per token, plus ppo_kl_coef |l - old| on the
    max(1, kl_cov_ratio * tokens) valid tokens of largest centred cov (A - mean A)(l - mean l)."""
    r = l - old
    ratio = torch.exp(r)
    base = -adv * ratio
    with torch.no_grad():
        flat_valid = torch.nonzero(mask.reshape(-1), as_tuple=True)[0]
        pick = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
        if flat_valid.numel() > 0:
            a = adv.reshape(-1)[flat_valid]
            lv = l.detach().reshape(-1)[flat_valid]
            cov = (a - a.mean()) * (lv - lv.mean())
            k = max(1, int(flat_valid.numel() * cfg.kl_cov_ratio))
            pick[flat_valid[torch.topk(cov, k, largest=True).indices]] = True
        pick = pick.reshape(mask.shape)
    return torch.where(pick, base + cfg.ppo_kl_coef * r.abs(), base)


def coupled_pg_loss(cfg: CoupledConfig, l, old, adv, mask, scale, num_sequences):
    """The scalar pg part of a coupled surrogate: geo_mean its own mean over sequences; clip_cov / kl_cov their
    per-token terms under the aggregation weights scale."""
    old = l.detach() if old is None else old.float()
    l = l.float()
    zero = torch.zeros_like(l)
    l, old, adv = torch.where(mask, l, zero), torch.where(mask, old, zero), torch.where(mask, adv, zero)
    if cfg.surrogate == "geo_mean":
        return geo_mean_loss(l, old, adv, mask, cfg, num_sequences)
    terms = clip_cov_terms(l, old, adv, mask, cfg) if cfg.surrogate == "clip_cov" else kl_cov_terms(l, old, adv,
                                                                                                      mask, cfg)
    return (torch.where(mask, terms, zero) * scale).sum()
