# dispatch-receiver: `make run` sets up and runs the product, `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export RECEIVER_DB ?= var/events.db

.PHONY: run test install system-deps bench clean

# The virtualenv, rebuilt when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

## run: set everything up and start the receiver (port 8000) and Datasette (port 8001)
run: install
	$(BIN)/receiver init-db
	PORT=$${PORT:-8000} $(BIN)/honcho start

## test: set everything up and run the whole test suite
test: install system-deps
	$(BIN)/python -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

# Debian packages the tests and benchmarks use, installed when missing (needs root or sudo).
SYSTEM_PACKAGES := wrk chromium
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

## bench: receiver vs a no-op Flask app under the same gunicorn settings (see README)
# e.g. make bench BENCH_ARGS="--repeat 3 --duration 15"; see bench/README.md
BENCH_ARGS ?=
bench: install system-deps
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var/*.db var/*.db-wal var/*.db-shm *.egg-info
