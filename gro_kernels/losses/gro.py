"""gro_loss: hidden states -> scalar GRO loss (docs/math.md §5), on top of the LM-head primitive.

Flow: validate -> config (preset + overrides) -> reference logprobs (given, or streamed from a
reference head with no grad) -> advantages (given, or from rewards and groups) -> either
  grad-in-forward: one fused chunk loop computing loss and dhidden/dW (token-separable presets), or
  plain: linear_logprobs, then the policy loss (online rows) and the preference loss (offline rows).
"""

import math
from typing import NamedTuple, Optional

import torch

from .. import _validate as v
from .. import functional as F
from . import advantages as _ext_adv
from . import checks as c
from . import layout as _layout
from . import wpo as _wpo
from . import policy_options as _po
from .config import check_batch_inputs, objective_preference_config, resolve_config
from ..ops.common import dispatch
from ..ops.group_advantages import function as _adv
from ..ops.policy_loss import function as _pl
from ..ops.policy_loss import gates as _gates
from ..ops.policy_loss import token_terms as _tt
from ..ops.policy_loss.token_terms import KL_ESTIMATORS, SURROGATES, TokenLossConfig
from ..ops.preference_loss import function as _pref

FUSED_TOKEN_FN = "gro.policy_token"


class GROOutput(NamedTuple):
    loss: torch.Tensor              # 0-d fp32, differentiable
    metrics: dict                   # name -> 0-d fp32 tensor (detached)
    logprobs: torch.Tensor          # [B, T] fp32, detached (reusable as old logprobs); [N_total] when packed
    entropy: Optional[torch.Tensor]  # like logprobs, or None


def _fused_module():
    """The grad-in-forward op, with the policy token function registered on it; None if absent."""
    try:
        from ..ops.linear_logprobs import fused_token_loss as ftl
    except ImportError:
        return None
    if FUSED_TOKEN_FN not in ftl._TOKEN_FNS:
        ftl.register_token_fn(FUSED_TOKEN_FN, num_extras=4)(_policy_token_chunk)
    return ftl


def _encode(cfg: TokenLossConfig, has_old, has_ref, has_rollout, has_pg_weight=False, has_entropy_scale=False):
    nan = float("nan")
    return [float(SURROGATES.index(cfg.surrogate)), cfg.epsilon_low, cfg.epsilon_high,
            nan if cfg.dual_clip is None else cfg.dual_clip, cfg.kl_coef, float(KL_ESTIMATORS.index(cfg.kl_estimator)),
            cfg.entropy_coef, nan if cfg.tis_cap is None else cfg.tis_cap,
            float(has_old), float(has_ref), float(has_rollout)] + _tt.encode_extra(cfg) + \
        [float(has_pg_weight), float(has_entropy_scale)]


def _decode(params):
    opt = lambda x: None if math.isnan(x) else x  # noqa: E731
    extra, rest = _tt.decode_extra(params[11:])
    cfg = TokenLossConfig(surrogate=SURROGATES[int(params[0])], epsilon_low=params[1], epsilon_high=params[2],
                          dual_clip=opt(params[3]), kl_coef=params[4], kl_estimator=KL_ESTIMATORS[int(params[5])],
                          entropy_coef=params[6], tis_cap=opt(params[7]), **extra)
    return cfg, bool(params[8]), bool(params[9]), bool(params[10]), bool(rest[0]), bool(rest[1])


def _policy_token_chunk(logprobs, entropy, args, params):
    """The fused op's per-chunk call into the one token function.
    args = [adv, scale, mask, old?, ref?, rollout?, pg_weight?, entropy_scale?]."""
    cfg, has_old, has_ref, has_rollout, has_pg_weight, has_entropy_scale = _decode(params)
    rest = iter(args[3:])
    old = next(rest) if has_old else None
    ref = next(rest) if has_ref else None
    rollout = next(rest) if has_rollout else None
    pg_weight = next(rest) if has_pg_weight else None
    entropy_scale = next(rest) if has_entropy_scale else None
    t = _pl.policy_token_terms(logprobs, args[0], args[1], args[2] > 0, old_logprobs=old, ref_logprobs=ref,
                               entropy=entropy, rollout_logprobs=rollout, pg_weight=pg_weight,
                               entropy_scale=entropy_scale, cfg=cfg)
    return t.loss.sum(), t.grad_logprobs, t.grad_entropy, t.extras


def _token_config(cfg) -> TokenLossConfig:
    in_loss = not cfg.kl_in_reward and cfg.kl_estimator != "exact"
    return _po.token_config(cfg, epsilon_low=cfg.epsilon_low, epsilon_high=cfg.epsilon_high,
                            dual_clip=cfg.dual_clip, kl_coef=cfg.kl_coef if in_loss else 0.0,
                            kl_estimator="k3" if cfg.kl_estimator == "exact" else cfg.kl_estimator,
                            entropy_coef=cfg.entropy_coef)


def _advantages(cfg, inputs, batch, shape, online, m_on, ref, current_lp):
    """Per-row [B] or per-token [B, T] fp32 advantages of the online rows (0 on offline rows)."""
    if inputs["advantages"] is not None:
        unused = [n + "=" for n in _ext_adv.USERS if n != "old_logprobs" and inputs[n] is not None]
        if unused:
            raise ValueError(f"{', '.join(unused)} feed the advantage estimator, but advantages= are given and used "
                             "as they are; pass rewards= instead, or drop them")
        adv = inputs["advantages"].to(torch.float32)
        c.no_nan_rows("advantages", adv, online)
        return torch.where(online if adv.dim() == 1 else m_on, adv, 0.0)
    rewards = inputs["rewards"]
    mode, scale_rewards = cfg.advantage_mode
    eps = cfg.advantage_eps if inputs["eps"] is None else inputs["eps"]
    extra = {name: inputs[name] for name in _ext_adv.USERS if name != "old_logprobs"}
    _ext_adv.reject_unused(mode, extra, who=f"preset {cfg.name!r} with advantage mode")
    if rewards is None:
        raise ValueError(f"preset {cfg.name!r} needs advantages= or rewards= for its online rows")
    c.no_nan_rows("rewards", rewards, online)
    rewards = torch.where(online, rewards.to(torch.float32), 0.0)
    index, groups = c.group_index(batch, inputs["group_ids"], inputs["group_size"], rewards.device)
    if mode in ("grpo", "dr_grpo", "rloo") and index is None:
        raise ValueError(f"preset {cfg.name!r} computes {mode} advantages from rewards and needs group_ids= or "
                         "group_size= (or pass advantages=)")
    if index is not None:  # offline rows of a mixed batch sit in groups of one: advantage 0
        index = torch.where(online, index, groups + torch.arange(batch, device=index.device))
        groups += batch
    if mode == "remax":
        if inputs["baseline"] is None:
            raise ValueError(f"preset {cfg.name!r} (remax) needs baseline= (the greedy answer's reward per row)")
        c.no_nan_rows("baseline", inputs["baseline"], online)
    if mode == "reinforce_pp" and cfg.anchor == "none" and index is not None:
        raise ValueError(f"config {cfg.name!r} (anchor 'none': verl's reinforce_plus_plus) has no group baseline "
                         "and would ignore group_ids= / group_size=; use preset 'reinforce_pp' for the group mean")
    token_kl = None
    if cfg.kl_in_reward and cfg.kl_coef != 0.0:
        old = inputs["old_logprobs"] if inputs["old_logprobs"] is not None else current_lp
        token_kl = old.float() - ref.float()
        if mode not in _ext_adv.KL_MODES:  # sequence-level modes: r - kl_coef * sum_t k1 (TRL RLOO, verl)
            rewards = torch.where(online, _ext_adv.sequence_scores(rewards, m_on, token_kl, cfg.kl_coef), 0.0)
    if mode in _ext_adv.MODES or (mode == "reinforce_pp" and cfg.gamma != 1.0):
        given = dict(extra, old_logprobs=inputs["old_logprobs"])
        _ext_adv.check_inputs(mode, given, m_on, index, who=f"preset {cfg.name!r} with advantage mode")
        adv = _ext_adv.advantages(mode, rewards, index, groups, m_on, eps=eps, scale_rewards=scale_rewards,
                                  token_kl=token_kl, kl_coef=cfg.kl_coef, gamma=cfg.gamma, lam=cfg.lam,
                                  handle_zero_tail=cfg.handle_zero_tail, **given)
        if cfg.normalize_advantages and adv.dim() == 1:
            adv = _ext_adv.normalize(adv, online, eps)
        return torch.where(online if adv.dim() == 1 else m_on, adv, 0.0)
    if mode == "reinforce_pp":
        return _adv.reinforce_pp_advantages(rewards, m_on, index=index, groups=groups, token_kl=token_kl,
                                            kl_coef=cfg.kl_coef, eps=eps)
    adv = _adv.group_advantages(rewards, index, groups, mode, eps=eps, baseline=inputs["baseline"],
                                scale_rewards=scale_rewards)
    if cfg.normalize_advantages:
        adv = _ext_adv.normalize(adv, online, eps)
    return torch.where(online, adv, 0.0)


def _reference(cfg, inputs, weight, targets, opts, layout):
    """Reference logprobs on the [B, T] grid: given, or streamed from ref_hidden/ref_weight (the head's layout,
    like hidden) with no grad; None if unused."""
    ref = inputs["ref_logprobs"]
    online_needs = cfg.has_online and cfg.kl_coef != 0.0 and cfg.kl_estimator != "exact"
    offline_needs = cfg.has_offline and _pref.needs_reference(objective_preference_config(cfg))
    if ref is not None or not (online_needs or offline_needs):
        return ref
    if inputs["ref_hidden"] is None:
        why = "its KL term (beta > 0)" if online_needs else f"the {cfg.offline_loss} implicit reward"
        raise ValueError(f"preset {cfg.name!r} needs ref_logprobs= (or ref_hidden= with ref_weight=) for {why}")
    ref_weight = weight if inputs["ref_weight"] is None else inputs["ref_weight"]
    ref = F.linear_logprobs_no_grad(inputs["ref_hidden"], ref_weight, targets, inputs["ref_bias"], **opts)
    return layout.grid(ref)


def _exact_kl_term(cfg, inputs, hidden, weight, bias, m_on, scale, opts, layout):
    """kl_coef * sum s_t KL_t with the exact streamed KL (differentiable), and the KL metric. The KL runs on the
    head's rows (flat when packed); m_on and scale come from the grid."""
    if inputs["ref_hidden"] is None:
        raise ValueError("kl_estimator='exact' needs ref_hidden= (and ref_weight=, else the policy head is used)")
    ref_weight = weight if inputs["ref_weight"] is None else inputs["ref_weight"]
    kl = F.exact_kl(hidden, weight, inputs["ref_hidden"], ref_weight, bias=bias, ref_bias=inputs["ref_bias"],
                    mask=layout.head(m_on), temperature=opts["temperature"], chunk_size=opts["chunk_size"],
                    process_group=opts["process_group"], vocab_start=opts["vocab_start"])
    count = m_on.sum().to(torch.float32).clamp(min=1.0)
    return cfg.kl_coef * (kl * layout.head(scale)).sum(), kl.detach().sum() / count


def _use_fused(cfg, grad_in_forward, inputs, opts, hidden_size):
    """Grad-in-forward runs inside the chunked backend: only where linear_logprobs itself runs chunked
    for this head (on CUDA, "auto" depends on the hidden size)."""
    if opts["process_group"] is not None:
        # A vocabulary-sharded head: the fused op has no cross-rank combine; the plain path is exact.
        if grad_in_forward:
            raise ValueError("grad_in_forward=True is not supported with process_group= (vocabulary-sharded "
                             "head); leave it unset or pass grad_in_forward=False")
        return False
    if grad_in_forward is False or not cfg.token_separable or opts["backend"] not in ("auto", "chunked"):
        return False
    if F.selected_backend(inputs["device"], opts["backend"], hidden_size=hidden_size).split("/")[0] != "chunked":
        return False
    # KL in the reward (REINFORCE++, TRL RLOO) shapes it with the current policy's k1 when old logprobs are absent.
    if inputs["advantages"] is None and cfg.kl_in_reward and cfg.kl_coef != 0.0 and inputs["old_logprobs"] is None:
        return False
    return _fused_module() is not None


def _online_fused(hidden, weight, bias, targets, adv, scale, m_on, inputs, ref, tok_cfg, want_entropy, opts, layout,
                  gates=_gates.GateConfig()):
    """The grad-in-forward op on the head's rows. Its per-token args are built on the [B, T] grid and taken back
    to head order (flat tokens when packed); logprobs / entropy come back in the head's shape."""
    ftl = _fused_module()
    adv_t = _pl.token_advantages(adv, m_on.shape)
    present = [(inputs["old_logprobs"]), ref, inputs["rollout_logprobs"] if tok_cfg.tis_cap is not None else None]
    # Token-separable gates only here (rollout IS weights from the given logprobs; gates.needs_current_policy
    # configs take the plain path), and TRL's token-mean entropy weights.
    pg_weight, entropy_mask = _gates.policy_gates(gates, None, adv_t, m_on, old_logprobs=inputs["old_logprobs"],
                                                  rollout_logprobs=inputs["rollout_logprobs"])
    present += [pg_weight, _gates.entropy_scale(gates, entropy_mask, scale) if want_entropy else None]
    flat = lambda t: layout.head(t).reshape(-1).float()  # noqa: E731
    args = [flat(adv_t), flat(scale), flat(m_on)] + [flat(t) for t in present if t is not None]
    params = _encode(tok_cfg, *(t is not None for t in present))
    h = hidden.reshape(-1, hidden.shape[-1])
    loss, lp, ent, extras = ftl.fused_token_loss(h, weight, bias, targets.reshape(-1), FUSED_TOKEN_FN, args, params,
                                                 temperature=opts["temperature"], ignore_index=opts["ignore_index"],
                                                 with_entropy=want_entropy, chunk_size=opts["chunk_size"])
    stats = _pl.token_stats(extras, layout.head(m_on).reshape(-1), ent if want_entropy else None)
    ent = ent.reshape(layout.head_shape) if want_entropy else None
    return loss, lp.reshape(layout.head_shape), ent, stats


def gro_loss(hidden, weight, targets, bias=None, *, preset=None, config=None, mask=None, online=None,
             grad_in_forward=None, online_weight=1.0, offline_weight=1.0, return_entropy=False, temperature=1.0,
             ignore_index=-100, backend="auto", chunk_size=None, process_group=None, vocab_start=None,
             cu_seqlens=None, **kwargs):
    """Hidden states [B, T, H] (or packed [N_total, H] with cu_seqlens) -> scalar GRO loss, never materializing
    [B*T, V] logits.

    preset: grpo (the default), bnpo, dr_grpo, dapo, rloo, remax, reinforce_pp, ppo, gspo, cispo, trl_rloo;
    TRL's sapo, vespo, luspo; verl's policy losses gpg, dppo_tv, dppo_kl, geo_mean, clip_cov, kl_cov and
    estimators grpo_passk, opo, reinforce_pp_baseline, gae, optimal_token_baseline, tir_optimal_token_baseline;
    dpo, ipo, simpo, kto, cpl and TRL's other DPO/KTO/CPO loss types (gro_kernels.PRESETS lists them all);
    or config=GROObjective(...), not both (score/anchor/magnitude, surrogate, KL, entropy, aggregation;
    rows="mixed" for batches with online and offline rows, told apart by online= [B] bool).
    Inputs (keyword): mask [B, T]; advantages [B] or [B, T], or rewards [B] with group_ids /
    group_size (baseline [B] for remax); old_logprobs, ref_logprobs, rollout_logprobs [B, T]; or
    ref_hidden (+ ref_weight, ref_bias) to stream the reference with no grad; pair_ids + chosen (dpo,
    ipo, simpo, cpl); desirable (kto); global_token_count, max_completion_length, num_sequences.
    TRL's preference names (docs/math.md §4): kl_logps + ref_kl_logps (KTO's z0 from mismatched pairs),
    log_sum_sq_probs (WPO; computed from the head when absent); loss_type on offline presets is TRL's.
    Packed (padding-free) batches: cu_seqlens int32/int64 [B + 1] (flash-attention varlen offsets: 0,
    non-decreasing, last = N_total) with hidden [N_total, H], targets and every per-token input [N_total]
    (a 1-D advantages of length B is per sequence, of length N_total per token), per-sequence inputs [B].
    The loss, metrics and gradients are those of the same sequences padded to T_max (the longest one, also
    dr_grpo's default max_completion_length); logprobs / entropy come back [N_total]. docs/math.md §5.
    Options: beta (KL coefficient for online presets, implicit-reward scale for offline ones),
    epsilon, epsilon_low, epsilon_high, dual_clip, loss_type, importance_sampling_level,
    scale_rewards, kl_estimator ("k1" | "k2" | "k3" | "k3_st" | "exact"), entropy_coef, tis_cap,
    label_smoothing, simpo_gamma, cpl_lambda, desirable_weight, undesirable_weight, online_weight,
    offline_weight, grad_in_forward (default on for token-separable presets; False for sharded heads),
    return_entropy, temperature, ignore_index, backend, chunk_size; the TRL GRPOConfig / verl policy names
    (loss_type="sapo", loss_mode=, loss_agg_mode=, kl_loss_type=, use_bias_correction_kl, delta,
    top_entropy_quantile, vllm_importance_sampling_mode, ...): docs/peer_names.md.
    Advantages from rewards: eps (the std's, default the preset's advantage_eps: 1e-4 in the TRL presets,
    1e-6 otherwise); verl's adv_estimator (grpo, rloo(_vectorized), reinforce_plus_plus(_baseline), remax,
    gae, opo, grpo_passk, gpg, (tir_)optimal_token_baseline) and norm_adv_by_std_in_grpo; gamma, lam;
    values [B, T] (gae), sum_pi_squared and rollout_is_weights [B, T] (optimal-token baselines, with
    old_logprobs), handle_zero_tail; normalize_advantages (TRL RLOO); group_ids may be uid strings.
    Vocabulary-parallel head: process_group=pg, vocab_start=s with weight (and ref_weight) the rows
    [s, s + V_r) of the head on this rank, everything else replicated (see linear_logprobs); the loss is
    the full-vocabulary one on every rank, and grad_in_forward stays off.
    Bad input, on every path (grad-in-forward or not): a ValueError / TypeError naming the argument,
    what was expected and what came; options that set the same thing (beta and kl_coef, epsilon and
    epsilon_low, advantages and rewards, ...) are refused together. See docs/bad_inputs.md.
    Returns GROOutput(loss 0-d fp32, metrics dict of 0-d fp32 tensors, logprobs [B, T] ([N_total] packed) fp32
    detached, entropy of the same shape or None).
    """
    inputs, overrides = _split_kwargs(kwargs)
    cfg = resolve_config(preset, config, overrides)
    # The LM-head checks of linear_logprobs, up front: the grad-in-forward loop calls the kernels directly.
    head = F.check_head_call(hidden, weight, targets, bias, temperature=temperature, ignore_index=ignore_index,
                             chunk_size=chunk_size, backend=backend,
                             sharded=process_group is not None or vocab_start is not None)
    layout = _batch_layout(hidden, targets, cu_seqlens)
    _check_call_options(grad_in_forward, return_entropy, online_weight, offline_weight)
    c.loss_ops_backend("hidden", hidden)
    batch, device = layout.batch, hidden.device
    inputs["device"] = device
    if cfg.has_offline and cfg.use_weighting and inputs["log_sum_sq_probs"] is None and process_group is None \
            and vocab_start is None:  # WPO's weights from the head itself (a sharded head must pass them)
        inputs["log_sum_sq_probs"] = _wpo.log_sum_sq_probs(hidden, weight, bias, targets, temperature=temperature,
                                                           ignore_index=ignore_index)
    # Inputs are checked in the caller's layout ([B, T] or [N_total] per token), then moved to the grid.
    check_batch_inputs(cfg, inputs, batch, layout.head_shape, device)
    opts = dict(temperature=temperature, ignore_index=ignore_index, backend=backend, chunk_size=chunk_size,
                process_group=process_group, vocab_start=vocab_start)
    m = (targets != ignore_index)
    if mask is not None:
        m = m & c.bool_tensor("mask", mask, layout.head_shape).to(device)
        # Masked tokens are not scored at all: the primitive and the reference stream skip their rows.
        targets = torch.where(m, targets, ignore_index)
        head = head._replace(targets=targets.reshape(-1).to(torch.int64))
    m = layout.grid(m, False)
    _token_inputs_to_grid(inputs, layout)
    online = _row_kinds(cfg, online, batch, device)
    m_on = m & online.unsqueeze(1)
    want_entropy = bool(return_entropy) or cfg.entropy_coef != 0.0 or cfg.top_entropy_quantile < 1.0
    ref = _reference(cfg, inputs, weight, targets, opts, layout)
    tok_cfg = _token_config(cfg)
    metrics, loss = {}, torch.zeros((), dtype=torch.float32, device=device)
    scale = None
    if cfg.has_online:
        # seq_mean denominators count the online rows (or a given global number of sequences).
        rows_on = (inputs["num_sequences"] or batch) if cfg.rows == "online" else online.sum()
        # dr_grpo's L defaults to the grid width: the padded T, or T_max (the longest sequence) when packed.
        scale = _pl.aggregation_scale(m_on, cfg.aggregation, global_token_count=inputs["global_token_count"],
                                      max_completion_length=inputs["max_completion_length"], num_sequences=rows_on)
    if cfg.has_online and _use_fused(cfg, grad_in_forward, inputs, opts, weight.shape[-1]):
        adv = _advantages(cfg, inputs, batch, layout.grid_shape, online, m_on, ref, None)
        loss, lp, ent, stats = _online_fused(hidden, weight, bias, targets, adv, scale, m_on, inputs, ref, tok_cfg,
                                             want_entropy, opts, layout, _po.gate_config(cfg))
        metrics.update(_pl.metrics(stats, want_entropy, ref is not None))
        return GROOutput(online_weight * loss, metrics, lp, ent)
    lp, ent = _logprobs(head, hidden, weight, targets, bias, want_entropy, opts)
    lp, ent = layout.grid(lp), None if ent is None else layout.grid(ent)
    if cfg.has_online:
        adv = _advantages(cfg, inputs, batch, layout.grid_shape, online, m_on, ref, lp.detach())
        on_loss, stats = _pl.policy_loss(lp, adv, m_on, old_logprobs=inputs["old_logprobs"], ref_logprobs=ref,
                                         rollout_logprobs=inputs["rollout_logprobs"]
                                         if cfg.tis_cap or cfg.rollout_is_mode else None,
                                         entropy=ent, cfg=tok_cfg, scale=scale, gates=_po.gate_config(cfg),
                                         importance_sampling_level=cfg.importance_sampling_level)
        metrics.update(_pl.metrics(stats, want_entropy, ref is not None))
        if cfg.kl_estimator == "exact" and cfg.kl_coef != 0.0:
            kl_loss, metrics["kl"] = _exact_kl_term(cfg, inputs, hidden, weight, bias, m_on, scale, opts, layout)
            on_loss = on_loss + kl_loss
        loss = loss + online_weight * on_loss
        if cfg.has_offline:
            metrics["loss_online"] = on_loss.detach()
    if cfg.has_offline:
        if not _pref.is_unpaired(objective_preference_config(cfg)):
            c.check_pairs(inputs["pair_ids"].to(device), inputs["chosen"].to(device), ~online)
        off_loss, pref_metrics = _pref.preference_loss(
            lp, m, ref, ~online, objective_preference_config(cfg), pair_ids=inputs["pair_ids"], chosen=inputs["chosen"],
            desirable=inputs["desirable"], kto_z0=inputs["kto_z0"], kl_logps=inputs["kl_logps"],
            ref_kl_logps=inputs["ref_kl_logps"], log_sum_sq_probs=inputs["log_sum_sq_probs"])
        metrics.update(pref_metrics)
        loss = loss + offline_weight * off_loss
        if cfg.has_online:
            metrics["loss_offline"] = off_loss.detach()
    return GROOutput(loss, metrics, layout.head(lp.detach()), None if ent is None else layout.head(ent.detach()))


def _batch_layout(hidden, targets, cu_seqlens):
    """A padded [B, T] batch is its own grid; a packed one gets the index map of its cu_seqlens (layout.py)."""
    if cu_seqlens is not None:
        return _layout.packed(hidden, targets, cu_seqlens)
    if targets.dim() != 2:
        raise ValueError(f"gro_loss needs a [B, T] batch: hidden [B, T, H] and targets [B, T], got targets "
                         f"shape {tuple(targets.shape)} (flat packed tokens need cu_seqlens=)")
    return _layout.padded(*targets.shape)


GRID_INPUTS = ("old_logprobs", "ref_logprobs", "rollout_logprobs", "log_sum_sq_probs", "values", "sum_pi_squared",
               "rollout_is_weights")


def _token_inputs_to_grid(inputs, layout):
    """The checked per-token inputs on the [B, T] grid (0 on padding, where the mask is False). A 1-D advantages
    of length B stays per sequence, also when B == N_total (possible only with empty sequences)."""
    if not layout.packed:
        return
    for name in GRID_INPUTS:
        if inputs[name] is not None:
            inputs[name] = layout.grid(inputs[name])
    adv = inputs["advantages"]
    if adv is not None and adv.shape[0] != layout.batch:
        inputs["advantages"] = layout.grid(adv)


def _logprobs(head, hidden, weight, targets, bias, want_entropy, opts):
    """(logprobs, entropy or None) of the plain path: the head call checked at the top of gro_loss (a sharded
    head goes through linear_logprobs, whose layout exchange its checks are part of)."""
    if opts["process_group"] is None and opts["vocab_start"] is None:
        out = F.checked_logprobs(head, return_entropy=want_entropy)
    else:
        out = F.linear_logprobs(hidden, weight, targets, bias, return_entropy=want_entropy, **opts)
    return out if want_entropy else (out, None)


def _check_call_options(grad_in_forward, return_entropy, online_weight, offline_weight):
    """gro_loss's own scalar options (the head's are checked with the head)."""
    v.require_optional_bool("grad_in_forward", grad_in_forward)
    v.require_bool("return_entropy", return_entropy)
    for name, value in (("online_weight", online_weight), ("offline_weight", offline_weight)):
        v.require_nonnegative(name, value)  # a loss weight: NaN would poison the loss, < 0 flip its part


def check_options(preset=None, config=None, **options):
    """What gro_loss can check before it sees a batch: the objective (preset or config, with the overrides)
    and the scalar options. GROLoss and GROModelLoss run it at construction, so a bad option fails where it
    was written, not at the first batch. Returns nothing; raises as gro_loss would."""
    call = {k: options.pop(k) for k in _CALL_DEFAULTS if k in options}
    call = {**_CALL_DEFAULTS, **call}
    _, overrides = _split_kwargs(options)
    resolve_config(preset, config, overrides)
    v.check_head_options(call["temperature"], call["ignore_index"], call["chunk_size"])
    if call["backend"] not in dispatch.BACKENDS:
        raise ValueError(f"backend must be one of {dispatch.BACKENDS}, got {call['backend']!r}")
    _check_call_options(call["grad_in_forward"], call["return_entropy"], call["online_weight"],
                        call["offline_weight"])


# gro_loss's named options with their defaults (check_options sees them in **options).
_CALL_DEFAULTS = dict(mask=None, online=None, grad_in_forward=None, online_weight=1.0, offline_weight=1.0,
                      return_entropy=False, temperature=1.0, ignore_index=-100, backend="auto", chunk_size=None,
                      process_group=None, vocab_start=None, cu_seqlens=None)


def _row_kinds(cfg, online, batch, device):
    if cfg.rows != "mixed":
        if online is not None:
            _require_rows_match(cfg, c.bool_tensor("online", online, (batch,)))
        return torch.full((batch,), cfg.rows == "online", dtype=torch.bool, device=device)
    if online is None:
        raise ValueError(f"config {cfg.name!r} mixes online and offline rows and needs online= (bool per row: True "
                         "for rows with rewards/advantages, False for preference rows)")
    return c.bool_tensor("online", online, (batch,)).to(device)


def _require_rows_match(cfg, online):
    """online= on a config without mixed rows: accepted when it agrees with the config's rows (a trainer may
    pass it always); a row it marks the other way would be silently treated as the config says."""
    if not v.checking_values():
        return
    wrong = online != (cfg.rows == "online")
    if bool(wrong.any()):
        row = int(wrong.nonzero()[0, 0])
        raise ValueError(f"online= marks row {row} as {'online' if bool(online[row]) else 'offline'}, but config "
                         f"{cfg.name!r} has only {cfg.rows} rows; use a config with rows='mixed' for mixed batches")


INPUT_NAMES = ("advantages", "rewards", "group_ids", "group_size", "baseline", "eps", "old_logprobs",
               "ref_logprobs", "rollout_logprobs", "ref_hidden", "ref_weight", "ref_bias", "pair_ids", "chosen",
               "desirable", "kto_z0", "global_token_count", "max_completion_length", "num_sequences",
               "log_sum_sq_probs", "kl_logps", "ref_kl_logps", "values", "sum_pi_squared", "rollout_is_weights")


def _split_kwargs(kwargs):
    inputs = {name: kwargs.pop(name, None) for name in INPUT_NAMES}  # eps None: the config's advantage_eps
    return inputs, kwargs
