# The README's commands. `make run` starts everything; `make test` runs the whole suite;
# `make check` is the fast tier (lint and the tests that need only PostgreSQL, under a minute).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test check lint bench install install-test clean image-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	sh scripts/install_test_packages.sh

run: install
	$(BIN)/wmq run

test: install-test
	$(BIN)/ruff check service workers tests scripts bench
	$(BIN)/pytest -n 3 --dist loadfile

check: install-test
	$(BIN)/ruff check service workers tests scripts bench
	$(BIN)/pytest tests/fast

bench: install-test
	cd bench && for script in drain enqueue lateness idle growth broker_choice outage; do ../$(BIN)/python $$script.py || exit 1; done

# Builds the Dockerfile with podman and loads what the image ships, in it (root; minutes; not in
# `make test`): scripts/image_check.sh, docs/deploy.md "1. The image".
image-check: install
	bash scripts/image_check.sh

lint: install-test
	$(BIN)/ruff check service workers tests scripts bench

clean:
	rm -rf $(VENV) .data
