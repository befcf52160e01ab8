"""Grad-in-forward: a token-separable loss and its LM-head gradient in one chunk loop (3 GEMMs, not 4).

When every token's loss depends only on that token's logprob/entropy and on constants (the GRPO
family with given advantages), dLoss/dl_t is known as soon as l_t is. So each chunk does: logits GEMM,
forward epilogue (lse, logprob, entropy), the per-token loss function (values and dLoss/dl, dLoss/dH),
the backward epilogue in place on the same buffer, then dhidden = G @ W and dW += G^T h. No logits are
recomputed. dhidden/dW/db are saved and the autograd backward only scales them by grad_output.

Without entropy (so without an entropy gradient) and with the native CPU epilogue, the backward
epilogue goes too: G = diag(-g_l p_scale / tau) E + onehot * g_l / tau, where E = exp(z/tau - max) is
what the forward epilogue leaves in the buffer, so dhidden = diag(.) (E @ W) + g_l/tau * W[y] and
dW += E^T (diag(.) h) + scatter of g_l/tau * h at the targets (one pass over the chunk saved).

On CPU with a 16-bit head, when dW is needed over several row chunks, and always where the fused bf16 CPU head
runs (chunk_buffer.fused_head_available), the op runs the plain forward, the token function, then the
vocabulary-tiled backward instead (see _forward_then_tiled_backward): next to the AMX bf16 GEMMs the one-pass
loop's per-chunk read-modify-write of the fp32 [V, H] dW costs more than the fourth GEMM, and the fused head's
forward is what linear_logprobs_no_grad runs, so the logprobs stay bitwise equal to it. The fused head keeps the
forward's fp32 logit tiles of the first vocabulary blocks (up to GRO_LOGIT_STORE_MIB, 512 MiB by default) for the
backward, which reads them instead of recomputing them: the same tiles bit for bit, so the gradients do not depend
on the budget, and 3 GEMMs for the share of the vocabulary the store holds (all of it at N 4096, V 32000). fp32
heads keep the one-pass loop (their dW accumulates inside the fp32 GEMM, beta = 1).

The per-token math is a *registered* function (a custom op cannot take a Python callable): see
`register_token_fn`. Its per-token inputs (advantages, old/reference logprobs, weights) travel as a
list of tensors the op slices per chunk; they are constants and get no gradient.
"""

import contextlib
from typing import Optional, Sequence

import torch

from ..common import compaction
from ..common.chunking import env_logit_store_elements
from ..common.chunk_buffer import fused_head_available
from . import chunked, epilogues, logit_store

_TOKEN_FNS: dict = {}

# The logit store replaces the recompute of a logit (2H flops) by its write and read (8 bytes): a gain from about
# H 512 on (measured at N 3539 with a reused 256 MiB store: 0.84x the forward + backward time at H 1024, V 32000;
# 1.28x, slower, at H 256, V 128256).
_MIN_STORE_HIDDEN = 512


def register_token_fn(name: str, num_extras: int = 0):
    """Decorator registering `fn(logprobs, entropy, args, params) -> (loss_sum, g_logprobs, g_entropy, extras)`.

    logprobs [c] fp32; entropy [c] fp32 or None; args: row slices [c, ...] of token_args; params: floats.
    loss_sum: 0-d fp32 sum of the chunk's (already weighted) token losses; g_logprobs [c] and g_entropy
    [c] or None: its gradients; extras [c, num_extras] fp32: per-token metrics returned detached.
    """
    if not isinstance(num_extras, int) or num_extras < 0:
        raise ValueError(f"num_extras must be an int >= 0, got {num_extras!r}")

    def register(fn):
        if name in _TOKEN_FNS and _TOKEN_FNS[name][0] is not fn:
            raise ValueError(f"a different token function is already registered as {name!r}")
        _TOKEN_FNS[name] = (fn, num_extras)
        return fn

    return register


def _token_fn(name: str):
    if name not in _TOKEN_FNS:
        raise ValueError(f"token_fn {name!r} is not registered; registered: {sorted(_TOKEN_FNS)}")
    return _TOKEN_FNS[name]


def _call_token_fn(fn, num_extras, logprobs, entropy, args, params):
    loss, g_l, g_h, extras = fn(logprobs, entropy, args, params)
    rows = logprobs.shape[0]
    if g_l.shape != (rows,) or (g_h is not None and g_h.shape != (rows,)) or extras.shape != (rows, num_extras):
        raise ValueError(f"token function returned grad_logprobs {tuple(g_l.shape)}, grad_entropy "
                         f"{None if g_h is None else tuple(g_h.shape)}, extras {tuple(extras.shape)}; "
                         f"expected ({rows},), ({rows},) or None, ({rows}, {num_extras})")
    if g_h is not None and entropy is None:
        raise ValueError("token function returned grad_entropy but the op ran with with_entropy=False")
    g_h = None if g_h is None else g_h.float().contiguous()
    return loss, g_l.float().contiguous(), g_h, extras


def forward_with_grads(hidden, weight, bias, targets, token_fn, token_args, token_params, *, inv_temperature,
                       ignore_index, with_entropy, chunk_size, needs_hidden, needs_weight, needs_bias):
    """(loss 0-d, logprobs [N], entropy [N] or [0], extras [N, k], dhidden, dweight, dbias or None each)."""
    fn, num_extras = _token_fn(token_fn)
    n, vocab = hidden.shape[0], weight.shape[0]
    fwd_epilogue, bwd_epilogue, _ = epilogues.pick(hidden.device.type)
    f32 = dict(dtype=torch.float32, device=hidden.device)
    loss = torch.zeros((), **f32)
    logprobs, lse = torch.empty(n, **f32), torch.empty(n, **f32)
    entropy = torch.empty(n if with_entropy else 0, **f32)
    extras = torch.empty(n, num_extras, **f32)
    any_grad = needs_hidden or needs_weight or needs_bias
    rows = min(chunk_size, max(n, 1))
    lowp_cpu = hidden.device.type == "cpu" and hidden.dtype != torch.float32
    if (needs_weight and n > rows and lowp_cpu) or fused_head_available(hidden, weight, bias):
        return _forward_then_tiled_backward(fn, num_extras, hidden, weight, bias, targets, token_args, token_params,
                                            inv_temperature=inv_temperature, ignore_index=ignore_index,
                                            with_entropy=with_entropy, chunk_size=chunk_size,
                                            needs_hidden=needs_hidden, needs_weight=needs_weight,
                                            needs_bias=needs_bias)
    grads = chunked.GradAccumulators(hidden, weight, needs_hidden, needs_weight, needs_bias)
    buffer = chunked.ChunkBuffer(rows, vocab, hidden.dtype, hidden.device)
    # Without entropy there is no entropy gradient, and dLoss/dz = (g_l / tau) (onehot - p): the forward
    # epilogue leaves E (p = E * exp_scale) in the chunk and the per-row factors go into the GEMMs' small
    # operands (see the module docstring). Without any gradient to compute, the forward only reads the chunk.
    fwd_exp = None if with_entropy or not any_grad else epilogues.pick_forward_exp(hidden.device.type)
    exp_scale = torch.empty(n if fwd_exp is not None else 0, **f32)
    for start in range(0, n, rows):
        end = min(start + rows, n)
        y, ent = targets[start:end], entropy[start:end] if with_entropy else None
        z = buffer.logits(hidden[start:end], weight, bias)
        z32 = buffer.as_fp32(z)
        if fwd_exp is not None:
            fwd_exp(z32, y, inv_temperature, ignore_index, logprobs[start:end], lse[start:end], None,
                    exp_scale[start:end])
        else:
            fwd_epilogue(z32, y, inv_temperature, ignore_index, logprobs[start:end], lse[start:end], ent)
        chunk_loss, g_l, g_h, chunk_extras = _call_token_fn(
            fn, num_extras, logprobs[start:end], ent, [a[start:end] for a in token_args], list(token_params))
        loss.add_(chunk_loss)
        extras[start:end] = chunk_extras
        if not any_grad:
            continue
        if fwd_exp is not None:
            # Ignored rows get exactly zero gradient, whatever the token function returned for them.
            valid = y != ignore_index
            row_scale = torch.where(valid, g_l * exp_scale[start:end] * -inv_temperature, 0.0)
            target_grad = torch.where(valid, g_l * inv_temperature, 0.0)
            grads.add_chunk_factored(buffer.operand(z, z32), z32, row_scale, target_grad, torch.where(valid, y, 0),
                                     hidden, weight, start, end)
        else:
            bwd_epilogue(z32, y, inv_temperature, ignore_index, lse[start:end], ent if g_h is not None else None,
                         g_l, g_h)
            grads.add_chunk(buffer.operand(z, z32), z32, hidden, weight, start, end)
    return (loss, logprobs, entropy, extras) + grads.result()


def _forward_then_tiled_backward(fn, num_extras, hidden, weight, bias, targets, token_args, token_params, *,
                                 inv_temperature, ignore_index, with_entropy, chunk_size, needs_hidden, needs_weight,
                                 needs_bias):
    """forward_with_grads as the plain chunked forward, the token function, then the vocabulary-tiled backward.

    Used on CPU for 16-bit heads when dweight is needed over more than one row chunk: there the one-pass loop's per-chunk
    read-modify-write of the fp32 [V, H] dweight costs more than the fourth GEMM (recomputing the logits,
    docs/math.md §6); and wherever the fused bf16 CPU head runs, whose forward is not the one-pass loop's
    epilogue. The logprobs are the plain forward's, bit for bit (the no-grad path's). With the fused head, the
    logit store (logit_store.py, kept between calls) carries logit tiles from the forward to the backward."""
    use_store = (needs_hidden or needs_weight or needs_bias) and hidden.shape[1] >= _MIN_STORE_HIDDEN
    borrowed = logit_store.borrowed(hidden, weight, bias, chunk_size, env_logit_store_elements()) if use_store \
        else contextlib.nullcontext()
    with borrowed as store:
        logprobs, entropy, lse = chunked.forward(hidden, weight, bias, targets, inv_temperature=inv_temperature,
                                                 ignore_index=ignore_index, with_entropy=with_entropy,
                                                 chunk_size=chunk_size, logit_store=store)
        loss, g_l, g_h, extras = _call_token_fn(fn, num_extras, logprobs, entropy if with_entropy else None,
                                                list(token_args), list(token_params))
        # Ignored rows get exactly zero gradient whatever the token function returned (the epilogue zeroes them).
        dh, dw, db = chunked.backward(g_l, g_h, hidden, weight, bias, targets, lse, entropy,
                                      inv_temperature=inv_temperature, ignore_index=ignore_index,
                                      chunk_size=chunk_size, needs_hidden=needs_hidden, needs_weight=needs_weight,
                                      needs_bias=needs_bias, logit_store=store)
    return loss.float().reshape(()), logprobs, entropy, extras, dh, dw, db


@torch.library.custom_op("gro::fused_token_loss_fwd", mutates_args=())
def fused_token_loss_fwd(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                         targets: torch.Tensor, token_args: list[torch.Tensor], token_params: list[float],
                         token_fn: str, temperature: float, ignore_index: int, with_entropy: bool, chunk_size: int,
                         needs_hidden: bool, needs_weight: bool, needs_bias: bool
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                    torch.Tensor, torch.Tensor]:
    out = forward_with_grads(hidden, weight, bias, targets, token_fn, token_args, token_params,
                             inv_temperature=1.0 / temperature, ignore_index=ignore_index, with_entropy=with_entropy,
                             chunk_size=chunk_size, needs_hidden=needs_hidden, needs_weight=needs_weight,
                             needs_bias=needs_bias)
    # Custom ops cannot return None: an unneeded gradient is an empty tensor.
    return out[:4] + tuple(g if g is not None else hidden.new_empty(0) for g in out[4:])


@fused_token_loss_fwd.register_fake
def _(hidden, weight, bias, targets, token_args, token_params, token_fn, temperature, ignore_index, with_entropy,
      chunk_size, needs_hidden, needs_weight, needs_bias):
    n, vocab = hidden.shape[0], weight.shape[0]
    new = lambda *size: hidden.new_empty(size, dtype=torch.float32)  # noqa: E731
    dh = torch.empty_like(hidden) if needs_hidden else hidden.new_empty(0)
    dw = torch.empty_like(weight) if needs_weight else hidden.new_empty(0)
    db = hidden.new_empty(vocab) if needs_bias else hidden.new_empty(0)
    return new(), new(n), new(n if with_entropy else 0), new(n, _token_fn(token_fn)[1]), dh, dw, db


def _setup_context(ctx, inputs, output):
    ctx.list_lengths = (len(inputs[4]), len(inputs[5]))  # token_args, token_params
    ctx.needs = inputs[11:14]
    ctx.save_for_backward(*output[4:])
    ctx.mark_non_differentiable(*output[1:])
    # Only the loss is differentiable: do not materialize zero gradients for the other outputs (one
    # of them is the [V, H] dweight, whose zero-fill alone costs a pass over the head).
    ctx.set_materialize_grads(False)
    ctx.consumed = False


def _backward(ctx, grad_loss, *_unused):
    if ctx.consumed:
        raise RuntimeError("the grad-in-forward loss scales its precomputed gradients in place, so it can be "
                           "back-propagated once; for retain_graph / several backward passes use "
                           "grad_in_forward=False")
    ctx.consumed = True
    # In place: a second copy of dW would double the op's peak memory in backward.
    grads = [g.mul_(grad_loss.to(g.dtype)) if need and ctx.needs_input_grad[i] else None
             for i, (g, need) in enumerate(zip(ctx.saved_tensors, ctx.needs))]
    # The gradient structure must mirror the inputs as torch.library flattens them: a list of tensors
    # gets one None per element; a list of floats is one leaf (None), except an empty list, which is [].
    args, params = ctx.list_lengths
    return tuple(grads) + (None, [None] * args, None if params else []) + (None,) * 8


fused_token_loss_fwd.register_autograd(_backward, setup_context=_setup_context)


def _needs_grad(t: Optional[torch.Tensor]) -> bool:
    return t is not None and t.requires_grad and torch.is_grad_enabled()


def fused_token_loss(hidden, weight, bias, targets, token_fn: str, token_args: Sequence[torch.Tensor] = (),
                     token_params: Sequence[float] = (), *, temperature: float = 1.0, ignore_index: int = -100,
                     with_entropy: bool = False, chunk_size: Optional[int] = None):
    """(loss 0-d fp32, logprobs [N], entropy [N] or [0], extras [N, k]) with dLoss/d(hidden, weight, bias)
    computed in the forward. Inputs are validated and flattened by the caller (hidden [N, H] contiguous,
    targets [N] int64). Only `loss` is differentiable; the rest is detached, for logging.
    Only rows whose target is not ignore_index run (ops/common/compaction.py), token_args sliced alike."""
    n = hidden.shape[0]
    needs = (_needs_grad(hidden), _needs_grad(weight), _needs_grad(bias))
    live, hidden, targets, *token_args = compaction.take_targeted(targets, ignore_index, hidden, *token_args)
    if chunk_size is None:
        chunk_size = chunked.default_chunk_size(hidden.shape[0], weight.shape[0])
    loss, logprobs, entropy, extras = fused_token_loss_fwd(
        hidden, weight, bias, targets, list(token_args), [float(p) for p in token_params], token_fn,
        float(temperature), int(ignore_index), bool(with_entropy), int(chunk_size), *needs)[:4]
    return (loss,) + compaction.put(live, n, logprobs, entropy, extras)
