"""These tests run in their own environment (`make test-verl`: build/verl-venv, verl 0.9.1 and gro-kernels
installed editable so its `verl.plugins` entry point exists): verl 0.9.1 and TRL 1.16 cannot share one.

In the main environment (no verl) the folder is not collected; there the import error of the plug-in is tested
by tests/integrations/test_verl_optional.py. Under GRO_VERL_TESTS=1 (set by `make test-verl`) a missing verl is
an error, so the verl run can never pass by collecting nothing."""

import importlib.util
import os

if importlib.util.find_spec("verl") is None:
    if os.environ.get("GRO_VERL_TESTS") == "1":
        raise RuntimeError("GRO_VERL_TESTS=1 but verl is not importable: run `make test-verl`, which builds "
                           "build/verl-venv")
    collect_ignore_glob = ["*.py"]
