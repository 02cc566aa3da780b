# Two commands matter: `make run` and `make test` (see README).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
# Where the embedded stack keeps its files (claw/settings.py reads the same).
VAR_DIR := $(or $(CLAW_VAR_DIR),var)
# The embedded stack serves plain HTTP on loopback; production sets HTTPS_ONLY=true.
RUN_ENV = SECRET_KEY="$${SECRET_KEY:-$$(cat $(VAR_DIR)/secret_key)}" HTTPS_ONLY="$${HTTPS_ONLY:-false}"

.PHONY: run test lint format bench chaos install install-dev

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(VAR_DIR)/secret_key:
	mkdir -p $(VAR_DIR)
	$(PYTHON) -c "import secrets; print(secrets.token_urlsafe(50))" > $@
	chmod 600 $@

# runstack creates the admin account (printing its password again below the
# workers' banners once /health is green) and, with --stop-with-make, stops the
# stack when this make is sent SIGINT, SIGHUP or SIGQUIT, which make does not
# pass on to its children (SIGTERM it does).
run: $(VENV)/.installed $(VAR_DIR)/secret_key
	$(RUN_ENV) $(PY) manage.py migrate --noinput
	$(RUN_ENV) $(PY) manage.py collectstatic --noinput -v 0
	$(RUN_ENV) $(PY) manage.py ensure_schedules
	$(RUN_ENV) exec $(PY) manage.py runstack --host $(HOST) --port $(PORT) --ensure-admin --stop-with-make

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: $(VENV)/.installed-dev lint
	$(PY) -m pytest -v -ra --durations=20 $(PYTEST_ARGS)

bench: $(VENV)/.installed-dev
	$(PY) -m bench.run $(BENCH_ARGS)

# Faults under load against a private PostgreSQL and Redis (bench/chaos.py):
# CHAOS_SECONDS (300), CHAOS_SEED (20), CHAOS_FAULTS (10), CHAOS_KINDS.
chaos: $(VENV)/.installed-dev
	$(PY) -m bench.chaos --write
