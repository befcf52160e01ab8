"""Sampled KL estimators on per-token logprobs (docs/math.md §3), written with plain autograd ops."""

import torch

ESTIMATORS = ("k1", "k2", "k3", "k3_st")


def kl_penalty_naive(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from d = l - l_ref, differentiable in logprobs.

    k1 = d (unbiased, gradient zero in expectation: use it inside a reward, not as a loss);
    k2 = d^2 / 2 (gradient = the reverse-KL gradient); k3 = exp(-d) + d - 1 (unbiased, >= 0);
    k3_st = the value of k3 with the gradient of k2 (straight-through). Same dtype as the inputs.
    """
    d = logprobs - ref_logprobs
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    k3 = torch.exp(-d) + d - 1.0
    if estimator == "k3":
        return k3
    if estimator == "k3_st":
        k2 = 0.5 * d * d
        return k2 + (k3 - k2).detach()
    raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
