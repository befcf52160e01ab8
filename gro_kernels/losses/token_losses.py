"""The loss functions on per-token tensors (advantages, sampled KL, policy and preference losses):
validation with clear errors, then the op layer. The math: docs/math.md §2-§4."""

import torch

from .. import _validate as v
from . import checks as c
from .config import TRL_LOSS_TYPES
from ..ops.group_advantages import function as _adv
from ..ops.kl import naive as _kl
from ..ops.policy_loss import function as _pl
from ..ops.policy_loss.token_terms import SURROGATES, TokenLossConfig
from ..ops.preference_loss import function as _pref

ADVANTAGE_MODES = _adv.MODES


def group_advantages(rewards, *, group_ids=None, group_size=None, mode="grpo", eps=1e-6, baseline=None, mask=None,
                     scale_rewards="group", token_kl=None, kl_coef=0.0):
    """Advantages from rewards [B] and groups (docs/math.md §2); fp32, no gradient.

    Groups: group_ids [B] (any ints; ragged groups fine) or group_size (an int G dividing B, or a list
    of sizes summing to B). mode: "grpo" (r - mean_g)/(std_g + eps), std unbiased, scale_rewards
    "group" | "batch" | "none" as in TRL; "dr_grpo" r - mean_g; "rloo" r - mean of the others;
    "remax" r - baseline (baseline [B] required); "reinforce_pp" token-level [B, T] (mask required):
    r - kl_coef * sum_{s>=t} token_kl_s, minus the group mean when groups are given, whitened over the
    valid tokens; "none" r. A group of one, or identical rewards, gives 0 (never NaN). NaN rewards
    raise naming the row.
    """
    v.require_tensor("rewards", rewards)
    if rewards.dim() != 1 or not rewards.is_floating_point():
        raise ValueError(f"rewards must be a 1-D floating tensor [B], got {v.describe(rewards)}")
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"mode must be one of {ADVANTAGE_MODES}, got {mode!r}")
    v.require_positive_finite("eps", eps)
    batch = rewards.shape[0]
    c.no_nan_rows("rewards", rewards)
    index, groups = c.group_index(batch, group_ids, group_size, rewards.device)
    if mode == "reinforce_pp":
        if mask is None:
            raise ValueError("mode='reinforce_pp' whitens over tokens and needs mask= [B, T]")
        v.require_tensor("mask", mask)
        if mask.dim() != 2 or mask.shape[0] != batch:
            raise ValueError(f"mask must be [B, T] with B = {batch} rows, got {v.describe(mask)}")
        mask = c.bool_tensor("mask", mask, mask.shape)
        c.token_tensor("token_kl", token_kl, mask.shape)
        c.nonneg("kl_coef", kl_coef)
        return _adv.reinforce_pp_advantages(rewards, mask, index=index, groups=groups, token_kl=token_kl,
                                            kl_coef=kl_coef, eps=eps)
    if mode == "remax":
        if baseline is None:
            raise ValueError("mode='remax' needs baseline= (the reward of the greedy answer, per row)")
        c.row_tensor("baseline", baseline, batch, device=rewards.device)
        c.no_nan_rows("baseline", baseline)
    if mode in ("grpo", "dr_grpo", "rloo") and index is None:
        raise ValueError(f"mode={mode!r} needs group_ids= (one id per row, ragged groups allowed) or group_size=")
    scale_rewards = {True: "group", False: "none"}.get(scale_rewards, scale_rewards)
    if scale_rewards not in _adv.SCALES:
        raise ValueError(f"scale_rewards must be one of {_adv.SCALES}, got {scale_rewards!r}")
    return _adv.group_advantages(rewards, index, groups, mode, eps=eps, baseline=baseline, scale_rewards=scale_rewards)


def kl_penalty(logprobs, ref_logprobs, *, estimator="k3"):
    """Per-token sampled KL estimate from d = logprobs - ref_logprobs, differentiable in logprobs (fp32).

    "k1" d; "k2" d^2/2; "k3" exp(-d) + d - 1; "k3_st" the k3 value with k2's gradient. The exact
    full-vocabulary KL from hidden states is `exact_kl`.
    """
    v.require_tensor("logprobs", logprobs)
    c.token_tensor("ref_logprobs", ref_logprobs, logprobs.shape)
    if not logprobs.is_floating_point():
        raise TypeError(f"logprobs must be floating, got {v.describe(logprobs)}")
    if estimator not in _kl.ESTIMATORS:
        raise ValueError(f"estimator must be one of {_kl.ESTIMATORS} (exact KL: gro_kernels.exact_kl), "
                         f"got {estimator!r}")
    return _kl.kl_penalty_naive(logprobs.float(), ref_logprobs.float(), estimator)


def _mask_2d(mask, logprobs):
    v.require_tensor("logprobs", logprobs)
    if logprobs.dim() != 2 or not logprobs.is_floating_point():
        raise ValueError(f"logprobs must be a floating [B, T] tensor, got {v.describe(logprobs)}")
    if mask is None:
        return torch.ones(logprobs.shape, dtype=torch.bool, device=logprobs.device)
    return c.bool_tensor("mask", mask, logprobs.shape).to(logprobs.device)


def policy_loss(logprobs, advantages, mask=None, *, old_logprobs=None, ref_logprobs=None, rollout_logprobs=None,
                entropy=None, loss_type="grpo", surrogate="clip", epsilon=0.2, epsilon_low=None, epsilon_high=None,
                dual_clip=None, importance_sampling_level="token", beta=0.0, kl_estimator="k3", entropy_coef=0.0,
                tis_cap=None, global_token_count=None, max_completion_length=None, num_sequences=None):
    """Scalar PPO-family policy loss of per-token logprobs [B, T] (docs/math.md §3), and metrics.

    advantages [B] or [B, T]; mask [B, T] (bool/0-1; default all valid). Options (keyword):
    old_logprobs, ref_logprobs, rollout_logprobs, entropy ([B, T] each); loss_type (TRL: "grpo",
    "bnpo", "dr_grpo", "dapo", or "token_mean", "seq_mean_token_mean", "seq_mean_token_sum",
    "seq_mean_token_sum_norm"); surrogate "clip" | "cispo" | "reinforce"; epsilon, epsilon_low,
    epsilon_high (cispo: the ratio cap); dual_clip (c > 1); importance_sampling_level "token" |
    "sequence" (GSPO) | "sequence_token"; beta (KL coefficient) and kl_estimator; entropy_coef;
    tis_cap (truncated IS against rollout_logprobs); global_token_count (token_mean denominator for
    gradient accumulation / data parallelism); max_completion_length (dr_grpo); num_sequences.
    Returns (loss 0-d fp32, metrics: dict of 0-d fp32 tensors ratio, clip_ratio_low, clip_ratio_high,
    clip_ratio, kl (with ref), entropy (with entropy), num_tokens). No host sync.
    """
    m = _mask_2d(mask, logprobs)
    shape, batch = logprobs.shape, logprobs.shape[0]
    adv = c.advantages_tensor(advantages, batch, shape)
    for name, t in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs),
                    ("rollout_logprobs", rollout_logprobs), ("entropy", entropy)):
        c.token_tensor(name, t, shape)
    c.no_nan_rows("advantages", adv)
    for name, value in (("epsilon", epsilon), ("epsilon_low", epsilon_low), ("epsilon_high", epsilon_high),
                        ("beta", beta)):
        c.epsilon_value(name, value)
    aggregation = TRL_LOSS_TYPES.get(loss_type, loss_type)
    if aggregation not in _pl.AGGREGATIONS:
        raise ValueError(f"loss_type must be one of {sorted(TRL_LOSS_TYPES)} or {_pl.AGGREGATIONS}, got {loss_type!r}")
    if importance_sampling_level not in _pl.IS_LEVELS:
        raise ValueError(f"importance_sampling_level must be one of {_pl.IS_LEVELS}, got {importance_sampling_level!r}")
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
    if beta and ref_logprobs is None:
        raise ValueError("beta > 0 (KL penalty) needs ref_logprobs=")
    if tis_cap is not None and rollout_logprobs is None:
        raise ValueError("tis_cap (truncated importance sampling) needs rollout_logprobs=")
    cfg = TokenLossConfig(surrogate=surrogate, epsilon_low=epsilon if epsilon_low is None else epsilon_low,
                          epsilon_high=epsilon if epsilon_high is None else epsilon_high, dual_clip=dual_clip,
                          kl_coef=float(beta), kl_estimator=kl_estimator, entropy_coef=float(entropy_coef),
                          tis_cap=tis_cap)
    scale = _pl.aggregation_scale(m, aggregation, global_token_count=global_token_count,
                                  max_completion_length=max_completion_length, num_sequences=num_sequences)
    loss, stats = _pl.policy_loss(logprobs, adv, m, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
                                  rollout_logprobs=rollout_logprobs, entropy=entropy, cfg=cfg,
                                  importance_sampling_level=importance_sampling_level, scale=scale)
    return loss, _pl.metrics(stats, entropy is not None, ref_logprobs is not None)


def preference_loss(logprobs, mask=None, *, loss_type="dpo", ref_logprobs=None, pair_ids=None, chosen=None,
                    desirable=None, kto_z0=None, beta=0.1, **options):
    """RL-free loss on sequence sums of per-token logprobs [B, T] (docs/math.md §4), and metrics.

    loss_type "dpo" (label_smoothing), "ipo", "simpo" (simpo_gamma), "kto" (desirable [B] bool,
    desirable_weight, undesirable_weight, kto_z0 or the detached batch estimate), "cpl" (cpl_lambda,
    cpl_discount; alpha = beta). Pairs: pair_ids [B] (rows sharing an id form a pair) and chosen [B].
    ref_logprobs [B, T] for dpo, ipo, kto. beta: the implicit-reward scale. Returns (loss, metrics).
    """
    m = _mask_2d(mask, logprobs)
    batch = logprobs.shape[0]
    if loss_type not in _pref.LOSSES:
        raise ValueError(f"loss_type must be one of {_pref.LOSSES}, got {loss_type!r}")
    v.require_positive_finite("beta", beta)
    cfg = _pref.PreferenceConfig(loss=loss_type, beta=beta, **options)
    if loss_type in _pref.NEEDS_REFERENCE and ref_logprobs is None:
        raise ValueError(f"loss_type={loss_type!r} needs ref_logprobs=")
    c.token_tensor("ref_logprobs", ref_logprobs, logprobs.shape)
    offline = torch.ones(batch, dtype=torch.bool, device=logprobs.device)
    if loss_type == "kto":
        if desirable is None:
            raise ValueError("loss_type='kto' needs desirable= (bool per row)")
        desirable = c.bool_tensor("desirable", desirable, (batch,))
    else:
        if pair_ids is None or chosen is None:
            raise ValueError(f"loss_type={loss_type!r} needs pair_ids= and chosen= "
                             "(rows sharing a pair id form a pair)")
        c.row_tensor("pair_ids", pair_ids, batch, floating=False)
        chosen = c.bool_tensor("chosen", chosen, (batch,))
        c.check_pairs(pair_ids, chosen, offline)
    return _pref.preference_loss(logprobs, m, ref_logprobs, offline, cfg, pair_ids=pair_ids, chosen=chosen,
                                 desirable=desirable, kto_z0=kto_z0)
