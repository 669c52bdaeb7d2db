# The two commands a fresh machine needs:  make demo  and  make test.
# Everything installs into .venv; the broker's jars are resolved by Maven into
# ~/.cache/evstate (once) and a real Apache Kafka runs on loopback.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_BROKER_DIR ?= .evstate/demo-broker
DEMO_PORT ?= 19092

.PHONY: install demo test unit lint bench bench-full clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Starts a broker of its own, runs the demo against it, stops the broker.
demo: $(STAMP)
	@$(BIN)/evstate broker start --detach --data-dir $(DEMO_BROKER_DIR) --port $(DEMO_PORT) >/dev/null
	@EVSTATE_BOOTSTRAP_SERVERS=127.0.0.1:$(DEMO_PORT) $(BIN)/python examples/demo.py; \
	  status=$$?; $(BIN)/evstate broker stop --data-dir $(DEMO_BROKER_DIR); exit $$status

# pytest's session fixture starts one real broker (and a three-node cluster for the
# tests that need one) and stops them at the end; lint runs first.
test: $(STAMP) lint
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Every benchmarks/bench_*.py on one broker, then docs/benchmarks.md and docs/benchmarks.png:
# quick mode (a few minutes on 2 cores) unless FULL=1 (or make bench-full). ktables and
# matplotlib come with the bench extra; faust-streaming runs from a venv of its own inside
# $(VENV) (so git ignores it and make clean removes it).
PEERS_VENV  ?= $(VENV)/peers
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

$(PEERS_VENV)/.installed:
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install --quiet 'faust-streaming[rocksdict]>=0.11,<0.16'
	touch $(PEERS_VENV)/.installed

bench: $(BENCH_STAMP) $(PEERS_VENV)/.installed
	$(BIN)/python benchmarks/report.py $(if $(FULL),,--quick) --peers-python $(PEERS_VENV)/bin/python

bench-full:
	$(MAKE) bench FULL=1

clean:
	rm -rf $(VENV) .evstate .mypy_cache .ruff_cache .pytest_cache
