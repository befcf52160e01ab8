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
