"""Sampled KL estimators on per-token logprobs (docs/math.md §3), written with plain autograd ops."""

import torch

ESTIMATORS = ("k1", "k2", "k3", "k3_st", "abs", "k1+", "abs+", "low_var_kl", "low_var_kl+")


def kl_penalty_naive(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from d = l - l_ref, differentiable in logprobs.

    k1 = d (unbiased, gradient zero in expectation: use it inside a reward, not as a loss);
    k2 = d^2 / 2 (gradient = the reverse-KL gradient); k3 = exp(-d) + d - 1 (unbiased, >= 0);
    k3_st = the value of k3 with the gradient of k2 (straight-through); verl's: abs = |d|; low_var_kl = k3 of
    clamp(-d, +-20), clamped to <= 10 (verl's "k3"); k1+ / abs+ / low_var_kl+ = that value with k2's gradient
    (verl's "+" names). Same dtype as the inputs.
    """
    d = logprobs - ref_logprobs
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    k3 = torch.exp(-d) + d - 1.0
    if estimator == "k3":
        return k3
    k2 = 0.5 * d * d
    if estimator == "k3_st":
        return k2 + (k3 - k2).detach()
    if estimator in ("abs", "abs+"):  # verl "abs"; "+": the value with k2's gradient (straight-through)
        return d.abs() if estimator == "abs" else k2 + (d.abs() - k2).detach()
    if estimator == "k1+":
        return k2 + (d - k2).detach()
    if estimator in ("low_var_kl", "low_var_kl+"):  # verl kl_penalty_forward "low_var_kl" / "k3": clamped k3
        x = torch.clamp(-d, min=-20, max=20)
        low_var = torch.clamp(torch.exp(x) - x - 1, min=-10, max=10)
        return low_var if estimator == "low_var_kl" else k2 + (low_var - k2).detach()
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
