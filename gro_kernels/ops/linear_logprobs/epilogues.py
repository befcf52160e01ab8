"""Chunk epilogues of the chunked backend: native (gro_C ops) or plain torch (the fallback).

Both work on one fp32 chunk of logits z [rows, V] and write into caller-owned row slices.
Forward: lse, target logprob, entropy. Backward: overwrite z with dLoss/dz (docs/math.md §1).
vocab_shard=True: z holds one vocabulary shard; a target outside [0, V) that is not ignore_index is
another shard's token. Forward gives it logprob 0 and the shard's lse and entropy; backward (given the
full vocabulary's lse and entropy) gives it the softmax part of dLoss/dz without the one-hot term.
"""

import torch

from ... import _ext


# log p below this has exp() = 0 in fp32; clamping there keeps a -inf logit's p * log p at 0 (NaN stays
# NaN) and the products of the backward finite.
_LOG_P_FLOOR = -1.0e4


def _safe_targets(targets, ignore_index, vocab, vocab_shard):
    """(valid rows, rows whose target is in this chunk's vocabulary, targets safe to gather)."""
    valid = targets != ignore_index
    here = valid & (targets >= 0) & (targets < vocab) if vocab_shard else valid
    return valid, here, torch.where(here, targets, torch.zeros_like(targets))


def forward_torch(z, targets, inv_tau, ignore_index, logprob, lse, entropy, vocab_shard=False):
    scaled = z * inv_tau
    row_lse = torch.logsumexp(scaled, dim=1)
    valid, here, safe = _safe_targets(targets, ignore_index, z.shape[1], vocab_shard)
    target_logit = scaled.gather(1, safe.unsqueeze(1)).squeeze(1)
    lse.copy_(row_lse)
    logprob.copy_(torch.where(here, target_logit - row_lse, 0.0))
    if entropy is not None:
        # now log p; a -inf logit (a banned token) has p = 0 and must add 0, not 0 * -inf = NaN
        scaled.sub_(row_lse.unsqueeze(1)).clamp_(min=_LOG_P_FLOOR)
        ent = -(scaled.exp() * scaled).sum(1)
        entropy.copy_(torch.where(valid, ent, 0.0))


def backward_torch(z, targets, inv_tau, ignore_index, lse, entropy, grad_logprob, grad_entropy, vocab_shard=False):
    valid, here, safe = _safe_targets(targets, ignore_index, z.shape[1], vocab_shard)
    g_l = torch.where(valid, grad_logprob, 0.0).unsqueeze(1)
    log_p = z.mul_(inv_tau).sub_(lse.unsqueeze(1)).clamp_(min=_LOG_P_FLOOR)
    p = log_p.exp()
    if grad_entropy is not None:
        g_h = torch.where(valid, grad_entropy, 0.0).unsqueeze(1)
        # -g_l p - g_H p (log p + H), computed into log_p's storage (= z) to stay O(C*V).
        log_p.add_(entropy.unsqueeze(1)).mul_(g_h).add_(g_l).mul_(p).mul_(-inv_tau)
    else:
        torch.mul(p, g_l * -inv_tau, out=z)
    z.scatter_add_(1, safe.unsqueeze(1), torch.where(here.unsqueeze(1), g_l * inv_tau, 0.0))
    z.masked_fill_(~valid.unsqueeze(1), 0.0)  # exact zeros for ignored rows, even non-finite ones


def forward_native(z, targets, inv_tau, ignore_index, logprob, lse, entropy, vocab_shard=False):
    torch.ops.gro_C.logprob_forward(z, targets, inv_tau, ignore_index, logprob, lse, entropy, vocab_shard)


def backward_native(z, targets, inv_tau, ignore_index, lse, entropy, grad_logprob, grad_entropy, vocab_shard=False):
    torch.ops.gro_C.logit_grad_(z, targets, inv_tau, ignore_index, lse, entropy, grad_logprob, grad_entropy,
                                vocab_shard)


def forward_exp_native(z, targets, inv_tau, ignore_index, logprob, lse, entropy, exp_scale):
    torch.ops.gro_C.logprob_forward_exp_(z, targets, inv_tau, ignore_index, logprob, lse, entropy, exp_scale)


def pick_forward_exp(device_type: str):
    """The forward epilogue that leaves softmax(z/tau) / exp_scale in the chunk (grad-in-forward, see
    fused_token_loss.py), or None where there is none (it exists natively on CPU only)."""
    if device_type == "cpu" and _ext.native_available(device_type):
        return forward_exp_native
    return None


def pick(device_type: str):
    """(forward, backward, name) of the epilogue the chunked backend uses on this device."""
    if _ext.native_available(device_type):
        return forward_native, backward_native, f"native-{device_type}"
    return forward_torch, backward_torch, "torch"


# ---- logit transforms and per-token statistics (plain torch, any device) ----

def softcap_(z, cap, scale, grad_factor=None):
    """z <- cap * tanh(scale * z / cap) in place (final_logit_softcapping after logit_scale, math §1).

    grad_factor: a tensor of z's shape that receives dz_new/dz = scale * (1 - tanh^2), for the backward,
    which multiplies the epilogue's dLoss/dz_new by it (the epilogues then see softcapped logits as z)."""
    z.mul_(scale / cap).tanh_()
    if grad_factor is not None:
        torch.mul(z, z, out=grad_factor).neg_().add_(1.0).mul_(scale)
    z.mul_(cap)


def stats_torch(z, targets, inv_tau, ignore_index, lse, out):
    """Rows of out [3, rows] <- mean_logits, log_sum_sq_probs, is_top1 (as 0/1) of the chunk z [rows, V]
    (naive.head_stats_naive), with lse = logsumexp(z * inv_tau) from the forward epilogue. z is not changed.
    One temporary of the chunk's size (the doubled logits' logsumexp)."""
    valid = targets != ignore_index
    mean = z.sum(1).mul_(inv_tau / z.shape[1])
    log_sum_sq = torch.logsumexp(z * (2.0 * inv_tau), dim=1).sub_(2.0 * lse)
    # inv_tau > 0 keeps the order: the argmax of z is the argmax of z / tau (the first on a tie, as argmax)
    top1 = z.argmax(1) == targets
    out[0].copy_(torch.where(valid, mean, 0.0))
    out[1].copy_(torch.where(valid, log_sum_sq, 0.0))
    out[2].copy_(valid & top1)
