"""Shared pieces of the Triton kernels: target detection, env switches, 64-bit offset helpers.

Imported only by the ops' triton_impl / triton_kernels modules, which are themselves imported
lazily, so `import gro_kernels` never needs Triton.
"""

import os

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """True when Triton runs kernels on CPU tensors (TRITON_INTERPRET=1, fixed at kernel definition)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def autotune_enabled() -> bool:
    """GRO_AUTOTUNE=1 replaces the per-target default configs by a timed search at first launch."""
    return os.environ.get("GRO_AUTOTUNE") == "1"


def target_key(device: torch.device) -> str:
    """Which default config table applies: "interpreter", "sm80" (Ampere/Ada) or "sm90" (Hopper+)."""
    if interpreting():
        return "interpreter"
    major, _ = torch.cuda.get_device_capability(device)
    return "sm90" if major >= 9 else "sm80"


def require_launchable(name: str, t: torch.Tensor) -> None:
    """A Triton kernel can run on `t`: a CUDA tensor, or any tensor under the interpreter."""
    if t.device.type != "cuda" and not interpreting():
        raise RuntimeError(f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors); "
                           f"{name} is on {t.device}")


@triton.jit
def offsets_i64(start, BLOCK: tl.constexpr):
    """start + [0, BLOCK) as int64, so `index * stride` cannot wrap when N*H or V*H >= 2^31.
    (start itself is a tile origin below N or V, which fits int32.)"""
    return tl.arange(0, BLOCK).to(tl.int64) + start
