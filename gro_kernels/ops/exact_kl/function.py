"""exact_kl as torch.library custom ops with autograd: what torch.compile sees as one node.

`gro::exact_kl_fwd` returns (kl, lse_p, lse_q); autograd saves the inputs, the two lse and KL, and calls
`gro::exact_kl_bwd`, which recomputes both heads' logits chunk by chunk. Only the policy side
(hidden, weight, bias) gets gradients; the reference side is a constant.
"""

from typing import Optional

import torch

from ..common import compaction
from . import chunked


@torch.library.custom_op("gro::exact_kl_fwd", mutates_args=())
def exact_kl_fwd(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], ref_hidden: torch.Tensor,
                 ref_weight: torch.Tensor, ref_bias: Optional[torch.Tensor], mask: Optional[torch.Tensor],
                 temperature: float, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return chunked.forward(hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask,
                           inv_temperature=1.0 / temperature, chunk_size=chunk_size)


@exact_kl_fwd.register_fake
def _(hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, temperature, chunk_size):
    new = lambda: hidden.new_empty(hidden.shape[0], dtype=torch.float32)  # noqa: E731
    return new(), new(), new()


@torch.library.custom_op("gro::exact_kl_bwd", mutates_args=())
def exact_kl_bwd(grad_kl: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 ref_hidden: torch.Tensor, ref_weight: torch.Tensor, ref_bias: Optional[torch.Tensor],
                 mask: Optional[torch.Tensor], kl: torch.Tensor, lse_p: torch.Tensor, lse_q: torch.Tensor,
                 temperature: float, chunk_size: int, needs_hidden: bool, needs_weight: bool, needs_bias: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dh, dw, db = chunked.backward(grad_kl.float().contiguous(), hidden, weight, bias, ref_hidden, ref_weight, ref_bias,
                                  mask, kl, lse_p, lse_q, inv_temperature=1.0 / temperature, chunk_size=chunk_size,
                                  needs_hidden=needs_hidden, needs_weight=needs_weight, needs_bias=needs_bias)
    # Custom ops cannot return None: an unneeded gradient is an empty tensor (a fresh one per output,
    # since custom-op outputs may not alias each other).
    return tuple(g if g is not None else hidden.new_empty(0) for g in (dh, dw, db))


@exact_kl_bwd.register_fake
def _(grad_kl, hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, kl, lse_p, lse_q, temperature,
      chunk_size, needs_hidden, needs_weight, needs_bias):
    dh = torch.empty_like(hidden) if needs_hidden else hidden.new_empty(0)
    dw = torch.empty_like(weight) if needs_weight else hidden.new_empty(0)
    db = hidden.new_empty(weight.shape[0]) if needs_bias else hidden.new_empty(0)
    return dh, dw, db


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, temperature, chunk_size = inputs
    kl, lse_p, lse_q = output
    ctx.save_for_backward(hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, kl, lse_p, lse_q)
    ctx.mark_non_differentiable(lse_p, lse_q)
    ctx.options = (temperature, chunk_size)


def _backward(ctx, grad_kl, _grad_lse_p, _grad_lse_q):
    hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, kl, lse_p, lse_q = ctx.saved_tensors
    needs_hidden, needs_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    needs_bias = bias is not None and ctx.needs_input_grad[2]
    dh, dw, db = exact_kl_bwd(grad_kl, hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, kl, lse_p, lse_q,
                              *ctx.options, needs_hidden, needs_weight, needs_bias)
    return (dh if needs_hidden else None, dw if needs_weight else None, db if needs_bias else None,
            None, None, None, None, None, None)


exact_kl_fwd.register_autograd(_backward, setup_context=_setup_context)


def exact_kl_op(hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, *, temperature, chunk_size):
    """Per-token KL [N] fp32; inputs are already validated and flattened to [N, H] / [N, H'].
    Only rows inside `mask` go through the GEMMs (ops/common/compaction.py)."""
    n = hidden.shape[0]
    live, (hidden, ref_hidden), mask = compaction.take_masked(mask, hidden, ref_hidden)
    if chunk_size is None:
        chunk_size = chunked.default_chunk_size(hidden.shape[0], weight.shape[0])
    # The reference side is a constant: detaching it keeps autograd from expecting its gradient.
    kl, _, _ = exact_kl_fwd(hidden, weight, bias, ref_hidden.detach(), ref_weight.detach(),
                            None if ref_bias is None else ref_bias.detach(), mask, float(temperature), int(chunk_size))
    return compaction.put(live, n, kl)[0]
