# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
PIP_STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed
BENCH_STAMP := $(VENV)/.installed-bench
# Debian's Chromium, driven by Playwright in tests/browser (Playwright's own browser download
# is never used); apt-get needs root, which CI is.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: install browser run test screenshots bench clean

install: $(PIP_STAMP) $(NPM_STAMP)

# What serving needs (the project's own dependencies); `make run` installs no more.
$(RUN_STAMP): pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

# The tests' dependencies besides.
$(PIP_STAMP): $(RUN_STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The Cosmos-compatible test server (@vercel/cosmosdb-server) for the store conformance suite,
# and axe-core for the browser tests' accessibility check.
$(NPM_STAMP): package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

browser:
	@test -x $(CHROMIUM) || { \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

run: $(RUN_STAMP)
	$(VENV)/bin/fleet serve

test: install browser
	$(PY) -m pytest

# docs/screenshots/: every dashboard page at 1280x800 and 390x844, over a demo fleet.
screenshots: install browser
	$(PY) -m tests.browser.screenshots

# The benchmarks' own dependencies (huey, the peer of bench/peer_huey.py): `.[bench]`.
$(BENCH_STAMP): $(PIP_STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

bench: install $(BENCH_STAMP)
	$(PY) bench/claim_depth.py
	$(PY) bench/store_costs.py
	$(PY) bench/use_case_reads.py
	$(PY) bench/dashboard_refresh.py
	$(PY) bench/store_traffic.py
	$(PY) bench/budget_contention.py
	$(PY) bench/activity_products.py
	$(PY) bench/retry_waits.py
	$(PY) bench/peer_huey.py

clean:
	rm -rf $(VENV) node_modules .fleet .pytest_cache
