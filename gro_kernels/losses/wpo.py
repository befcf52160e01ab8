"""WPO's per-token log sum_v p_v^2 of the policy, for gro_loss(use_weighting=True) called without
log_sum_sq_probs=: a no-grad pass over the LM head a few rows at a time, so [B*T, V] logits never exist.
TRL computes the same quantity inside its fused head (outputs.log_sum_sq_probs); WPO treats it as a constant."""

import torch

CHUNK_ELEMENTS = 1 << 24  # logits of one chunk: 16M fp32 values (64 MiB)


def log_sum_sq_probs(hidden, weight, bias, targets, *, temperature=1.0, ignore_index=-100):
    """[targets' shape] fp32: log sum_v softmax((h W^T + b) / temperature)_v^2 per token, 0 where ignored."""
    h = hidden.reshape(-1, hidden.shape[-1])
    live = (targets.reshape(-1) != ignore_index)
    out = torch.zeros(h.shape[0], dtype=torch.float32, device=h.device)
    rows = max(1, CHUNK_ELEMENTS // weight.shape[0])
    w = weight.float()
    b = None if bias is None else bias.float()
    with torch.no_grad():
        for start in range(0, h.shape[0], rows):
            logits = h[start:start + rows].float() @ w.T
            if b is not None:
                logits = logits + b
            logp = torch.log_softmax(logits / temperature, dim=-1)
            out[start:start + rows] = torch.logsumexp(2.0 * logp, dim=-1)
    return torch.where(live, out, 0.0).reshape(targets.shape)
