# Two commands do all set-up on a fresh machine: `make bench` (the benchmarks) and `make test` (the tests).
PY ?= python3
PIP = $(PY) -m pip
TORCH_PIN ?= torch==2.14.1
PYTEST = $(PY) -m pytest

.PHONY: setup setup-peers test test-main test-interpreter test-aot test-verl bench demo gpu-check

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
	$(MAKE) test-main test-interpreter test-aot test-verl

test-main:
	$(PYTEST) tests -m "not aot"

test-interpreter:
	TRITON_INTERPRET=1 $(PYTEST) tests -m interpreter

test-aot:
	$(PYTEST) tests -m aot

# The verl plug-in's seam tests (tests/integrations/verl/) run in their own venv: verl 0.9.1 needs
# transformers < 5.11, TRL 1.16 a newer one. The venv holds verl without its dependencies plus only what
# importing verl's model-patching code needs, and this checkout editable (its verl.plugins entry point; the
# extension built in place by `make setup`). Built once (~2 min), rebuilt when this file or pyproject.toml change;
# pip's resolver then lists verl's other dependencies (ray[default] extras, wandb, ...) as missing, by design.
VERL_VENV ?= build/verl-venv
VERL_PY = $(VERL_VENV)/bin/python

$(VERL_VENV)/.gro-ready: Makefile pyproject.toml
	test -x $(VERL_PY) || $(PY) -m venv $(VERL_VENV)
	$(VERL_PY) -m pip install -q $(TORCH_PIN) numpy
	$(VERL_PY) -m pip install -q --no-deps "verl==0.9.1"
	$(VERL_PY) -m pip install -q $(TORCH_PIN) "transformers==5.10.4" "tensordict==0.10.0" "ray==2.60.0" \
		"omegaconf==2.4.0" packaging pytest
	GRO_SKIP_NATIVE_BUILD=1 $(VERL_PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

test-verl: $(VERL_VENV)/.gro-ready
	GRO_VERL_TESTS=1 $(VERL_PY) -m pytest tests/integrations/verl

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
