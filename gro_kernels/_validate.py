"""Input checks for the public API: every error names the argument, what was expected and what came.

Checks that need tensor values (not just metadata) are skipped while torch.compile traces, where
they would break the graph; they run on every eager call.
"""

import math

import torch


def describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def require_tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def require_float(name: str, t: torch.Tensor, allowed=(torch.float32, torch.float16, torch.bfloat16, torch.float64)):
    if t.dtype not in allowed:
        raise TypeError(f"{name} must have a floating dtype in {[str(d) for d in allowed]}, got {describe(t)}")


def require_same_device(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor):
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the same device as {ref_name} ({ref.device}), got {describe(t)}")


def require_positive_finite(name: str, value: float):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}")


def require_nonnegative(name: str, value: float):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")


def checking_values() -> bool:
    """Value checks (target ranges, NaN rewards) run eagerly, not while torch.compile traces."""
    return not torch.compiler.is_compiling()


# ---- the LM-head primitive's arguments (functional.py) ----

def check_linear_inputs(hidden, weight, targets, bias):
    hidden, weight, bias, lead_shape = check_head("hidden", hidden, "weight", weight, "bias", bias)
    require_tensor("targets", targets)
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"targets must be an integer tensor (int64) of shape {tuple(lead_shape)}, "
                        f"got {describe(targets)}")
    if targets.shape != lead_shape:
        raise ValueError(f"targets must have shape {tuple(lead_shape)} (hidden's leading dims), "
                         f"got {describe(targets)}")
    require_same_device("targets", targets, "hidden", hidden)
    targets = targets.reshape(-1).to(torch.int64).contiguous()
    return hidden, weight, targets, bias, lead_shape


def check_target_range(targets, vocab, ignore_index):
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"targets must be in [0, {vocab}) or ignore_index={ignore_index}; "
                         f"row {row} has {int(targets[row])}")


def check_head_options(temperature, ignore_index, chunk_size):
    """The scalar options every LM-head call takes."""
    require_positive_finite("temperature", temperature)
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    check_chunk_size(chunk_size)


def check_chunk_size(chunk_size):
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def check_kl_inputs(hidden, weight, ref_hidden, ref_weight, bias, ref_bias, mask, temperature, chunk_size):
    """exact_kl's checks; returns the flattened tensors and the leading shape."""
    hidden, weight, bias, lead_shape = check_head("hidden", hidden, "weight", weight, "bias", bias)
    ref_hidden, ref_weight, ref_bias, _ = check_head("ref_hidden", ref_hidden, "ref_weight", ref_weight,
                                                      "ref_bias", ref_bias, like=(lead_shape, hidden, weight))
    if mask is not None:
        require_tensor("mask", mask)
        if mask.dtype != torch.bool or mask.shape != lead_shape:
            raise ValueError(f"mask must be a bool tensor of shape {tuple(lead_shape)}, got {describe(mask)}")
        require_same_device("mask", mask, "hidden", hidden)
        mask = mask.reshape(-1).contiguous()
    require_positive_finite("temperature", temperature)
    check_chunk_size(chunk_size)
    return hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, lead_shape


def check_head(h_name, hidden, w_name, weight, b_name, bias, like=None):
    """Validate one (hidden, weight, bias) head; `like` = (lead_shape, hidden, weight) of the policy head
    that the reference must match in leading shape, vocabulary, dtype and device. Returns flattened tensors."""
    require_tensor(h_name, hidden)
    require_tensor(w_name, weight)
    require_float(h_name, hidden)
    if hidden.dim() not in (2, 3):
        raise ValueError(f"{h_name} must be [N, H] or [B, T, H], got {describe(hidden)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"{w_name} must be [V, H] with H = {h_name}.shape[-1] = {hidden.shape[-1]}, "
                         f"got {describe(weight)}")
    if like is not None:
        lead_shape, ref, ref_w = like
        if hidden.shape[:-1] != lead_shape:
            raise ValueError(f"{h_name} must have the leading shape of hidden {tuple(lead_shape)}, "
                             f"got {describe(hidden)}")
        if weight.shape[0] != ref_w.shape[0]:
            raise ValueError(f"{w_name} must have the vocabulary size of weight (V = {ref_w.shape[0]}), "
                             f"got {describe(weight)}")
        if hidden.dtype != ref.dtype:
            raise TypeError(f"{h_name} must have the dtype of hidden ({ref.dtype}), got {describe(hidden)}")
        require_same_device(h_name, hidden, "hidden", ref)
    if weight.dtype != hidden.dtype:
        raise TypeError(f"{w_name} must have the dtype of {h_name} ({hidden.dtype}), got {describe(weight)}")
    require_same_device(w_name, weight, h_name, hidden)
    if bias is not None:
        require_tensor(b_name, bias)
        if bias.shape != (weight.shape[0],) or bias.dtype != hidden.dtype:
            raise ValueError(f"{b_name} must be [{weight.shape[0]}] of dtype {hidden.dtype}, got {describe(bias)}")
        require_same_device(b_name, bias, h_name, hidden)
        bias = bias.contiguous()
    lead_shape = hidden.shape[:-1]
    return hidden.reshape(-1, hidden.shape[-1]).contiguous(), weight.contiguous(), bias, lead_shape
