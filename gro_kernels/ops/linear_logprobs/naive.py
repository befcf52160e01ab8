"""The spec of linear_logprobs: materializes [N, V] logits. The test oracle; never a default."""

import torch


def linear_logprobs_naive(hidden, weight, targets, bias=None, *, temperature=1.0, ignore_index=-100):
    """Log-probability of each target token and the entropy of each token's distribution.

    For row t with logits z_t = W h_t (+ b) and temperature tau (docs/math.md §1):

        logprob_t = z_t[y_t] / tau - logsumexp(z_t / tau)
        entropy_t = -sum_v p_v log p_v,   p = softmax(z_t / tau)

    A -inf logit is a token of probability 0 (it adds nothing); a NaN or +inf logit makes its row NaN.
    Rows whose target is `ignore_index` give logprob 0 and entropy 0 (and zero gradient). The
    logits are formed in the input dtype (what a plain trainer does), the softmax in fp32 or
    fp64 (for fp64 inputs); outputs are fp32 (fp64 for fp64 inputs, so the oracle keeps its
    precision). hidden [N, H], weight [V, H], targets [N] int64, bias [V] or None.
    Returns (logprobs [N], entropy [N]). Differentiable through plain autograd.
    """
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    out_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    scaled = logits.to(out_dtype) / temperature
    log_p = torch.log_softmax(scaled, dim=-1)
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
    logprobs = log_p.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    # A -inf logit (a banned token) has p = 0: its p * log p is 0, not 0 * -inf = NaN. A clamp, not a where,
    # so the backward stays finite too; exp(-1e4) is 0 in fp32 and fp64, so nothing else moves.
    entropy = -(log_p.exp() * log_p.clamp(min=-1.0e4)).sum(-1)
    zero = torch.zeros((), dtype=out_dtype, device=hidden.device)
    return torch.where(valid, logprobs, zero), torch.where(valid, entropy, zero)
