# Audit logs as a service. `make help` lists every target.
# Only Python 3.11+ and make are needed: uv is bootstrapped into .tools/ when missing.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
PYTEST_ARGS ?=

.PHONY: help
help: ## List every target with its description
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv

.PHONY: uv
uv: $(if $(filter .tools/bin/uv,$(UV)),.tools/bin/uv) ## Bootstrap uv from PyPI into .tools/ if it is not on PATH

.PHONY: sync
sync: uv ## Install the workspace and dev tools into .venv (locked versions)
	$(UV) sync --frozen

.PHONY: lint
lint: sync ## ruff (lint + format check) and mypy --strict
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy

.PHONY: test
test: sync ## Unit + integration + end-to-end tests on real PostgreSQL and NATS (no Docker)
	$(UV) run --frozen pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: sync ## Unit tests only (no servers)
	$(UV) run --frozen pytest tests/unit $(PYTEST_ARGS)

.PHONY: test-faults
test-faults: sync ## Only the fault-injection suite (kills consumers, PostgreSQL, NATS); prints a table
	$(UV) run --frozen pytest tests/faults -p no:cacheprovider $(PYTEST_ARGS)

.PHONY: bench-durability
bench-durability: sync ## Publish latency/throughput with NATS default fsync vs sync_interval: always
	$(UV) run --frozen python bench/publish_durability.py

.PHONY: dev
dev: sync ## Run PostgreSQL, NATS, setup, the API and two consumers locally; Ctrl-C stops all
	$(UV) run --frozen python -m audit_devservers.dev

.PHONY: docker-up
docker-up: ## Run the system in Docker (see README; containers land with their own issue)
	@echo "docker-compose.yaml is not in this tree yet: use 'make dev' for now." >&2; exit 1

.PHONY: clean
clean: ## Remove the virtualenv, tool caches and make dev's data (.dev/)
	rm -rf .venv .tools .dev .mypy_cache .ruff_cache .pytest_cache
