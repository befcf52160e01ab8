"""gro_loss configuration: a preset (or GROObjective) plus keyword overrides in TRL/verl vocabulary,
validated; the option checks every loss entry point shares (check_token_options, check_preference_options,
check_aggregation_counts); and the per-batch input checks that depend on the config."""

import dataclasses
import math

from . import advantages as _ext_adv
from . import checks as c
from . import policy_options as pol
from .. import _validate as v
from ..ops.policy_loss.function import AGGREGATIONS, IS_LEVELS
from ..ops.policy_loss.token_terms import KL_ESTIMATORS, SURROGATES, TokenLossConfig
from ..ops.preference_loss.function import PreferenceConfig, is_unpaired
from . import preference_options as po
from ..presets import GROObjective, get_preset

# TRL loss_type -> aggregation (dapo's global count comes from global_token_count when given).
TRL_LOSS_TYPES = {"grpo": "seq_mean_token_mean", "bnpo": "token_mean", "dapo": "token_mean",
                  "dr_grpo": "seq_mean_token_sum_norm", **pol.TRL_EXTRA_LOSS_TYPES}
SCALE_REWARDS = {"group": "std", "batch": "batch_std", "none": "identity"}
ROWS = ("online", "offline", "mixed")
_FIELDS = {f.name for f in dataclasses.fields(GROObjective)} - {"name"}
_ALIASES = ("beta", "epsilon", "loss_type", "scale_rewards", "adv_estimator", "norm_adv_by_std_in_grpo")
# verl's algorithm.adv_estimator -> GROObjective (anchor, magnitude). reinforce_plus_plus has no baseline at all
# (anchor "none"); gro's reinforce_pp preset (anchor "batch_mean") subtracts the group mean when groups are given.
VERL_ADV_ESTIMATORS = {"gae": ("value", "whiten"), "grpo": ("group_mean", "std"),
                       "grpo_vectorized": ("group_mean", "std"), "reinforce_plus_plus": ("none", "whiten"),
                       "reinforce_plus_plus_baseline": ("group_mean_score", "whiten"),
                       "remax": ("greedy", "identity"), "rloo": ("leave_one_out", "identity"),
                       "rloo_vectorized": ("leave_one_out", "identity"), "opo": ("length_weighted_mean", "identity"),
                       "grpo_passk": ("best_of_group", "std"), "gpg": ("group_mean", "nonzero_share"),
                       "optimal_token_baseline": ("optimal_token", "identity"),
                       "tir_optimal_token_baseline": ("optimal_token_aligned", "identity")}
PREFERENCE_OPTIONS = tuple(f.name for f in dataclasses.fields(PreferenceConfig) if f.name not in ("loss", "beta"))
COUNT_OPTIONS = ("global_token_count", "max_completion_length", "num_sequences")


# ---- option checks shared by gro_loss, policy_loss and preference_loss ----

def _choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def check_token_options(cfg: TokenLossConfig, names=None):
    """The per-token policy options (docs/math.md §3), whoever builds them. names: the public name of a field
    where an entry point calls it differently (policy_loss's beta is kl_coef)."""
    name = lambda field: (names or {}).get(field, field)  # noqa: E731
    _choice(name("surrogate"), cfg.surrogate, SURROGATES)
    _choice(name("kl_estimator"), cfg.kl_estimator, KL_ESTIMATORS)
    for field in ("epsilon_low", "epsilon_high", "kl_coef"):
        v.require_nonnegative(name(field), getattr(cfg, field))
    c.finite_float(name("entropy_coef"), cfg.entropy_coef)
    dual = cfg.dual_clip
    if dual is not None and not (v.is_number(dual) and math.isfinite(dual) and dual > 1.0):
        # c <= 1 would cap the loss of negative advantages below the clipped surrogate itself.
        raise ValueError(f"{name('dual_clip')} must be a finite number > 1 (3 is typical) or None, got {dual!r}")
    if cfg.tis_cap is not None:
        v.require_positive_finite(name("tis_cap"), cfg.tis_cap)  # a cap <= 0 flips or zeroes the loss


def check_preference_options(cfg: PreferenceConfig, names=None):
    """The preference-loss options (docs/math.md §4), whoever builds them (names as for check_token_options)."""
    name = lambda field: (names or {}).get(field, field)  # noqa: E731
    po.check_trl_options(cfg, name)  # loss name(s) and TRL's DPO/CPO fields
    v.require_positive_finite(name("beta"), cfg.beta)
    check_label_smoothing(name("label_smoothing"), cfg.label_smoothing)
    for field in ("simpo_gamma", "cpl_lambda", "desirable_weight", "undesirable_weight"):
        v.require_nonnegative(name(field), getattr(cfg, field))
    v.require_positive_finite(name("cpl_discount"), cfg.cpl_discount)


def check_label_smoothing(name, value):
    v.require_nonnegative(name, value)
    if value >= 0.5:  # at 0.5 the DPO loss no longer prefers the chosen answer; above it, the rejected one
        raise ValueError(f"{name} must be in [0, 0.5), got {value}")


def check_aggregation_counts(counts: dict):
    """global_token_count, max_completion_length, num_sequences: > 0 when given (0 would be clamped to 1)."""
    for name in COUNT_OPTIONS:
        c.count_option(name, counts.get(name))


def preference_config(loss_type, beta, options: dict) -> PreferenceConfig:
    """PreferenceConfig from preference_loss's keyword options, refusing names it does not have."""
    unknown = sorted(set(options) - set(PREFERENCE_OPTIONS))
    if unknown:
        raise TypeError(f"preference_loss got unexpected keyword argument(s) {unknown}; options are loss_type, "
                        f"beta and {list(PREFERENCE_OPTIONS)}")
    if isinstance(options.get("loss_weights"), list):
        options = {**options, "loss_weights": tuple(options["loss_weights"])}
    cfg = PreferenceConfig(loss=po.gro_loss_type(loss_type), beta=beta, **options)
    check_preference_options(cfg, names={"loss": "loss_type"})
    return cfg


# ---- gro_loss: preset + overrides ----

def _reject_aliased_twice(base: GROObjective, overrides: dict):
    """A TRL name and the GROObjective field it sets, given together: one would silently win. (epsilon with
    epsilon_high is TRL's own asymmetric clip: epsilon sets the lower bound, epsilon_high the upper.)"""
    beta_sets = {"online": "kl_coef", "offline": "preference_beta"}.get(base.rows)  # mixed: beta is refused
    loss_type_sets = "offline_loss_type" if base.rows == "offline" else "aggregation"
    for alias, field in (("beta", beta_sets), ("epsilon", "epsilon_low"), ("loss_type", loss_type_sets),
                         ("scale_rewards", "magnitude")):
        if field is not None and overrides.get(alias) is not None and overrides.get(field) is not None:
            raise ValueError(f"{alias}={overrides[alias]!r} and {field}={overrides[field]!r} both set {field}; "
                             f"pass one of them")


def _alias_overrides(base: GROObjective, overrides: dict) -> dict:
    """Translate TRL names: beta, epsilon, loss_type, scale_rewards."""
    out = {k: val for k, val in overrides.items() if k not in _ALIASES and val is not None}
    beta = overrides.get("beta")
    if beta is not None:
        c.nonneg("beta", beta)
        if base.rows == "mixed":
            raise ValueError("beta is ambiguous for a mixed online/offline config: pass kl_coef= (online KL) and "
                             "preference_beta= (offline implicit-reward scale)")
        out.setdefault("kl_coef" if base.rows == "online" else "preference_beta", beta)
    eps = overrides.get("epsilon")
    if eps is not None:
        c.nonneg("epsilon", eps)
        out.setdefault("epsilon_low", eps)
        if base.epsilon_high == base.epsilon_low:  # symmetric presets; dapo/cispo/gspo keep their upper clip
            out.setdefault("epsilon_high", eps)
    loss_type = overrides.get("loss_type")
    if loss_type is not None and base.rows == "offline":  # TRL's DPO/KTO/CPO loss_type (TRL names, gro losses)
        out.setdefault("offline_loss_type", po.trl_loss_type(base.offline_loss, loss_type))
    elif loss_type is not None:
        if loss_type not in TRL_LOSS_TYPES and loss_type not in AGGREGATIONS:
            raise ValueError(f"loss_type must be one of {sorted(TRL_LOSS_TYPES)} or {AGGREGATIONS}, got {loss_type!r}")
        out.setdefault("aggregation", TRL_LOSS_TYPES.get(loss_type, loss_type))
    scale = overrides.get("scale_rewards")
    if scale is not None:
        scale = {True: "group", False: "none"}.get(scale, scale)
        if scale not in SCALE_REWARDS:
            raise ValueError(f"scale_rewards must be one of {sorted(SCALE_REWARDS)} (or a bool), got {scale!r}")
        if base.anchor != "group_mean":
            raise ValueError(f"scale_rewards applies to group-mean presets, not {base.name!r}")
        out.setdefault("magnitude", SCALE_REWARDS[scale])
    _verl_advantage_overrides(base, overrides, out)
    return out


def _verl_advantage_overrides(base: GROObjective, overrides: dict, out: dict):
    """verl's adv_estimator (-> anchor, magnitude) and norm_adv_by_std_in_grpo (std or not)."""
    estimator, norm = overrides.get("adv_estimator"), overrides.get("norm_adv_by_std_in_grpo")
    for alias, value in (("adv_estimator", estimator), ("norm_adv_by_std_in_grpo", norm)):
        taken = [f for f in ("anchor", "magnitude", "scale_rewards") if overrides.get(f) is not None]
        if value is not None and taken and not (alias == "norm_adv_by_std_in_grpo" and taken == ["anchor"]):
            raise ValueError(f"{alias}={value!r} and {taken[0]}={overrides[taken[0]]!r} both set the advantage "
                             "estimator; pass one of them")
    if estimator is not None:
        if estimator == "gdpo":
            raise ValueError("adv_estimator='gdpo' needs several reward columns per row, which rewards= [B] cannot "
                             "carry: pass advantages=group_advantages(rewards [B, K], mode='gdpo', mask=..., "
                             "group_ids=...)")
        if estimator not in VERL_ADV_ESTIMATORS:
            raise ValueError(f"adv_estimator must be one of verl's {sorted(VERL_ADV_ESTIMATORS)}, got {estimator!r}")
        out["anchor"], out["magnitude"] = VERL_ADV_ESTIMATORS[estimator]
    if norm is not None:
        if not isinstance(norm, bool):
            raise TypeError(f"norm_adv_by_std_in_grpo must be a bool, got {type(norm).__name__} {norm!r}")
        anchor = out.get("anchor", base.anchor)
        if anchor not in ("group_mean", "best_of_group") or out.get("magnitude", base.magnitude) not in ("std",
                                                                                                    "identity"):
            raise ValueError(f"norm_adv_by_std_in_grpo applies to grpo / grpo_passk advantages, not anchor "
                             f"{anchor!r} (preset {base.name!r})")
        out["magnitude"] = "std" if norm else "identity"


def resolve_config(preset, config, overrides: dict) -> GROObjective:
    """The GROObjective of this call: `config` or the named preset ("grpo" when neither is given), with
    keyword overrides applied."""
    if preset is not None and config is not None:
        what = f"GROObjective(name={config.name!r}, ...)" if isinstance(config, GROObjective) else repr(config)
        raise ValueError(f"pass preset= or config=, not both: got preset={preset!r} and config={what}")
    if config is not None:
        if not isinstance(config, GROObjective):
            raise TypeError(f"config must be a GROObjective, got {type(config).__name__}")
        base = config
    else:
        base = get_preset("grpo" if preset is None else preset)
    unknown = sorted(set(overrides) - _FIELDS - set(_ALIASES) - set(pol.PEER_NAMES))
    if unknown:
        raise TypeError(f"gro_loss got unexpected keyword argument(s) {unknown}; options are the GROObjective fields "
                        f"{sorted(_FIELDS)}, the TRL names {list(_ALIASES)}, the TRL / verl policy names "
                        f"{list(pol.PEER_NAMES)} and the batch inputs")
    overrides = pol.translate(overrides)
    _reject_aliased_twice(base, overrides)
    cfg = dataclasses.replace(base, **_alias_overrides(base, overrides))
    _check_config(cfg)
    return cfg


def _check_config(cfg: GROObjective):
    choices = {"rows": ROWS, "importance_sampling_level": IS_LEVELS, "aggregation": AGGREGATIONS,
               "kl_estimator": KL_ESTIMATORS + ("exact",)}
    for name, allowed in choices.items():
        _choice(name, getattr(cfg, name), allowed)
    # The objective's per-token part through the same checks as policy_loss ("exact" is checked above).
    estimator = "k3" if cfg.kl_estimator == "exact" else cfg.kl_estimator
    check_token_options(TokenLossConfig(surrogate=pol.token_surrogate(cfg.surrogate), epsilon_low=cfg.epsilon_low,
                                        epsilon_high=cfg.epsilon_high, dual_clip=cfg.dual_clip, kl_coef=cfg.kl_coef,
                                        kl_estimator=estimator, entropy_coef=cfg.entropy_coef, tis_cap=cfg.tis_cap))
    pol.check_policy_options(cfg)
    if cfg.has_online:
        mode = cfg.advantage_mode[0]  # raises on an unsupported anchor/magnitude pair
        _ext_adv.check_gamma_lam(mode, cfg.gamma, cfg.lam, who="advantage mode")
        v.require_bool("handle_zero_tail", cfg.handle_zero_tail)
        v.require_bool("normalize_advantages", cfg.normalize_advantages)
        if cfg.normalize_advantages and mode in _ext_adv.TOKEN_MODES:
            raise ValueError(f"normalize_advantages whitens sequence advantages; advantage mode {mode!r} is "
                             "token-level and already whitened (or, for optimal_token_baseline, never is)")
    v.require_positive_finite("advantage_eps", cfg.advantage_eps)
    if cfg.has_offline:
        check_preference_options(objective_preference_config(cfg), names={"beta": "preference_beta (beta)",
                                                                          "loss": "offline_loss_type (loss_type)"})
    else:  # unused without offline rows, but a bad value is still refused rather than kept
        for name in ("desirable_weight", "undesirable_weight", "simpo_gamma", "cpl_lambda"):
            v.require_nonnegative(name, getattr(cfg, name))
        check_label_smoothing("label_smoothing", cfg.label_smoothing)
        po.reject_offline_only_fields(cfg)


def objective_preference_config(cfg: GROObjective) -> PreferenceConfig:
    """The PreferenceConfig of a GROObjective's offline rows."""
    return PreferenceConfig(loss=po.gro_loss_type(cfg.offline_loss), beta=cfg.preference_beta,
                            label_smoothing=cfg.label_smoothing,
                            simpo_gamma=cfg.simpo_gamma, cpl_lambda=cfg.cpl_lambda, cpl_discount=cfg.cpl_discount,
                            desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight,
                            **po.objective_trl_fields(cfg))


def check_batch_inputs(cfg: GROObjective, inputs: dict, batch: int, shape, device):
    """Shapes of every per-row / per-token input, and what the config requires to be present."""
    _reject_competing_inputs(cfg, inputs)
    if inputs["advantages"] is not None:
        c.advantages_tensor(inputs["advantages"], batch, shape)
    for name in ("rewards", "baseline"):
        c.row_tensor(name, inputs[name], batch, device=device)
    for name in ("old_logprobs", "ref_logprobs", "rollout_logprobs"):
        c.token_tensor(name, inputs[name], shape, device=device)
    c.ref_hidden_tensor(inputs["ref_hidden"], shape)
    for name in ("values", "sum_pi_squared", "rollout_is_weights"):
        c.token_tensor(name, inputs[name], shape, device=device)
    check_aggregation_counts(inputs)
    if inputs["eps"] is not None:
        v.require_positive_finite("eps", inputs["eps"])
    if cfg.has_online and cfg.tis_cap is not None and inputs["rollout_logprobs"] is None:
        raise ValueError("tis_cap (truncated importance sampling) needs rollout_logprobs=")
    if cfg.has_online and cfg.rollout_is_mode is not None:
        missing = [n + "=" for n in ("old_logprobs", "rollout_logprobs") if inputs[n] is None]
        if missing:  # TRL always has both with vLLM: w = pi_old / pi_rollout
            raise ValueError(f"rollout_is_mode={cfg.rollout_is_mode!r} (vLLM importance sampling) needs "
                             f"{' and '.join(missing)}")
    if cfg.has_offline:
        po.check_trl_inputs(objective_preference_config(cfg), inputs, shape, device)
        _check_offline_inputs(cfg, inputs, batch)
    else:
        po.reject_offline_inputs(cfg, inputs)


def _reject_competing_inputs(cfg, inputs):
    """Two inputs that give the same quantity: one would be used and the other dropped without a word."""
    if inputs["advantages"] is not None and inputs["rewards"] is not None:
        raise ValueError("advantages= and rewards= both given: advantages are used as they are and the rewards "
                         "would be ignored; pass advantages= or rewards= (with group_ids= / group_size=)")
    if inputs["ref_hidden"] is None:
        given = [n + "=" for n in ("ref_weight", "ref_bias") if inputs[n] is not None]
        if given:
            verbs = "describes a reference head and needs" if len(given) == 1 else "describe a reference head and need"
            raise ValueError(f"{' and '.join(given)} {verbs} ref_hidden= (the reference model's hidden states)")
    elif inputs["ref_logprobs"] is not None and cfg.kl_estimator != "exact":
        # With kl_estimator="exact" the reference head feeds the exact KL and ref_logprobs the offline rows.
        raise ValueError("ref_logprobs= and ref_hidden= both give the reference logprobs; pass one of them")


def _check_offline_inputs(cfg, inputs, batch):
    loss = cfg.offline_loss
    if is_unpaired(objective_preference_config(cfg)):
        c.kto_z0_value(inputs["kto_z0"])
        if inputs["desirable"] is None:
            raise ValueError(f"preset {cfg.name!r} ({loss}) needs desirable= (bool per row: desirable or not)")
        inputs["desirable"] = c.bool_tensor("desirable", inputs["desirable"], (batch,))
        return
    missing = [n for n in ("pair_ids", "chosen") if inputs[n] is None]
    if missing:
        raise ValueError(f"preset {cfg.name!r} ({loss}) needs {' and '.join(n + '=' for n in missing)} "
                         "(rows sharing a pair id form a pair; chosen marks the preferred row)")
    c.row_tensor("pair_ids", inputs["pair_ids"], batch, floating=False)
    if inputs["pair_ids"].is_floating_point():
        raise TypeError(f"pair_ids must be an integer tensor, got {v.describe(inputs['pair_ids'])}")
    inputs["chosen"] = c.bool_tensor("chosen", inputs["chosen"], (batch,))
