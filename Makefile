# Touchline: every developer and CI action is a target here.
# The first target that needs Python builds .venv with the pinned dependencies.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EVENTS ?= 20000
BENCH_EVENTS ?= 60000

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

.PHONY: install
install: $(STAMP) ## create .venv and install the pinned dependencies

.PHONY: run
run: $(STAMP) ## run the whole pipeline on the embedded broker + chDB with simulated traffic (EVENTS=n)
	$(BIN)/touchline run --events $(EVENTS)

.PHONY: bench
bench: $(STAMP) ## events per CPU-second (1 and 2 workers) beside the raw ceiling; JSON in var/bench/
	$(BIN)/touchline bench --events $(BENCH_EVENTS)

FAULT_EVENTS ?= 3000
.PHONY: faults
faults: $(STAMP) ## fault scenarios vs a fault-free run: table, JSON in var/faults/, exit 1 on any difference
	$(BIN)/touchline faults --events $(FAULT_EVENTS)

# Debian packages the end-to-end tests run for real: prometheus (tests/test_prometheus.py,
# a server scraping the stack) and chromium (tests/test_htmlreport.py, the HTML report in
# a headless browser). Idempotent: nothing happens when the command is on PATH; sudo only
# when not root.
DEBIAN_TOOLS := prometheus chromium
.PHONY: $(DEBIAN_TOOLS)
prometheus: ## install Prometheus (Debian package) unless it is on PATH
chromium: ## install Chromium (Debian package) unless it is on PATH
$(DEBIAN_TOOLS):
	@command -v $@ >/dev/null || { \
	  sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$sudo apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q --no-install-recommends $@; }
	@$@ --version 2>/dev/null | head -1

# Data sets the tests read, written by others: the CDNOW sample of the BG/NBD paper and its
# published (x, t_x, T) summary, as shipped in the lifetimes wheel on PyPI (only the files
# are used; lifetimes is not installed).
LIFETIMES_VERSION := 0.11.3
DATASETS := var/datasets
CDNOW := $(DATASETS)/CDNOW_sample.txt
.PHONY: datasets
datasets: $(CDNOW) ## fetch the data sets the tests read into var/datasets/ (CDNOW, from PyPI)
$(CDNOW): | $(STAMP)
	$(BIN)/python -m pip download --quiet --no-deps --only-binary :all: lifetimes==$(LIFETIMES_VERSION) -d $(DATASETS)
	$(BIN)/python -c 'import sys, zipfile; from pathlib import Path; d = Path(sys.argv[1]); \
	  [w] = d.glob("*ifetimes-$(LIFETIMES_VERSION)-*.whl"); z = zipfile.ZipFile(w); \
	  [(d / n).write_bytes(z.read("lifetimes/datasets/" + n)) for n in ("cdnow_customers_summary.csv", "CDNOW_sample.txt")]' $(DATASETS)

.PHONY: test
test: $(STAMP) $(DEBIAN_TOOLS) $(CDNOW) ## run the whole test suite (unit, property, end-to-end on the embedded stack)
	$(BIN)/python -m pytest -q

.PHONY: test-fast
test-fast: $(STAMP) $(CDNOW) ## pure-core tests only (no broker, no workers)
	$(BIN)/python -m pytest -q -m "not e2e"

.PHONY: lint
lint: $(STAMP) ## ruff + mypy
	$(BIN)/ruff check streams tests
	$(BIN)/mypy

.PHONY: clean
clean: ## remove runtime data (var/) and caches
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
