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

# Locked dependencies (exact versions and hashes, every platform): requirements.lock is what
# the image runs, requirements-dev.lock adds the development and test tools,
# requirements-build.lock the wheel build backend. `make lock` refreshes them after a change to
# pyproject.toml (keeping the pinned versions), `make lock LOCK_ARGS=--upgrade` upgrades all.
LOCK_ARGS ?=
UV_COMPILE = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command 'make lock' $(LOCK_ARGS)
# promtool (the alert rule checks and unit tests) comes from Debian's prometheus package: only
# the binary is taken out of it into the virtualenv (nothing is installed system-wide and no
# server is started). Where that cannot be had, the tests that need it are skipped.
PROMTOOL := $(BIN)/promtool

# `make image`: the production image, labelled with this commit and its origin.
IMAGE ?= didomi-salesforce-sync:dev

.PHONY: install tools test test-unit test-integration test-deploy demo lint format schemas bench \
	lock image clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

tools: $(STAMP) $(PROMTOOL)

$(PROMTOOL): | $(STAMP)
	@if command -v promtool >/dev/null 2>&1; then \
		ln -sf "$$(command -v promtool)" $@; \
	elif command -v apt-get >/dev/null 2>&1; then \
		tmp=$$(mktemp -d); \
		( cd $$tmp && apt-get download prometheus >/dev/null 2>&1 \
		  || { [ "$$(id -u)" = 0 ] && apt-get update -qq >/dev/null 2>&1 \
		       && apt-get download prometheus >/dev/null 2>&1; } ) \
		&& dpkg-deb --fsys-tarfile $$tmp/prometheus_*.deb | tar -x -C $$tmp ./usr/bin/promtool \
		&& install -m 0755 $$tmp/usr/bin/promtool $@ \
		|| echo "promtool: Debian's prometheus package could not be had; its tests are skipped"; \
		rm -rf $$tmp; \
	else \
		echo "promtool: no apt-get here; install promtool to run the alert tests"; \
	fi

test: tools
	$(BIN)/python -m pytest -q $(XDIST) --durations=15 $(PYTEST_ARGS)

test-deploy: tools
	$(BIN)/python -m pytest -q $(XDIST) tests/deploy $(PYTEST_ARGS)

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
	$(BIN)/python -m consumer.devkit.bench $(BENCH_ARGS)

lock: $(STAMP)
	$(UV_COMPILE) pyproject.toml -o requirements.lock
	$(UV_COMPILE) pyproject.toml --extra dev -c requirements.lock -o requirements-dev.lock
	$(BIN)/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'], sep='\n')" \
		| $(UV_COMPILE) - -o requirements-build.lock

image:
	docker build -f deploy/Dockerfile -t $(IMAGE) \
		--build-arg REVISION="$$(git rev-parse HEAD)" \
		--build-arg SOURCE="$$(git remote get-url origin 2>/dev/null || echo unknown)" .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
