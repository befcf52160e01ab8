"""Policy loss on per-token logprobs: aggregation weights, sequence-level ratios, autograd, metrics.

The token math is token_terms.policy_token_terms; this file turns a [B, T] batch into its inputs
(per-token aggregation scale, per-token advantages, GSPO's sequence ratio) and wraps it in an
autograd Function whose backward is the analytic gradient the token function returns. The token
function runs as the fused Triton epilogue (triton_impl) or in torch: select_token_impl tells which.
"""

import functools
from typing import Optional

import torch

from ..common import dispatch
from . import coupled as _coupled
from . import gates as _gates
from . import token_terms
from .token_terms import EXTRAS, TokenLossConfig, TokenTerms

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm", "token_sum")
IS_LEVELS = ("token", "sequence", "sequence_token", "sequence_sum")  # sequence_sum: TRL RLOO's summed log-ratio


def aggregation_scale(mask: torch.Tensor, aggregation: str, *, global_token_count=None, max_completion_length=None,
                      num_sequences=None) -> torch.Tensor:
    """Per-token weights s [B, T] fp32 with loss = sum s * x (docs/math.md §3, aggregation).

    token_mean: m / sum m (or / global_token_count); token_sum: m (verl's token-sum on one rank);
    seq_mean_token_mean: m / (B len_i);
    seq_mean_token_sum: m / B; seq_mean_token_sum_norm: m / (B L), L = max_completion_length or
    the padded width T. B is num_sequences when given (e.g. over gradient-accumulation steps), else
    the rows of this batch. An empty sequence or an all-masked batch gets weight 0, never NaN.
    """
    m = mask.to(torch.float32)
    rows = _at_least_one(m.shape[0] if num_sequences is None else num_sequences)
    if aggregation == "token_mean":
        return m / _at_least_one(m.sum() if global_token_count is None else global_token_count)
    if aggregation == "seq_mean_token_mean":
        return m / (m.sum(1, keepdim=True).clamp(min=1.0) * rows)
    if aggregation == "seq_mean_token_sum":
        return m / rows
    if aggregation == "token_sum":
        return m
    if aggregation == "seq_mean_token_sum_norm":
        width = m.shape[1] if max_completion_length is None else max_completion_length
        return m / (rows * max(width, 1))
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def _at_least_one(count):
    """A count (int or tensor, e.g. the online rows of a mixed batch) as a divisor >= 1, no host sync."""
    if isinstance(count, torch.Tensor):
        return count.to(torch.float32).clamp(min=1.0)
    return max(float(count), 1.0)


@functools.cache
def _triton_impl():
    return dispatch.optional_triton_impl(__package__)


def select_token_impl(device: torch.device) -> str:
    """"triton" or "torch": which per-token function runs on `device`. CUDA: the Triton epilogue when
    Triton imports; CPU: torch. GRO_BACKEND=triton forces Triton (CPU tensors then need
    TRITON_INTERPRET=1), "chunked" / "naive" force torch (see ops/common/dispatch.py)."""
    backend = dispatch.requested_backend()
    if backend == "triton" and _triton_impl() is None:
        raise RuntimeError(dispatch.TRITON_MISSING)
    if backend == "triton" or (backend == "auto" and device.type == "cuda" and _triton_impl() is not None):
        return "triton"
    return "torch"


def policy_token_terms(logprobs, advantages, scale, mask, **options) -> TokenTerms:
    """token_terms.policy_token_terms (same arguments and result) on the implementation select_token_impl picks;
    options the Triton epilogue does not implement (cfg.triton_supported, pg_weight, entropy_scale) run in torch."""
    cfg = options.get("cfg", TokenLossConfig())
    torch_only = not cfg.triton_supported or options.get("pg_weight") is not None or \
        options.get("entropy_scale") is not None
    use_triton = not torch_only and select_token_impl(logprobs.device) == "triton"
    if use_triton:  # the kernel's signature has no pg_weight / entropy_scale (None here)
        options = {k: val for k, val in options.items() if k not in ("pg_weight", "entropy_scale")}
    impl = _triton_impl() if use_triton else token_terms
    return impl.policy_token_terms(logprobs, advantages, scale, mask, **options)


class _PolicyTokenLoss(torch.autograd.Function):
    """loss = sum_t terms.loss; backward = grad_output * the token function's analytic gradients."""

    @staticmethod
    def forward(ctx, logprobs, entropy, log_ratio, advantages, scale, mask, old, ref, rollout, cfg, pg_weight=None,
                entropy_scale=None):
        terms = policy_token_terms(logprobs.detach(), advantages, scale, mask, old_logprobs=old, ref_logprobs=ref,
                                   entropy=None if entropy is None else entropy.detach(), rollout_logprobs=rollout,
                                   log_ratio=None if log_ratio is None else log_ratio.detach(), pg_weight=pg_weight,
                                   entropy_scale=entropy_scale, cfg=cfg)
        ctx.save_for_backward(terms.grad_logprobs, terms.grad_entropy, terms.grad_log_ratio)
        ctx.mark_non_differentiable(terms.extras)
        return terms.loss.sum(), terms.extras

    @staticmethod
    def backward(ctx, grad_loss, _grad_extras):
        g_l, g_h, g_r = ctx.saved_tensors
        scale = lambda g, needed: g * grad_loss if (needed and g is not None) else None  # noqa: E731
        need = ctx.needs_input_grad
        return (scale(g_l, need[0]), scale(g_h, need[1]), scale(g_r, need[2]),
                None, None, None, None, None, None, None, None, None)


def sequence_log_ratio(logprobs, old_logprobs, mask, summed: bool = False):
    """GSPO: r_i = mean over the valid tokens of sequence i of (l - l_old); summed: the sum instead (TRL's
    RLOOTrainer clips exp(sum_t l - l_old) per sequence); differentiable in l."""
    m = mask.to(torch.float32)
    old = logprobs.detach() if old_logprobs is None else old_logprobs
    diff = torch.where(mask, logprobs - old, torch.zeros_like(logprobs))
    return diff.sum(1) if summed else diff.sum(1) / m.sum(1).clamp(min=1.0)


def token_advantages(advantages: torch.Tensor, shape) -> torch.Tensor:
    """Per-sequence [B] advantages broadcast to tokens; per-token [B, T] pass through."""
    adv = advantages.to(torch.float32)
    return adv.unsqueeze(1).expand(shape) if adv.dim() == 1 else adv


def policy_loss(logprobs, advantages, mask, *, old_logprobs=None, ref_logprobs=None, rollout_logprobs=None,
                entropy=None, cfg: TokenLossConfig, importance_sampling_level: str = "token",
                scale: Optional[torch.Tensor] = None, gates: _gates.GateConfig = _gates.GateConfig()):
    """Scalar policy loss of a [B, T] batch and the per-token metric sums.

    scale: the [B, T] aggregation weights (aggregation_scale). gates: the detached factors on the
    policy-gradient term and the entropy bonus's weights (gates.py). Returns (loss 0-d fp32,
    stats [6] fp32 = token count, sums of EXTRAS columns, entropy sum), ready for metrics().
    """
    shape = logprobs.shape
    adv = token_advantages(advantages, shape)
    log_ratio = None
    if importance_sampling_level != "token":
        seq = sequence_log_ratio(logprobs, old_logprobs, mask, summed=importance_sampling_level == "sequence_sum")
        log_ratio = seq.unsqueeze(1).expand(shape)
        if importance_sampling_level == "sequence_token":  # value of the sequence, gradient per token
            log_ratio = logprobs - logprobs.detach() + log_ratio.detach()
    pg_weight, entropy_mask = _gates.policy_gates(gates, logprobs, adv, mask, old_logprobs=old_logprobs,
                                                 rollout_logprobs=rollout_logprobs, entropy=entropy)
    ent_scale = _gates.entropy_scale(gates, entropy_mask, scale)
    flat = lambda t: None if t is None else t.reshape(-1)  # noqa: E731
    f32 = lambda t: None if t is None else t.reshape(-1).to(torch.float32)  # noqa: E731
    coupled_loss = None
    if gates.coupled is not None:  # verl geo_mean / clip_cov / kl_cov: pg from coupled.py, KL + entropy below
        coupled_loss = _coupled.coupled_pg_loss(gates.coupled, logprobs, old_logprobs, adv, mask, scale, shape[0])
        adv = torch.zeros_like(adv)  # the token function's reinforce pg -A l is then 0
    loss, extras = _PolicyTokenLoss.apply(f32(logprobs), f32(entropy), f32(log_ratio), adv.reshape(-1),
                                          scale.reshape(-1), flat(mask), f32(old_logprobs), f32(ref_logprobs),
                                          f32(rollout_logprobs), cfg, f32(pg_weight), f32(ent_scale))
    if coupled_loss is not None:
        loss = loss + coupled_loss
    return loss, token_stats(extras, mask, entropy)


def token_stats(extras, mask, entropy):
    """[count, kl, ratio, clipped_low, clipped_high, entropy] sums over the valid tokens."""
    count = mask.to(torch.float32).sum().reshape(1)
    ent = torch.zeros(1, dtype=torch.float32, device=mask.device) if entropy is None else \
        torch.where(mask, entropy.detach().float(), 0.0).sum().reshape(1)
    return torch.cat([count, extras.sum(0), ent])


def metrics(stats, with_entropy: bool, with_kl: bool) -> dict:
    """Means over valid tokens (TRL's masked batch mean) as fp32 0-d tensors, no host sync."""
    count = stats[0].clamp(min=1.0)
    out = {"ratio": stats[1 + EXTRAS.index("ratio")] / count,
           "clip_ratio_low": stats[1 + EXTRAS.index("clipped_low")] / count,
           "clip_ratio_high": stats[1 + EXTRAS.index("clipped_high")] / count}
    out["clip_ratio"] = out["clip_ratio_low"] + out["clip_ratio_high"]
    if with_kl:
        out["kl"] = stats[1 + EXTRAS.index("kl")] / count
    if with_entropy:
        out["entropy"] = stats[5] / count
    out["num_tokens"] = stats[0]
    return out
