# Two set-up commands: `make run` (main job on the embedded default) and `make test`.
# Both create or refresh the virtual environment they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export CLF_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: run test test-slow lint format clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,sweep,avalanche,diffusers]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/clf-train

# Two pytest workers with one torch thread each use 2 cores better than one process with two
# threads (the tests' models are small); CLF_TEST_WORKERS=1 runs serially.
CLF_TEST_WORKERS ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(CLF_TEST_WORKERS) --dist loadfile

# Tests marked `slow` (none at present: the full-length kill-and-resume runs are in `make test`).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow || [ $$? -eq 5 ]

# Ours vs a hand-written loop vs Avalanche (DER++-500, Seq-MNIST) + buffer micro-benchmarks +
# profile; rewrites experiments/bench/RESULTS.md (< 10 min on 2 cores). BENCH_THREADS=1 default.
# $(BASE_VENV): the package with its base dependencies only (what `pip install` without extras
# gives), for the whole-process rows of a default install; skipped if it cannot be installed.
BASE_VENV ?= .venv-base
bench: $(STAMP)
	$(BIN)/python -m pip show -q avalanche-lib >/dev/null 2>&1 \
	  || $(BIN)/python -m pip install --quiet "avalanche-lib>=0.6" \
	  || echo "avalanche-lib could not be installed: its rows will say so"
	test -f $(BASE_VENV)/.installed -a $(BASE_VENV)/.installed -nt pyproject.toml \
	  || { (test -x $(BASE_VENV)/bin/python || $(PYTHON) -m venv $(BASE_VENV)) \
	       && $(BASE_VENV)/bin/python -m pip install --quiet -e . && touch $(BASE_VENV)/.installed; } \
	  || echo "no base-install venv: its rows will be missing"
	$(BIN)/python experiments/bench/run.py \
	  $$(test -f $(BASE_VENV)/.installed && echo --base-python $(BASE_VENV)/bin/python)

lint: $(STAMP)
	$(BIN)/ruff check cl_framework tests experiments
	$(BIN)/ruff format --check cl_framework tests experiments

format: $(STAMP)
	$(BIN)/ruff format cl_framework tests experiments
	$(BIN)/ruff check --fix cl_framework tests experiments

clean:
	rm -rf $(VENV) $(BASE_VENV) outputs .pytest_cache
