"""Plumbing of the device parity tests: the device under test, Triton case marks, the tolerance rule.

Inputs are made on the CPU (same values on every device) and moved to the device under test; the fp64
oracle runs on the CPU; the naive op in the tested dtype runs on the device under test, since that is
the error a plain trainer on that device would have (docs/testing.md, the tolerance rule).
"""

import os

import pytest
import torch

from gro_kernels import _ext

# Read at collection time to mark the Triton cases; the `device` fixture (tests/conftest.py) reads the same.
DEVICE_TYPE = torch.device(os.environ.get("GRO_TEST_DEVICE", "cpu")).type
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Absolute slack of the low-precision rule (docs/testing.md): values, and gradients relative to their max.
SLACK = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (1e-3, 2e-3), torch.float16: (1e-3, 2e-3)}


def triton_param(*values, id):
    """A Triton case. On a CPU it can only run under TRITON_INTERPRET=1, so it carries the `interpreter`
    marker there (tests/conftest.py then keeps it to the interpreter process and the rest out of it);
    on CUDA it is an ordinary case of the main process."""
    marks = [pytest.mark.interpreter] if DEVICE_TYPE == "cpu" else []
    return pytest.param(*values, id=id, marks=marks)


def require_triton(device):
    """Skip unless Triton can launch on `device` (CUDA, or CPU tensors under the interpreter)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        pytest.skip("Triton is not installed")
    if device.type == "cpu" and not INTERPRETING:
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (make test-interpreter)")


def require_native(device):
    if not _ext.native_available(device.type):
        pytest.skip(f"no native {device.type} epilogue: {_ext.native_status()}")


def to(device, *tensors):
    return [None if t is None else t.to(device) for t in tensors]


def err(actual, expected):
    """Max absolute difference, computed in fp64 on the CPU (the two may live on different devices)."""
    if actual.numel() == 0:
        return 0.0
    return (actual.detach().cpu().double() - expected.detach().cpu().double()).abs().max().item()


def assert_within_naive_error(actual, same_dtype_naive, oracle, dtype, what, gradient=False):
    """docs/testing.md: error vs the fp64 oracle <= 2x the naive op's error in the same dtype + slack
    (gradients: slack relative to the oracle's largest entry)."""
    value_slack, grad_slack = SLACK[dtype]
    slack = grad_slack * oracle.abs().max().item() if gradient else value_slack
    bound = 2 * err(same_dtype_naive, oracle) + slack
    got = err(actual, oracle)
    assert got <= bound, f"{what}: error {got:.3e} vs fp64 > bound {bound:.3e} (2x naive {dtype} + slack)"
