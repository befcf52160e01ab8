"""The compiled extension `gro_kernels._C`, or why it is unavailable.

Importing `_C` registers the `torch.ops.gro_C.*` operators (TORCH_LIBRARY in python_api/). The
package works without it: the chunked backend then runs its plain-torch epilogue.
"""

import os

import torch

try:
    from . import _C  # noqa: F401  (import registers the ops)

    NATIVE_IMPORT_ERROR = None
except ImportError as exc:  # not built, or built against another torch
    NATIVE_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


def native_available(device_type: str = "cpu") -> bool:
    """True when the compiled epilogues exist for `device_type` and GRO_DISABLE_NATIVE is not set."""
    if NATIVE_IMPORT_ERROR is not None or os.environ.get("GRO_DISABLE_NATIVE") == "1":
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key("gro_C::logprob_forward", key)


def native_status() -> str:
    """One line saying which native kernels are usable, and if none, why."""
    if NATIVE_IMPORT_ERROR is not None:
        return f"gro_kernels._C not available ({NATIVE_IMPORT_ERROR})"
    if os.environ.get("GRO_DISABLE_NATIVE") == "1":
        return "gro_kernels._C disabled by GRO_DISABLE_NATIVE=1"
    devices = [d for d in ("cpu", "cuda") if native_available(d)]
    return "gro_kernels._C loaded; native epilogues for: " + ", ".join(devices)
