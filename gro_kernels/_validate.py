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
