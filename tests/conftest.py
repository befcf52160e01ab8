"""Run modes are markers: `interpreter` tests need TRITON_INTERPRET=1 set for the whole process (Triton
reads it when kernels are defined), `aot` tests need real kernel objects (the flag unset). Each mode
runs in its own pytest process (see the Makefile); a process collects every test and keeps the ones of
its mode, so a plain `pytest tests` runs everything that can run without the interpreter."""

import os

import pytest
import torch

# Keep test runs reproducible and independent of the developer's environment.
for var in ("GRO_BACKEND", "GRO_CHUNK_SIZE", "GRO_DISABLE_NATIVE"):
    os.environ.pop(var, None)

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


def pytest_collection_modifyitems(config, items):
    """Keep interpreter-marked tests under TRITON_INTERPRET=1 and only those; the rest otherwise."""
    keep, drop = [], []
    for item in items:
        (keep if (item.get_closest_marker("interpreter") is not None) == INTERPRETING else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def device():
    """The device of the tests/device parity tests: GRO_TEST_DEVICE (default "cpu"; e.g. "cuda" on a GPU
    machine, as `make gpu-check` runs them). Asking for a device that is absent is an error, not a skip,
    so a GPU run that silently fell back to nothing cannot pass."""
    dev = torch.device(os.environ.get("GRO_TEST_DEVICE", "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"GRO_TEST_DEVICE={dev} but torch.cuda.is_available() is False")
    return dev
