# The two commands a fresh machine needs:  make demo  and  make test.
# Everything installs into .venv; the broker's jars are resolved by Maven into
# ~/.cache/evstate (once) and a real Apache Kafka runs on loopback.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_BROKER_DIR ?= .evstate/demo-broker
DEMO_PORT ?= 19092

.PHONY: install demo test unit lint tools js-types bench bench-full clean

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
# tests that need one) and stops them at the end; lint and the JavaScript client's type
# check run first.
test: $(STAMP) lint js-types tools
	$(BIN)/pytest

# make test needs Node.js and npm: the Alchemy interop tests run the real alchemy from npm,
# and the JavaScript client (clients/alchemy) is type-checked and run against the store
# contract. It also needs a chromium: the console's browser tests drive Debian's chromium
# through Playwright (which downloads no browser here); as root with apt-get, a missing
# chromium is installed. A missing tool is named here, before anything else runs.
CHROMIUM ?= $(or $(EVSTATE_CHROMIUM),/usr/bin/chromium)
NODE_MIN   := 18.17
NODE_CHECK := const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 18 || (a === 18 && b >= 17) ? 0 : 1)
tools:
	@missing=""; for tool in node npm; do \
	  command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  echo "make test needs Node.js $(NODE_MIN)+ and npm; not on PATH:$$missing" \
	    "(install Node.js from https://nodejs.org or your package manager, e.g." \
	    "apt-get install nodejs npm)" >&2; \
	  exit 1; fi; \
	node -e '$(NODE_CHECK)' || { \
	  echo "make test needs Node.js $(NODE_MIN)+; node on PATH is $$(node --version)" >&2; \
	  exit 1; }; \
	[ -x "$(CHROMIUM)" ] || [ "$(CHROMIUM)" != /usr/bin/chromium ] || [ "$$(id -u)" != 0 ] || \
	  ! command -v apt-get >/dev/null || { \
	  echo "installing Debian's chromium for the console's browser tests (apt-get)"; \
	  apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; \
	[ -x "$(CHROMIUM)" ] || { \
	  echo "make test needs chromium for the console's browser tests; not found at" \
	    "$(CHROMIUM) (apt-get install chromium, or set EVSTATE_CHROMIUM to its path)" >&2; \
	  exit 1; }

# The JavaScript client's index.d.ts is written by hand: tsc checks it against Alchemy's
# own types (clients/alchemy/tsconfig.json). npm ci installs from the committed lockfile.
JS_DIR   := clients/alchemy
JS_STAMP := $(JS_DIR)/node_modules/.installed

$(JS_STAMP): $(JS_DIR)/package.json $(JS_DIR)/package-lock.json | tools
	cd $(JS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $(JS_STAMP)

js-types: $(JS_STAMP)
	cd $(JS_DIR) && npm run --silent check-types

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
	rm -rf $(VENV) .evstate .mypy_cache .ruff_cache .pytest_cache $(JS_DIR)/node_modules
