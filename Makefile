# The two commands of the README: `make run` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: run test e2e lint format bench vendor clean

$(BIN)/activate:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Nomaflow needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/activate pyproject.toml
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@ $(VENV)/.installed

## run: install, migrate the embedded SQLite database and serve on http://$(HOST):$(PORT)
## (a new installation gets demo jobs; NOMAFLOW_DEMO_JOBS=false leaves them out)
run: $(VENV)/.installed
	$(BIN)/nomaflow db upgrade
	NOMAFLOW_DEMO_JOBS=$${NOMAFLOW_DEMO_JOBS:-true} $(BIN)/nomaflow serve --host $(HOST) --port $(PORT)

## test: install with the test extras, lint, and run the whole suite (browser tests included)
test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

## e2e: only the browser tests
e2e: $(VENV)/.installed-test
	$(BIN)/pytest -m e2e

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

format: $(VENV)/.installed-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## bench: the benchmarks of bench/ (figures printed and saved under bench/results/)
bench: $(VENV)/.installed-test
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/python_step.py
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/sql_copy.py

## vendor: refresh static/vendor from the npm registry (versions pinned in static/vendor/VERSIONS)
vendor:
	bash static/vendor/fetch.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
