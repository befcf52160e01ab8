"""The loss functions on per-token tensors (advantages, sampled KL, policy and preference losses):
validation with clear errors, then the op layer. The math: docs/math.md §2-§4."""

import dataclasses
from typing import NamedTuple, Optional

import torch

from .. import _validate as v
from . import advantages as _ext_adv
from . import checks as c
from . import policy_options as _po
from .config import TRL_LOSS_TYPES, check_aggregation_counts, check_token_options, preference_config
from .preference_options import check_trl_inputs
from ..ops.group_advantages import function as _adv
from ..ops.kl import naive as _kl
from ..ops.policy_loss import function as _pl
from ..ops.policy_loss.token_terms import TokenLossConfig
from ..ops.preference_loss import function as _pref

ADVANTAGE_MODES = _adv.MODES + _ext_adv.MODES


class LossOutput(NamedTuple):
    """What every loss function returns (gro_loss's GROOutput adds logprobs and entropy). A NamedTuple, so
    `loss, metrics = policy_loss(...)` keeps working."""

    loss: torch.Tensor   # 0-d fp32, differentiable
    metrics: dict        # name -> 0-d fp32 tensor (detached)


def group_advantages(rewards, *, group_ids=None, group_size=None, mode="grpo", eps=1e-6, baseline=None, mask=None,
                     scale_rewards="group", token_kl=None, kl_coef=0.0, gamma=1.0, lam=1.0, values=None,
                     old_logprobs=None, sum_pi_squared=None, rollout_is_weights=None, handle_zero_tail=True,
                     norm_adv_by_std_in_grpo=None, reward_weights=None):
    """Advantages from rewards [B] and groups (docs/math.md §2); fp32, no gradient.

    Groups: group_ids [B] (any ints, or a list / numpy array of uid strings as verl passes them; ragged
    groups fine) or group_size (an int G dividing B, or a list of sizes summing to B). mode: "grpo"
    (r - mean_g)/(std_g + eps), std unbiased, scale_rewards "group" | "batch" | "none" as in TRL
    (norm_adv_by_std_in_grpo=False, verl's name, is scale_rewards="none"); "dr_grpo" r - mean_g; "rloo"
    r - mean of the others; "remax" r - baseline (baseline [B] required); "reinforce_pp" token-level
    [B, T] (mask required): r - kl_coef * sum_{s>=t} token_kl_s (gamma < 1: discounted over valid
    tokens), minus the group mean when groups are given, whitened over the valid tokens; "none" r.
    verl's estimators: "grpo_passk" (the best row of a group gets r_max - r_second, over std + eps
    unless scale_rewards="none"), "opo" (length-weighted group mean; mask gives the lengths), "gpg"
    (B / #nonzero rewards * (r - mean_g)), and token-level [B, T] (mask required):
    "reinforce_pp_baseline" (the KL-shaped score summed per sequence, minus its group mean, whitened),
    "gae" (values [B, T], gamma, lam; whitened), "optimal_token_baseline" and
    "tir_optimal_token_baseline" (old_logprobs, sum_pi_squared [B, T], optional rollout_is_weights,
    handle_zero_tail), "gdpo" (rewards [B, K]: grpo per column, summed with reward_weights [K], whitened
    over valid tokens), "normalize_then_sum" (TRL's multi_objective_aggregation: rewards [B, K] normalized
    per column within the group, summed with reward_weights, whitened over the rows; pass eps=1e-4 for
    TRL's). verl's adv_estimator names are accepted as they are spelt (reinforce_plus_plus,
    reinforce_plus_plus_baseline, rloo_vectorized, grpo_vectorized, ...). Token-level modes put the
    sequence reward on the last valid token. A group of one, or identical rewards, gives 0 (never NaN),
    in every grouped mode. eps: added to every std (default 1e-6, verl's; TRL's is 1e-4). NaN rewards
    raise naming the row.
    """
    v.require_tensor("rewards", rewards)
    if mode in _ext_adv.COLUMN_MODES:  # one column per reward component
        if rewards.dim() != 2 or not rewards.is_floating_point():
            raise ValueError(f"mode={mode!r} needs rewards as a 2-D floating tensor [B, K] (one column per reward "
                             f"component), got {v.describe(rewards)}")
    elif rewards.dim() != 1 or not rewards.is_floating_point():
        raise ValueError(f"rewards must be a 1-D floating tensor [B], got {v.describe(rewards)}")
    v.require_data("rewards", rewards)
    verl_name = mode if mode in _ext_adv.VERL_ESTIMATORS and mode not in ADVANTAGE_MODES else None
    mode = _ext_adv.VERL_ESTIMATORS.get(mode, mode)
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"mode must be one of {ADVANTAGE_MODES} or verl's {tuple(_ext_adv.VERL_ESTIMATORS)}, "
                         f"got {mode!r}")
    if verl_name == "reinforce_plus_plus" and (group_ids is not None or group_size is not None):
        raise ValueError("mode='reinforce_plus_plus' (verl) has no group baseline and would ignore group_ids= / "
                         "group_size=; pass mode='reinforce_pp' for the group-mean version, or drop the groups")
    _reject_unused_inputs(mode, mask=mask, token_kl=token_kl, kl_coef=kl_coef, baseline=baseline)
    extra = dict(values=values, old_logprobs=old_logprobs, sum_pi_squared=sum_pi_squared,
                 rollout_is_weights=rollout_is_weights)
    _ext_adv.reject_unused(mode, extra)
    _ext_adv.check_gamma_lam(mode, gamma, lam)
    if reward_weights is not None and mode not in _ext_adv.COLUMN_MODES:
        raise ValueError(f"reward_weights= is used only by mode='gdpo' / 'normalize_then_sum'; mode={mode!r} would "
                         "ignore it")
    v.require_bool("handle_zero_tail", handle_zero_tail)
    if not handle_zero_tail and mode not in ("optimal_token_baseline", "tir_optimal_token_baseline"):
        raise ValueError(f"handle_zero_tail=False is used only by the optimal_token_baseline modes; mode={mode!r} "
                         "would ignore it")
    if norm_adv_by_std_in_grpo is not None:
        v.require_bool("norm_adv_by_std_in_grpo", norm_adv_by_std_in_grpo)
        if mode not in ("grpo", "grpo_passk", "gdpo"):
            raise ValueError(f"norm_adv_by_std_in_grpo is used only by mode='grpo' / 'grpo_passk' / 'gdpo'; "
                             f"mode={mode!r} would ignore it")
        if scale_rewards != "group":
            raise ValueError("norm_adv_by_std_in_grpo and scale_rewards both set the std division; pass one of them")
        scale_rewards = "group" if norm_adv_by_std_in_grpo else "none"
    v.require_positive_finite("eps", eps)
    c.loss_ops_backend("rewards", rewards)
    batch = rewards.shape[0]
    c.no_nan_rows("rewards", rewards)
    index, groups = c.group_index(batch, group_ids, group_size, rewards.device)
    if mode in _ext_adv.TOKEN_MODES or mode == "opo":
        if mask is None:
            whitens = mode in ("reinforce_pp", "reinforce_pp_baseline", "gae")
            does = "whitens over tokens" if whitens else "works on tokens"
            raise ValueError(f"mode={mode!r} {does} and needs mask= [B, T]")
        v.require_tensor("mask", mask)
        if mask.dim() != 2 or mask.shape[0] != batch:
            raise ValueError(f"mask must be [B, T] with B = {batch} rows, got {v.describe(mask)}")
        v.require_same_device("mask", mask, "rewards", rewards)
        mask = c.bool_tensor("mask", mask, mask.shape)
        c.token_tensor("token_kl", token_kl, mask.shape, device=rewards.device)
        c.nonneg("kl_coef", kl_coef)
    if mode in _ext_adv.MODES or (mode == "reinforce_pp" and gamma != 1.0):
        _ext_adv.check_inputs(mode, extra, mask, index)
        if mode in ("grpo_passk", "gdpo") and scale_rewards not in ("group", "none", True, False):
            raise ValueError(f"mode={mode!r} takes scale_rewards 'group' or 'none', got {scale_rewards!r}")
        scale = {True: "group", False: "none"}.get(scale_rewards, scale_rewards)
        weights = _ext_adv.reward_weights_tensor(reward_weights, rewards.shape[1], rewards.device) \
            if mode in _ext_adv.COLUMN_MODES else None
        return _ext_adv.advantages(mode, rewards, index, groups, mask, eps=eps, scale_rewards=scale,
                                   token_kl=token_kl, kl_coef=kl_coef, gamma=gamma, lam=lam, **extra,
                                   handle_zero_tail=handle_zero_tail, reward_weights=weights)
    if mode == "reinforce_pp":
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


def _reject_unused_inputs(mode, **given):
    """Inputs only some modes read: given to another mode they would be dropped without a word."""
    users = {"mask": _ext_adv.TOKEN_MODES + ("opo",), "token_kl": _ext_adv.KL_MODES, "kl_coef": _ext_adv.KL_MODES,
             "baseline": ("remax",)}
    for name, value in given.items():
        unset = value is None or (name == "kl_coef" and value == 0.0)
        if not unset and mode not in users[name]:
            raise ValueError(f"{name}= is used only by mode={' / '.join(map(repr, users[name]))}; mode={mode!r} "
                             "would ignore it")


def kl_penalty(logprobs, ref_logprobs, *, estimator="k3"):
    """Per-token sampled KL estimate from d = logprobs - ref_logprobs, differentiable in logprobs (fp32).

    "k1" d; "k2" d^2/2; "k3" exp(-d) + d - 1; "k3_st" the k3 value with k2's gradient. The exact
    full-vocabulary KL from hidden states is `exact_kl`.
    """
    v.require_tensor("logprobs", logprobs)
    if not logprobs.is_floating_point():
        raise TypeError(f"logprobs must be floating, got {v.describe(logprobs)}")
    v.require_data("logprobs", logprobs)
    if ref_logprobs is None:
        raise ValueError("ref_logprobs must be a tensor of logprobs' shape, got None")
    c.token_tensor("ref_logprobs", ref_logprobs, logprobs.shape, device=logprobs.device)
    estimator = _po.KL_NAMES.get(estimator, estimator)
    if estimator not in _kl.ESTIMATORS:
        raise ValueError(f"estimator must be one of {_kl.ESTIMATORS} (exact KL: gro_kernels.exact_kl), "
                         f"got {estimator!r}")
    return _kl.kl_penalty_naive(logprobs.float(), ref_logprobs.float(), estimator)


def _mask_2d(mask, logprobs):
    v.require_tensor("logprobs", logprobs)
    if logprobs.dim() != 2 or not logprobs.is_floating_point():
        raise ValueError(f"logprobs must be a floating [B, T] tensor, got {v.describe(logprobs)}")
    v.require_data("logprobs", logprobs)
    if mask is None:
        return torch.ones(logprobs.shape, dtype=torch.bool, device=logprobs.device)
    return c.bool_tensor("mask", mask, logprobs.shape).to(logprobs.device)


def policy_loss(logprobs, advantages, mask=None, *, old_logprobs=None, ref_logprobs=None, rollout_logprobs=None,
                entropy=None, loss_type="grpo", surrogate="clip", epsilon=None, epsilon_low=None, epsilon_high=None,
                dual_clip=None, importance_sampling_level="token", beta=0.0, kl_estimator="k3", entropy_coef=0.0,
                tis_cap=None, global_token_count=None, max_completion_length=None, num_sequences=None,
                loss_mode=None, loss_agg_mode=None, **options):
    """Scalar PPO-family policy loss of per-token logprobs [B, T] (docs/math.md §3), and metrics.

    advantages [B] or [B, T]; mask [B, T] (bool/0-1; default all valid). Options (keyword):
    old_logprobs, ref_logprobs, rollout_logprobs, entropy ([B, T] each); loss_type (TRL: "grpo",
    "bnpo", "dr_grpo", "dapo", or "token_mean", "seq_mean_token_mean", "seq_mean_token_sum",
    "seq_mean_token_sum_norm"); surrogate "clip" | "cispo" | "reinforce"; epsilon (default 0.2: both
    bounds, as TRL) or epsilon_low (not both), epsilon_high (the upper bound; cispo: the ratio cap);
    dual_clip (c > 1); importance_sampling_level "token" | "sequence" (GSPO) | "sequence_token"; beta
    (KL coefficient, needs ref_logprobs) and kl_estimator; entropy_coef (needs entropy); tis_cap > 0
    (truncated IS against rollout_logprobs); global_token_count (token_mean denominator for gradient
    accumulation / data parallelism); max_completion_length (dr_grpo); num_sequences. The options are
    checked by the same functions as gro_loss's (losses/config.py).
    Peer options (docs/peer_names.md): loss_type also "sapo", "vespo", "luspo", "cispo" (TRL);
    loss_mode (verl policy_loss.loss_mode) and loss_agg_mode (verl spellings, e.g. "seq-mean-token-sum-norm");
    **options: the GROObjective policy fields (delta, cispo_ratio_min, sapo_tau_pos/neg, dppo_ratio_cap,
    dro_beta, vespo_*, kl_ratio_weighted, entropy_aggregation, top_entropy_quantile, off_policy_mask_threshold,
    rollout_is_mode, rollout_is_min) and their TRL / verl names (use_bias_correction_kl, kl_loss_type, ...).
    Returns LossOutput(loss 0-d fp32, metrics: dict of 0-d fp32 tensors ratio, clip_ratio_low, clip_ratio_high,
    clip_ratio, kl (with ref), entropy (with entropy), num_tokens). No host sync.
    """
    m = _mask_2d(mask, logprobs)
    shape, batch, device = logprobs.shape, logprobs.shape[0], logprobs.device
    adv = c.advantages_tensor(advantages, batch, shape)
    v.require_same_device("advantages", adv, "logprobs", logprobs)
    for name, t in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs),
                    ("rollout_logprobs", rollout_logprobs), ("entropy", entropy)):
        c.token_tensor(name, t, shape, device=device)
    c.no_nan_rows("advantages", adv)
    peer, surrogate, loss_type = _peer_options(options, loss_mode, loss_agg_mode, loss_type, surrogate)
    take = lambda field, name, value, default: _take_peer(peer, field, name, value, default)  # noqa: E731
    epsilon_low = take("epsilon_low", "epsilon_low", epsilon_low, None)
    epsilon_high = take("epsilon_high", "epsilon_high", epsilon_high, None)
    dual_clip = take("dual_clip", "dual_clip", dual_clip, None)
    kl_estimator = take("kl_estimator", "kl_estimator", _po.KL_NAMES.get(kl_estimator, kl_estimator), "k3")
    tis_cap = take("tis_cap", "tis_cap", tis_cap, None)
    importance_sampling_level = take("importance_sampling_level", "importance_sampling_level",
                                     importance_sampling_level, "token")
    beta = take("kl_coef", "beta", beta, 0.0)
    opts = _PolicyOptions(surrogate=surrogate, tis_cap=tis_cap, epsilon_high=0.0, **peer)
    cfg = _token_config(_po.token_surrogate(surrogate), epsilon, epsilon_low, epsilon_high, dual_clip, beta,
                        kl_estimator, entropy_coef, tis_cap)
    opts = dataclasses.replace(opts, epsilon_high=cfg.epsilon_high, epsilon_low=cfg.epsilon_low,
                               importance_sampling_level=importance_sampling_level, dual_clip=dual_clip)
    _po.check_policy_options(opts)
    cfg = dataclasses.replace(cfg, tis_cap=_po.tis_cap(opts), **_po.token_extras(opts))
    aggregation = TRL_LOSS_TYPES.get(loss_type, loss_type)
    if aggregation not in _pl.AGGREGATIONS:
        raise ValueError(f"loss_type must be one of {sorted(TRL_LOSS_TYPES)} or {_pl.AGGREGATIONS}, got {loss_type!r}")
    if importance_sampling_level not in _pl.IS_LEVELS:
        raise ValueError(f"importance_sampling_level must be one of {_pl.IS_LEVELS}, got {importance_sampling_level!r}")
    counts = dict(global_token_count=global_token_count, max_completion_length=max_completion_length,
                  num_sequences=num_sequences)
    check_aggregation_counts(counts)
    _require_term_inputs(cfg, ref_logprobs, rollout_logprobs, entropy)
    if opts.rollout_is_mode is not None and (rollout_logprobs is None or old_logprobs is None):
        raise ValueError(f"rollout_is_mode={opts.rollout_is_mode!r} (vLLM importance sampling) needs old_logprobs= "
                         "and rollout_logprobs=")
    if opts.top_entropy_quantile < 1.0 and entropy is None:
        raise ValueError("top_entropy_quantile < 1 needs entropy= (per-token entropy [B, T])")
    c.loss_ops_backend("logprobs", logprobs)
    scale = _pl.aggregation_scale(m, aggregation, **counts)
    loss, stats = _pl.policy_loss(logprobs, adv, m, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
                                  rollout_logprobs=rollout_logprobs, entropy=entropy, cfg=cfg,
                                  importance_sampling_level=importance_sampling_level, scale=scale,
                                  gates=_po.gate_config(opts))
    return LossOutput(loss, _pl.metrics(stats, entropy is not None, ref_logprobs is not None))


@dataclasses.dataclass(frozen=True)
class _PolicyOptions:
    """policy_loss's peer options under the GROObjective field names (what policy_options checks and reads)."""

    surrogate: str = "clip"
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    tis_cap: Optional[float] = None
    delta: Optional[float] = None
    cispo_ratio_min: Optional[float] = None
    sapo_tau_pos: float = 1.0
    sapo_tau_neg: float = 1.05
    dppo_ratio_cap: float = 20.0
    dro_beta: Optional[float] = None
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0
    kl_ratio_weighted: bool = False
    entropy_aggregation: str = "loss"
    top_entropy_quantile: float = 1.0
    off_policy_mask_threshold: Optional[float] = None
    rollout_is_mode: Optional[str] = None
    rollout_is_min: Optional[float] = None
    clip_cov_ratio: float = 2e-4
    clip_cov_lb: float = 1.0
    clip_cov_ub: float = 5.0
    kl_cov_ratio: float = 2e-4
    ppo_kl_coef: float = 0.1
    importance_sampling_level: str = "token"
    dual_clip: Optional[float] = None


_POLICY_FIELDS = tuple(f.name for f in dataclasses.fields(_PolicyOptions) if f.name not in ("surrogate", "epsilon_low",
                                                                                             "epsilon_high", "tis_cap",
                                                                                             "importance_sampling_level",
                                                                                             "dual_clip"))


def _take_peer(peer, field, name, value, default):
    """A policy_loss argument or the peer name that sets the same field; both given and different: refused."""
    if field not in peer:
        return value
    if value != default and value != peer[field]:
        raise ValueError(f"{name}={value!r} and a TRL / verl option setting it to {peer[field]!r} are both given; "
                         "pass one of them")
    return peer.pop(field)


def _peer_options(options, loss_mode, loss_agg_mode, loss_type, surrogate):
    """(GROObjective-named options, surrogate, loss_type) from policy_loss's peer keywords."""
    unknown = sorted(set(options) - set(_POLICY_FIELDS) - set(_po.PEER_NAMES))
    if unknown:
        raise TypeError(f"policy_loss got unexpected keyword argument(s) {unknown}; peer options are "
                        f"{list(_POLICY_FIELDS)} and {list(_po.PEER_NAMES)}")
    given = dict(options, loss_mode=loss_mode, loss_agg_mode=loss_agg_mode)
    if loss_type != "grpo":
        given["loss_type"] = loss_type
    if surrogate != "clip":
        given["surrogate"] = surrogate
    peer = _po.translate({k: val for k, val in given.items() if val is not None})
    if "aggregation" in peer:
        loss_type = peer.pop("aggregation")
    peer.pop("loss_type", None)
    return peer, peer.pop("surrogate", surrogate), loss_type


def _token_config(surrogate, epsilon, epsilon_low, epsilon_high, dual_clip, beta, kl_estimator, entropy_coef,
                  tis_cap) -> TokenLossConfig:
    """policy_loss's options as a TokenLossConfig, through the checks gro_loss's objective also gets."""
    if epsilon is not None and epsilon_low is not None:
        raise ValueError(f"epsilon={epsilon!r} and epsilon_low={epsilon_low!r} both set the lower clip bound; "
                         "pass one of them")
    for name, value in (("epsilon", epsilon), ("beta", beta)):
        c.epsilon_value(name, value)
    eps = 0.2 if epsilon is None else epsilon
    cfg = TokenLossConfig(surrogate=surrogate, epsilon_low=eps if epsilon_low is None else epsilon_low,
                          epsilon_high=eps if epsilon_high is None else epsilon_high, dual_clip=dual_clip,
                          kl_coef=beta, kl_estimator=kl_estimator, entropy_coef=entropy_coef, tis_cap=tis_cap)
    check_token_options(cfg, names={"kl_coef": "beta"})
    return cfg


def _require_term_inputs(cfg, ref_logprobs, rollout_logprobs, entropy):
    """A loss term switched on without its input would silently drop out of the loss."""
    if cfg.kl_coef != 0 and ref_logprobs is None:
        raise ValueError("beta > 0 (KL penalty) needs ref_logprobs=")
    if cfg.tis_cap is not None and rollout_logprobs is None:
        raise ValueError("tis_cap (truncated importance sampling) needs rollout_logprobs=")
    if cfg.entropy_coef != 0 and entropy is None:
        raise ValueError(f"entropy_coef={cfg.entropy_coef} (entropy bonus) needs entropy= (per-token entropy "
                         "[B, T], e.g. linear_logprobs(..., return_entropy=True))")


def preference_loss(logprobs, mask=None, *, loss_type="dpo", ref_logprobs=None, pair_ids=None, chosen=None,
                    desirable=None, kto_z0=None, beta=0.1, kl_logps=None, ref_kl_logps=None, log_sum_sq_probs=None,
                    **options):
    """RL-free loss on sequence sums of per-token logprobs [B, T] (docs/math.md §4), and metrics.

    loss_type "dpo" (label_smoothing), "ipo", "simpo" (simpo_gamma), "kto" (desirable [B] bool,
    desirable_weight, undesirable_weight, kto_z0 or the detached batch estimate), "cpl" (cpl_lambda,
    cpl_discount; alpha = beta). Pairs: pair_ids [B] (rows sharing an id form a pair) and chosen [B].
    ref_logprobs [B, T] for dpo, ipo, kto. beta: the implicit-reward scale. Returns LossOutput(loss, metrics).
    TRL's names (docs/math.md §4): loss_type also takes "sigmoid" (= "dpo"), TRL's DPO loss types ("ipo_norm" is
    TRL's length-normalized IPO), a list of them with loss_weights, "apo_zero_unpaired", the CPO losses "cpo",
    "cpo_hinge", "cpo_ipo"; options f_divergence_type, f_alpha_divergence_coef, ld_alpha, use_weighting (with
    log_sum_sq_probs [B, T]), discopop_tau, rpo_alpha, cpo_alpha, alpha; KTO's z0 TRL's way from kl_logps and
    ref_kl_logps (sequence logprobs of mismatched pairs, [K] each).
    """
    m = _mask_2d(mask, logprobs)
    batch, device = logprobs.shape[0], logprobs.device
    cfg = preference_config(loss_type, beta, options)
    if _pref.needs_reference(cfg) and ref_logprobs is None:
        raise ValueError(f"loss_type={loss_type!r} needs ref_logprobs=")
    c.token_tensor("ref_logprobs", ref_logprobs, logprobs.shape, device=device)
    c.kto_z0_value(kto_z0)
    check_trl_inputs(cfg, dict(log_sum_sq_probs=log_sum_sq_probs, kl_logps=kl_logps, ref_kl_logps=ref_kl_logps,
                               kto_z0=kto_z0), logprobs.shape, device)
    offline = torch.ones(batch, dtype=torch.bool, device=logprobs.device)
    if _pref.is_unpaired(cfg):
        if desirable is None:
            raise ValueError(f"loss_type={loss_type!r} needs desirable= (bool per row)")
        v.require_tensor("desirable", desirable)
        v.require_same_device("desirable", desirable, "logprobs", logprobs)
        desirable = c.bool_tensor("desirable", desirable, (batch,))
    else:
        if pair_ids is None or chosen is None:
            raise ValueError(f"loss_type={loss_type!r} needs pair_ids= and chosen= "
                             "(rows sharing a pair id form a pair)")
        c.row_tensor("pair_ids", pair_ids, batch, floating=False, device=device)
        v.require_tensor("chosen", chosen)
        v.require_same_device("chosen", chosen, "logprobs", logprobs)
        chosen = c.bool_tensor("chosen", chosen, (batch,))
        c.check_pairs(pair_ids, chosen, offline)
    return LossOutput(*_pref.preference_loss(logprobs, m, ref_logprobs, offline, cfg, pair_ids=pair_ids,
                                             chosen=chosen, desirable=desirable, kto_z0=kto_z0, kl_logps=kl_logps,
                                             ref_kl_logps=ref_kl_logps, log_sum_sq_probs=log_sum_sq_probs))

