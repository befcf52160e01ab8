"""Interpreter tests: Triton kernels on CPU tensors. TRITON_INTERPRET is read when kernels are
defined, so it must be set for the whole process (the Makefile's test-interpreter target)."""

import os

if os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError("tests/interpreter must run with TRITON_INTERPRET=1 in its own pytest process: "
                       "`TRITON_INTERPRET=1 python -m pytest tests/interpreter` (see the Makefile)")
