"""Detached per-token factors on the policy-gradient term (docs/math.md §3, "Gates"): TRL's vLLM
importance-sampling modes, top-entropy token selection, the off-policy sequence mask and VESPO's gamma
weight. Each one multiplies pg_t only (never the KL term), as TRL applies them, and none carries a gradient.

Token-separable or not: rollout_is_weight reads only the given old / rollout logprobs, so it is known before
the fused grad-in-forward loop; the others read the current policy's logprobs or entropies across a whole
sequence (or batch), so they run on the plain path (GROObjective.token_separable says which).
All tensors are [B, T]; mask bool.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch

ROLLOUT_IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
ENTROPY_AGGREGATIONS = ("loss", "token_mean")
_VESPO_LOG_MIN = math.log(1e-8)  # TRL get_gamma_weights clamps log w to [log 1e-8, 20]


@dataclass(frozen=True)
class GateConfig:
    """Which gates are on. rollout_is_mode None: off (gro's tis_cap is then the token_truncate cap)."""

    rollout_is_mode: Optional[str] = None
    rollout_is_min: Optional[float] = None
    rollout_is_max: Optional[float] = None
    top_entropy_quantile: float = 1.0
    off_policy_mask_threshold: Optional[float] = None
    vespo: Optional[tuple] = None            # (k_pos, lambda_pos, k_neg, lambda_neg) when the surrogate is vespo
    entropy_aggregation: str = "loss"        # "loss": entropy term aggregated like pg; "token_mean": TRL's
    coupled: Optional[object] = None         # a coupled.CoupledConfig: verl geo_mean / clip_cov / kl_cov replace pg

    @property
    def needs_current_policy(self) -> bool:
        """A gate that reads the current logprobs / entropies: the config is not token-separable."""
        return (self.top_entropy_quantile < 1.0 or self.off_policy_mask_threshold is not None
                or self.vespo is not None or self.coupled is not None)


def rollout_is_weight(old, rollout, mask, mode, clip_min=None, clip_max=None):
    """TRL's vLLM importance-sampling ratio (grpo_trainer.py, _generate_and_score_completions).

    w = exp(old - rollout) per token (token_*), or exp(sum_t (old - rollout)) per sequence (sequence_*);
    *_truncate clamps w to [clip_min, clip_max] (None: no bound), *_mask sets w = 0 outside that range.
    """
    diff = torch.where(mask, old.float() - rollout.float(), 0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True).expand_as(diff)
    w = torch.exp(diff)
    if mode.endswith("truncate"):
        return w.clamp(min=clip_min, max=clip_max)
    lo = -math.inf if clip_min is None else clip_min
    hi = math.inf if clip_max is None else clip_max
    return torch.where((w < lo) | (w > hi), 0.0, w)


def top_entropy_mask(entropy, mask, quantile):
    """TRL get_high_entropy_mask with threshold 1 - top_entropy_quantile: keep the valid tokens whose entropy
    is >= torch.quantile(valid entropies, 1 - q) (linear interpolation). No valid token: nothing kept."""
    ent = entropy.detach().float()
    valid = ent[mask]
    if valid.numel() == 0:
        return torch.zeros_like(mask)
    threshold = torch.quantile(valid, 1.0 - quantile)
    return (torch.where(mask, ent, 0.0) >= threshold) & mask


def off_policy_mask(advantages, logprobs, sampling_logprobs, mask, threshold):
    """TRL get_off_policy_mask (DeepSeek-V3.2's sequence mask): drop a sequence when A < 0 and the mean over its
    tokens of sampling_logprobs - sg(logprobs) exceeds threshold. advantages [B, T]; returns float [B, T]."""
    kl = torch.where(mask, sampling_logprobs.float() - logprobs.detach().float(), 0.0)
    mean_kl = kl.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1).float()
    return ((advantages >= 0) | (mean_kl <= threshold)).float()


def vespo_phi(advantages, log_ratio, mask, is_ratio, params):
    """TRL get_gamma_weights: phi(w) = exp(lambda + k log w - lambda w), w = exp(sum_t clamp(r_t, +-20)
    (+ sum_t clamp(log is_t, log 1e-8, 20))) clamped in log space to [log 1e-8, 20]; k, lambda by the sign of
    A (A >= 0: the pos pair). advantages, log_ratio [B, T]; is_ratio [B, T] or None. Returns [B, T] detached."""
    k_pos, lam_pos, k_neg, lam_neg = params
    r = torch.where(mask, log_ratio.detach().float().clamp(-20.0, 20.0), 0.0)
    log_w = r.sum(-1, keepdim=True)
    if is_ratio is not None:
        log_w = log_w + torch.where(mask, torch.log(is_ratio).clamp(_VESPO_LOG_MIN, 20.0), 0.0).sum(-1, keepdim=True)
    log_w = log_w.clamp(_VESPO_LOG_MIN, 20.0)
    nonneg = advantages >= 0
    k = torch.where(nonneg, k_pos, k_neg)
    lam = torch.where(nonneg, lam_pos, lam_neg).clamp(min=1e-4)
    phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
    return phi.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def policy_gates(gates: GateConfig, logprobs, advantages, mask, *, old_logprobs=None, rollout_logprobs=None,
                 entropy=None):
    """(pg_weight [B, T] or None, the token mask the entropy bonus acts on). advantages [B, T]."""
    weight, entropy_mask = None, mask
    old = old_logprobs if old_logprobs is not None or logprobs is None else logprobs.detach()
    is_ratio = None
    if gates.rollout_is_mode is not None:
        is_ratio = rollout_is_weight(old, rollout_logprobs, mask, gates.rollout_is_mode, gates.rollout_is_min,
                                     gates.rollout_is_max)
        if gates.vespo is None:  # VESPO folds the IS ratio into phi instead (TRL)
            weight = is_ratio
    mul = lambda w, g: g if w is None else w * g  # noqa: E731
    if gates.off_policy_mask_threshold is not None:
        sampling = old if rollout_logprobs is None else rollout_logprobs
        weight = mul(weight, off_policy_mask(advantages, logprobs, sampling, mask, gates.off_policy_mask_threshold))
    if gates.top_entropy_quantile < 1.0:
        keep = top_entropy_mask(entropy, mask, gates.top_entropy_quantile)
        weight = mul(weight, keep.float())
        entropy_mask = keep
    if gates.vespo is not None:
        log_ratio = torch.where(mask, logprobs.detach().float() - old.float(), 0.0)
        weight = mul(weight, vespo_phi(advantages, log_ratio, mask, is_ratio, gates.vespo))
    return weight, entropy_mask


def entropy_scale(gates: GateConfig, entropy_mask, scale):
    """The entropy term's per-token weights: the policy's aggregation weights ("loss"), or TRL's token mean over
    the tokens the bonus acts on ("token_mean": m / sum m)."""
    if gates.entropy_aggregation == "loss":
        return None if gates.top_entropy_quantile >= 1.0 else scale * entropy_mask
    m = entropy_mask.float()
    return m / m.sum().clamp(min=1.0)
