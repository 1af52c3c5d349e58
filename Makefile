# market-backend: every entry point a person uses. `make help` lists them.
# APP_ENV unset (in the environment and .env) means production, which refuses to start
# without the secrets a process uses; `make run` and `make demo` mean development instead,
# and the tests, the soak and the bench give their processes APP_ENV=test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
PY := .venv/bin/python

.PHONY: help install services services-down migrate api relay replay cleanup consume poll epc demo run test soak verify bench alerts-check lint format

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

install: .venv/.installed ## create .venv with the locked dependencies (installs uv if missing)

.venv/.installed: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || { echo "uv not found: installing it with pip"; \
		python3 -m pip install --quiet uv || { echo "error: could not install uv; install it (pip install uv) and retry" >&2; exit 1; }; }
	$(UV) sync --frozen
	@touch $@

services: install ## make sure PostgreSQL and Redis answer (starting throw-away ones if needed) and the databases exist
	$(PY) -m scripts.services up

services-down: install ## stop the throw-away servers `make services` started, saying which
	$(PY) -m scripts.services down

migrate: services ## apply every migration in piccolo_migrations/ and say so in one line (a second run changes nothing)
	$(PY) -m scripts.migrate

api: migrate ## serve the HTTP API on HTTP_HOST:HTTP_PORT (default 127.0.0.1:3000); production unless APP_ENV says otherwise
	$(PY) -m app

relay: migrate ## the outbox relay: committed outbox rows onto their Redis streams (one leads, others stand by)
	$(PY) -m relay

replay: migrate ## re-publish retained outbox rows: make replay SINCE=2026-11-26T00:00:00Z [STREAM=markets:events]
	@test -n "$(SINCE)" || { echo "usage: make replay SINCE=<ISO time> [STREAM=<stream>]" >&2; exit 2; }
	$(PY) -m relay replay --since "$(SINCE)" $(if $(STREAM),--stream "$(STREAM)")

consume: migrate ## an approval consumer (group market-approvals); run several, each with its own CONSUMER_SLOT
	$(PY) -m app.approvals

poll: migrate ## the poller of Entity Permissions Core's feed alone (needs PERMISSIONS_SERVICE_BASE_URL)
	$(PY) -m app.inbound

epc: install ## the Entity Permissions Core simulator on EPC_PORT (default 8000)
	$(PY) -m simulator

demo: install ## in a second shell while `make run` runs: the seed's flow, step by step
	$(PY) -m scripts.demo

cleanup: migrate ## apply retention once (old published outbox rows, processed events, idempotency keys)
	$(PY) -m relay cleanup

run: migrate ## the whole service in one command (API, relay, consumer, simulator), output prefixed by process, then a block with the URLs once all are up; Ctrl-C stops all; APP_ENV unset means development here
	$(PY) -m scripts.run

test: services ## the test suite against real PostgreSQL and Redis
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: ## the fast tier alone: pure domain rules, no database, Redis or process
	$(PY) -m pytest tests/unit --confcutdir=tests/unit $(PYTEST_ARGS)

soak: services ## the whole service under steady load for MINUTES (default 10): RSS and table sizes over time, then every event counted
	MINUTES=$(MINUTES) $(PY) -m scripts.soak

verify: lint test soak ## all the proof: lint, the whole suite (fault matrix, model, hostile input), then a soak of MINUTES (default 10)

bench: services ## figures on this machine (QUICK=1 for a short run): table + bench/results.json
	@command -v wrk >/dev/null || { echo "bench: wrk (the load generator) not found: install it (Debian: apt-get install wrk)" >&2; exit 1; }
	QUICK=$(QUICK) $(PY) -m bench

alerts-check: ## promtool: check the alert rules and run their tests (Debian: apt-get install prometheus)
	@command -v promtool >/dev/null || { echo "promtool not found: install it (Debian: apt-get install prometheus)" >&2; exit 1; }
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts_test.yml

lint: install ## ruff and mypy (strict on app/, outbox/, relay/, simulator/, scripts/, bench/)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: install ## apply ruff's formatting and safe fixes
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .
