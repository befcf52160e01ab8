"""The spec of exact_kl: materializes both [N, V] logit matrices. The test oracle; never a default."""

import torch


def exact_kl_naive(hidden, weight, ref_hidden, ref_weight, bias=None, ref_bias=None, *, temperature=1.0, mask=None):
    """Exact per-token KL(pi || pi_ref) over the whole vocabulary.

    With policy logits z_t = W h_t (+ b), reference logits z'_t = W' h'_t (+ b'), temperature tau,
    p = softmax(z_t / tau) and q = softmax(z'_t / tau) (docs/math.md §1):

        KL_t = sum_v p_v (log p_v - log q_v)
        dKL_t / dz_t = p * (log p - log q - KL_t) / tau

    The reference side is a constant (detached): it gets no gradient. Rows where `mask` is False give
    KL 0 and zero gradient. The logits are formed in the input dtype, the softmax in fp32 (fp64 for fp64
    inputs); the output is fp32 (fp64 for fp64 inputs). hidden [N, H], weight [V, H], ref_hidden
    [N, H'], ref_weight [V, H'], bias / ref_bias [V] or None, mask [N] bool or None. Returns KL [N].
    """
    out_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    with torch.no_grad():
        ref_logits = ref_hidden @ ref_weight.t()
        if ref_bias is not None:
            ref_logits = ref_logits + ref_bias
    log_p = torch.log_softmax(logits.to(out_dtype) / temperature, dim=-1)
    log_q = torch.log_softmax(ref_logits.to(out_dtype) / temperature, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    if mask is None:
        return kl
    return torch.where(mask, kl, torch.zeros((), dtype=out_dtype, device=kl.device))
