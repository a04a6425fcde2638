# Lienthong — every command sets up what it needs on a fresh machine.
#   make demo            a hub and four offices as real processes, end to end (< 1 min)
#   make test            virtualenv, dependencies, PostgreSQL, lint, types, import rules, tests
#   make bench-protocol  protocol benchmark (one JSON object)
#   make fuzz            every atheris harness for FUZZ_SECONDS each
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_WORKERS ?= 2
export LIENTHONG_TEST_DATABASE_URL ?= postgresql+asyncpg://postgres@127.0.0.1:5432/postgres

.PHONY: install demo test lint typecheck imports pytest postgres bench-protocol fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python scripts/demo.py

postgres:
	bash scripts/ensure-postgres.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

imports: install
	$(BIN)/lint-imports

pytest: install postgres
	$(BIN)/pytest -n $(PYTEST_WORKERS) -p no:cacheprovider

test: lint typecheck imports pytest

bench-protocol: install
	$(BIN)/python -m tests.bench.bench_protocol

fuzz: install
	FUZZ_SECONDS=$${FUZZ_SECONDS:-60} bash tests/fuzz/run_all.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .hypothesis
