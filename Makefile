# Kaskad: `make run` starts the service, `make test` runs every check. See README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BUF := tools/node_modules/.bin/buf

.PHONY: run test lint pytest proto settings-doc bench clean chromium

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Kaskad needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,perf]'
	@touch $@

# The browser test (tests/test_report_page.py) drives Debian's chromium through Playwright;
# Playwright's own browser download is never used. Installed only when missing (root or sudo).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	$(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

chromium: $(CHROMIUM)

$(BUF): tools/package.json
	npm install --prefix tools --no-audit --no-fund --no-package-lock --loglevel=error
	@touch $@

run: $(BIN)/.installed
	$(BIN)/kaskad serve --demo --simulator

lint: $(BIN)/.installed $(BUF)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	cd protos && ../$(BUF) lint

pytest: $(BIN)/.installed $(BUF) $(CHROMIUM)
	$(BIN)/python -m pytest

test: lint pytest

# Regenerate gen/kaskad/v1 from protos/ (tests fail when the committed code is stale).
proto: $(BIN)/.installed
	$(BIN)/python protos/generate.py

# Rewrite README.md's settings table from Settings in gateway/core/config.py
# (tests/test_settings_reference.py fails when it is stale).
settings-doc: $(BIN)/.installed
	$(BIN)/python -m gateway.core.config --update README.md

# Benchmark the accept path against a bare gRPC server on this machine (perf/bench.py):
# BENCH_USERS (64), BENCH_DURATION (30 s), BENCH_GATEWAYS (2); writes perf/results/summary.md.
$(BIN)/.installed-perf: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[dev,perf]'
	@touch $@

bench: $(BIN)/.installed-perf
	$(BIN)/python perf/bench.py

clean:
	rm -rf $(VENV) tools/node_modules .pytest_cache .mypy_cache .ruff_cache
