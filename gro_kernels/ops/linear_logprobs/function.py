"""linear_logprobs as torch.library custom ops with autograd: what torch.compile sees as one node.

`gro::linear_logprobs_fwd` returns (logprobs, entropy, lse); autograd saves hidden, weight, bias,
targets, lse (and entropy when it has a gradient) and calls `gro::linear_logprobs_bwd`, which
recomputes the logits chunk by chunk. Backends plug in below as (forward, backward) pairs.
"""

import functools
from typing import Optional

import torch

from ... import _ext
from ..common import compaction, dispatch
from . import chunked, naive

BACKENDS = dispatch.BACKENDS


def _triton_pair():
    from . import triton_impl  # imported lazily: Triton is optional

    return triton_impl.forward, triton_impl.backward


@functools.cache
def _triton_ops():
    """(fwd, bwd) torch.library.triton_ops of the Triton backend, so torch.compile traces into its
    kernels; they share the custom ops' schema and autograd glue (registered on first use)."""
    from . import triton_impl

    triton_impl.fwd_op.register_autograd(_backward, setup_context=_setup_context)
    return triton_impl.fwd_op, triton_impl.bwd_op


def _kernels(backend: str):
    if backend == "chunked":
        return chunked.forward, chunked.backward
    if backend == "triton":
        return _triton_pair()
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def triton_usable(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        from . import triton_impl
    except ImportError:
        return False
    return triton_impl.available()


# On CUDA, "auto" takes the chunked backend (cuBLAS GEMMs + CUDA epilogue) from this hidden size up.
# Roofline estimate, not a measurement (no GPU here): chunked pays ~38 bytes of HBM traffic per logit
# (fwd + bwd) on top of 8*H FLOPs of cuBLAS GEMM per logit, i.e. an overhead of ~1400/H on H100 and
# ~750/H on A100 (bf16). The fused Triton kernel avoids that traffic but runs its GEMMs below cuBLAS
# speed and accumulates dhidden/dweight with atomics; at ~25-30% of GEMM time that breaks even
# near H = 2500 (A100) to 4700 (H100). 4096 sits between; GRO_BACKEND overrides it.
CHUNKED_MIN_HIDDEN_CUDA = 4096


def resolve_backend(backend: str, device: torch.device, hidden_size: Optional[int] = None) -> str:
    """The concrete backend for `backend` on `device`: GRO_BACKEND overrides "auto".

    auto on CPU: chunked (BLAS GEMM + native epilogue is the fastest measured CPU path).
    auto on CUDA: chunked when Triton is not usable; triton when the native CUDA epilogue is not
    built (the torch epilogue makes several passes over each chunk); otherwise chunked for
    hidden_size >= CHUNKED_MIN_HIDDEN_CUDA and triton below it (or when hidden_size is unknown).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = dispatch.requested_backend()
    if backend != "auto":
        return backend
    if not triton_usable(device):
        return "chunked"
    if not _ext.native_available(device.type):
        return "triton"
    return "chunked" if hidden_size is not None and hidden_size >= CHUNKED_MIN_HIDDEN_CUDA else "triton"


@torch.library.custom_op("gro::linear_logprobs_fwd", mutates_args=())
def linear_logprobs_fwd(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                        targets: torch.Tensor, temperature: float, ignore_index: int, with_entropy: bool,
                        chunk_size: int, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    forward, _ = _kernels(backend)
    return forward(hidden, weight, bias, targets, inv_temperature=1.0 / temperature, ignore_index=ignore_index,
                   with_entropy=with_entropy, chunk_size=chunk_size)


@linear_logprobs_fwd.register_fake
def _(hidden, weight, bias, targets, temperature, ignore_index, with_entropy, chunk_size, backend):
    n = hidden.shape[0]
    new = lambda size: hidden.new_empty(size, dtype=torch.float32)  # noqa: E731
    return new(n), new(n if with_entropy else 0), new(n)


@torch.library.custom_op("gro::linear_logprobs_bwd", mutates_args=())
def linear_logprobs_bwd(grad_logprobs: torch.Tensor, grad_entropy: Optional[torch.Tensor], hidden: torch.Tensor,
                        weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor, lse: torch.Tensor,
                        entropy: torch.Tensor, temperature: float, ignore_index: int, chunk_size: int, backend: str,
                        needs_hidden: bool, needs_weight: bool, needs_bias: bool
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _, backward = _kernels(backend)
    dh, dw, db = backward(grad_logprobs.float().contiguous(),
                          None if grad_entropy is None else grad_entropy.float().contiguous(),
                          hidden, weight, bias, targets, lse, entropy, inv_temperature=1.0 / temperature,
                          ignore_index=ignore_index, chunk_size=chunk_size, needs_hidden=needs_hidden,
                          needs_weight=needs_weight, needs_bias=needs_bias)
    # Custom ops cannot return None: an unneeded gradient is an empty tensor (a fresh one per output,
    # since custom-op outputs may not alias each other).
    return tuple(g if g is not None else hidden.new_empty(0) for g in (dh, dw, db))


@linear_logprobs_bwd.register_fake
def _(grad_logprobs, grad_entropy, hidden, weight, bias, targets, lse, entropy, temperature, ignore_index,
      chunk_size, backend, needs_hidden, needs_weight, needs_bias):
    dh = torch.empty_like(hidden) if needs_hidden else hidden.new_empty(0)
    dw = torch.empty_like(weight) if needs_weight else hidden.new_empty(0)
    db = hidden.new_empty(weight.shape[0]) if needs_bias else hidden.new_empty(0)
    return dh, dw, db


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, targets, temperature, ignore_index, with_entropy, chunk_size, backend = inputs
    _, entropy, lse = output
    ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
    ctx.options = (temperature, ignore_index, with_entropy, chunk_size, backend)
    # An output nobody differentiates arrives as None instead of a zero tensor, so an entropy computed for
    # logging only runs no entropy-gradient epilogue in backward.
    ctx.set_materialize_grads(False)


def _needs(ctx, bias):
    needs_hidden, needs_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    return needs_hidden, needs_weight, bias is not None and ctx.needs_input_grad[2]


def _present_grads(grad_logprobs, grad_entropy, lse):
    """(grad_logprobs, grad_entropy) with a missing logprob gradient as zeros (the kernels always take
    one) and a missing entropy gradient as None (the kernels then skip that term)."""
    if grad_logprobs is None:
        grad_logprobs = torch.zeros_like(lse)
    return grad_logprobs, grad_entropy


def _backward(ctx, grad_logprobs, grad_entropy, _grad_lse):
    hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
    temperature, ignore_index, with_entropy, chunk_size, backend = ctx.options
    needs_hidden, needs_weight, needs_bias = _needs(ctx, bias)
    if grad_logprobs is None and (grad_entropy is None or not with_entropy):
        return None, None, None, None, None, None, None, None, None
    grad_logprobs, grad_entropy = _present_grads(grad_logprobs, grad_entropy if with_entropy else None, lse)
    bwd_op = _triton_ops()[1] if backend == "triton" else linear_logprobs_bwd
    dh, dw, db = bwd_op(grad_logprobs, grad_entropy, hidden, weight, bias,
                        targets, lse, entropy, temperature, ignore_index, chunk_size, backend,
                        needs_hidden, needs_weight, needs_bias)
    return (dh if needs_hidden else None, dw if needs_weight else None, db if needs_bias else None,
            None, None, None, None, None, None)


linear_logprobs_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---- the extended head: final_logit_softcapping and the no-grad statistics (chunked backend only) ----
# Its own op pair so the plain ops keep the schema the Triton triton_ops share with them.

@torch.library.custom_op("gro::linear_logprobs_ext_fwd", mutates_args=())
def linear_logprobs_ext_fwd(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                            targets: torch.Tensor, temperature: float, ignore_index: int, with_entropy: bool,
                            chunk_size: int, softcap: float, softcap_scale: float, with_stats: bool
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logprobs, entropy, lse, stats [3, N] or [3, 0]): mean_logits, log_sum_sq_probs, is_top1 (0/1) rows."""
    stats = hidden.new_zeros((3, hidden.shape[0] if with_stats else 0), dtype=torch.float32)
    logprobs, entropy, lse = chunked.forward(hidden, weight, bias, targets, inv_temperature=1.0 / temperature,
                                             ignore_index=ignore_index, with_entropy=with_entropy,
                                             chunk_size=chunk_size, softcap=softcap, softcap_scale=softcap_scale,
                                             stats=stats if with_stats else None)
    return logprobs, entropy, lse, stats


@linear_logprobs_ext_fwd.register_fake
def _(hidden, weight, bias, targets, temperature, ignore_index, with_entropy, chunk_size, softcap, softcap_scale,
      with_stats):
    n = hidden.shape[0]
    new = lambda size: hidden.new_empty(size, dtype=torch.float32)  # noqa: E731
    return new(n), new(n if with_entropy else 0), new(n), new((3, n if with_stats else 0))


@torch.library.custom_op("gro::linear_logprobs_ext_bwd", mutates_args=())
def linear_logprobs_ext_bwd(grad_logprobs: torch.Tensor, grad_entropy: Optional[torch.Tensor],
                            hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                            targets: torch.Tensor, lse: torch.Tensor, entropy: torch.Tensor, temperature: float,
                            ignore_index: int, chunk_size: int, softcap: float, softcap_scale: float,
                            needs_hidden: bool, needs_weight: bool, needs_bias: bool
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dh, dw, db = chunked.backward(grad_logprobs.float().contiguous(),
                                  None if grad_entropy is None else grad_entropy.float().contiguous(),
                                  hidden, weight, bias, targets, lse, entropy, inv_temperature=1.0 / temperature,
                                  ignore_index=ignore_index, chunk_size=chunk_size, needs_hidden=needs_hidden,
                                  needs_weight=needs_weight, needs_bias=needs_bias, softcap=softcap,
                                  softcap_scale=softcap_scale)
    return tuple(g if g is not None else hidden.new_empty(0) for g in (dh, dw, db))


@linear_logprobs_ext_bwd.register_fake
def _(grad_logprobs, grad_entropy, hidden, weight, bias, targets, lse, entropy, temperature, ignore_index,
      chunk_size, softcap, softcap_scale, needs_hidden, needs_weight, needs_bias):
    dh = torch.empty_like(hidden) if needs_hidden else hidden.new_empty(0)
    dw = torch.empty_like(weight) if needs_weight else hidden.new_empty(0)
    db = hidden.new_empty(weight.shape[0]) if needs_bias else hidden.new_empty(0)
    return dh, dw, db


def _ext_setup_context(ctx, inputs, output):
    hidden, weight, bias, targets, temperature, ignore_index, with_entropy, chunk_size, softcap, scale, _ = inputs
    _, entropy, lse, stats = output
    ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
    ctx.options = (temperature, ignore_index, with_entropy, chunk_size, softcap, scale)
    ctx.mark_non_differentiable(stats)
    ctx.set_materialize_grads(False)


def _ext_backward(ctx, grad_logprobs, grad_entropy, _grad_lse, _grad_stats):
    hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
    temperature, ignore_index, with_entropy, chunk_size, softcap, scale = ctx.options
    needs_hidden, needs_weight, needs_bias = _needs(ctx, bias)
    none = (None,) * 11
    if grad_logprobs is None and (grad_entropy is None or not with_entropy):
        return none
    grad_logprobs, grad_entropy = _present_grads(grad_logprobs, grad_entropy if with_entropy else None, lse)
    dh, dw, db = linear_logprobs_ext_bwd(grad_logprobs, grad_entropy, hidden, weight, bias, targets, lse, entropy,
                                         temperature, ignore_index, chunk_size, softcap, scale, needs_hidden,
                                         needs_weight, needs_bias)
    return (dh if needs_hidden else None, dw if needs_weight else None, db if needs_bias else None) + none[3:]


linear_logprobs_ext_fwd.register_autograd(_ext_backward, setup_context=_ext_setup_context)


def linear_logprobs_op(hidden, weight, bias, targets, *, temperature, ignore_index, with_entropy, chunk_size,
                       backend, softcap=None, logit_scale=1.0, with_stats=False):
    """Dispatch on a resolved backend; inputs are already validated and flattened to [N, H].

    Only rows whose target is not ignore_index go through the GEMMs (ops/common/compaction.py).
    softcap (final_logit_softcapping) or with_stats run the extended op (chunked/naive only; the caller
    resolved the backend accordingly); logit_scale alone is folded into the temperature (z * s / tau).
    Returns (logprobs, entropy) or, with with_stats, (logprobs, entropy, stats [3, N])."""
    n = hidden.shape[0]
    live, hidden, targets = compaction.take_targeted(targets, ignore_index, hidden)
    if softcap is None and not with_stats:
        logprobs, entropy = _dispatch(hidden, weight, bias, targets, temperature=temperature / logit_scale,
                                      ignore_index=ignore_index, with_entropy=with_entropy, chunk_size=chunk_size,
                                      backend=backend)
        return compaction.put(live, n, logprobs, entropy)
    if backend == "naive":
        options = dict(temperature=temperature, ignore_index=ignore_index, final_logit_softcapping=softcap,
                       logit_scale=logit_scale)
        logprobs, entropy = naive.linear_logprobs_naive(hidden, weight, targets, bias, **options)
        entropy = entropy.float() if with_entropy else entropy.new_empty(0, dtype=torch.float32)
        stats = torch.stack([s.float() for s in naive.head_stats_naive(hidden, weight, targets, bias, **options)]) \
            if with_stats else None
    else:
        if chunk_size is None:
            chunk_size = chunked.default_chunk_size(hidden.shape[0], weight.shape[0])
        # Softcap: the scale goes inside the tanh (c * tanh(s z / c)) and tau stays outside it.
        cap, cap_scale, tau = (float(softcap), float(logit_scale), float(temperature)) if softcap is not None \
            else (0.0, 1.0, float(temperature) / logit_scale)
        logprobs, entropy, _, stats = linear_logprobs_ext_fwd(hidden, weight, bias, targets, tau, int(ignore_index),
                                                              bool(with_entropy), int(chunk_size), cap, cap_scale,
                                                              bool(with_stats))
    out = compaction.put(live, n, logprobs.float(), entropy)
    if not with_stats:
        return out
    stats = stats if live is None else stats.new_zeros((3, n)).index_copy(1, live, stats)
    return out + (stats,)


def _dispatch(hidden, weight, bias, targets, *, temperature, ignore_index, with_entropy, chunk_size, backend):
    if backend == "naive":
        logprobs, entropy = naive.linear_logprobs_naive(hidden, weight, targets, bias, temperature=temperature,
                                                        ignore_index=ignore_index)
        return logprobs.float(), entropy.float() if with_entropy else entropy.new_empty(0, dtype=torch.float32)
    if chunk_size is None:
        chunk_size = chunked.default_chunk_size(hidden.shape[0], weight.shape[0])
    fwd_op = _triton_ops()[0] if backend == "triton" else linear_logprobs_fwd
    logprobs, entropy, _ = fwd_op(hidden, weight, bias, targets, float(temperature), int(ignore_index),
                                  bool(with_entropy), int(chunk_size), backend)
    return logprobs, entropy
