# Fresh machine: `make loop` sets everything up and runs the default loop; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup loop test test-slow bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

loop: setup
	dvc repro
	dvc metrics show

test: setup
	pytest -m "not slow" -q

test-slow: setup
	pytest -m slow -q

bench: setup
	for script in bench/*.py; do python $$script || exit 1; done
