# The two commands of the README: `make run` and `make test`. Both (re)create .venv when
# requirements.txt is newer than the last install.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast browser redis bench

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

# Debian's Chromium for the end-to-end tests (browsers that tools download themselves are
# unreachable here); installed only when absent.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; end-to-end tests will be skipped"; }

# Debian's redis-server for the Celery end-to-end test (tests/test_celery_jobs.py); installed only
# when absent; the test skips, saying why, where it cannot be installed.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
	  || echo "warning: could not install redis-server; the Celery end-to-end test will be skipped"; }

run: $(STAMP)
	$(PY) -m dashboard

test: $(STAMP) browser redis
	$(PY) -m pytest -q --durations=15   # the slowest tests, to keep CI under 20 min

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not e2e"

bench: $(STAMP)
	$(PY) -m patching bench
