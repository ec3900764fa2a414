# The two commands a newcomer needs:  make demo   and   make test
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# pytest's own options for `make test`: four processes on two cores, since many tests
# wait (on real timeouts, servers starting, databases) rather than compute (on two
# cores: 91 s with four, 102 s with three, 101 s with six).
PYTEST_ARGS ?= -n 4

.PHONY: setup demo test test-fast lint services bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test,dev]'
	touch $@

demo: setup
	$(BIN)/pydio-shim demo

lint: setup
	$(BIN)/ruff check shim tests bench
	$(BIN)/ruff format --check shim tests bench
	$(BIN)/mypy

test: setup services lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

# Without the slow end-to-end tests (real gunicorn, nginx, php-fpm, big bodies): for quick edits.
test-fast: setup services
	$(BIN)/pytest -q $(PYTEST_ARGS) -m "not slow"

services:
	bash tests/services/start.sh

bench: setup services
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
