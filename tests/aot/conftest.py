"""AOT compile tests need real (not interpreted) kernel objects: run them without TRITON_INTERPRET."""

import os

if os.environ.get("TRITON_INTERPRET") == "1":
    raise RuntimeError("tests/aot compiles kernels for sm_80/sm_90 and must run without TRITON_INTERPRET=1, "
                       "in its own pytest process (see the Makefile's test-aot target)")
