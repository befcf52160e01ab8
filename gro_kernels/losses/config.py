"""gro_loss configuration: a preset (or GROObjective) plus keyword overrides in TRL/verl vocabulary,
validated; and the per-batch input checks that depend on the config."""

import dataclasses
import math

from . import checks as c
from .. import _validate as v
from ..ops.policy_loss.function import AGGREGATIONS, IS_LEVELS
from ..ops.policy_loss.token_terms import KL_ESTIMATORS, SURROGATES
from ..presets import GROObjective, get_preset

# TRL loss_type -> aggregation (dapo's global count comes from global_token_count when given).
TRL_LOSS_TYPES = {"grpo": "seq_mean_token_mean", "bnpo": "token_mean", "dapo": "token_mean",
                  "dr_grpo": "seq_mean_token_sum_norm"}
SCALE_REWARDS = {"group": "std", "batch": "batch_std", "none": "identity"}
ROWS = ("online", "offline", "mixed")
_FIELDS = {f.name for f in dataclasses.fields(GROObjective)} - {"name"}
_ALIASES = ("beta", "epsilon", "loss_type", "scale_rewards")


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
    if loss_type is not None:
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
    return out


def resolve_config(preset, config, overrides: dict) -> GROObjective:
    """The GROObjective of this call: `config` or the named preset, with keyword overrides applied."""
    if config is not None:
        if not isinstance(config, GROObjective):
            raise TypeError(f"config must be a GROObjective, got {type(config).__name__}")
        base = config
    else:
        base = get_preset(preset)
    unknown = sorted(set(overrides) - _FIELDS - set(_ALIASES))
    if unknown:
        raise TypeError(f"gro_loss got unexpected keyword argument(s) {unknown}; options are the GROObjective fields "
                        f"{sorted(_FIELDS)}, the TRL names {list(_ALIASES)} and the batch inputs")
    cfg = dataclasses.replace(base, **_alias_overrides(base, overrides))
    _check_config(cfg)
    return cfg


def _check_config(cfg: GROObjective):
    choices = {"rows": ROWS, "surrogate": SURROGATES, "importance_sampling_level": IS_LEVELS,
               "aggregation": AGGREGATIONS, "kl_estimator": KL_ESTIMATORS + ("exact",)}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {getattr(cfg, name)!r}")
    for name in ("epsilon_low", "epsilon_high", "kl_coef", "label_smoothing", "desirable_weight",
                 "undesirable_weight", "simpo_gamma", "cpl_lambda"):
        c.nonneg(name, getattr(cfg, name))
    c.finite_float("entropy_coef", cfg.entropy_coef)
    if cfg.has_online:
        cfg.advantage_mode  # noqa: B018 - raises on an unsupported anchor/magnitude pair
    if cfg.has_offline:
        v.require_positive_finite("preference_beta (beta)", cfg.preference_beta)
        if cfg.offline_loss == "cpl":
            v.require_positive_finite("cpl_discount", cfg.cpl_discount)
    if cfg.label_smoothing >= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {cfg.label_smoothing}")
    if cfg.dual_clip is not None and not (math.isfinite(cfg.dual_clip) and cfg.dual_clip > 1.0):
        raise ValueError(f"dual_clip must be a finite number > 1 (3 is typical) or None, got {cfg.dual_clip!r}")
    if cfg.tis_cap is not None:
        v.require_positive_finite("tis_cap", cfg.tis_cap)


def check_batch_inputs(cfg: GROObjective, inputs: dict, batch: int, shape, device):
    """Shapes of every per-row / per-token input, and what the config requires to be present."""
    if inputs["advantages"] is not None:
        c.advantages_tensor(inputs["advantages"], batch, shape)
    for name in ("rewards", "baseline"):
        c.row_tensor(name, inputs[name], batch, device=device)
    for name in ("old_logprobs", "ref_logprobs", "rollout_logprobs"):
        c.token_tensor(name, inputs[name], shape, device=device)
    for name in ("global_token_count", "max_completion_length", "num_sequences"):
        value = inputs[name]
        if value is not None and not hasattr(value, "shape"):
            v.require_positive_finite(name, value)
    v.require_positive_finite("eps", inputs["eps"])
    if cfg.has_online and cfg.tis_cap is not None and inputs["rollout_logprobs"] is None:
        raise ValueError("tis_cap (truncated importance sampling) needs rollout_logprobs=")
    if cfg.has_offline:
        _check_offline_inputs(cfg, inputs, batch)


def _check_offline_inputs(cfg, inputs, batch):
    loss = cfg.offline_loss
    if loss == "kto":
        if inputs["desirable"] is None:
            raise ValueError(f"preset {cfg.name!r} (kto) needs desirable= (bool per row: desirable or not)")
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
