"""The public functional API: validation with clear errors, flattening, then the op layer."""

from typing import Optional

import torch

from . import _loss_api
from . import _validate as v
from .ops.exact_kl import function as _kl
from .ops.linear_logprobs import function as _lp


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    bias: Optional[torch.Tensor] = None, *, temperature: float = 1.0, ignore_index: int = -100,
                    return_entropy: bool = False, backend: str = "auto", chunk_size: Optional[int] = None,
                    process_group=None, vocab_start: Optional[int] = None):
    """Log-probabilities of `targets` under softmax((hidden @ weight.T + bias) / temperature).

    Never materializes the [N, V] logits (except backend="naive"). Differentiable w.r.t. hidden,
    weight and bias for any upstream gradient on logprobs and entropy.

    hidden [N, H] or [B, T, H] (fp32/bf16/fp16); weight [V, H] same dtype and device; targets [N] or
    [B, T] int64 (`ignore_index` rows give 0 and zero gradient); bias [V] or None.
    Returns logprobs (fp32, the leading shape of hidden), and (logprobs, entropy) with return_entropy.
    backend: "auto" | "chunked" | "triton" | "naive" (GRO_BACKEND overrides "auto").
    Vocabulary-parallel head: process_group=pg, vocab_start=s, with weight [V_r, H] (bias [V_r]) the rows
    [s, s + V_r) of the head on this rank (contiguous shards tiling [0, V), uneven allowed); targets are
    global ids; hidden, targets and the loss downstream are the same on every rank. Every rank gets the
    full-vocabulary logprobs/entropy, its own dweight shard and the full dhidden.
    """
    if process_group is not None or vocab_start is not None:
        from . import _vocab_parallel_api

        return _vocab_parallel_api.linear_logprobs(
            hidden, weight, targets, bias, process_group=process_group, vocab_start=vocab_start,
            temperature=temperature, ignore_index=ignore_index, return_entropy=return_entropy, backend=backend,
            chunk_size=chunk_size)
    hidden, weight, targets, bias, lead_shape = _check_linear_inputs(hidden, weight, targets, bias)
    v.require_positive_finite("temperature", temperature)
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    _check_chunk_size(chunk_size)
    resolved = _lp.resolve_backend(backend, hidden.device, hidden_size=weight.shape[1])
    if v.checking_values():
        _check_target_range(targets, weight.shape[0], ignore_index)
    logprobs, entropy = _lp.linear_logprobs(hidden, weight, bias, targets, temperature=temperature,
                                            ignore_index=ignore_index, with_entropy=return_entropy,
                                            chunk_size=chunk_size, backend=resolved)
    logprobs = logprobs.reshape(lead_shape)
    return (logprobs, entropy.reshape(lead_shape)) if return_entropy else logprobs


def linear_logprobs_no_grad(hidden, weight, targets, bias=None, **options):
    """linear_logprobs for old/reference policies: no graph, no saved tensors, bitwise the same
    values as the differentiable call (the same forward kernel runs)."""
    with torch.no_grad():
        return linear_logprobs(hidden, weight, targets, bias, **options)


def selected_backend(device="cpu", backend: str = "auto", hidden_size: Optional[int] = None) -> str:
    """Which backend and epilogue `linear_logprobs` runs on `device` (for weights with `hidden_size`
    columns: "auto" on CUDA depends on it), e.g. "chunked/native-cpu"."""
    from . import _ext

    device = torch.device(device)
    resolved = _lp.resolve_backend(backend, device, hidden_size=hidden_size)
    if resolved == "chunked":
        return "chunked/" + (f"native-{device.type}" if _ext.native_available(device.type) else "torch")
    return resolved


def _check_linear_inputs(hidden, weight, targets, bias):
    hidden, weight, bias, lead_shape = _check_head("hidden", hidden, "weight", weight, "bias", bias)
    v.require_tensor("targets", targets)
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"targets must be an integer tensor (int64) of shape {tuple(lead_shape)}, "
                        f"got {v.describe(targets)}")
    if targets.shape != lead_shape:
        raise ValueError(f"targets must have shape {tuple(lead_shape)} (hidden's leading dims), "
                         f"got {v.describe(targets)}")
    v.require_same_device("targets", targets, "hidden", hidden)
    targets = targets.reshape(-1).to(torch.int64).contiguous()
    return hidden, weight, targets, bias, lead_shape


def _check_target_range(targets, vocab, ignore_index):
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"targets must be in [0, {vocab}) or ignore_index={ignore_index}; "
                         f"row {row} has {int(targets[row])}")


def _check_chunk_size(chunk_size):
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def exact_kl(hidden: torch.Tensor, weight: torch.Tensor, ref_hidden: torch.Tensor, ref_weight: torch.Tensor, *,
             bias: Optional[torch.Tensor] = None, ref_bias: Optional[torch.Tensor] = None,
             mask: Optional[torch.Tensor] = None, temperature: float = 1.0, chunk_size: Optional[int] = None,
             process_group=None, vocab_start: Optional[int] = None):
    """Exact per-token KL(pi || pi_ref) over the whole vocabulary, streaming both LM heads.

    pi = softmax((hidden @ weight.T + bias) / temperature), pi_ref the same with the reference head.
    Never materializes [N, V] logits: each row chunk runs a policy GEMM and a reference GEMM into two
    bounded buffers. Differentiable w.r.t. hidden, weight and bias (exact gradient, any upstream
    gradient); the reference side is a constant and gets no gradient.

    hidden [N, H] or [B, T, H]; weight [V, H]; ref_hidden [N, H'] or [B, T, H'] (the same leading shape;
    H' may differ from H); ref_weight [V, H']; bias / ref_bias [V] or None; all one float dtype and
    device. mask: bool of the leading shape (False rows give KL 0 and zero gradient) or None.
    Returns KL in fp32 with the leading shape of hidden.
    process_group / vocab_start: both heads sharded over the vocabulary the same way (weight [V_r, H],
    ref_weight [V_r, H'], rows [vocab_start, vocab_start + V_r)), as for linear_logprobs.
    """
    if process_group is not None or vocab_start is not None:
        from . import _vocab_parallel_api

        return _vocab_parallel_api.exact_kl(hidden, weight, ref_hidden, ref_weight, bias=bias, ref_bias=ref_bias,
                                            mask=mask, temperature=temperature, chunk_size=chunk_size,
                                            process_group=process_group, vocab_start=vocab_start)
    hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, lead_shape = _check_kl_inputs(
        hidden, weight, ref_hidden, ref_weight, bias, ref_bias, mask, temperature, chunk_size)
    kl = _kl.exact_kl(hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, temperature=temperature,
                      chunk_size=chunk_size)
    return kl.reshape(lead_shape)


def _check_kl_inputs(hidden, weight, ref_hidden, ref_weight, bias, ref_bias, mask, temperature, chunk_size):
    """exact_kl's checks; returns the flattened tensors and the leading shape."""
    hidden, weight, bias, lead_shape = _check_head("hidden", hidden, "weight", weight, "bias", bias)
    ref_hidden, ref_weight, ref_bias, _ = _check_head("ref_hidden", ref_hidden, "ref_weight", ref_weight,
                                                      "ref_bias", ref_bias, like=(lead_shape, hidden, weight))
    if mask is not None:
        v.require_tensor("mask", mask)
        if mask.dtype != torch.bool or mask.shape != lead_shape:
            raise ValueError(f"mask must be a bool tensor of shape {tuple(lead_shape)}, got {v.describe(mask)}")
        v.require_same_device("mask", mask, "hidden", hidden)
        mask = mask.reshape(-1).contiguous()
    v.require_positive_finite("temperature", temperature)
    _check_chunk_size(chunk_size)
    return hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, lead_shape


def _check_head(h_name, hidden, w_name, weight, b_name, bias, like=None):
    """Validate one (hidden, weight, bias) head; `like` = (lead_shape, hidden, weight) of the policy head
    that the reference must match in leading shape, vocabulary, dtype and device. Returns flattened tensors."""
    v.require_tensor(h_name, hidden)
    v.require_tensor(w_name, weight)
    v.require_float(h_name, hidden)
    if hidden.dim() not in (2, 3):
        raise ValueError(f"{h_name} must be [N, H] or [B, T, H], got {v.describe(hidden)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"{w_name} must be [V, H] with H = {h_name}.shape[-1] = {hidden.shape[-1]}, "
                         f"got {v.describe(weight)}")
    if like is not None:
        lead_shape, ref, ref_w = like
        if hidden.shape[:-1] != lead_shape:
            raise ValueError(f"{h_name} must have the leading shape of hidden {tuple(lead_shape)}, "
                             f"got {v.describe(hidden)}")
        if weight.shape[0] != ref_w.shape[0]:
            raise ValueError(f"{w_name} must have the vocabulary size of weight (V = {ref_w.shape[0]}), "
                             f"got {v.describe(weight)}")
        if hidden.dtype != ref.dtype:
            raise TypeError(f"{h_name} must have the dtype of hidden ({ref.dtype}), got {v.describe(hidden)}")
        v.require_same_device(h_name, hidden, "hidden", ref)
    if weight.dtype != hidden.dtype:
        raise TypeError(f"{w_name} must have the dtype of {h_name} ({hidden.dtype}), got {v.describe(weight)}")
    v.require_same_device(w_name, weight, h_name, hidden)
    if bias is not None:
        v.require_tensor(b_name, bias)
        if bias.shape != (weight.shape[0],) or bias.dtype != hidden.dtype:
            raise ValueError(f"{b_name} must be [{weight.shape[0]}] of dtype {hidden.dtype}, got {v.describe(bias)}")
        v.require_same_device(b_name, bias, h_name, hidden)
        bias = bias.contiguous()
    lead_shape = hidden.shape[:-1]
    return hidden.reshape(-1, hidden.shape[-1]).contiguous(), weight.contiguous(), bias, lead_shape


# ---- loss layer (bodies in _loss_api.py and _gro.py) ----

def group_advantages(rewards: torch.Tensor, *, group_ids: Optional[torch.Tensor] = None, group_size=None,
                     mode: str = "grpo", eps: float = 1e-6, baseline: Optional[torch.Tensor] = None,
                     mask: Optional[torch.Tensor] = None, scale_rewards="group",
                     token_kl: Optional[torch.Tensor] = None, kl_coef: float = 0.0) -> torch.Tensor:
    """Advantages from rewards [B] and groups (GRO_SPEC.md §2); fp32, no gradient.

    Groups: group_ids [B] (any ints; ragged groups fine) or group_size (an int G dividing B, or a list
    of sizes summing to B). mode: "grpo" (r - mean_g)/(std_g + eps), std unbiased, scale_rewards
    "group" | "batch" | "none" as in TRL; "dr_grpo" r - mean_g; "rloo" r - mean of the others;
    "remax" r - baseline (baseline [B] required); "reinforce_pp" token-level [B, T] (mask required):
    r - kl_coef * sum_{s>=t} token_kl_s, minus the group mean when groups are given, whitened over the
    valid tokens; "none" r. A group of one, or identical rewards, gives 0 (never NaN). NaN rewards
    raise naming the row.
    """
    return _loss_api.group_advantages(rewards, group_ids=group_ids, group_size=group_size, mode=mode, eps=eps,
                                      baseline=baseline, mask=mask, scale_rewards=scale_rewards, token_kl=token_kl,
                                      kl_coef=kl_coef)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, *, estimator: str = "k3") -> torch.Tensor:
    """Per-token sampled KL estimate from d = logprobs - ref_logprobs, differentiable in logprobs (fp32).

    "k1" d; "k2" d^2/2; "k3" exp(-d) + d - 1; "k3_st" the k3 value with k2's gradient. The exact
    full-vocabulary KL from hidden states is `exact_kl`.
    """
    return _loss_api.kl_penalty(logprobs, ref_logprobs, estimator=estimator)


def policy_loss(logprobs: torch.Tensor, advantages: torch.Tensor, mask: Optional[torch.Tensor] = None, **options):
    """Scalar PPO-family policy loss of per-token logprobs [B, T] (GRO_SPEC.md §3), and metrics.

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
    return _loss_api.policy_loss(logprobs, advantages, mask, **options)


def preference_loss(logprobs: torch.Tensor, mask: Optional[torch.Tensor] = None, *, loss_type: str = "dpo",
                    **options):
    """RL-free loss on sequence sums of per-token logprobs [B, T] (GRO_SPEC.md §4), and metrics.

    loss_type "dpo" (label_smoothing), "ipo", "simpo" (simpo_gamma), "kto" (desirable [B] bool,
    desirable_weight, undesirable_weight, kto_z0 or the detached batch estimate), "cpl" (cpl_lambda,
    cpl_discount; alpha = beta). Pairs: pair_ids [B] (rows sharing an id form a pair) and chosen [B].
    ref_logprobs [B, T] for dpo, ipo, kto. beta: the implicit-reward scale. Returns (loss, metrics).
    """
    return _loss_api.preference_loss(logprobs, mask, loss_type=loss_type, **options)


def gro_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
             bias: Optional[torch.Tensor] = None, *, preset: str = "grpo", **options):
    """Hidden states [B, T, H] -> scalar GRO loss, never materializing [B*T, V] logits.

    preset: grpo, bnpo, dr_grpo, dapo, rloo, remax, reinforce_pp, ppo, gspo, cispo, dpo, ipo, simpo,
    kto, cpl; or config=GROObjective(...) (score/anchor/magnitude, surrogate, KL, entropy, aggregation;
    rows="mixed" for batches with online and offline rows, told apart by online= [B] bool).
    Inputs (keyword): mask [B, T]; advantages [B] or [B, T], or rewards [B] with group_ids /
    group_size (baseline [B] for remax); old_logprobs, ref_logprobs, rollout_logprobs [B, T]; or
    ref_hidden (+ ref_weight, ref_bias) to stream the reference with no grad; pair_ids + chosen (dpo,
    ipo, simpo, cpl); desirable (kto); global_token_count, max_completion_length, num_sequences.
    Options: beta (KL coefficient for online presets, implicit-reward scale for offline ones),
    epsilon, epsilon_low, epsilon_high, dual_clip, loss_type, importance_sampling_level,
    scale_rewards, kl_estimator ("k1" | "k2" | "k3" | "k3_st" | "exact"), entropy_coef, tis_cap,
    label_smoothing, simpo_gamma, cpl_lambda, desirable_weight, undesirable_weight, online_weight,
    offline_weight, grad_in_forward (default on for token-separable presets; False for sharded heads),
    return_entropy, temperature, ignore_index, backend, chunk_size.
    Vocabulary-parallel head: process_group=pg, vocab_start=s with weight (and ref_weight) the rows
    [s, s + V_r) of the head on this rank, everything else replicated (see linear_logprobs); the loss is
    the full-vocabulary one on every rank, and grad_in_forward stays off.
    Returns GROOutput(loss 0-d fp32, metrics dict of 0-d fp32 tensors, logprobs [B, T] fp32 detached,
    entropy [B, T] or None).
    """
    from . import _gro

    return _gro.gro_loss(hidden, weight, targets, bias, preset=preset, **options)
