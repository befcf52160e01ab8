"""The per-token policy loss of GRO (docs/math.md §3, §5): value, metrics and analytic gradients.

This is the one place where the token-level math lives. The plain path wraps it in an autograd
Function (function.py); the grad-in-forward path calls it once per row chunk through the fused
token-loss op, so both give the same numbers. Everything here is elementwise over tokens: inputs
are 1-D fp32 tensors of one length n (a flattened batch or one chunk of it).
"""

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

SURROGATES = ("clip", "cispo", "reinforce")
KL_ESTIMATORS = ("k1", "k2", "k3", "k3_st")
LOG_RATIO_CLAMP = 20.0
# Per-token metric columns of TokenTerms.extras (masked tokens hold 0).
EXTRAS = ("kl", "ratio", "clipped_low", "clipped_high")


@dataclass(frozen=True)
class TokenLossConfig:
    """Options of the per-token loss. dual_clip / tis_cap None mean off."""

    surrogate: str = "clip"
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    dual_clip: Optional[float] = None
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    tis_cap: Optional[float] = None


class TokenTerms(NamedTuple):
    loss: torch.Tensor                       # [n] per-token contributions, scale included: loss = loss.sum()
    grad_logprobs: torch.Tensor              # [n] d loss.sum() / d logprobs
    grad_entropy: Optional[torch.Tensor]     # [n] d loss.sum() / d entropy, None without an entropy term
    grad_log_ratio: Optional[torch.Tensor]   # [n] d loss.sum() / d log_ratio when log_ratio was given
    extras: torch.Tensor                     # [n, 4] per-token metrics, columns EXTRAS


def kl_value_and_grad(d: torch.Tensor, estimator: str):
    """Sampled KL estimate of d = l - l_ref and its derivative in d (docs/math.md §3)."""
    if estimator == "k1":
        return d, torch.ones_like(d)
    if estimator == "k2":
        return 0.5 * d * d, d
    e = torch.exp(-d)
    value = e + d - 1.0
    if estimator == "k3":
        return value, 1.0 - e
    if estimator == "k3_st":  # logs k3, back-propagates k2's gradient
        return value, d
    raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def _surrogate(rho, adv, cfg: TokenLossConfig):
    """(pg value, d pg / d rho, d pg / d logprob directly, clipped_low, clipped_high)."""
    zero = torch.zeros_like(rho)
    if cfg.surrogate == "clip":
        lo, hi = 1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high
        unclipped = rho * adv
        clipped = rho.clamp(lo, hi) * adv
        pg = -torch.minimum(unclipped, clipped)
        passes = (unclipped <= clipped) | ((rho >= lo) & (rho <= hi))
        d_rho = torch.where(passes, -adv, zero)
        if cfg.dual_clip is not None:
            cap = -cfg.dual_clip * adv  # for A < 0 the loss may not exceed -c A
            capped = (adv < 0) & (pg > cap)
            pg = torch.where(capped, cap, pg)
            d_rho = torch.where(capped, zero, d_rho)
        return pg, d_rho, zero, (rho < lo) & (adv < 0), (rho > hi) & (adv > 0)
    if cfg.surrogate == "cispo":
        return None, zero, -torch.clamp(rho, max=cfg.epsilon_high) * adv, torch.zeros_like(rho, dtype=torch.bool), \
            (rho > cfg.epsilon_high) & (adv > 0)
    if cfg.surrogate == "reinforce":
        return None, zero, -adv, torch.zeros_like(rho, dtype=torch.bool), torch.zeros_like(rho, dtype=torch.bool)
    raise ValueError(f"surrogate must be one of {SURROGATES}, got {cfg.surrogate!r}")


def policy_token_terms(logprobs, advantages, scale, mask, *, old_logprobs=None, ref_logprobs=None, entropy=None,
                       rollout_logprobs=None, log_ratio=None, cfg: TokenLossConfig = TokenLossConfig()) -> TokenTerms:
    """Per-token GRO policy loss  x_t = tis_t * pg_t + kl_coef * k(l_t - ref_t) - entropy_coef * H_t.

    pg_t: clip   -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A), with dual clip min(., -c A) for A < 0;
          cispo  -sg(min(rho, eps_high)) A l;   reinforce  -A l.
    rho_t = exp(clamp(r_t, -20, 20)), r_t = log_ratio_t if given (e.g. GSPO's sequence-level ratio,
    broadcast to tokens; its gradient comes back in grad_log_ratio), else l_t - old_t (old None:
    r_t = l_t - sg(l_t), value 0). tis_t = sg(min(exp(old_t - rollout_t), tis_cap)).
    The returned loss is scale_t * x_t on tokens where mask is true and 0 elsewhere (scale_t is the
    aggregation weight, e.g. m_t / sum m for token_mean), so the batch loss is loss.sum().
    All inputs are [n]; advantages per token; mask bool; logprobs/old/ref/rollout/entropy fp32.
    """
    valid = mask
    zero = torch.zeros_like(logprobs)
    l = torch.where(valid, logprobs, zero)
    if log_ratio is not None:
        r = log_ratio
    elif old_logprobs is not None:
        r = l - torch.where(valid, old_logprobs, zero)
    else:
        r = zero
    in_clamp = (r >= -LOG_RATIO_CLAMP) & (r <= LOG_RATIO_CLAMP)
    rho = torch.exp(r.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    adv = torch.where(valid, advantages, zero)
    pg, d_rho, d_l, clip_low, clip_high = _surrogate(rho, adv, cfg)
    if pg is None:  # cispo / reinforce: a detached weight times l
        pg = d_l * l
    d_r = torch.where(in_clamp, d_rho * rho, zero)
    if cfg.tis_cap is not None and rollout_logprobs is not None:
        old = l if old_logprobs is None else torch.where(valid, old_logprobs, zero)
        tis = torch.exp(old - torch.where(valid, rollout_logprobs, zero)).clamp(max=cfg.tis_cap)
        pg, d_r, d_l = pg * tis, d_r * tis, d_l * tis
    x = pg
    if ref_logprobs is not None:
        kl, d_kl = kl_value_and_grad(l - torch.where(valid, ref_logprobs, zero), cfg.kl_estimator)
        kl = torch.where(valid, kl, zero)
        if cfg.kl_coef != 0.0:
            x = x + cfg.kl_coef * kl
            d_l = d_l + cfg.kl_coef * d_kl
    else:
        kl = zero
    grad_entropy = None
    if entropy is not None and cfg.entropy_coef != 0.0:
        x = x - cfg.entropy_coef * entropy
        grad_entropy = torch.where(valid, -cfg.entropy_coef * scale, zero)
    s = torch.where(valid, scale, zero)
    loss = torch.where(valid, s * x, zero)
    if log_ratio is None:
        grad_l, grad_r = s * (d_l + d_r), None
    else:
        grad_l, grad_r = s * d_l, s * d_r
    fv = valid.to(torch.float32)
    extras = torch.stack([kl, rho * fv, (clip_low & valid).float(), (clip_high & valid).float()], dim=1)
    return TokenTerms(loss, grad_l, grad_entropy, grad_r, extras)
