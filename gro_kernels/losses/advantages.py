"""verl's further advantage estimators at the loss layer: which inputs each mode reads, their checks, and the
call into ops/group_advantages/estimators.py. Shared by group_advantages (token_losses.py) and gro_loss's
_advantages (gro.py), so both refuse the same things with the same words."""

import math

import torch

from . import checks as c
from .. import _validate as v
from ..ops.group_advantages import estimators as _est

MODES = _est.MODES
TOKEN_MODES = _est.TOKEN_MODES
VERL_ESTIMATORS = _est.VERL_ESTIMATORS
GROUPED = ("grpo_passk", "opo", "gpg", "optimal_token_baseline", "tir_optimal_token_baseline", "gdpo",
           "normalize_then_sum")
COLUMN_MODES = ("gdpo", "normalize_then_sum")  # rewards [B, K]: one column per reward function

# The inputs only some modes read (beyond rewards and groups); given to another mode they would be dropped.
# reinforce_pp's own entries are in token_losses._reject_unused_inputs; gamma is checked in check_gamma_lam.
USERS = {"values": ("gae",), "old_logprobs": ("optimal_token_baseline", "tir_optimal_token_baseline"),
         "sum_pi_squared": ("optimal_token_baseline", "tir_optimal_token_baseline"),
         "rollout_is_weights": ("optimal_token_baseline", "tir_optimal_token_baseline")}
REQUIRED = {"gae": ("values",), "optimal_token_baseline": ("old_logprobs", "sum_pi_squared"),
            "tir_optimal_token_baseline": ("old_logprobs", "sum_pi_squared")}
GAMMA_MODES = ("reinforce_pp", "gae")
KL_MODES = ("reinforce_pp", "reinforce_pp_baseline", "gae", "optimal_token_baseline", "tir_optimal_token_baseline")


def reject_unused(mode, given: dict, *, who="mode"):
    """given: name -> value (None when not given)."""
    for name, value in given.items():
        if value is not None and mode not in USERS[name]:
            raise ValueError(f"{name}= is used only by {who}={' / '.join(map(repr, USERS[name]))}; "
                             f"{who}={mode!r} would ignore it")


def check_gamma_lam(mode, gamma, lam, *, who="mode"):
    """gamma, lam in [0, 1]; a gamma != 1 (or lam != 1) for a mode without discounting would be dropped."""
    for name, value in (("gamma", gamma), ("lam", lam)):
        if not (v.is_number(value) and not isinstance(value, bool) and math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if gamma != 1.0 and mode not in GAMMA_MODES:
        raise ValueError(f"gamma={gamma} discounts token-level returns: used only by {who}="
                         f"{' / '.join(map(repr, GAMMA_MODES))}; {who}={mode!r} would ignore it")
    if lam != 1.0 and mode != "gae":
        raise ValueError(f"lam={lam} is GAE's lambda, used only by {who}='gae'; {who}={mode!r} would ignore it")


def check_inputs(mode, inputs: dict, mask, index, *, who="mode"):
    """Presence and shapes of the per-token inputs of the estimators here. inputs: name -> tensor or None."""
    for name in REQUIRED.get(mode, ()):
        if inputs.get(name) is None:
            raise ValueError(f"{who}={mode!r} needs {name}= [B, T]")
    if mode in GROUPED and index is None:
        raise ValueError(f"{who}={mode!r} compares the rows of a group and needs group_ids= or group_size=")
    for name in USERS:
        if inputs.get(name) is not None:
            c.token_tensor(name, inputs[name], mask.shape, device=mask.device)
            c.no_nan_rows(name, inputs[name])


def advantages(mode, rewards, index, groups, mask, *, eps, scale_rewards="group", token_kl=None, kl_coef=0.0,
               gamma=1.0, lam=1.0, values=None, old_logprobs=None, sum_pi_squared=None, rollout_is_weights=None,
               handle_zero_tail=True, reward_weights=None):
    """[B] (grpo_passk, opo, gpg) or [B, T] fp32 advantages of the estimators in ops/group_advantages/estimators.py;
    reinforce_pp with gamma != 1 too. mask [B, T] bool (required for every mode here but gpg / grpo_passk)."""
    if mode == "grpo_passk":
        return _est.grpo_passk(rewards, index, groups, eps=eps, scale_rewards=scale_rewards)
    if mode == "opo":
        return _est.opo(rewards, index, groups, mask.sum(1))
    if mode == "gpg":
        return _est.gpg(rewards, index, groups)
    if mode == "reinforce_pp":
        return _est.reinforce_pp_discounted(rewards, mask, index=index, groups=groups, token_kl=token_kl,
                                            kl_coef=kl_coef, gamma=gamma, eps=eps)
    if mode == "reinforce_pp_baseline":
        return _est.reinforce_pp_baseline(rewards, mask, index, groups, token_kl=token_kl, kl_coef=kl_coef, eps=eps)
    if mode == "gae":
        return _est.gae(rewards, mask, values, gamma=gamma, lam=lam, token_kl=token_kl, kl_coef=kl_coef, eps=eps)
    if mode == "normalize_then_sum":
        return _est.normalize_then_sum(rewards, index, groups, weights=reward_weights, eps=eps)
    if mode == "gdpo":
        return _est.gdpo(rewards, mask, index, groups, weights=reward_weights, eps=eps, scale_rewards=scale_rewards)
    if mode in ("optimal_token_baseline", "tir_optimal_token_baseline"):
        return _est.optimal_token_baseline(rewards, mask, index, groups, old_logprobs, sum_pi_squared,
                                           rollout_is_weights=rollout_is_weights, token_kl=token_kl, kl_coef=kl_coef,
                                           eps=eps, handle_zero_tail=handle_zero_tail,
                                           aligned=mode == "tir_optimal_token_baseline")
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def sequence_scores(rewards, mask, token_kl, kl_coef):
    """The sequence reward with the KL in it: r - kl_coef * sum_t k1_t over valid tokens (TRL RLOO's beta * kl,
    verl's use_kl_in_reward summed by its outcome estimators)."""
    return _est.sequence_scores(rewards, mask, token_kl, kl_coef)


def normalize(adv, rows, eps):
    """TRL RLOO's normalize_advantages: (A - mean) / (std + eps) over the rows given (std unbiased), 0 elsewhere."""
    return _est.normalize_rows(adv, rows, eps)


def reward_weights_tensor(weights, components, device):
    """gdpo's reward_weights: one finite number per reward column, as a float tensor (a list is fine)."""
    if weights is None:
        return None
    w = weights if isinstance(weights, torch.Tensor) else torch.tensor(weights, dtype=torch.float32)
    if w.dim() != 1 or w.shape[0] != components or not w.is_floating_point() or not bool(torch.isfinite(w).all()):
        raise ValueError(f"reward_weights must be {components} finite numbers (one per reward column), got "
                         f"{w.tolist() if w.dim() <= 1 else v.describe(w)}")
    return w.to(device)
