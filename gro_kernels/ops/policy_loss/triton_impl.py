"""Triton per-token policy epilogue: the whole of token_terms.policy_token_terms in one pass.

One kernel reads l, old/ref/rollout logprobs, log ratio, advantages, aggregation scale, mask and
entropy once and writes the per-token loss, dLoss/dl (and dLoss/dH, dLoss/dlog_ratio) and the
metric columns EXTRAS, where the torch version runs ~40 elementwise kernels with their temporaries.
Same inputs, options and TokenTerms result as policy_token_terms (the reference these kernels are
tested against). Triton is imported only when this module is.
"""

import torch
import triton
import triton.language as tl

from ..common.triton_helpers import offsets_i64, require_launchable
from .token_terms import KL_ESTIMATORS, LOG_RATIO_CLAMP, SURROGATES, TokenLossConfig, TokenTerms

BLOCK = 1024
NUM_WARPS = 4
_RATIO_CLAMP = tl.constexpr(LOG_RATIO_CLAMP)
# torch.clamp / torch.minimum pass NaN through; tl.minimum / tl.maximum drop it by default (a NaN log ratio
# would become -20 and vanish from the loss). Every min/max of a value here propagates NaN, as in torch.


@triton.jit
def _min(x, y):
    return tl.minimum(x, y, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _max(x, y):
    return tl.maximum(x, y, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _kl(d, KL_EST: tl.constexpr):
    """(value, d value / d d) of the KL estimator: 0 k1, 1 k2, 2 k3, 3 k3 valued / k2 gradient."""
    if KL_EST == 0:
        return d, tl.full(d.shape, 1.0, tl.float32)
    if KL_EST == 1:
        return 0.5 * d * d, d
    e = tl.exp(-d)
    if KL_EST == 2:
        return e + d - 1.0, 1.0 - e
    return e + d - 1.0, d


@triton.jit
def _policy_token_kernel(lp_ptr, adv_ptr, scale_ptr, mask_ptr, old_ptr, ref_ptr, rollout_ptr, ratio_ptr, ent_ptr,
                         loss_ptr, grad_l_ptr, grad_h_ptr, grad_r_ptr, extras_ptr,
                         n,
                         eps_low, eps_high, dual_clip, kl_coef, entropy_coef, tis_cap,
                         SURROGATE: tl.constexpr, KL_EST: tl.constexpr, HAS_OLD: tl.constexpr,
                         HAS_REF: tl.constexpr, HAS_LOG_RATIO: tl.constexpr, USE_KL: tl.constexpr,
                         USE_ENTROPY: tl.constexpr, USE_DUAL_CLIP: tl.constexpr, USE_TIS: tl.constexpr,
                         BLOCK: tl.constexpr):
    """Grid (cdiv(n, BLOCK),): program i handles tokens [i*BLOCK, +BLOCK); everything is elementwise.
    SURROGATE: 0 clip, 1 cispo, 2 reinforce (token_terms.SURROGATES order)."""
    offs = offsets_i64(tl.program_id(0) * BLOCK, BLOCK)
    ok = offs < n
    valid = ok & (tl.load(mask_ptr + offs, mask=ok, other=0) != 0)
    l = tl.where(valid, tl.load(lp_ptr + offs, mask=ok, other=0.0).to(tl.float32), 0.0)
    zero = tl.zeros((BLOCK,), tl.float32)
    old = l
    r = zero  # without old logprobs: l - sg(l), exactly 0 (as token_terms: also for a NaN l)
    if HAS_OLD:
        old = tl.where(valid, tl.load(old_ptr + offs, mask=ok, other=0.0).to(tl.float32), 0.0)
        r = l - old
    if HAS_LOG_RATIO:
        r = tl.load(ratio_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    in_clamp = (r >= -_RATIO_CLAMP) & (r <= _RATIO_CLAMP)
    rho = tl.exp(_min(_max(r, -_RATIO_CLAMP), _RATIO_CLAMP))
    adv = tl.where(valid, tl.load(adv_ptr + offs, mask=ok, other=0.0).to(tl.float32), 0.0)
    d_rho = zero
    if SURROGATE == 0:
        lo = 1.0 - eps_low
        hi = 1.0 + eps_high
        unclipped = rho * adv
        clipped = _min(_max(rho, lo), hi) * adv
        pg = -_min(unclipped, clipped)
        passes = (unclipped <= clipped) | ((rho >= lo) & (rho <= hi))
        d_rho = tl.where(passes, -adv, 0.0)
        if USE_DUAL_CLIP:
            cap = -dual_clip * adv
            capped = (adv < 0) & (pg > cap)
            pg = tl.where(capped, cap, pg)
            d_rho = tl.where(capped, 0.0, d_rho)
        d_l = zero
        clip_low = (rho < lo) & (adv < 0)
        clip_high = (rho > hi) & (adv > 0)
    elif SURROGATE == 1:
        d_l = -_min(rho, eps_high) * adv
        pg = d_l * l
        clip_low = zero != zero  # all false (rho may be NaN, so not rho != rho)
        clip_high = (rho > eps_high) & (adv > 0)
    else:
        d_l = -adv
        pg = d_l * l
        clip_low = zero != zero
        clip_high = zero != zero
    d_r = tl.where(in_clamp, d_rho * rho, 0.0)
    if USE_TIS:
        rollout = tl.where(valid, tl.load(rollout_ptr + offs, mask=ok, other=0.0).to(tl.float32), 0.0)
        tis = _min(tl.exp(old - rollout), tis_cap)
        pg = pg * tis
        d_r = d_r * tis
        d_l = d_l * tis
    x = pg
    kl = zero
    if HAS_REF:
        ref = tl.where(valid, tl.load(ref_ptr + offs, mask=ok, other=0.0).to(tl.float32), 0.0)
        kl, d_kl = _kl(l - ref, KL_EST)
        kl = tl.where(valid, kl, 0.0)
        if USE_KL:
            x = x + kl_coef * kl
            d_l = d_l + kl_coef * d_kl
    s = tl.where(valid, tl.load(scale_ptr + offs, mask=ok, other=0.0).to(tl.float32), 0.0)
    if USE_ENTROPY:
        x = x - entropy_coef * tl.load(ent_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        tl.store(grad_h_ptr + offs, -entropy_coef * s, mask=ok)
    tl.store(loss_ptr + offs, tl.where(valid, s * x, 0.0), mask=ok)
    if HAS_LOG_RATIO:
        tl.store(grad_l_ptr + offs, s * d_l, mask=ok)
        tl.store(grad_r_ptr + offs, s * d_r, mask=ok)
    else:
        tl.store(grad_l_ptr + offs, s * (d_l + d_r), mask=ok)
    fv = valid.to(tl.float32)
    row = extras_ptr + offs * 4
    tl.store(row, kl, mask=ok)
    tl.store(row + 1, rho * fv, mask=ok)
    tl.store(row + 2, (clip_low & valid).to(tl.float32), mask=ok)
    tl.store(row + 3, (clip_high & valid).to(tl.float32), mask=ok)


def _flags(cfg: TokenLossConfig, old, ref, rollout, log_ratio, entropy):
    if cfg.surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {SURROGATES}, got {cfg.surrogate!r}")
    if cfg.kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {cfg.kl_estimator!r}")
    return dict(SURROGATE=SURROGATES.index(cfg.surrogate), KL_EST=KL_ESTIMATORS.index(cfg.kl_estimator),
                HAS_OLD=old is not None, HAS_REF=ref is not None, HAS_LOG_RATIO=log_ratio is not None,
                USE_KL=ref is not None and cfg.kl_coef != 0.0,
                USE_ENTROPY=entropy is not None and cfg.entropy_coef != 0.0,
                USE_DUAL_CLIP=cfg.dual_clip is not None, USE_TIS=cfg.tis_cap is not None and rollout is not None)


def policy_token_terms(logprobs, advantages, scale, mask, *, old_logprobs=None, ref_logprobs=None, entropy=None,
                       rollout_logprobs=None, log_ratio=None, cfg: TokenLossConfig = TokenLossConfig()) -> TokenTerms:
    """token_terms.policy_token_terms as one Triton kernel (CUDA tensors, or CPU under the interpreter)."""
    require_launchable("logprobs", logprobs)
    flags = _flags(cfg, old_logprobs, ref_logprobs, rollout_logprobs, log_ratio, entropy)
    n = logprobs.numel()
    new = lambda: torch.empty(n, dtype=torch.float32, device=logprobs.device)  # noqa: E731
    loss, grad_l = new(), new()
    grad_h = new() if flags["USE_ENTROPY"] else None
    grad_r = new() if flags["HAS_LOG_RATIO"] else None
    extras = torch.empty(n, 4, dtype=torch.float32, device=logprobs.device)
    if n > 0:
        c = lambda t: logprobs if t is None else t.contiguous()  # noqa: E731  (unused slots get any pointer)
        torch.library.wrap_triton(_policy_token_kernel)[(triton.cdiv(n, BLOCK),)](
            c(logprobs), c(advantages), c(scale), c(mask), c(old_logprobs), c(ref_logprobs), c(rollout_logprobs),
            c(log_ratio), c(entropy), loss, grad_l, grad_l if grad_h is None else grad_h,
            grad_l if grad_r is None else grad_r, extras, n,
            float(cfg.epsilon_low), float(cfg.epsilon_high), float(cfg.dual_clip or 0.0), float(cfg.kl_coef),
            float(cfg.entropy_coef), float(cfg.tis_cap or 0.0), **flags, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return TokenTerms(loss, grad_l, grad_h, grad_r, extras)


def compile_specs(target: str):
    """Kernel variants for the AOT tests (one config on both targets: an elementwise, memory-bound pass)."""
    from ..common.triton_aot import KernelSpec

    types = {name: "*fp32" for name in ("lp_ptr", "adv_ptr", "scale_ptr", "old_ptr", "ref_ptr", "rollout_ptr",
                                        "ratio_ptr", "ent_ptr", "loss_ptr", "grad_l_ptr", "grad_h_ptr",
                                        "grad_r_ptr", "extras_ptr")}
    types.update(mask_ptr="*i1", n="i32", eps_low="fp32", eps_high="fp32", dual_clip="fp32", kl_coef="fp32",
                 entropy_coef="fp32", tis_cap="fp32")
    aligned = tuple(name for name in types if name.endswith("_ptr"))
    specs = []
    for surrogate in SURROGATES:
        consts = dict(SURROGATE=SURROGATES.index(surrogate), KL_EST=2, HAS_OLD=True, HAS_REF=True,
                      HAS_LOG_RATIO=surrogate == "clip", USE_KL=True, USE_ENTROPY=True, USE_DUAL_CLIP=True,
                      USE_TIS=True, BLOCK=BLOCK)
        specs.append(KernelSpec(f"policy_token[{surrogate}]", _policy_token_kernel, types, consts, aligned,
                                NUM_WARPS, 1))
    return specs
