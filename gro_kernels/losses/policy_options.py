"""The policy side of GRO in the peers' own vocabulary (docs/peer_names.md): TRL GRPOConfig and verl
policy_loss / actor names translated to GROObjective fields, the checks of the peer options, and the
objective's per-token (TokenLossConfig) and gate (GateConfig) parts."""

from .. import _validate as v
from . import checks as c
from ..ops.policy_loss.coupled import COUPLED_SURROGATES, CoupledConfig
from ..ops.policy_loss.gates import ENTROPY_AGGREGATIONS, ROLLOUT_IS_MODES, GateConfig
from ..ops.policy_loss.token_terms import TokenLossConfig

# TRL loss_type values that choose a surrogate as well as an aggregation (the aggregation: config.TRL_LOSS_TYPES).
TRL_LOSS_SURROGATES = {"cispo": "cispo", "sapo": "sapo", "vespo": "vespo"}
TRL_EXTRA_LOSS_TYPES = {"cispo": "token_mean", "sapo": "seq_mean_token_mean", "vespo": "token_mean",
                        "luspo": "seq_mean_token_sum"}
# verl loss_agg_mode -> aggregation.
VERL_AGGREGATIONS = {"token-mean": "token_mean", "token-sum": "token_sum", "seq-mean-token-mean": "seq_mean_token_mean",
                     "seq-mean-token-sum": "seq_mean_token_sum", "seq-mean-token-sum-norm": "seq_mean_token_sum_norm"}
# verl policy_loss.loss_mode -> surrogate (gspo: the sequence-level ratio with per-token gradients).
VERL_LOSS_MODES = {"vanilla": "clip", "gpg": "reinforce", "sapo": "sapo", "cispo": "cispo", "dppo_tv": "dppo_tv",
                   "dppo_kl": "dppo_kl", "dro": "dro", "gspo": "clip", "geo_mean": "geo_mean", "clip_cov": "clip_cov",
                   "kl_cov": "kl_cov"}
VERL_UNSUPPORTED_LOSS_MODES = ("bypass_mode",)
# verl kl_loss_type -> kl_estimator (verl's k3 is clamped: gro's low_var_kl; "+": k2's gradient).
VERL_KL = {"kl": "k1", "k1": "k1", "abs": "abs", "mse": "k2", "k2": "k2", "low_var_kl": "low_var_kl",
           "k3": "low_var_kl", "kl+": "k1+", "k1+": "k1+", "abs+": "abs+", "mse+": "k2", "k2+": "k2",
           "low_var_kl+": "low_var_kl+", "k3+": "low_var_kl+"}
# gro's own kl_estimator also takes the verl names whose meaning does not clash with gro's (not "k3").
KL_NAMES = {name: est for name, est in VERL_KL.items() if name != "k3"}
# Peer field -> GROObjective field, same value.
RENAMES = {"use_bias_correction_kl": "kl_ratio_weighted", "sapo_temperature_pos": "sapo_tau_pos",
           "sapo_temperature_neg": "sapo_tau_neg", "tau_pos": "sapo_tau_pos", "tau_neg": "sapo_tau_neg",
           "vllm_importance_sampling_mode": "rollout_is_mode", "vllm_importance_sampling_clip_max": "tis_cap",
           "vllm_importance_sampling_clip_min": "rollout_is_min", "kl_loss_coef": "kl_coef"}
VERL_NAMES = ("loss_mode", "loss_agg_mode", "kl_loss_type", "clip_ratio", "clip_ratio_low", "clip_ratio_high",
              "clip_ratio_c")
PEER_NAMES = tuple(RENAMES) + VERL_NAMES


def _set(out, field, value, source):
    """One GROObjective field from a peer name; two names for one field must not both be given."""
    if out.get(field) is not None and out[field] != value:
        raise ValueError(f"{source}={value!r} and {field}={out[field]!r} both set {field}; pass one of them")
    out[field] = value


def translate(overrides: dict) -> dict:
    """gro_loss overrides with the TRL / verl policy names replaced by GROObjective fields. TRL's loss_type is left
    in place (config.py maps its aggregation) but sets the surrogate of cispo / sapo / vespo."""
    out = {k: val for k, val in overrides.items() if k not in PEER_NAMES}
    for name, field in RENAMES.items():
        if overrides.get(name) is not None:
            _set(out, field, overrides[name], name)
    loss_type = overrides.get("loss_type")
    if isinstance(loss_type, str) and loss_type in TRL_LOSS_SURROGATES:  # offline presets take lists
        _set(out, "surrogate", TRL_LOSS_SURROGATES[loss_type], f"loss_type={loss_type!r} (surrogate)")
    if "kl_estimator" in out and out["kl_estimator"] in KL_NAMES:
        out["kl_estimator"] = KL_NAMES[out["kl_estimator"]]
    _verl(overrides, out)
    return out


def _verl(overrides, out):
    get = overrides.get
    agg = get("loss_agg_mode")
    if agg is not None:
        if agg not in VERL_AGGREGATIONS:
            raise ValueError(f"loss_agg_mode must be one of {sorted(VERL_AGGREGATIONS)}, got {agg!r}")
        if get("loss_type") is not None:
            raise ValueError(f"loss_agg_mode={agg!r} and loss_type={get('loss_type')!r} both set the aggregation; "
                             "pass one of them")
        _set(out, "aggregation", VERL_AGGREGATIONS[agg], "loss_agg_mode")
    kl = get("kl_loss_type")
    if kl is not None:
        if kl not in VERL_KL:
            raise ValueError(f"kl_loss_type must be one of {sorted(VERL_KL)}, got {kl!r}")
        _set(out, "kl_estimator", VERL_KL[kl], "kl_loss_type")
    mode = get("loss_mode")
    if mode in VERL_UNSUPPORTED_LOSS_MODES:
        raise ValueError(f"loss_mode={mode!r} (verl) is not implemented in gro-kernels; supported: "
                         f"{sorted(VERL_LOSS_MODES)}")
    if mode is not None and mode not in VERL_LOSS_MODES:
        raise ValueError(f"loss_mode must be one of {sorted(VERL_LOSS_MODES)}, got {mode!r}")
    low = get("clip_ratio_low", get("clip_ratio"))
    high = get("clip_ratio_high", get("clip_ratio"))
    if mode == "cispo":  # verl clips the CISPO weight to [1 - clip_ratio_low, 1 + clip_ratio_high] (0.2 default)
        _set(out, "surrogate", "cispo", "loss_mode")
        _set(out, "cispo_ratio_min", 1.0 - (0.2 if low is None else low), "clip_ratio_low (loss_mode='cispo')")
        _set(out, "epsilon_high", 1.0 + (0.2 if high is None else high), "clip_ratio_high (loss_mode='cispo')")
    else:
        if low is not None:
            _set(out, "epsilon_low", low, "clip_ratio_low")
        if high is not None:
            _set(out, "epsilon_high", high, "clip_ratio_high")
        if mode is not None:
            _set(out, "surrogate", VERL_LOSS_MODES[mode], "loss_mode")
    if mode == "gspo":
        _set(out, "importance_sampling_level", "sequence_token", "loss_mode='gspo'")
    cap = get("clip_ratio_c")
    if mode in ("dppo_tv", "dppo_kl"):
        if cap is not None:
            _set(out, "dppo_ratio_cap", cap, "clip_ratio_c")
    elif mode == "vanilla":  # verl's vanilla loss always dual-clips negative advantages (clip_ratio_c 3 default)
        _set(out, "dual_clip", 3.0 if cap is None else cap, "clip_ratio_c")
    elif cap is not None:
        raise ValueError(f"clip_ratio_c applies to loss_mode 'vanilla' (dual clip) and 'dppo_tv' / 'dppo_kl' (IS "
                         f"cap), got loss_mode={mode!r}; use dual_clip= for gro's dual clip")


def check_policy_options(cfg, names=None):
    """The peer options of the policy side, on a GROObjective or a policy_loss option set (same field names)."""
    name = lambda field: (names or {}).get(field, field)  # noqa: E731
    if cfg.delta is not None:
        v.require_positive_finite(name("delta"), cfg.delta)
        if cfg.delta <= 1.0:  # the cap must let ratios above 1 through, else every A > 0 token loses its gradient
            raise ValueError(f"{name('delta')} must be > 1 (TRL recommends > 1 + epsilon_high), got {cfg.delta}")
    if cfg.cispo_ratio_min is not None:
        v.require_nonnegative(name("cispo_ratio_min"), cfg.cispo_ratio_min)
        if cfg.surrogate != "cispo":
            raise ValueError(f"{name('cispo_ratio_min')} applies to surrogate='cispo', got {cfg.surrogate!r}")
        if cfg.cispo_ratio_min > cfg.epsilon_high:
            raise ValueError(f"{name('cispo_ratio_min')}={cfg.cispo_ratio_min} exceeds the cispo ratio cap "
                             f"epsilon_high={cfg.epsilon_high}")
    for field in ("sapo_tau_pos", "sapo_tau_neg", "dppo_ratio_cap"):
        v.require_positive_finite(name(field), getattr(cfg, field))
    if cfg.surrogate == "dro":
        if cfg.dro_beta is None:
            raise ValueError(f"surrogate='dro' needs {name('dro_beta')}= > 0 (verl policy_loss.dro_beta)")
    if cfg.dro_beta is not None:
        v.require_positive_finite(name("dro_beta"), cfg.dro_beta)
        if cfg.surrogate != "dro":
            raise ValueError(f"{name('dro_beta')} applies to surrogate='dro', got {cfg.surrogate!r}")
    for field in ("vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg"):
        c.finite_float(name(field), getattr(cfg, field))
    for field in ("clip_cov_ratio", "kl_cov_ratio"):
        v.require_positive_finite(name(field), getattr(cfg, field))  # verl asserts > 0
    v.require_nonnegative(name("ppo_kl_coef"), cfg.ppo_kl_coef)
    for field in ("clip_cov_lb", "clip_cov_ub"):
        c.finite_float(name(field), getattr(cfg, field))
    if cfg.surrogate in COUPLED_SURROGATES and (cfg.importance_sampling_level != "token" or cfg.dual_clip is not None):
        raise ValueError(f"surrogate={cfg.surrogate!r} (verl) has a token-level ratio and no dual clip; got "
                         f"importance_sampling_level={cfg.importance_sampling_level!r}, dual_clip={cfg.dual_clip!r}")
    if cfg.surrogate in COUPLED_SURROGATES and (cfg.rollout_is_mode is not None or cfg.tis_cap is not None):
        raise ValueError(f"surrogate={cfg.surrogate!r}: rollout IS weights (tis_cap / rollout_is_mode) are not "
                         "implemented for the coupled verl losses")
    v.require_bool(name("kl_ratio_weighted"), cfg.kl_ratio_weighted)
    if cfg.entropy_aggregation not in ENTROPY_AGGREGATIONS:
        raise ValueError(f"{name('entropy_aggregation')} must be one of {ENTROPY_AGGREGATIONS}, "
                         f"got {cfg.entropy_aggregation!r}")
    q = cfg.top_entropy_quantile
    c.finite_float(name("top_entropy_quantile"), q)
    if not 0.0 < q <= 1.0:  # q = 0 would train on no token at all
        raise ValueError(f"{name('top_entropy_quantile')} must be in (0, 1], got {q}")
    if cfg.off_policy_mask_threshold is not None:
        c.finite_float(name("off_policy_mask_threshold"), cfg.off_policy_mask_threshold)
    mode = cfg.rollout_is_mode
    if mode is not None and mode not in ROLLOUT_IS_MODES:
        raise ValueError(f"{name('rollout_is_mode')} must be one of {ROLLOUT_IS_MODES} or None, got {mode!r}")
    if cfg.rollout_is_min is not None:
        v.require_nonnegative(name("rollout_is_min"), cfg.rollout_is_min)
        if mode is None:
            raise ValueError(f"{name('rollout_is_min')} needs {name('rollout_is_mode')}= (e.g. 'token_truncate')")
    if cfg.surrogate == "vespo" and mode not in (None, "token_truncate", "token_mask"):
        raise ValueError(f"surrogate='vespo' takes {name('rollout_is_mode')} 'token_truncate' or 'token_mask' (TRL), "
                         f"got {mode!r}")


def token_surrogate(surrogate: str) -> str:
    """The per-token surrogate: vespo is reinforce's -A l times its gate phi; the coupled ones (coupled.py) bring
    their own pg and leave the token function the KL and entropy terms (reinforce with A = 0)."""
    return "reinforce" if surrogate == "vespo" or surrogate in COUPLED_SURROGATES else surrogate


def uses_gates(cfg) -> bool:
    """rollout_is_mode set (token_truncate with only a cap is gro's tis_cap: the token function's own path, except
    for vespo, which folds the IS ratio into its phi instead of multiplying the loss by it)."""
    if cfg.rollout_is_mode is None:
        return False
    return cfg.surrogate == "vespo" or not (cfg.rollout_is_mode == "token_truncate" and cfg.rollout_is_min is None)


def token_extras(cfg) -> dict:
    """The TokenLossConfig fields of the peer options."""
    return dict(delta=cfg.delta, cispo_ratio_min=cfg.cispo_ratio_min, sapo_tau_pos=cfg.sapo_tau_pos,
                sapo_tau_neg=cfg.sapo_tau_neg, dppo_ratio_cap=cfg.dppo_ratio_cap, dro_beta=cfg.dro_beta or 0.0,
                kl_ratio_weighted=cfg.kl_ratio_weighted)


def gate_config(cfg) -> GateConfig:
    vespo = (cfg.vespo_k_pos, cfg.vespo_lambda_pos, cfg.vespo_k_neg, cfg.vespo_lambda_neg) \
        if cfg.surrogate == "vespo" else None
    gated = uses_gates(cfg)
    coupled = None
    if cfg.surrogate in COUPLED_SURROGATES:
        coupled = CoupledConfig(cfg.surrogate, epsilon_low=cfg.epsilon_low, epsilon_high=cfg.epsilon_high,
                                clip_cov_ratio=cfg.clip_cov_ratio, clip_cov_lb=cfg.clip_cov_lb,
                                clip_cov_ub=cfg.clip_cov_ub, kl_cov_ratio=cfg.kl_cov_ratio, ppo_kl_coef=cfg.ppo_kl_coef)
    return GateConfig(coupled=coupled, rollout_is_mode=cfg.rollout_is_mode if gated else None,
                      rollout_is_min=cfg.rollout_is_min, rollout_is_max=cfg.tis_cap if gated else None,
                      top_entropy_quantile=cfg.top_entropy_quantile,
                      off_policy_mask_threshold=cfg.off_policy_mask_threshold, vespo=vespo,
                      entropy_aggregation=cfg.entropy_aggregation)


def tis_cap(cfg):
    """The token function's own truncated-IS cap: off when the gate carries the rollout IS weight."""
    return None if uses_gates(cfg) else cfg.tis_cap


def token_config(cfg, **fields) -> TokenLossConfig:
    """A TokenLossConfig from an objective-like cfg; fields: the base TokenLossConfig fields as the caller computed."""
    return TokenLossConfig(surrogate=token_surrogate(cfg.surrogate), tis_cap=tis_cap(cfg), **fields,
                           **token_extras(cfg))
