# Audit logs as a service. `make help` lists every target.
# Only Python 3.11+ and make are needed: uv is bootstrapped into .tools/ when missing.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
PYTEST_ARGS ?=
DOCKER_SERVICES ?=
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
# Host ports of what compose publishes (on 127.0.0.1): set any of them when one is taken, e.g.
# `make docker-up AUDIT_API_HOST_PORT=18000`; the readiness wait and the printed URLs follow.
export AUDIT_API_HOST_PORT ?= 8000
export AUDIT_QUERY_HOST_PORT ?= 8080
export AUDIT_NATS_MONITOR_HOST_PORT ?= 8222
export AUDIT_PROMETHEUS_HOST_PORT ?= 9090
export AUDIT_JAEGER_HOST_PORT ?= 16686
# COMPOSE_PROFILES=cluster make docker-up: three NATS nodes routed together (config/nats-cluster.conf),
# every app given all three, both streams with 3 replicas (README, "Docker").
comma := ,
ifneq ($(filter cluster,$(subst $(comma), ,$(COMPOSE_PROFILES))),)
export AUDIT_NATS_CONF := nats-cluster.conf
export AUDIT_NATS_URL := nats://nats:4222,nats://nats-2:4222,nats://nats-3:4222
export AUDIT_STREAM_REPLICAS := 3
endif

.PHONY: help
help: ## List every target with its description (colour only on a terminal)
	@if [ -t 1 ]; then c='\033[36m'; r='\033[0m'; else c=; r=; fi; \
	grep -hE '^[a-zA-Z0-9_.-]+:.*?## ' $(MAKEFILE_LIST) | \
	awk -F':.*?## ' -v c="$$c" -v r="$$r" '{printf "  %s%-18s%s %s\n", c, $$1, r, $$2}'

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
	$(UV) run --frozen hadolint Dockerfile

.PHONY: test
test: sync ## Unit + integration + end-to-end tests on real PostgreSQL and NATS (no Docker)
	@$(MAKE) --no-print-directory promtool >/dev/null 2>&1 || echo "(promtool unavailable here: its alert-rule tests skip)"
	$(UV) run --frozen pytest $(PYTEST_ARGS)

PROMTOOL ?= $(shell command -v promtool 2>/dev/null || echo .tools/bin/promtool)

.tools/bin/promtool:  # Debian's prometheus package ships promtool; extract it, install nothing
	mkdir -p .tools/bin .tools/deb
	cd .tools/deb && apt-get download prometheus && dpkg-deb -x prometheus_*.deb .
	cp .tools/deb/usr/bin/promtool .tools/bin/promtool && rm -rf .tools/deb

.PHONY: promtool
promtool: $(if $(filter .tools/bin/promtool,$(PROMTOOL)),.tools/bin/promtool) ## Get promtool (from Debian's prometheus package) for the config tests

.PHONY: test-unit
test-unit: sync ## Unit tests only (no servers)
	$(UV) run --frozen pytest tests/unit $(PYTEST_ARGS)

.PHONY: test-faults
test-faults: sync ## Only the fault-injection suite (kills consumers, PostgreSQL, NATS); prints a table
	$(UV) run --frozen pytest tests/faults -p no:cacheprovider $(PYTEST_ARGS)

.PHONY: bench-durability
bench-durability: sync ## Publish latency/throughput with NATS default fsync vs sync_interval: always
	$(UV) run --frozen python -m bench.publish_durability

.PHONY: bench
bench: sync ## Benchmark against this machine's ceilings (DB, broker, consumer, API, end to end)
	$(UV) run --frozen python -m bench.run $(BENCH_ARGS)

.PHONY: bench-rolling
bench-rolling: sync ## Rolling restart of the API under load behind nginx (needs nginx + its Lua module)
	$(UV) run --frozen python -m bench.rolling

.PHONY: bench-smoke
bench-smoke: sync ## CI: the benchmark on tiny inputs (must finish and print; never asserts speed)
	$(UV) run --frozen python -m bench.run --quick

.PHONY: dev
dev: sync ## Run PostgreSQL, NATS, setup, the API and two consumers locally; Ctrl-C stops all
	$(UV) run --frozen python scripts/dev.py

# Order-only: the image that runs audit-keygen must exist, but a rebuild must never regenerate .env.
.env: | docker-build ## .env from .env.example plus fresh secrets from audit-keygen (run once; kept afterwards)
	umask 077 && cp .env.example .env.tmp && docker run --rm audit-api:dev audit-keygen >> .env.tmp && mv .env.tmp .env
	@echo "wrote .env with fresh secrets (keep it; delete it to start over with new ones)"

.PHONY: env-upgrade
env-upgrade: .env ## Append to .env the secrets a newer version needs (keeps every existing one)
	umask 077 && docker run -i --rm audit-api:dev audit-keygen --missing < .env > .env.add
	@if [ -s .env.add ]; then cat .env.add >> .env; echo "added to .env: $$(cut -d= -f1 .env.add | tr '\n' ' ')"; fi
	@rm -f .env.add

.PHONY: docker-build
docker-build: ## Build the audit-api, -consumer, -query, -verify and -retention images (host network)
	docker build --network host --build-arg APP=api -t audit-api:dev .
	docker build --network host --build-arg APP=consumer --build-arg PORT=8001 -t audit-consumer:dev .
	docker build --network host --build-arg APP=query --build-arg PORT=8080 -t audit-query:dev .
	docker build --network host --build-arg APP=verify --build-arg PORT=9102 -t audit-verify:dev .
	docker build --network host --build-arg APP=retention -t audit-retention:dev .

# Jaeger left out of DOCKER_SERVICES: tracing off (the apps would export to a host that does not
# exist), unless OTEL_EXPORTER_OTLP_ENDPOINT is set in your shell to a collector of your own.
NO_JAEGER := $(and $(DOCKER_SERVICES),$(if $(filter jaeger,$(DOCKER_SERVICES)),,yes))
# A subset (DOCKER_SERVICES) still starts the services of the profiles asked for: compose would
# start only those listed, so profile services (verify; nats-2, nats-3) would be dropped silently.
PROFILES := $(subst $(comma), ,$(COMPOSE_PROFILES))
PROFILE_SERVICES := $(if $(filter verify,$(PROFILES)),verify) $(if $(filter retention,$(PROFILES)),retention) $(if $(filter cluster,$(PROFILES)),nats-2 nats-3)
UP_SERVICES := $(if $(DOCKER_SERVICES),$(strip $(DOCKER_SERVICES) $(PROFILE_SERVICES)))
TRACING_OFF := $(if $(and $(NO_JAEGER),$(filter undefined,$(origin OTEL_EXPORTER_OTLP_ENDPOINT))),OTEL_EXPORTER_OTLP_ENDPOINT=)
# ...and the viewer links no trace to a Jaeger that is not running.
NO_TRACE_LINKS := $(if $(and $(NO_JAEGER),$(filter undefined,$(origin AUDIT_JAEGER_URL))),AUDIT_JAEGER_URL=)
READYZ := import urllib.request as u; u.urlopen("http://127.0.0.1:8001/readyz", timeout=2)

.PHONY: docker-up
docker-up: docker-build env-upgrade ## Build, start, wait until the API and every consumer are ready, print what runs
	@$(TRACING_OFF) $(NO_TRACE_LINKS) $(COMPOSE) up -d --no-build $(UP_SERVICES) || { \
	  echo "start failed (a host port taken? set AUDIT_*_HOST_PORT); removing what started" >&2; \
	  $(COMPOSE) down --remove-orphans >/dev/null 2>&1; exit 1; }
	@echo "waiting for the API and the consumers to be ready..."; \
	for i in $$(seq 1 90); do \
	  ok=yes; \
	  if [ -n "$$($(COMPOSE) ps -q api)" ]; then curl -fsS http://127.0.0.1:$(AUDIT_API_HOST_PORT)/readyz >/dev/null 2>&1 || ok=; fi; \
	  for c in $$($(COMPOSE) ps -q consumer); do docker exec $$c python -c '$(READYZ)' >/dev/null 2>&1 || ok=; done; \
	  [ -n "$$ok" ] && break; sleep 1; \
	  if [ $$i = 90 ]; then echo "not ready after 90 s; see 'make docker-logs'" >&2; exit 1; fi; \
	done
	@running=" $$($(COMPOSE) ps --services --filter status=running | tr '\n' ' ') "; \
	has() { case "$$running" in *" $$1 "*) return 0;; esac; return 1; }; \
	echo; \
	has api && echo "  API         http://127.0.0.1:$(AUDIT_API_HOST_PORT)/docs"; \
	has query && echo "  audit log   http://127.0.0.1:$(AUDIT_QUERY_HOST_PORT) (viewer), http://127.0.0.1:$(AUDIT_QUERY_HOST_PORT)/docs (query API)"; \
	has jaeger && echo "  Jaeger      http://127.0.0.1:$(AUDIT_JAEGER_HOST_PORT)"; \
	has prometheus && echo "  Prometheus  http://127.0.0.1:$(AUDIT_PROMETHEUS_HOST_PORT)"; \
	has nats && echo "  NATS        http://127.0.0.1:$(AUDIT_NATS_MONITOR_HOST_PORT)/jsz?consumers=true$(if $(AUDIT_NATS_URL), (node 1 of 3; streams R3))"; \
	has consumer && echo "  consumers   $$(echo $$($(COMPOSE) ps -q consumer) | wc -w) ready"; \
	if has api; then \
	  echo; echo "  export TOKEN='$$($(COMPOSE) exec -T api audit-token --sub dev-user)'"; \
	  has query && echo "  reader token (paste it into the viewer): $$($(COMPOSE) exec -T api audit-token --sub auditor --scope audit:read)"; \
	  echo "  curl -s -X PATCH http://127.0.0.1:$(AUDIT_API_HOST_PORT)/accounts/acc-1 -H \"Authorization: Bearer \$$TOKEN\" -H 'Content-Type: application/json' -d '{\"email\": \"new@example.com\"}'"; \
	fi; \
	has postgres && echo "  $(COMPOSE) exec -T postgres psql -U audit -d audit -c 'SELECT occurred_at, actor_id, action, resource_id, outcome FROM audit_events ORDER BY stream_seq DESC LIMIT 5'"; \
	echo

.PHONY: docker-down
docker-down: ## Stop the Docker stack and delete its volumes
	$(COMPOSE) down -v --remove-orphans

.PHONY: docker-logs
docker-logs: ## Follow the logs of every container
	$(COMPOSE) logs -f --tail 100

.PHONY: docker-ps
docker-ps: ## Show the containers and their health
	$(COMPOSE) ps

.PHONY: docker-smoke
docker-smoke: sync ## CI: build images, run compose (postgres, nats, setup, api, 2 consumers), crash a consumer, check rows
	$(UV) run --frozen python tests/containers/smoke.py

HELM ?= $(shell command -v helm 2>/dev/null || ../shared/tools/get-helm 2>/dev/null || echo helm)
KIND ?= kind
KUBECTL ?= kubectl
KIND_CLUSTER ?= audit
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: "\(.*\)"/\1/p' charts/audit/Chart.yaml)

.PHONY: helm-lint
helm-lint: ## helm lint --strict and render the chart with default, kind and production values
	$(HELM) lint --strict charts/audit
	$(HELM) lint --strict charts/audit -f charts/audit/values-kind.yaml
	$(HELM) lint --strict charts/audit -f charts/audit/values-production.yaml
	$(HELM) template audit charts/audit -f charts/audit/values-kind.yaml >/dev/null

.PHONY: kind-up
kind-up: ## kind cluster, images loaded (tag IMAGE_TAG), KEDA from its Helm repo, this chart; waits
	$(KIND) get clusters | grep -qx $(KIND_CLUSTER) || $(KIND) create cluster --name $(KIND_CLUSTER) --config kind-config.yaml
	docker build --build-arg APP=api -t audit-api:$(IMAGE_TAG) .
	docker build --build-arg APP=consumer --build-arg PORT=8001 -t audit-consumer:$(IMAGE_TAG) .
	docker build --build-arg APP=query --build-arg PORT=8080 -t audit-query:$(IMAGE_TAG) .
	docker build --build-arg APP=verify --build-arg PORT=9102 -t audit-verify:$(IMAGE_TAG) .
	docker build --build-arg APP=retention -t audit-retention:$(IMAGE_TAG) .
	$(KIND) load docker-image --name $(KIND_CLUSTER) audit-api:$(IMAGE_TAG) audit-consumer:$(IMAGE_TAG) audit-query:$(IMAGE_TAG) audit-verify:$(IMAGE_TAG) audit-retention:$(IMAGE_TAG)
	$(HELM) repo add kedacore https://kedacore.github.io/charts --force-update
	$(HELM) upgrade --install keda kedacore/keda --namespace keda --create-namespace --wait --timeout 10m
	@# No --wait here: the setup Job is a post-install hook (bundled servers) and consumers become
	@# ready only after it created their database login; rollout status waits for that instead.
	$(HELM) upgrade --install audit charts/audit --namespace audit --create-namespace \
	  -f charts/audit/values-kind.yaml --timeout 10m
	$(KUBECTL) -n audit rollout status statefulset/audit-nats statefulset/audit-postgresql --timeout 10m
	$(KUBECTL) -n audit rollout status deployment/audit-api deployment/audit-consumer --timeout 10m
	$(HELM) test audit --namespace audit
	@echo "API: http://127.0.0.1:8000/docs   token: $(KUBECTL) -n audit exec deploy/audit-api -- audit-token"

.PHONY: kind-load
kind-load: sync ## Drive load through 127.0.0.1:8000 for 2 minutes and watch the consumers scale
	@token=$$($(KUBECTL) -n audit exec deploy/audit-api -- audit-token --sub kind-load); \
	$(KUBECTL) -n audit get deploy/audit-consumer -w & watcher=$$!; \
	$(UV) run --frozen python -m bench.loadgen --port 8000 --token "$$token" --concurrency 64 --seconds 120; \
	kill $$watcher

.PHONY: kind-e2e
kind-e2e: sync ## The kind end-to-end test (scales out on lag and back, rows == acknowledged)
	AUDIT_KIND_E2E=1 $(UV) run --frozen pytest tests/k8s -p no:cacheprovider

.PHONY: kind-down
kind-down: ## Delete the kind cluster
	$(KIND) delete cluster --name $(KIND_CLUSTER)

.PHONY: clean
clean: ## Remove the virtualenv, tool caches and make dev's data (.dev/)
	rm -rf .venv .tools .dev .mypy_cache .ruff_cache .pytest_cache
