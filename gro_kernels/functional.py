"""The LM-head primitive: token logprobs, entropy and exact KL from hidden states, never [N, V] logits.

Each public function validates (gro_kernels._validate), flattens [B, T, H] to [N, H], and calls the op
layer. A vocabulary-parallel head is an option of the same function (process_group=, vocab_start=):
every rank validates its own inputs, then all ranks exchange their shard layout in one small
collective, so a bad shard, offset or input on any rank raises a clear error on every rank instead of
leaving the others waiting in the next collective. The math: docs/math.md §1.
"""

import contextlib
from typing import NamedTuple, Optional

import torch

from . import _ext
from . import _validate as v
from .ops.exact_kl import function as _kl
from .ops.linear_logprobs import function as _lp
from .ops.linear_logprobs import logit_store as _logit_store


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    bias: Optional[torch.Tensor] = None, *, temperature: float = 1.0, ignore_index: int = -100,
                    return_entropy: bool = False, backend: str = "auto", chunk_size: Optional[int] = None,
                    process_group=None, vocab_start: Optional[int] = None, cu_seqlens: Optional[torch.Tensor] = None,
                    final_logit_softcapping: Optional[float] = None, logit_scale: float = 1.0):
    """Log-probabilities of `targets` under softmax(transform(hidden @ weight.T + bias) / temperature).

    Never materializes the [N, V] logits (except backend="naive"). Differentiable w.r.t. hidden,
    weight and bias for any upstream gradient on logprobs and entropy (docs/math.md §1).

    Args:
        hidden: [N, H] or [B, T, H], fp32 / bf16 / fp16.
        weight: [V, H], the LM head, same dtype and device as hidden.
        targets: [N] or [B, T] integer ids (hidden's leading shape); `ignore_index` rows give 0 and
            zero gradient.
        bias: [V] or None.
        temperature: > 0; logits are divided by it (after the transforms below).
        final_logit_softcapping: None (off) or c > 0: logits -> c * tanh(logits / c) (Gemma 2/3), with its
            exact gradient; chunked or naive backend only (backend="triton" raises; "auto" picks chunked).
        logit_scale: > 0, logits are multiplied by it first (Cohere's logit_scale, Granite's 1/logits_scaling).
        return_entropy: also return the entropy of each row's distribution.
        backend: "auto" | "chunked" | "triton" | "naive" (GRO_BACKEND overrides "auto").
        chunk_size: rows per chunk of the chunked backend (None: sized to a bounded buffer).
        process_group, vocab_start: a vocabulary-parallel head. weight [V_r, H] (bias [V_r]) holds the
            rows [vocab_start, vocab_start + V_r) of the head on this rank (contiguous shards tiling
            [0, V), uneven allowed); targets are global ids; hidden, targets and the loss downstream are
            the same on every rank. Every rank gets the full-vocabulary logprobs/entropy, its own
            dweight shard and the full dhidden.
        cu_seqlens: sequence offsets [B + 1] of a packed batch (int32/int64, flash-attention varlen: 0,
            non-decreasing, last = N), so callers can pass one layout everywhere. The head is row-wise, so
            it only checks them (hidden must be [N, H], targets [N]) and otherwise runs as on [N, H].

    Under torch.autocast the head GEMMs run in the autocast dtype: hidden, weight and bias are cast to it
    (as autocast casts a plain nn.Linear's inputs), and the kernels run with autocast off.

    Returns:
        logprobs fp32 of hidden's leading shape, or (logprobs, entropy) with return_entropy.
    """
    if cu_seqlens is not None:
        v.check_packed_head(hidden, targets, cu_seqlens)
    hidden, weight, bias = _autocast_inputs(hidden, weight, bias)
    if process_group is not None or vocab_start is not None:
        if final_logit_softcapping is not None:
            raise ValueError("final_logit_softcapping is not supported with process_group= (the vocabulary-parallel "
                             "head has no softcap epilogue); pass final_logit_softcapping=None")
        v.check_logit_transform(final_logit_softcapping, logit_scale)
        v.require_positive_finite("temperature", temperature)
        with _autocast_off(hidden):
            return _linear_logprobs_vocab_parallel(hidden, weight, targets, bias, process_group, vocab_start,
                                                   temperature=temperature / logit_scale, ignore_index=ignore_index,
                                                   return_entropy=return_entropy, backend=backend,
                                                   chunk_size=chunk_size)
    call = check_head_call(hidden, weight, targets, bias, temperature=temperature, ignore_index=ignore_index,
                           chunk_size=chunk_size, backend=backend, final_logit_softcapping=final_logit_softcapping,
                           logit_scale=logit_scale)
    with _autocast_off(hidden):
        return checked_logprobs(call, return_entropy=return_entropy)


def _autocast_on(hidden) -> bool:
    if not isinstance(hidden, torch.Tensor):
        return False
    try:
        return torch.is_autocast_enabled(hidden.device.type)
    except RuntimeError:  # a device type autocast does not know (meta): no autocast there
        return False


def _autocast_inputs(hidden, weight, bias):
    """hidden, weight, bias in the autocast dtype of hidden's device when autocast is on there (else unchanged)."""
    if not _autocast_on(hidden):
        return hidden, weight, bias
    dtype = torch.get_autocast_dtype(hidden.device.type)
    cast = lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
    return cast(hidden), cast(weight), cast(bias)


def _autocast_off(hidden):
    """The kernels' own GEMMs (fp32 accumulators, fp32 dweight) must not be re-cast by an enclosing autocast."""
    if _autocast_on(hidden):
        return torch.autocast(hidden.device.type, enabled=False)
    return contextlib.nullcontext()


class HeadCall(NamedTuple):
    """One validated LM-head call: flattened tensors, the leading shape, the resolved backend, the options."""

    hidden: torch.Tensor
    weight: torch.Tensor
    targets: torch.Tensor
    bias: Optional[torch.Tensor]
    lead_shape: torch.Size
    backend: str
    temperature: float
    ignore_index: int
    chunk_size: Optional[int]
    final_logit_softcapping: Optional[float] = None
    logit_scale: float = 1.0


def check_head_call(hidden, weight, targets, bias=None, *, temperature=1.0, ignore_index=-100, chunk_size=None,
                    backend="auto", sharded=False, final_logit_softcapping=None, logit_scale=1.0,
                    with_stats=False) -> HeadCall:
    """Every check of an LM-head call, in one place: tensors, scalar options, GRO_CHUNK_SIZE, the backend and
    whether it can run on these tensors, and (eagerly) the target range.

    linear_logprobs runs it, and so does gro_loss before anything else, because its grad-in-forward
    loop calls the kernels directly: every path answers bad input the same way. sharded: a
    vocabulary-parallel head, whose backend resolves without H and whose targets are global ids,
    checked against the full vocabulary in the layout exchange instead.
    """
    hidden, weight, targets, bias, lead_shape = v.check_linear_inputs(hidden, weight, targets, bias)
    v.check_head_options(temperature, ignore_index, chunk_size)
    v.check_logit_transform(final_logit_softcapping, logit_scale)
    resolved = _lp.resolve_backend(backend, hidden.device, hidden_size=None if sharded else weight.shape[1])
    if resolved == "triton" and (final_logit_softcapping is not None or with_stats):
        # The tiled Triton kernels have no softcap or statistics epilogue; chunked has both.
        what = "final_logit_softcapping" if final_logit_softcapping is not None else "the head statistics"
        if backend == "triton":
            raise ValueError(f"{what} is not supported by backend='triton'; use backend='chunked' or 'auto'")
        resolved = "chunked"
    if resolved == "triton":
        v.require_triton_device("hidden", hidden, "backend='triton'" if backend == "triton" else
                                "GRO_BACKEND=triton (with backend='auto')")
    if not sharded and v.checking_values():
        v.check_target_range(targets, weight.shape[0], ignore_index)
    return HeadCall(hidden, weight, targets, bias, lead_shape, resolved, temperature, ignore_index, chunk_size,
                    final_logit_softcapping, logit_scale)


def check_head_options(*, temperature=1.0, ignore_index=-100, chunk_size=None, backend="auto"):
    """The scalar options of an LM-head call, without tensors (LinearLogprobs checks them at construction)."""
    v.check_head_options(temperature, ignore_index, chunk_size)
    if backend not in _lp.BACKENDS:
        raise ValueError(f"backend must be one of {_lp.BACKENDS}, got {backend!r}")


def checked_logprobs(call: HeadCall, *, return_entropy: bool = False):
    """linear_logprobs of a call check_head_call accepted (unsharded), without checking it again."""
    logprobs, entropy = _lp.linear_logprobs_op(call.hidden, call.weight, call.bias, call.targets,
                                               temperature=call.temperature, ignore_index=call.ignore_index,
                                               with_entropy=return_entropy, chunk_size=call.chunk_size,
                                               backend=call.backend, softcap=call.final_logit_softcapping,
                                               logit_scale=call.logit_scale)
    logprobs = logprobs.reshape(call.lead_shape)
    return (logprobs, entropy.reshape(call.lead_shape)) if return_entropy else logprobs


def linear_logprobs_no_grad(hidden, weight, targets, bias=None, **options):
    """linear_logprobs for old/reference policies: no graph, no saved tensors.

    Args and Returns: as linear_logprobs. The values are bitwise those of the differentiable call (the
    same forward kernel runs), so ratios against them are exactly 1 on the first step.
    """
    with torch.no_grad():
        return linear_logprobs(hidden, weight, targets, bias, **options)


class HeadOutputs(NamedTuple):
    """Per-token outputs of linear_head_outputs (leading shape of hidden); a field not requested is None."""

    log_probs: torch.Tensor
    entropy: Optional[torch.Tensor]
    log_sum_sq_probs: Optional[torch.Tensor]
    mean_logits: Optional[torch.Tensor]
    is_top1: Optional[torch.Tensor]


HEAD_OUTPUTS = HeadOutputs._fields


def linear_head_outputs(hidden, weight, targets, bias=None, *, outputs=("log_probs",), temperature=1.0,
                        ignore_index=-100, final_logit_softcapping=None, logit_scale=1.0, backend="auto",
                        chunk_size=None) -> HeadOutputs:
    """linear_logprobs plus the per-token statistics trainers log, from one pass over the logits.

    Args: as linear_logprobs (unsharded), and
        outputs: names among HEAD_OUTPUTS: "log_probs" (always computed), "entropy" (differentiable, as
            linear_logprobs'), and the no-grad statistics of docs/math.md §1 over the transformed, temperature-
            scaled logits z: "mean_logits" (mean_v z_v), "log_sum_sq_probs" (log sum_v p_v^2), "is_top1"
            (bool: the target is the first argmax). Ignored rows give 0 / False.

    Returns:
        HeadOutputs; fields not in `outputs` are None. The statistics need the chunked or naive backend
        (backend="auto" picks chunked; backend="triton" raises naming them).
    """
    if isinstance(outputs, str) or not isinstance(outputs, (tuple, list)):
        raise TypeError(f"outputs must be a tuple of names among {HEAD_OUTPUTS}, got {outputs!r}")
    unknown = [o for o in outputs if o not in HEAD_OUTPUTS]
    if unknown:
        raise ValueError(f"outputs has unknown names {unknown}; expected names among {HEAD_OUTPUTS}")
    stats_wanted = any(o in outputs for o in ("log_sum_sq_probs", "mean_logits", "is_top1"))
    hidden, weight, bias = _autocast_inputs(hidden, weight, bias)
    call = check_head_call(hidden, weight, targets, bias, temperature=temperature, ignore_index=ignore_index,
                           chunk_size=chunk_size, backend=backend, final_logit_softcapping=final_logit_softcapping,
                           logit_scale=logit_scale, with_stats=stats_wanted)
    with_entropy = "entropy" in outputs
    with _autocast_off(hidden):
        result = _lp.linear_logprobs_op(call.hidden, call.weight, call.bias, call.targets,
                                        temperature=call.temperature, ignore_index=call.ignore_index,
                                        with_entropy=with_entropy, chunk_size=call.chunk_size, backend=call.backend,
                                        softcap=call.final_logit_softcapping, logit_scale=call.logit_scale,
                                        with_stats=stats_wanted)
    shape = call.lead_shape
    log_probs, entropy = result[0].reshape(shape), result[1].reshape(shape) if with_entropy else None
    stats = {}
    if stats_wanted:
        mean, log_sum_sq, top1 = result[2]
        stats = dict(mean_logits=mean.reshape(shape), log_sum_sq_probs=log_sum_sq.reshape(shape),
                     is_top1=top1.reshape(shape).bool())
    pick = lambda name: stats[name] if name in outputs else None  # noqa: E731
    return HeadOutputs(log_probs, entropy, pick("log_sum_sq_probs"), pick("mean_logits"), pick("is_top1"))


def selected_backend(device="cpu", backend: str = "auto", hidden_size: Optional[int] = None) -> str:
    """Which backend and epilogue `linear_logprobs` runs.

    Args:
        device: a torch.device or its name.
        backend: the requested backend ("auto" follows GRO_BACKEND, then the device rule).
        hidden_size: H of the head; "auto" on CUDA depends on it.

    Returns:
        e.g. "chunked/native-cpu", "chunked/torch", "triton" or "naive".
    """
    device = v.parse_device(device)
    if hidden_size is not None:
        v.require_positive_int("hidden_size", hidden_size)
    resolved = _lp.resolve_backend(backend, device, hidden_size=hidden_size)
    if resolved == "chunked":
        return "chunked/" + (f"native-{device.type}" if _ext.native_available(device.type) else "torch")
    return resolved


def exact_kl(hidden: torch.Tensor, weight: torch.Tensor, ref_hidden: torch.Tensor, ref_weight: torch.Tensor, *,
             bias: Optional[torch.Tensor] = None, ref_bias: Optional[torch.Tensor] = None,
             mask: Optional[torch.Tensor] = None, temperature: float = 1.0, chunk_size: Optional[int] = None,
             process_group=None, vocab_start: Optional[int] = None):
    """Exact per-token KL(pi || pi_ref) over the whole vocabulary, streaming both LM heads.

    pi = softmax((hidden @ weight.T + bias) / temperature), pi_ref the same with the reference head.
    Each row chunk runs a policy GEMM and a reference GEMM into two bounded buffers (docs/math.md §1).
    Differentiable w.r.t. hidden, weight and bias (exact gradient, any upstream gradient); the
    reference side is a constant and gets no gradient.

    Args:
        hidden: [N, H] or [B, T, H]; weight [V, H]; bias [V] or None.
        ref_hidden: hidden's leading shape with its own width H'; ref_weight [V, H']; ref_bias [V] or None.
            All one float dtype and device.
        mask: bool of the leading shape (False rows give KL 0 and zero gradient) or None.
        temperature, chunk_size: as for linear_logprobs.
        process_group, vocab_start: both heads sharded over the vocabulary the same way (weight [V_r, H],
            ref_weight [V_r, H'], rows [vocab_start, vocab_start + V_r)), as for linear_logprobs.

    Returns:
        KL in fp32 with the leading shape of hidden.
    """
    if process_group is not None or vocab_start is not None:
        return _exact_kl_vocab_parallel(hidden, weight, ref_hidden, ref_weight, bias, ref_bias, mask,
                                        process_group, vocab_start, temperature=temperature, chunk_size=chunk_size)
    hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, lead_shape = v.check_kl_inputs(
        hidden, weight, ref_hidden, ref_weight, bias, ref_bias, mask, temperature, chunk_size)
    kl = _kl.exact_kl_op(hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, temperature=temperature,
                         chunk_size=chunk_size)
    return kl.reshape(lead_shape)


# ---- vocabulary-parallel heads (process_group=) ----

def _require_group(process_group):
    if process_group is None:
        raise ValueError("vocab_start= is only meaningful with process_group= (the group the vocabulary is "
                         "sharded over)")
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        raise RuntimeError("process_group= needs an initialized torch.distributed (init_process_group)")


def _exchange_layout(process_group, vocab_start, checked, hidden, targets, ignore_index, error):
    """Exchange the shard layout whether or not this rank's checks passed (see the module doc)."""
    from .ops.common import collectives  # torch.distributed plumbing only when a group is passed

    if error is None and (not isinstance(vocab_start, int) or isinstance(vocab_start, bool) or vocab_start < 0):
        error = TypeError(f"vocab_start must be an int >= 0 (the first vocabulary id of this rank's shard), "
                          f"got {vocab_start!r}")
    if error is None:
        hidden, weight, targets = checked
        return collectives.exchange_layout(process_group, vocab_start, weight.shape[0], hidden, targets,
                                           ignore_index)
    return collectives.exchange_layout(process_group, None, None, hidden, None, ignore_index, local_error=error)


def _linear_logprobs_vocab_parallel(hidden, weight, targets, bias, process_group, vocab_start, *, temperature,
                                    ignore_index, return_entropy, backend, chunk_size):
    from .ops.linear_logprobs import vocab_parallel as _lp_vp

    _require_group(process_group)
    checked, error = None, None
    try:
        call = check_head_call(hidden, weight, targets, bias, temperature=temperature, ignore_index=ignore_index,
                               chunk_size=chunk_size, backend=backend, sharded=True)
        hidden_f, weight, targets_f, bias, lead_shape, resolved = call[:6]
        checked = (hidden_f, weight, targets_f)
    except (TypeError, ValueError) as exc:
        error = exc
    shard = _exchange_layout(process_group, vocab_start, checked, hidden, targets, ignore_index, error)
    logprobs, entropy = _lp_vp.sharded_linear_logprobs(hidden_f, weight, bias, targets_f, shard,
                                                       temperature=temperature, ignore_index=ignore_index,
                                                       with_entropy=return_entropy, chunk_size=chunk_size,
                                                       backend=resolved)
    logprobs = logprobs.reshape(lead_shape)
    return (logprobs, entropy.reshape(lead_shape)) if return_entropy else logprobs


def _exact_kl_vocab_parallel(hidden, weight, ref_hidden, ref_weight, bias, ref_bias, mask, process_group,
                             vocab_start, *, temperature, chunk_size):
    from .ops.exact_kl import vocab_parallel as _kl_vp

    _require_group(process_group)
    checked, error = None, None
    try:
        hidden_f, weight, bias, ref_f, ref_weight, ref_bias, mask_f, lead_shape = v.check_kl_inputs(
            hidden, weight, ref_hidden, ref_weight, bias, ref_bias, mask, temperature, chunk_size)
        checked = (hidden_f, weight, torch.zeros(0, dtype=torch.int64, device=hidden_f.device))
    except (TypeError, ValueError) as exc:
        error = exc
    shard = _exchange_layout(process_group, vocab_start, checked, hidden, None, -100, error)
    kl = _kl_vp.sharded_exact_kl(hidden_f, weight, bias, ref_f, ref_weight, ref_bias, mask_f, shard,
                                 temperature=temperature, chunk_size=chunk_size)
    return kl.reshape(lead_shape)


def release_logit_store() -> None:
    """Frees the logit store the bf16 CPU grad-in-forward loss keeps between calls (up to GRO_LOGIT_STORE_MIB of
    fp32 logits, reused because fresh memory costs about as much as the store saves; docs/math.md §6). The next
    such call maps a new one; GRO_LOGIT_STORE_MIB=0 stops using it."""
    _logit_store.release()
