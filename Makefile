# Every target makes its own virtualenv on first use; only a Python 3.11+ is needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Test processes (pytest-xdist), each with its own embedded broker. The suite mostly waits on
# the broker and on timeouts, so more workers than cores pay (4 was fastest on 2 cores: 2 and
# 6 were slower); 0 runs in this process only. One test at a time is handed to a free worker.
TEST_WORKERS ?= 4
XDIST := -n $(TEST_WORKERS) --maxschedchunk=1

.PHONY: install test test-unit test-integration demo lint format schemas bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) --durations=15 $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) tests/integration $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python -m consumer.devkit.demo

lint: $(STAMP)
	$(BIN)/ruff check consumer tests
	$(BIN)/ruff format --check consumer tests
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix consumer tests
	$(BIN)/ruff format consumer tests

schemas: $(STAMP)
	$(BIN)/python -m consumer.devkit.schemas write

bench: $(STAMP)
	$(BIN)/python -m consumer.devkit.bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
