"""The per-token policy loss of GRO (docs/math.md §3, §5): value, metrics and analytic gradients.

This is the one place where the token-level math lives. The plain path wraps it in an autograd
Function (function.py); the grad-in-forward path calls it once per row chunk through the fused
token-loss op, so both give the same numbers. Everything here is elementwise over tokens: inputs
are 1-D fp32 tensors of one length n (a flattened batch or one chunk of it).
"""

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

SURROGATES = ("clip", "cispo", "reinforce", "sapo", "dppo_tv", "dppo_kl", "dro")
# k1+ / abs+ / low_var_kl+: the value of k1 / |d| / low_var_kl with k2's gradient (verl's "+" straight-through);
# low_var_kl: verl's k3, its exponent clamped to +-20 and its value to <= 10 (zero gradient where clamped).
KL_ESTIMATORS = ("k1", "k2", "k3", "k3_st", "abs", "k1+", "abs+", "low_var_kl", "low_var_kl+")
# What the fused Triton epilogue implements; anything else runs the torch function (function.select_token_impl).
TRITON_SURROGATES = ("clip", "cispo", "reinforce")
TRITON_KL_ESTIMATORS = ("k1", "k2", "k3", "k3_st")
LOG_RATIO_CLAMP = 20.0
LOW_VAR_KL_MAX = 10.0
# Per-token metric columns of TokenTerms.extras (masked tokens hold 0).
EXTRAS = ("kl", "ratio", "clipped_low", "clipped_high")


@dataclass(frozen=True)
class TokenLossConfig:
    """Options of the per-token loss. dual_clip / tis_cap None mean off."""

    surrogate: str = "clip"
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    dual_clip: Optional[float] = None
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    tis_cap: Optional[float] = None
    delta: Optional[float] = None            # TRL's two-sided clip: the unclipped ratio capped at delta
    cispo_ratio_min: Optional[float] = None  # verl's CISPO lower bound on the ratio (1 - clip_ratio_low)
    sapo_tau_pos: float = 1.0                # SAPO gate temperature for A > 0
    sapo_tau_neg: float = 1.05               # ... and for A <= 0
    dppo_ratio_cap: float = 20.0             # DPPO's truncated IS cap (verl clip_ratio_c, default 20 there)
    dro_beta: float = 0.0                    # DRO's quadratic log-ratio penalty
    kl_ratio_weighted: bool = False          # TRL use_bias_correction_kl: KL term times the IS ratio

    @property
    def triton_supported(self) -> bool:
        """The options the Triton epilogue implements (the others run in torch: same numbers, more kernels)."""
        return (self.surrogate in TRITON_SURROGATES and self.kl_estimator in TRITON_KL_ESTIMATORS
                and self.delta is None and self.cispo_ratio_min is None and not self.kl_ratio_weighted)


# The fields after tis_cap, as floats for the fused op's parameter list (a custom op takes no dataclass).
_EXTRA_FIELDS = ("delta", "cispo_ratio_min", "sapo_tau_pos", "sapo_tau_neg", "dppo_ratio_cap", "dro_beta",
                 "kl_ratio_weighted")


def encode_extra(cfg: TokenLossConfig) -> list:
    """The options after tis_cap as floats (None: NaN); decode_extra reads them back."""
    nan = float("nan")
    return [nan if getattr(cfg, f) is None else float(getattr(cfg, f)) for f in _EXTRA_FIELDS]


def decode_extra(params):
    """(TokenLossConfig keyword fields, the parameters after them) from encode_extra's floats."""
    vals = dict(zip(_EXTRA_FIELDS, params))
    for f in ("delta", "cispo_ratio_min"):
        vals[f] = None if math.isnan(vals[f]) else vals[f]
    vals["kl_ratio_weighted"] = bool(vals["kl_ratio_weighted"])
    return vals, list(params[len(_EXTRA_FIELDS):])


class TokenTerms(NamedTuple):
    loss: torch.Tensor                       # [n] per-token contributions, scale included: loss = loss.sum()
    grad_logprobs: torch.Tensor              # [n] d loss.sum() / d logprobs
    grad_entropy: Optional[torch.Tensor]     # [n] d loss.sum() / d entropy, None without an entropy term
    grad_log_ratio: Optional[torch.Tensor]   # [n] d loss.sum() / d log_ratio when log_ratio was given
    extras: torch.Tensor                     # [n, 4] per-token metrics, columns EXTRAS


def kl_value_and_grad(d: torch.Tensor, estimator: str):
    """Sampled KL estimate of d = l - l_ref and its derivative in d (docs/math.md §3)."""
    if estimator == "k1":
        return d, torch.ones_like(d)
    if estimator == "k2":
        return 0.5 * d * d, d
    e = torch.exp(-d)
    value = e + d - 1.0
    if estimator == "k3":
        return value, 1.0 - e
    if estimator == "k3_st":  # logs k3, back-propagates k2's gradient
        return value, d
    if estimator == "abs":
        return d.abs(), torch.sign(d)
    if estimator == "k1+":
        return d, d
    if estimator == "abs+":
        return d.abs(), d
    if estimator in ("low_var_kl", "low_var_kl+"):
        # verl kl_penalty_forward: kl = clamp(-d, -20, 20); clamp(exp(kl) - kl - 1, -10, 10)
        x = (-d).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        raw = torch.exp(x) - x - 1.0
        value = raw.clamp(max=LOW_VAR_KL_MAX)
        if estimator == "low_var_kl+":
            return value, d
        live = (d.abs() <= LOG_RATIO_CLAMP) & (raw <= LOW_VAR_KL_MAX)
        return value, torch.where(live, 1.0 - torch.exp(x), torch.zeros_like(d))
    raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def _surrogate(rho, adv, cfg: TokenLossConfig):
    """(pg value, d pg / d rho, d pg / d logprob directly, clipped_low, clipped_high)."""
    zero = torch.zeros_like(rho)
    if cfg.surrogate == "clip":
        lo, hi = 1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high
        capped_rho = rho if cfg.delta is None else rho.clamp(max=cfg.delta)  # TRL delta: caps the unclipped term
        unclipped = capped_rho * adv
        clipped = rho.clamp(lo, hi) * adv
        pg = -torch.minimum(unclipped, clipped)
        in_range = (rho >= lo) & (rho <= hi)
        if cfg.delta is None:
            passes = (unclipped <= clipped) | in_range
        else:
            passes = torch.where(unclipped <= clipped, rho <= cfg.delta, in_range)
        d_rho = torch.where(passes, -adv, zero)
        if cfg.dual_clip is not None:
            cap = -cfg.dual_clip * adv  # for A < 0 the loss may not exceed -c A
            capped = (adv < 0) & (pg > cap)
            pg = torch.where(capped, cap, pg)
            d_rho = torch.where(capped, zero, d_rho)
        return pg, d_rho, zero, (rho < lo) & (adv < 0), (rho > hi) & (adv > 0)
    no = torch.zeros_like(rho, dtype=torch.bool)
    if cfg.surrogate == "cispo":
        low = no if cfg.cispo_ratio_min is None else (rho < cfg.cispo_ratio_min) & (adv < 0)
        return None, zero, -torch.clamp(rho, min=cfg.cispo_ratio_min, max=cfg.epsilon_high) * adv, low, \
            (rho > cfg.epsilon_high) & (adv > 0)
    if cfg.surrogate == "reinforce":
        return None, zero, -adv, no, no
    if cfg.surrogate == "sapo":  # -A f(rho), f = sigmoid(tau (rho - 1)) 4 / tau, tau by the sign of A
        tau = torch.where(adv > 0, cfg.sapo_tau_pos, cfg.sapo_tau_neg)
        sig = torch.sigmoid(tau * (rho - 1.0))
        return -adv * sig * 4.0 / tau, -adv * 4.0 * sig * (1.0 - sig), zero, no, no
    if cfg.surrogate in ("dppo_tv", "dppo_kl"):
        raise AssertionError("dppo surrogates are handled in policy_token_terms (they need the probabilities)")
    raise ValueError(f"surrogate must be one of {SURROGATES}, got {cfg.surrogate!r}")


def _dppo(l, old, rho, adv, cfg: TokenLossConfig):
    """verl DPPO-Binary-TV / -KL: -A sg(min(rho, cap)) l on the tokens whose probability moved less than the
    divergence bound in the direction A pushes (epsilon_high for A > 0, epsilon_low otherwise)."""
    p, p_old = torch.exp(l), torch.exp(old)
    if cfg.surrogate == "dppo_tv":
        keep_pos, keep_neg = (p - p_old) <= cfg.epsilon_high, (p - p_old) >= -cfg.epsilon_low
    else:
        binary_kl = p_old * (old - l) + (1 - p_old) * torch.log((1.0 - p_old + 1e-8) / (1.0 - p + 1e-8))
        keep_pos = (binary_kl <= cfg.epsilon_high) | (p <= p_old)
        keep_neg = (binary_kl <= cfg.epsilon_low) | (p >= p_old)
    keep = torch.where(adv > 0, keep_pos, keep_neg)
    weight = -adv * rho.clamp(max=cfg.dppo_ratio_cap) * keep.to(l.dtype)
    return weight, ~keep & (adv <= 0), ~keep & (adv > 0)


def policy_token_terms(logprobs, advantages, scale, mask, *, old_logprobs=None, ref_logprobs=None, entropy=None,
                       rollout_logprobs=None, log_ratio=None, pg_weight=None, entropy_scale=None,
                       cfg: TokenLossConfig = TokenLossConfig()) -> TokenTerms:
    """Per-token GRO policy loss  x_t = tis_t * pg_t + kl_coef * k(l_t - ref_t) - entropy_coef * H_t.

    pg_t: clip   -min(min(rho, delta) A, clip(rho, 1-eps_low, 1+eps_high) A) (delta None: no cap), with
                 dual clip min(., -c A) for A < 0;
          cispo  -sg(clip(rho, cispo_ratio_min, eps_high)) A l;   reinforce  -A l;
          sapo   -A sigmoid(tau (rho - 1)) 4 / tau (tau = sapo_tau_pos for A > 0, else sapo_tau_neg);
          dppo_tv / dppo_kl  -A sg(min(rho, dppo_ratio_cap)) keep_t l (keep_t: verl's probability-divergence mask);
          dro    -(A l - dro_beta r^2 / 2).
    pg_weight_t (optional, detached): a further factor on pg_t (rollout IS weights / masks, entropy and
    off-policy masks, VESPO's phi: gates.py). kl_ratio_weighted: the KL term is rho_t k_t (TRL's
    use_bias_correction_kl; its gradient flows through rho too). The entropy term uses entropy_scale_t
    in place of scale_t when given (TRL's entropy bonus: a token mean whatever the aggregation).
    rho_t = exp(clamp(r_t, -20, 20)), r_t = log_ratio_t if given (e.g. GSPO's sequence-level ratio,
    broadcast to tokens; its gradient comes back in grad_log_ratio), else l_t - old_t (old None:
    r_t = l_t - sg(l_t), value 0). tis_t = sg(min(exp(old_t - rollout_t), tis_cap)).
    The returned loss is scale_t * x_t on tokens where mask is true and 0 elsewhere (scale_t is the
    aggregation weight, e.g. m_t / sum m for token_mean), so the batch loss is loss.sum().
    All inputs are [n]; advantages per token; mask bool; logprobs/old/ref/rollout/entropy fp32.
    """
    valid = mask
    zero = torch.zeros_like(logprobs)
    l = torch.where(valid, logprobs, zero)
    if log_ratio is not None:
        r = log_ratio
    elif old_logprobs is not None:
        r = l - torch.where(valid, old_logprobs, zero)
    else:
        r = zero
    in_clamp = (r >= -LOG_RATIO_CLAMP) & (r <= LOG_RATIO_CLAMP)
    rho = torch.exp(r.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    adv = torch.where(valid, advantages, zero)
    old = l if old_logprobs is None else torch.where(valid, old_logprobs, zero)
    if cfg.surrogate in ("dppo_tv", "dppo_kl"):
        d_l, clip_low, clip_high = _dppo(l, old, rho, adv, cfg)
        pg, d_r = d_l * l, zero
    elif cfg.surrogate == "dro":  # r unclamped, as verl's log_ratio
        no = torch.zeros_like(valid)
        pg, d_l, d_r, clip_low, clip_high = -adv * l + 0.5 * cfg.dro_beta * r * r, -adv, cfg.dro_beta * r, no, no
    else:
        pg, d_rho, d_l, clip_low, clip_high = _surrogate(rho, adv, cfg)
        if pg is None:  # cispo / reinforce: a detached weight times l
            pg = d_l * l
        d_r = torch.where(in_clamp, d_rho * rho, zero)
    if cfg.tis_cap is not None and rollout_logprobs is not None:
        tis = torch.exp(old - torch.where(valid, rollout_logprobs, zero)).clamp(max=cfg.tis_cap)
        pg, d_r, d_l = pg * tis, d_r * tis, d_l * tis
    if pg_weight is not None:
        w = torch.where(valid, pg_weight, zero)
        pg, d_r, d_l = pg * w, d_r * w, d_l * w
    x = pg
    if ref_logprobs is not None:
        kl, d_kl = kl_value_and_grad(l - torch.where(valid, ref_logprobs, zero), cfg.kl_estimator)
        kl = torch.where(valid, kl, zero)
        if cfg.kl_ratio_weighted:  # d(rho k)/dl = rho k' (direct) + rho k (through r)
            d_r = d_r + cfg.kl_coef * torch.where(in_clamp, kl * rho, zero)
            kl, d_kl = kl * rho, d_kl * rho
        if cfg.kl_coef != 0.0:
            x = x + cfg.kl_coef * kl
            d_l = d_l + cfg.kl_coef * d_kl
    else:
        kl = zero
    s = torch.where(valid, scale, zero)
    loss = torch.where(valid, s * x, zero)
    grad_entropy = None
    if entropy is not None and cfg.entropy_coef != 0.0:
        es = s if entropy_scale is None else torch.where(valid, entropy_scale, zero)
        loss = loss - torch.where(valid, cfg.entropy_coef * entropy * es, zero)
        grad_entropy = -cfg.entropy_coef * es
    if log_ratio is None:
        grad_l, grad_r = s * (d_l + d_r), None
    else:
        grad_l, grad_r = s * d_l, s * d_r
    fv = valid.to(torch.float32)
    extras = torch.stack([kl, rho * fv, (clip_low & valid).float(), (clip_high & valid).float()], dim=1)
    return TokenTerms(loss, grad_l, grad_entropy, grad_r, extras)
