# The whole set-up on a fresh machine is `make demo` or `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Extra pip arguments, e.g. PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu" for the CPU torch.
PIP_ARGS ?=
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: demo test lint typecheck pytest docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is named in the same command so that nothing can pull an unpinned (CUDA) build. The scale
# extra (Ray) is installed for its tests; recstack itself runs without it (engine = "local").
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(PIP_ARGS) -e '.[dev,scale]' torch==2.13.0
	touch $@

demo: $(VENV)/.installed
	$(BIN)/recstack demo

lint: $(VENV)/.installed
	$(BIN)/ruff check recstack tests benchmarks
	$(BIN)/ruff format --check recstack tests benchmarks

typecheck: $(VENV)/.installed
	$(BIN)/mypy

pytest: $(VENV)/.installed
	$(BIN)/pytest -q -ra --durations=20

test: lint typecheck pytest

# docs/cli.md and docs/config.md, generated from the code (tests/test_reference.py checks them)
docs: $(VENV)/.installed
	$(BIN)/python -m recstack.reference docs

clean:
	rm -rf $(VENV) .recstack .pytest_cache .mypy_cache .ruff_cache
