# Two commands do all set-up on a fresh machine: `make bench` (the benchmarks) and `make test` (the tests).
PY ?= python3
PIP = $(PY) -m pip
TORCH_PIN ?= torch==2.14.1
PYTEST = $(PY) -m pytest

.PHONY: setup setup-peers test test-main test-interpreter test-aot bench demo gpu-check

setup:
	$(PIP) install -q $(TORCH_PIN) numpy ninja
	$(PIP) install -q --no-build-isolation -e ".[test,bench,train]"

# Optional comparison peers for the benchmarks (torch and triton pinned in the same call so pip keeps them).
setup-peers:
	$(PIP) install -q $(TORCH_PIN) "triton==3.8.0" "liger-kernel==0.8.5" "cut-cross-entropy==25.1.1" "trl==1.16.0" || \
		echo "peers not installed: benchmarks will skip Liger-Kernel / Cut Cross-Entropy / TRL"

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

# Empirical study (benchmarks/study/config.yaml holds every knob): every GRO preset/mode on three toy verifiable
# tasks, 3 seeds, equal sampled-token budgets; table and plots in benchmarks/results/study/. `make test` runs its
# --quick variant (tests/test_study_quick.py).
.PHONY: study
study: setup
	$(PY) -m benchmarks.study

# GPU check (benchmarks/gpu_check.py, <= 8 minutes on one GPU; installs nothing, uses the preinstalled torch):
# builds the extension for the device, runs tests/device on it and the bf16 benchmarks at real LM-head shapes;
# results in benchmarks/results/gpu/ (GRO_GPU_CHECK_OUT). GRO_GPU_CHECK_DRY=1: the CPU dry run (< 2 minutes,
# results in build/gpu_check_dry/). GRO_GPU_CHECK_BUDGET_S: the time budget (default 480).
gpu-check:
	GRO_GPU_CHECK_DRY=$(GRO_GPU_CHECK_DRY) $(PY) -m benchmarks.gpu_check
