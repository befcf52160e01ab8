"""Chunked backend: one GEMM per row chunk into a bounded [C, V] buffer, then a fused epilogue.

Memory is O(C*V) whatever N is. The backward recomputes each chunk's logits (a second GEMM),
turns them into dLoss/dlogits in place, then feeds the dhidden and dweight GEMMs. With a
random upstream gradient that is the minimum of four GEMMs per step.
"""

import os

import torch

from . import epilogues

# Target logits per chunk buffer: 2^24 fp32 values = 64 MiB. Large enough that the GEMMs of a
# chunk run near peak, small enough that extra memory stays flat in N.
_BUFFER_ELEMENTS = 1 << 24

LAST_EPILOGUE = {"name": None}


def default_chunk_size(n_rows: int, vocab: int) -> int:
    env = os.environ.get("GRO_CHUNK_SIZE")
    if env:
        return max(1, int(env))
    rows = max(16, _BUFFER_ELEMENTS // max(vocab, 1))
    return max(1, min(n_rows, rows))


def _chunk_logits(hidden_rows, weight, bias, out):
    if bias is None:
        return torch.mm(hidden_rows, weight.t(), out=out)
    return torch.addmm(bias, hidden_rows, weight.t(), out=out)


def _as_fp32(z, scratch):
    """The chunk as fp32 for the epilogue (a copy only for low-precision inputs)."""
    if z.dtype == torch.float32:
        return z
    return scratch[: z.shape[0]].copy_(z)


def forward(hidden, weight, bias, targets, *, inv_temperature, ignore_index, with_entropy, chunk_size):
    """Returns (logprobs [N] fp32, entropy [N] fp32 or empty [0], lse [N] fp32)."""
    n, vocab = hidden.shape[0], weight.shape[0]
    fwd_epilogue, _, name = epilogues.pick(hidden.device.type)
    LAST_EPILOGUE["name"] = name
    f32 = dict(dtype=torch.float32, device=hidden.device)
    logprobs, lse = torch.empty(n, **f32), torch.empty(n, **f32)
    entropy = torch.empty(n if with_entropy else 0, **f32)
    if n == 0:
        return logprobs, entropy, lse
    rows = min(chunk_size, n)
    buffer = torch.empty(rows, vocab, dtype=hidden.dtype, device=hidden.device)
    scratch = buffer if hidden.dtype == torch.float32 else torch.empty(rows, vocab, **f32)
    for start in range(0, n, rows):
        end = min(start + rows, n)
        z = _chunk_logits(hidden[start:end], weight, bias, buffer[: end - start])
        fwd_epilogue(_as_fp32(z, scratch), targets[start:end], inv_temperature, ignore_index,
                     logprobs[start:end], lse[start:end], entropy[start:end] if with_entropy else None)
    return logprobs, entropy, lse


def backward(grad_logprobs, grad_entropy, hidden, weight, bias, targets, lse, entropy, *,
             inv_temperature, ignore_index, chunk_size, needs_hidden, needs_weight, needs_bias):
    """Returns (dhidden or None, dweight or None, dbias or None) in the input dtype."""
    n, vocab = hidden.shape[0], weight.shape[0]
    _, bwd_epilogue, _ = epilogues.pick(hidden.device.type)
    f32 = dict(dtype=torch.float32, device=hidden.device)
    needs_cast = hidden.dtype != torch.float32
    d_hidden = torch.zeros_like(hidden) if needs_hidden else None
    # dweight/dbias accumulate over chunks in fp32, whatever the input dtype.
    d_weight = torch.zeros(weight.shape, **f32) if needs_weight else None
    d_bias = torch.zeros(vocab, **f32) if needs_bias else None
    if n > 0 and (needs_hidden or needs_weight or needs_bias):
        rows = min(chunk_size, n)
        buffer = torch.empty(rows, vocab, dtype=hidden.dtype, device=hidden.device)
        scratch = torch.empty(rows, vocab, **f32) if needs_cast else buffer
        for start in range(0, n, rows):
            end = min(start + rows, n)
            z = _chunk_logits(hidden[start:end], weight, bias, buffer[: end - start])
            g32 = _as_fp32(z, scratch)
            bwd_epilogue(g32, targets[start:end], inv_temperature, ignore_index, lse[start:end],
                         entropy[start:end] if grad_entropy is not None else None, grad_logprobs[start:end],
                         grad_entropy[start:end] if grad_entropy is not None else None)
            g = z.copy_(g32) if needs_cast else g32
            if needs_hidden:
                torch.mm(g, weight, out=d_hidden[start:end])
            if needs_weight:
                if needs_cast:
                    d_weight.add_(torch.mm(g.t(), hidden[start:end]))
                else:
                    d_weight.addmm_(g.t(), hidden[start:end])
            if needs_bias:
                d_bias.add_(g32.sum(0))
    cast = (lambda t: t.to(hidden.dtype)) if needs_cast else (lambda t: t)
    return (d_hidden,
            cast(d_weight) if d_weight is not None else None,
            cast(d_bias) if d_bias is not None else None)
