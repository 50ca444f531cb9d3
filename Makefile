# convrec-dagster: `make run` sets everything up and runs full_pipeline on the embedded sample;
# `make test` runs the test suite. `make help` lists the rest.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export CONVREC_HOME ?= $(CURDIR)/.convrec
export DAGSTER_HOME ?= $(CONVREC_HOME)/dagster_home
export CONVREC_LOG_LEVEL

.PHONY: help setup run test lint fmt dev ui-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml  ## create .venv, install, write the Dagster instance config

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install -e '.[dev]'
	touch $@

# copies dagster.yaml (replacing only a copy of the project's, recognised by its first line: a DAGSTER_HOME
# the user configured is left as it is) and creates the instance's storage once, under a file lock: two
# first runs on a fresh DAGSTER_HOME could otherwise both create it and break it
$(DAGSTER_HOME)/dagster.yaml: convrec_dagster/dagster.yaml $(VENV)/.installed
	mkdir -p $(DAGSTER_HOME)
	@if [ ! -e $@ ] || [ "$$(head -n 1 $@)" = "$$(head -n 1 $<)" ]; then cp $< $@; \
	else echo "make: kept $@, which is not the project's (the project's settings: $<)"; fi
	$(BIN)/python -m convrec_dagster.store init-dagster-home --dagster-home $(DAGSTER_HOME)

# The console logs at INFO and ends with a summary; `make run CONVREC_LOG_LEVEL=DEBUG` prints every
# event. PYTHONWARNINGS hides the CLI's FutureWarning that `dagster job execute` is superseded.
run: setup  ## run full_pipeline (embedded sample unless CONVREC_RAW_DIR is set; CONFIG=file.yaml)
	PYTHONWARNINGS=ignore::FutureWarning $(BIN)/dagster job execute -m convrec_dagster.definitions -j full_pipeline $(if $(CONFIG),-c $(CONFIG))

test: setup lint  ## lint (ruff), then run the test suite
	$(BIN)/python -m pytest -q

lint: setup  ## ruff: lint and format check (what CI runs before the tests)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: setup  ## ruff: fix what can be fixed and format the code
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

dev: setup  ## start the Dagster UI on http://127.0.0.1:3000
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

ui-check: setup  ## end-to-end UI check: dagster dev, a run over GraphQL, a screenshot (needs chromium)
	bash scripts/ui_check.sh

clean:  ## remove the database, artifacts and run history (keeps .venv)
	rm -rf $(CONVREC_HOME)
