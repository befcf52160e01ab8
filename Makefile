# Two commands do all set-up on a fresh machine: `make bench` (the benchmarks) and `make test` (the tests).
PY ?= python3
PIP = $(PY) -m pip
TORCH_PIN ?= torch==2.14.1
PYTEST = $(PY) -m pytest

.PHONY: setup setup-peers test test-main test-interpreter test-aot bench demo

setup:
	$(PIP) install -q $(TORCH_PIN) numpy ninja
	$(PIP) install -q --no-build-isolation -e ".[test,bench,train]"

# Optional comparison peers for the benchmarks (pin triton first so pip keeps torch's triton).
setup-peers:
	$(PIP) install -q "triton==3.8.0" "liger-kernel==0.8.5" "cut-cross-entropy==25.1.1" || \
		echo "peers not installed: benchmarks will skip Liger-Kernel / Cut Cross-Entropy"

# Run modes are pytest markers. Triton's interpreter flag is read when kernels are defined, so the
# interpreter tests (marker `interpreter`) and the AOT compile tests (marker `aot`) each run in their
# own pytest process; tests/conftest.py keeps interpreter tests to the TRITON_INTERPRET=1 process.
test: setup
	$(MAKE) test-main test-interpreter test-aot

test-main:
	$(PYTEST) tests -m "not aot"

test-interpreter:
	TRITON_INTERPRET=1 $(PYTEST) tests -m interpreter

test-aot:
	$(PYTEST) tests -m aot

bench: setup setup-peers
	$(PY) -m benchmarks.run

# CPU demo (about 2 minutes): a tiny Llama built in code learns to sort 3 digits with GRPO; writes
# runs/demo_sort/metrics.jsonl and runs/demo_sort/curves.png (a re-run starts over: overwrite_output_dir).
demo: setup
	$(PY) -m gro_kernels.trainer.cli --config examples/demo_sort.yaml --set overwrite_output_dir=true
