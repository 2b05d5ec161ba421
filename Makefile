# Every target sets up what it needs: a fresh clone needs only Python 3.11+ and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)

.PHONY: run migrate revision test lint install clean seed bench bench-scale openapi import export bench-transfer

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11 or newer is needed (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

run: migrate
	$(BIN)/python -m users_service serve

migrate: $(STAMP)
	$(BIN)/python -m users_service migrate

revision: $(STAMP)
	@test -n "$(m)" || (echo 'usage: make revision m="what changes"'; exit 2)
	$(BIN)/alembic revision --autogenerate -m "$(m)"

seed: migrate
	@test -n "$(N)" || (echo 'usage: make seed N=1000000'; exit 2)
	$(BIN)/python -m users_service seed $(N)

import: migrate
	@test -n "$(FILE)" || (echo 'usage: make import FILE=users.csv [ARGS="--rejects bad.csv"]'; exit 2)
	$(BIN)/users-service import $(FILE) $(ARGS)

# Writes to OUTPUT (default: standard output); FORMAT=csv for CSV.
export: $(STAMP)
	@$(BIN)/users-service export $(if $(FORMAT),--format $(FORMAT)) $(if $(OUTPUT),--output $(OUTPUT)) $(ARGS)

bench-transfer: $(STAMP)
	$(BIN)/python -m benchmarks.transfer

bench: $(STAMP)
	@command -v wrk >/dev/null || (echo 'wrk is not installed: apt-get install wrk'; exit 2)
	$(BIN)/python -m benchmarks.throughput

bench-scale: $(STAMP)
	@command -v wrk >/dev/null || (echo 'wrk is not installed: apt-get install wrk'; exit 2)
	$(BIN)/python -m benchmarks.scale

# The committed OpenAPI document; tests/test_openapi.py fails when it is out of date.
openapi: $(STAMP)
	$(BIN)/python -m users_service openapi --output openapi.json

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
