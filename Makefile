# The two commands a fresh machine needs:  make demo  and  make test.
# Everything installs into .venv; the broker's jars are resolved by Maven into
# ~/.cache/evstate (once) and a real Apache Kafka runs on loopback.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_BROKER_DIR ?= .evstate/demo-broker
DEMO_PORT ?= 19092

.PHONY: install demo test unit lint bench clean

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

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) .evstate .mypy_cache .ruff_cache .pytest_cache
