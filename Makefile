# churnwatch developer commands. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help

.PHONY: help install run scale-run test lint typecheck check schemas clean bench drills screenshots

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install churnwatch with its dev tools

SIM_SUBSCRIBERS ?= 2000
SIM_DAYS        ?= 90
SIM_RATE        ?= 10000
# s3: the embedded broker keeps what it acknowledged across restarts; memory: faster, lost on stop.
BROKER_STORAGE  ?= s3

run: $(STAMP) ## Start the pipeline (embedded broker + PostgreSQL), stream a simulated operator, summarise
	$(BIN)/churnwatch up --simulate $(SIM_SUBSCRIBERS) --simulate-days $(SIM_DAYS) --simulate-rate $(SIM_RATE) --broker-storage $(BROKER_STORAGE)

SCALE_SUBSCRIBERS ?= 1000000
SCALE_DAYS        ?= 1
SCALE_DIR         ?= .churnwatch-scale
SCALE_BROKER_PORT ?= 19092
SCALE_EVERY       ?= 10
SCALE_OUT         ?= $(SCALE_DIR)/monitor.csv
# More `churnwatch simulate` options, e.g. SCALE_ARGS="--rate 5000 --monitor-timeout 7200".
SCALE_ARGS        ?=

# Each run starts from an empty database: on the last run's, the same seed's events
# would all be duplicates. Only a scale run's directory (marked) is emptied, never
# e.g. .churnwatch; and a postmaster.pid there means a PostgreSQL that was never
# stopped (a run killed with -9): refuse rather than delete under it.
# Then one shell: `up` in the background (its output in up.log), `simulate` once the
# stack has published its URLs (with that stack's key, not one of the caller's
# environment), and `up` stopped (SIGTERM: a clean stop) however it ends.
scale-run: $(STAMP) ## Operator-scale run: SCALE_SUBSCRIBERS (1M) x SCALE_DAYS (1) through a stack of its own, monitored (docs/simulator.md)
	@if [ -d $(SCALE_DIR)/postgres ] && [ ! -f $(SCALE_DIR)/.scale-run ]; then \
	    echo "scale-run: $(SCALE_DIR) holds another stack's database; choose another SCALE_DIR"; \
	    exit 1; \
	fi; \
	if [ -f $(SCALE_DIR)/postgres/postmaster.pid ]; then \
	    echo "scale-run: PostgreSQL may still be running on $(SCALE_DIR)/postgres; stop it first"; \
	    exit 1; \
	fi
	@rm -rf $(SCALE_DIR)/postgres $(SCALE_DIR)/services.json; mkdir -p $(SCALE_DIR); \
	touch $(SCALE_DIR)/.scale-run; \
	echo "scale-run: starting churnwatch up in $(SCALE_DIR) (its output: $(SCALE_DIR)/up.log)"; \
	$(BIN)/churnwatch up --data-dir $(SCALE_DIR) --broker-storage memory \
	    --broker-port $(SCALE_BROKER_PORT) --stream-clock >$(SCALE_DIR)/up.log 2>&1 & up=$$!; \
	trap 'kill -TERM $$up 2>/dev/null; wait $$up; echo "scale-run: stack stopped"' EXIT; \
	trap 'exit 130' INT TERM; \
	while [ ! -f $(SCALE_DIR)/services.json ]; do \
	    kill -0 $$up 2>/dev/null || { echo "scale-run: churnwatch up exited; see $(SCALE_DIR)/up.log"; exit 1; }; \
	    sleep 1; \
	done; \
	CHURNWATCH_API_KEY= $(BIN)/churnwatch simulate --stack-dir $(SCALE_DIR) -n $(SCALE_SUBSCRIBERS) \
	    --days $(SCALE_DAYS) --churn-from-day 0 --monitor-every $(SCALE_EVERY) \
	    --monitor-out $(SCALE_OUT) $(SCALE_ARGS)

test: $(STAMP) ## Run the test suite (starts its own broker and PostgreSQL)
	$(BIN)/pytest -q

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP) ## mypy --strict
	$(BIN)/mypy

check: lint typecheck ## Lint and typecheck

schemas: $(STAMP) ## Regenerate docs/schemas/*.json from the event models
	$(BIN)/churnwatch schemas --out docs/schemas

clean: ## Remove the venv and the embedded stacks' data (broker messages and offsets, PostgreSQL, logs)
	rm -rf $(VENV) .churnwatch .churnwatch-scale .pytest_cache .mypy_cache .ruff_cache

drills: $(STAMP) ## Fault drills on the embedded stack, each counted end to end (DRILL_ARGS=--short; docs/faults.md)
	$(BIN)/churnwatch drill $(DRILL_ARGS)

bench: $(STAMP) ## Benchmarks (ingest, scoring, latency, footprint, growth; BENCH_ARGS=--quick); writes bench/results.{json,md}
	$(BIN)/python -m bench $(BENCH_ARGS)

screenshots: $(STAMP) ## Regenerate docs/workbench/*.png (the workbench in Chromium, from its browser tests)
	WORKBENCH_SCREENSHOTS=docs/workbench CHURNWATCH_REQUIRE_BROWSER=1 $(BIN)/pytest -q tests/test_workbench_browser.py
