"""The spec of linear_logprobs: materializes [N, V] logits. The test oracle; never a default."""

import torch


def transformed_logits(hidden, weight, bias=None, *, temperature=1.0, final_logit_softcapping=None,
                       logit_scale=1.0):
    """The logits every head statistic is taken over, in fp32 (fp64 for fp64 inputs) (docs/math.md §1):

        z_t = logit_scale * (W h_t (+ b))
        z_t = c * tanh(z_t / c)          with c = final_logit_softcapping, when it is not None
        return z_t / tau

    The product W h is formed in the input dtype (what a plain trainer does); the rest in fp32/fp64.
    This is the order of Gemma 2/3 (softcap), Cohere (logit_scale), Granite (logit_scale = 1/logits_scaling)."""
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    out_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    z = logits.to(out_dtype) * logit_scale
    if final_logit_softcapping is not None:
        z = final_logit_softcapping * torch.tanh(z / final_logit_softcapping)
    return z / temperature


def linear_logprobs_naive(hidden, weight, targets, bias=None, *, temperature=1.0, ignore_index=-100,
                          final_logit_softcapping=None, logit_scale=1.0):
    """Log-probability of each target token and the entropy of each token's distribution.

    For row t with logits z_t of transformed_logits (W h_t (+ b), times logit_scale, softcapped, over
    the temperature tau; docs/math.md §1):

        logprob_t = z_t[y_t] - logsumexp(z_t)
        entropy_t = -sum_v p_v log p_v,   p = softmax(z_t)

    A -inf logit is a token of probability 0 (it adds nothing); a NaN or +inf logit makes its row NaN.
    Rows whose target is `ignore_index` give logprob 0 and entropy 0 (and zero gradient). The
    logits are formed in the input dtype (what a plain trainer does), the softmax in fp32 or
    fp64 (for fp64 inputs); outputs are fp32 (fp64 for fp64 inputs, so the oracle keeps its
    precision). hidden [N, H], weight [V, H], targets [N] int64, bias [V] or None.
    Returns (logprobs [N], entropy [N]). Differentiable through plain autograd.
    """
    scaled = transformed_logits(hidden, weight, bias, temperature=temperature,
                                final_logit_softcapping=final_logit_softcapping, logit_scale=logit_scale)
    log_p = torch.log_softmax(scaled, dim=-1)
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
    logprobs = log_p.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    # A -inf logit (a banned token) has p = 0: its p * log p is 0, not 0 * -inf = NaN. A clamp, not a where,
    # so the backward stays finite too; exp(-1e4) is 0 in fp32 and fp64, so nothing else moves.
    entropy = -(log_p.exp() * log_p.clamp(min=-1.0e4)).sum(-1)
    zero = torch.zeros((), dtype=scaled.dtype, device=hidden.device)
    return torch.where(valid, logprobs, zero), torch.where(valid, entropy, zero)


@torch.no_grad()
def head_stats_naive(hidden, weight, targets, bias=None, *, temperature=1.0, ignore_index=-100,
                     final_logit_softcapping=None, logit_scale=1.0):
    """The no-grad per-token statistics trainers log, over the logits z_t of transformed_logits:

        mean_logits_t      = mean_v z_t[v]
        log_sum_sq_probs_t = log sum_v p_v^2 = logsumexp(2 z_t) - 2 logsumexp(z_t),   p = softmax(z_t)
        is_top1_t          = y_t is argmax_v z_t[v], the first one on a tie

    (TRL 1.16's FusedCausalLMOutput fields of the same names.) Rows whose target is `ignore_index` give 0
    and False. Returns (mean_logits, log_sum_sq_probs, is_top1): fp32 (fp64 for fp64 inputs), fp32, bool.
    """
    z = transformed_logits(hidden, weight, bias, temperature=temperature,
                           final_logit_softcapping=final_logit_softcapping, logit_scale=logit_scale)
    valid = targets != ignore_index
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    mean = torch.where(valid, z.mean(-1), zero)
    log_sum_sq = torch.where(valid, torch.logsumexp(2 * z, -1) - 2 * torch.logsumexp(z, -1), zero)
    is_top1 = valid & (z.argmax(-1) == targets)
    return mean, log_sum_sq, is_top1
