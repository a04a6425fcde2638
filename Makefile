# Lienthong — every command sets up what it needs on a fresh machine.
#   make demo            a hub and four offices as real processes, end to end (< 1 min)
#   make test            virtualenv, dependencies, PostgreSQL, Chromium, lint, types, import
#                        rules, tests
#   make bench-protocol  protocol benchmark (one JSON object)
#   make bench           side by side with e-mail, S/MIME, age and AS2 (docs/PERFORMANCE.md)
#   make bench-quick     the same at smaller sizes (< 3 minutes)
#   make fuzz            every atheris harness for FUZZ_SECONDS each
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
PYTEST_WORKERS ?= 2
export LIENTHONG_TEST_DATABASE_URL ?= postgresql+asyncpg://postgres@127.0.0.1:5432/postgres

.PHONY: install demo test lint typecheck imports pytest postgres dovecot chromium bench-protocol \
	bench bench-quick bench-peers fuzz clean

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

# Dovecot's IMAP server for the e-mail tests (the package only: tests run their own
# unprivileged instance; a test skips with the reason if it cannot be installed).
dovecot:
	bash scripts/ensure-dovecot.sh || echo "Dovecot unavailable: the IMAP tests will skip" >&2

# Debian's Chromium for the audit page's browser test (Playwright drives it by its path;
# `playwright install` is never run).  The test skips, saying why, if it is missing.
chromium:
	bash scripts/ensure-chromium.sh || echo "Chromium unavailable: the browser test will skip" >&2

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

imports: install
	$(BIN)/lint-imports

pytest: install postgres dovecot chromium
	$(BIN)/pytest -n $(PYTEST_WORKERS) -p no:cacheprovider

test: lint typecheck imports pytest

bench-protocol: install
	$(BIN)/python -m tests.bench.bench_protocol

# Benchmark-only packages (pyas2lib, py-spy, pyinstrument): the `bench` extra.
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Postfix, Dovecot, age, OpenSSL from Debian (programs only: the benchmark runs private
# loopback instances of its own).
bench-peers:
	bash scripts/ensure-bench-peers.sh

bench: install postgres $(BENCH_STAMP) bench-peers
	$(BIN)/python -m tests.bench.run --update-doc $(BENCH_ARGS)

bench-quick: install postgres $(BENCH_STAMP) bench-peers
	$(BIN)/python -m tests.bench.run --quick $(BENCH_ARGS)

fuzz: install
	FUZZ_SECONDS=$${FUZZ_SECONDS:-60} bash tests/fuzz/run_all.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .hypothesis
