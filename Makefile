# churnwatch developer commands. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help

.PHONY: help install run test lint typecheck check schemas clean bench drills screenshots

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

clean: ## Remove the venv and the embedded stack's data (broker messages and offsets, PostgreSQL, logs)
	rm -rf $(VENV) .churnwatch .pytest_cache .mypy_cache .ruff_cache

drills: $(STAMP) ## Fault drills on the embedded stack, each counted end to end (DRILL_ARGS=--short; docs/faults.md)
	$(BIN)/churnwatch drill $(DRILL_ARGS)

bench: $(STAMP) ## Benchmarks (ingest, scoring, latency, footprint, growth; BENCH_ARGS=--quick); writes bench/results.{json,md}
	$(BIN)/python -m bench $(BENCH_ARGS)

screenshots: $(STAMP) ## Regenerate docs/workbench/*.png (the workbench in Chromium, from its browser tests)
	WORKBENCH_SCREENSHOTS=docs/workbench CHURNWATCH_REQUIRE_BROWSER=1 $(BIN)/pytest -q tests/test_workbench_browser.py
