# Two set-up commands: `make run` (main job on the embedded default) and `make test`.
# Both create or refresh the virtual environment they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export CLF_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: run test test-slow lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/clf-train

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check cl_framework tests experiments
	$(BIN)/ruff format --check cl_framework tests experiments

format: $(STAMP)
	$(BIN)/ruff format cl_framework tests experiments
	$(BIN)/ruff check --fix cl_framework tests experiments

clean:
	rm -rf $(VENV) outputs .pytest_cache
