"""The public functional API: validation with clear errors, flattening, then the op layer."""

from typing import Optional

import torch

from . import _validate as v
from .ops.linear_logprobs import function as _lp


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    bias: Optional[torch.Tensor] = None, *, temperature: float = 1.0, ignore_index: int = -100,
                    return_entropy: bool = False, backend: str = "auto", chunk_size: Optional[int] = None):
    """Log-probabilities of `targets` under softmax((hidden @ weight.T + bias) / temperature).

    Never materializes the [N, V] logits (except backend="naive"). Differentiable w.r.t. hidden,
    weight and bias for any upstream gradient on logprobs and entropy.

    hidden [N, H] or [B, T, H] (fp32/bf16/fp16); weight [V, H] same dtype and device; targets [N] or
    [B, T] int64 (`ignore_index` rows give 0 and zero gradient); bias [V] or None.
    Returns logprobs (fp32, the leading shape of hidden), and (logprobs, entropy) with return_entropy.
    backend: "auto" | "chunked" | "triton" | "naive" (GRO_BACKEND overrides "auto").
    """
    hidden, weight, targets, bias, lead_shape = _check_linear_inputs(hidden, weight, targets, bias)
    v.require_positive_finite("temperature", temperature)
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    resolved = _lp.resolve_backend(backend, hidden.device)
    if v.checking_values():
        _check_target_range(targets, weight.shape[0], ignore_index)
    logprobs, entropy = _lp.linear_logprobs(hidden, weight, bias, targets, temperature=temperature,
                                            ignore_index=ignore_index, with_entropy=return_entropy,
                                            chunk_size=chunk_size, backend=resolved)
    logprobs = logprobs.reshape(lead_shape)
    return (logprobs, entropy.reshape(lead_shape)) if return_entropy else logprobs


def linear_logprobs_no_grad(hidden, weight, targets, bias=None, **options):
    """linear_logprobs for old/reference policies: no graph, no saved tensors, bitwise the same
    values as the differentiable call (the same forward kernel runs)."""
    with torch.no_grad():
        return linear_logprobs(hidden, weight, targets, bias, **options)


def selected_backend(device="cpu", backend: str = "auto") -> str:
    """Which backend and epilogue `linear_logprobs` runs on `device`, e.g. "chunked/native-cpu"."""
    from . import _ext

    device = torch.device(device)
    resolved = _lp.resolve_backend(backend, device)
    if resolved == "chunked":
        return "chunked/" + (f"native-{device.type}" if _ext.native_available(device.type) else "torch")
    return resolved


def _check_linear_inputs(hidden, weight, targets, bias):
    v.require_tensor("hidden", hidden)
    v.require_tensor("weight", weight)
    v.require_tensor("targets", targets)
    v.require_float("hidden", hidden)
    if hidden.dim() not in (2, 3):
        raise ValueError(f"hidden must be [N, H] or [B, T, H], got {v.describe(hidden)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [V, H] with H = hidden.shape[-1] = {hidden.shape[-1]}, "
                         f"got {v.describe(weight)}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight must have the dtype of hidden ({hidden.dtype}), got {v.describe(weight)}")
    v.require_same_device("weight", weight, "hidden", hidden)
    lead_shape = hidden.shape[:-1]
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"targets must be an integer tensor (int64) of shape {tuple(lead_shape)}, "
                        f"got {v.describe(targets)}")
    if targets.shape != lead_shape:
        raise ValueError(f"targets must have shape {tuple(lead_shape)} (hidden's leading dims), "
                         f"got {v.describe(targets)}")
    v.require_same_device("targets", targets, "hidden", hidden)
    if bias is not None:
        v.require_tensor("bias", bias)
        if bias.shape != (weight.shape[0],) or bias.dtype != hidden.dtype:
            raise ValueError(f"bias must be [{weight.shape[0]}] of dtype {hidden.dtype}, got {v.describe(bias)}")
        v.require_same_device("bias", bias, "hidden", hidden)
        bias = bias.contiguous()
    hidden = hidden.reshape(-1, hidden.shape[-1]).contiguous()
    targets = targets.reshape(-1).to(torch.int64).contiguous()
    return hidden, weight.contiguous(), targets, bias, lead_shape


def _check_target_range(targets, vocab, ignore_index):
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"targets must be in [0, {vocab}) or ignore_index={ignore_index}; "
                         f"row {row} has {int(targets[row])}")
