# Thin aliases; pyproject.toml holds every tool's configuration.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup fmt lint type test test-all proto-doc docs docs-serve check up bench compose-smoke

setup:            ## create the venv and install the project with its dev tools
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'

fmt:
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

type:
	$(PY) -m mypy

test:             ## everything CI runs (slow runs excluded)
	$(PY) -m pytest

test-all:         ## plus the slow, opt-in runs
	$(PY) -m pytest -m ''

proto-doc:
	$(PY) -m machine.proto.gendoc

docs:             ## the docs site, strict (a broken link fails): site/
	$(PY) -m mkdocs build --strict

docs-serve:       ## the docs site on http://127.0.0.1:8000, rebuilt on every change
	$(PY) -m mkdocs serve

check: lint type test
	$(PY) -m machine.proto.gendoc --check

up:
	$(VENV)/bin/uvm-machine up

bench:
	$(PY) bench/bench_machine.py

compose-smoke:
	bash .ci/compose-smoke.sh
