# Every target sets up what it needs: a fresh clone needs only Python 3.11+ and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Two sets, each installed once per change of its files: the runtime set
# (requirements.txt: run, migrate, seed, ...) and, on top of it, the test and
# lint tools (requirements-dev.txt: test, test-fast, lint, bench).
RUNTIME := $(VENV)/.runtime-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)
DEV     := $(VENV)/.dev-$(shell cat requirements.txt requirements-dev.txt pyproject.toml clients/python/pyproject.toml | cksum | cut -d' ' -f1)
# What each target needs set up first; `make SETUP= ...` runs a target with
# the interpreter in VENV as it is (the scratch-copy test does).
SETUP  ?= yes
RUNTIME_SETUP := $(if $(SETUP),$(RUNTIME))
DEV_SETUP     := $(if $(SETUP),$(DEV))
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: run migrate revision test test-fast lint install install-dev clean seed bench bench-scale openapi import export bench-transfer

install: $(RUNTIME)
install-dev: $(DEV)

$(RUNTIME): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11 or newer is needed (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.txt
	$(PIP) --no-deps -e .
	rm -f $(VENV)/.runtime-* $(VENV)/.installed-*
	touch $(RUNTIME)

$(DEV): $(RUNTIME) requirements-dev.txt clients/python/pyproject.toml
	$(PIP) -r requirements-dev.txt
	$(PIP) --no-deps -e clients/python
	rm -f $(VENV)/.dev-*
	touch $(DEV)

run: migrate
	$(BIN)/python -m users_service serve

migrate: $(RUNTIME_SETUP)
	$(BIN)/python -m users_service migrate

# After a change to users_service/models.py: the migration, then everything
# derived from the model that is committed (openapi.json, the client's types).
revision: migrate
	@test -n "$(m)" || (echo 'usage: make revision m="what changes"'; exit 2)
	$(BIN)/alembic revision --autogenerate -m "$(m)"
	$(MAKE) --no-print-directory openapi SETUP=

seed: migrate
	@test -n "$(N)" || (echo 'usage: make seed N=1000000'; exit 2)
	$(BIN)/python -m users_service seed $(N)

import: migrate
	@test -n "$(FILE)" || (echo 'usage: make import FILE=users.csv [ARGS="--rejects bad.csv"]'; exit 2)
	$(BIN)/users-service import $(FILE) $(ARGS)

# Writes to OUTPUT (default: standard output); FORMAT=csv for CSV.
export: $(RUNTIME_SETUP)
	@$(BIN)/users-service export $(if $(FORMAT),--format $(FORMAT)) $(if $(OUTPUT),--output $(OUTPUT)) $(ARGS)

bench-transfer: $(DEV_SETUP)
	$(BIN)/python -m benchmarks.transfer

bench: $(DEV_SETUP)
	@command -v wrk >/dev/null || (echo 'wrk is not installed: apt-get install wrk'; exit 2)
	$(BIN)/python -m benchmarks.throughput

bench-scale: $(DEV_SETUP)
	@command -v wrk >/dev/null || (echo 'wrk is not installed: apt-get install wrk'; exit 2)
	$(BIN)/python -m benchmarks.scale

# The committed OpenAPI document and the client's types generated from it;
# tests fail when either is out of date.
openapi: $(RUNTIME_SETUP)
	$(BIN)/python -m users_service openapi --output openapi.json
	$(BIN)/python clients/python/generate.py openapi.json clients/python/users_service_client/models.py

test: $(DEV_SETUP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Unit and in-process API tests on SQLite only: the quick loop while editing.
test-fast: $(DEV_SETUP)
	TEST_DATABASE_URLS= $(BIN)/python -m pytest -m "unit or api" -q $(PYTEST_ARGS)

lint: $(DEV_SETUP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
