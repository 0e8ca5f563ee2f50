# `make run` sets up and starts the portal; `make test` sets up everything the tests need and runs them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROVIDER := tests/provider
CODEX := tests/codex
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test check install provider codex chromium clean demo bench

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

install: $(STAMP)

# The real OpenID provider the tests sign in against, pinned by its lockfile.
$(PROVIDER)/node_modules/.package-lock.json: $(PROVIDER)/package-lock.json
	cd $(PROVIDER) && npm ci --no-audit --no-fund --loglevel=error

provider: $(PROVIDER)/node_modules/.package-lock.json

# The real Codex CLI (npm @openai/codex, pinned by its lockfile; the package ships the binary, ~400 MB)
# for the interop tests (tests/codex_cli.py).
$(CODEX)/node_modules/.package-lock.json: $(CODEX)/package-lock.json
	cd $(CODEX) && npm ci --no-audit --no-fund --loglevel=error

codex: $(CODEX)/node_modules/.package-lock.json

# Debian's Chromium for the browser tests (Playwright drives it; it downloads no browser of its own).
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

run: install
	$(VENV)/bin/codex-portal serve $(ARGS)

# Try it offline: the test provider and the portal on loopback, a throwaway CODEX_HOME.
# make demo ARGS="--no-browser --port 1456 --codex-home /tmp/codex-demo"
demo: install provider
	$(PY) demo/demo.py $(ARGS)

# Performance figures beside their baselines, measured in the same run (bench/bench.py, ~1 min);
# wrk, Debian's HTTP load generator, is installed when missing.
BENCH_JSON ?= bench/results.json
bench: install provider codex chromium
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk; }
	$(PY) bench/bench.py --json $(BENCH_JSON) $(ARGS)

check: install
	$(PY) -m ruff check webapp tests demo bench
	$(PY) -m ruff format --check webapp tests demo bench
	$(PY) -m mypy
	$(PY) -m mypy --strict demo/demo.py bench/bench.py bench/hello_app.py

test: install provider codex chromium check
	$(PY) -m pytest

clean:
	rm -rf $(VENV) $(PROVIDER)/node_modules $(CODEX)/node_modules .pytest_cache .mypy_cache .ruff_cache build dist
