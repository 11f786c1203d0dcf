# Fresh-machine entry points. torch is pinned first so pip never pulls a CUDA build;
# users with GPUs install their own torch before `pip install -e .`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: install demo test test-fast lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/obliviate demo

test: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n auto --dist loadfile

test-fast: install
	$(BIN)/python -m pytest -q -n auto --dist loadfile -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
