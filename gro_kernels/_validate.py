"""Input checks for the public API: every error names the argument, what was expected and what came.

Checks that need tensor values (not just metadata) are skipped while torch.compile traces, where
they would break the graph; they run on every eager call. The matrix of what each public function
answers to bad input is tests/test_bad_input_matrix.py (rendered in docs/bad_inputs.md).
"""

import math
import os

import torch

from .ops.common.chunking import env_chunk_size, env_logit_store_elements



class TritonDeviceError(ValueError, RuntimeError):
    """backend='triton' (or GRO_BACKEND=triton) on tensors Triton cannot run on. A ValueError, as every bad
    argument here; also a RuntimeError, what the kernels' launchers raised before the check moved to the
    public boundary, so callers catching that keep working."""


def describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def require_tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def require_data(name: str, t: torch.Tensor):
    """Meta tensors have a shape and a dtype but no values; every function here computes values, and the
    kernels would fail deep inside (NotImplementedError, .item() errors) instead of naming the argument."""
    if t.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (shape and dtype only, no data); pass a CPU or CUDA "
                         f"tensor, got {describe(t)}")


def require_float(name: str, t: torch.Tensor, allowed=(torch.float32, torch.float16, torch.bfloat16, torch.float64)):
    if t.dtype not in allowed:
        raise TypeError(f"{name} must have a floating dtype in {[str(d) for d in allowed]}, got {describe(t)}")


def require_same_device(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor):
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the same device as {ref_name} ({ref.device}), got {describe(t)}")


def is_number(value) -> bool:
    """An int or float, not a bool (True would silently count as 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require_positive_finite(name: str, value: float):
    if not is_number(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}")


def require_nonnegative(name: str, value: float):
    if not is_number(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")


def require_positive_int(name: str, value):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")


def require_optional_bool(name: str, value):
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be True, False or None, got {type(value).__name__} {value!r}")


def require_bool(name: str, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


def parse_device(device) -> torch.device:
    """A torch.device from a device or its name; a bad name is a ValueError naming the argument (torch's
    own error says only "Invalid device string")."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a torch.device or a device name, got {type(device).__name__}")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be a torch.device or a device name such as 'cpu', 'cuda' or 'cuda:0', "
                         f"got {device!r}") from None


def triton_interpreting() -> bool:
    """TRITON_INTERPRET=1: Triton runs kernels on CPU tensors. (ops/common/triton_helpers.interpreting asks the
    same, but importing it imports Triton; this check must work without it.)"""
    return os.environ.get("TRITON_INTERPRET") == "1"


def require_triton_device(name: str, t: torch.Tensor, source: str):
    """`source` (e.g. "backend='triton'") picked Triton for `t`: it must be a CUDA tensor, or run under the
    interpreter. Checked before any kernel, so the answer is the same on every path."""
    if t.device.type != "cuda" and not triton_interpreting():
        raise TritonDeviceError(f"{source} needs CUDA tensors or TRITON_INTERPRET=1 (Triton's interpreter, which "
                                f"runs CPU tensors); {name} is on {t.device}")


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


def check_logit_transform(final_logit_softcapping, logit_scale):
    """The head's logit transforms (math §1): softcap None or a finite c > 0; logit_scale a finite s > 0."""
    if final_logit_softcapping is not None:
        require_positive_finite("final_logit_softcapping", final_logit_softcapping)
    require_positive_finite("logit_scale", logit_scale)


def check_chunk_size(chunk_size):
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    check_chunk_size_env()


def check_chunk_size_env():
    """GRO_CHUNK_SIZE, when set, must be a positive int, and GRO_LOGIT_STORE_MIB an int >= 0: checked at the boundary
    with the rules the chunk loops (ops/*/chunked.py) read them by, so every call that can reach them answers before
    any work."""
    env_chunk_size()
    env_logit_store_elements()


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
    if like is None:  # the reference head shares this device (checked above)
        require_data(h_name, hidden)
    lead_shape = hidden.shape[:-1]
    return hidden.reshape(-1, hidden.shape[-1]).contiguous(), weight.contiguous(), bias, lead_shape


# ---- packed (padding-free) batches: cu_seqlens ----

def check_cu_seqlens(cu_seqlens, n_total: int, device) -> torch.Tensor:
    """Sequence boundaries of a packed batch, as flash-attention's varlen API takes them: a 1-D int32/int64
    tensor [B + 1] on hidden's device, cu_seqlens[0] = 0, non-decreasing, cu_seqlens[-1] = N_total (hidden's
    rows). Returns them as int64 on the host: the packed layout needs the lengths there anyway (its padded
    width), so the value checks cost no extra sync. While torch.compile traces the value checks are skipped."""
    require_tensor("cu_seqlens", cu_seqlens)
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() == 0:
        raise ValueError(f"cu_seqlens must be a 1-D tensor [B + 1] of sequence offsets (cu_seqlens[0] = 0, "
                         f"cu_seqlens[-1] = N_total = {n_total}), got {describe(cu_seqlens)}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be an int32 or int64 tensor, got {describe(cu_seqlens)}")
    if cu_seqlens.device != torch.device(device):
        raise ValueError(f"cu_seqlens must be on hidden's device ({device}), got {describe(cu_seqlens)}")
    require_data("cu_seqlens", cu_seqlens)
    host = cu_seqlens.to(device="cpu", dtype=torch.int64)
    if not checking_values():
        return host
    if int(host[0]) != 0:
        raise ValueError(f"cu_seqlens must start at 0, got cu_seqlens[0] = {int(host[0])}")
    steps = host[1:] - host[:-1]
    if bool((steps < 0).any()):
        i = int((steps < 0).nonzero()[0, 0])
        raise ValueError(f"cu_seqlens must be non-decreasing (sequence lengths >= 0), got cu_seqlens[{i}] = "
                         f"{int(host[i])} > cu_seqlens[{i + 1}] = {int(host[i + 1])}")
    if int(host[-1]) != n_total:
        raise ValueError(f"cu_seqlens[-1] must equal N_total = {n_total} (the packed tokens: hidden.shape[0]), "
                         f"got {int(host[-1])}")
    return host


def check_packed_head(hidden, targets, cu_seqlens) -> torch.Tensor:
    """A packed LM-head call: hidden [N_total, H], targets [N_total], and cu_seqlens over those N_total rows.
    Returns cu_seqlens on the host as int64 (check_cu_seqlens)."""
    require_tensor("hidden", hidden)
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [N_total, H] (flat tokens) when cu_seqlens is given, got "
                         f"{describe(hidden)}")
    require_tensor("targets", targets)
    if targets.dim() != 1 or targets.shape[0] != hidden.shape[0]:
        raise ValueError(f"targets must be [N_total] = ({hidden.shape[0]},) when cu_seqlens is given, got "
                         f"{describe(targets)}")
    return check_cu_seqlens(cu_seqlens, hidden.shape[0], hidden.device)
