# mlobs: `make up` starts the stack, `make test` proves it. Every target creates the virtual
# environment it needs, so a fresh clone needs nothing else.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
RUNTIME ?= auto
# A compose profile to start too, e.g. PROFILE=elk (OpenSearch and its Dashboards; docker runtime only).
PROFILE ?=
PROFILE_ENV := $(if $(PROFILE),COMPOSE_PROFILES=$(PROFILE) )
PYTEST_ARGS ?=

.PHONY: help venv up down status logs render render-check test lint clean native-deps querycheck-deps \
        train load bench bench-deps verify e2e eval-rca

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing the Python dependencies into $(VENV) (pinned in pyproject.toml)..."
	@$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP) ## create .venv with the pinned dependencies

up: venv ## render and start the stack (docker compose if an engine answers, else native)
	$(PROFILE_ENV)$(BIN)/mlobs up --runtime $(RUNTIME)

down: venv ## stop the stack, keep its data
	$(PROFILE_ENV)$(BIN)/mlobs down --runtime $(RUNTIME)

status: venv ## what runs, and does it answer its health check
	$(PROFILE_ENV)$(BIN)/mlobs status --runtime $(RUNTIME)

logs: venv ## last log lines of every component
	$(PROFILE_ENV)$(BIN)/mlobs logs --runtime $(RUNTIME)

clean: venv ## stop the stack and delete its data
	$(PROFILE_ENV)$(BIN)/mlobs clean --runtime $(RUNTIME)

render: venv ## render every config and dashboard from stack.yaml
	$(BIN)/mlobs render
	$(BIN)/mlobs dashboards

native-deps: venv ## build collector, Prometheus, Alertmanager, Jaeger, VictoriaLogs (+ promtool, amtool) from the Go module proxy
	$(BIN)/mlobs native-deps

querycheck-deps: ## install the LogQL/TraceQL grammars from npm
	@test -d scripts/querycheck/node_modules || (cd scripts/querycheck && npm ci --no-audit --no-fund --loglevel=error)

train: venv ## train a new model version (the running service picks it up; ARGS="--degraded")
	$(BIN)/mlobs train --runtime $(RUNTIME) $(ARGS)

load: venv ## drive the sample service with the load generator (RATE=5 DURATION=60s ARGS="--chaos --seed 1")
	$(BIN)/mlobs load --rate $${RATE:-5} --duration $${DURATION:-60s} $(ARGS)

bench-deps: venv native-deps ## build telemetrygen for `make bench` (Go module proxy, cached outside the repo, linked into .bin/)
	$(BIN)/mlobs bench --deps-only

bench: venv bench-deps ## overhead, collector throughput, freshness, start-up and memory, analyzer cost -> bench/results.md
	$(BIN)/mlobs bench

e2e: venv querycheck-deps ## the end-to-end suite against the stack `make up` started (docker or native)
	MLOBS_E2E_EXISTING=1 $(BIN)/pytest tests/e2e -m e2e $(PYTEST_ARGS)

eval-rca: venv native-deps ## the analyzer against a fault matrix on a native stack of its own (QUICK=1: a subset) -> .stack/eval-rca/eval.md
	$(BIN)/python -m analyzer.eval $(if $(QUICK),--quick)

verify: venv ## follow one request across metrics, traces and logs on the running stack
	$(BIN)/mlobs verify

lint: venv querycheck-deps ## ruff, drift of rendered files, compose and workflow schemas
	$(BIN)/ruff check .
	$(BIN)/mlobs render --check
	$(BIN)/mlobs dashboards --check

test: venv native-deps querycheck-deps ## the whole test suite, with the real binaries
	@$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure, not a pass." >&2; fi; \
	  exit $$rc
