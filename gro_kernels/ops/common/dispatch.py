"""GRO_BACKEND as the loss-layer ops read it (group advantages, the policy token epilogue).

The one env var that overrides linear_logprobs' "auto" steers these ops too, so a single switch
moves a whole training step: "triton" forces the Triton kernels (CUDA tensors, or CPU tensors
under TRITON_INTERPRET=1), "chunked" keeps Triton off (native kernels, else torch), "naive" runs
plain torch, unset or "auto" picks by device.
"""

import importlib
import os

BACKENDS = ("auto", "naive", "chunked", "triton")
TRITON_MISSING = "GRO_BACKEND=triton, but Triton is not installed (pip install triton)"


def requested_backend() -> str:
    """GRO_BACKEND, validated ("auto" when unset)."""
    backend = os.environ.get("GRO_BACKEND", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"GRO_BACKEND must be one of {BACKENDS}, got {backend!r}")
    return backend


def optional_triton_impl(op_package: str):
    """The op's triton_impl module (`<op_package>.triton_impl`), or None when Triton is not installed."""
    try:
        return importlib.import_module(f"{op_package}.triton_impl")
    except ImportError:
        return None
