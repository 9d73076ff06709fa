# Two commands matter: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export FLASK_APP := wsgi

.PHONY: run test lint test-sqlite test-postgresql setup setup-test system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

# The portal and relay on http://127.0.0.1:8000 with the embedded defaults:
# SQLite and a generated secret in instance/, mail written to instance/mail/.
# Plain http on loopback, so the session cookie's Secure flag is off unless you
# set it. scripts/serve.sh migrates, publishes the policy and starts the server.
run: setup
	SESSION_COOKIE_SECURE=$${SESSION_COOKIE_SECURE:-false} bash scripts/serve.sh

system-deps:
	bash scripts/install-system-deps.sh

# The whole suite on SQLite, then again on a real PostgreSQL (+ Redis for rate limits).
test: setup-test system-deps lint test-sqlite test-postgresql

# ruff with the rule set in pyproject.toml, over the whole project.
lint: setup-test
	$(BIN)/ruff check .

test-sqlite:
	TEST_DB=sqlite $(BIN)/python -m pytest

test-postgresql:
	TEST_DB=postgresql $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) instance .pytest_cache
