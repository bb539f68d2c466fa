# Every target does its own set-up from a fresh clone: `make test` and `make demo` create
# .venv and install nca with its dev extras (torch 2.14.1 / torchvision 0.29.1) first.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH := torch==2.14.1 torchvision==0.29.1
SHARED := $(abspath ../shared)

# Real data and LPIPS weights of ../shared when present (CI sets these too).
export TORCH_HOME ?= $(SHARED)/torch_home
export NCA_DATA_DIR ?= $(SHARED)/data
export WANDB_MODE ?= offline
export WANDB_X_DISABLE_STATS ?= true
# The native operators' build cache lives with the environment (`make clean` removes it).
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions

.PHONY: install test test-slow demo bench lint format clean gpu-check

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

demo: $(STAMP)
	$(VENV)/bin/nca train

bench: $(STAMP)
	$(VENV)/bin/nca bench

# On a machine with a CUDA device: the CUDA tests, then the bench on the GPU (dense step).
gpu-check: $(STAMP)
	$(PY) -m pytest tests/cuda -v
	$(VENV)/bin/nca bench --device cuda --iters 10 --engine dense,dense-eager,reference \
		--json outputs/bench-cuda.json

# import-linter reads the package as installed (tasks/ and conf/ inside nca_cli), so the
# layers are checked on a copy installed into build/import-graph.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	rm -rf build/import-graph
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --target build/import-graph .
	cd build && PYTHONPATH=import-graph ../$(VENV)/bin/lint-imports ../pyproject.toml

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
