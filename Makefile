# dispatch-receiver: `make run` sets up and runs the product, `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export RECEIVER_DB ?= var/events.db
# Extra pytest arguments, e.g. make test PYTEST_ARGS="tests/test_cli.py -x"
PYTEST_ARGS ?=

.PHONY: run test install install-runtime system-deps bench soak clean clean-data

# The virtualenv with the runtime dependencies only (what production installs), rebuilt when
# pyproject.toml changes.
$(VENV)/.installed-runtime: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

# The same virtualenv plus the test extras; a stamp of its own, so `make run` after
# `make test` keeps them (and `make run` alone never installs them).
$(VENV)/.installed-test: $(VENV)/.installed-runtime
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install-runtime: $(VENV)/.installed-runtime
install: $(VENV)/.installed-test

## run: set everything up (runtime dependencies only) and start the receiver (port 8000) and
## Datasette (port 8001)
run: install-runtime
	$(BIN)/receiver init-db
	PORT=$${PORT:-8000} $(BIN)/honcho start

## test: set everything up and run the whole test suite; "no tests collected" is a failure
test: install system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Debian packages the tests and benchmarks use, installed when missing (needs root or sudo).
# nginx and openssl: tests/test_deploy.py runs deploy/nginx/ for real with a throwaway certificate.
# prometheus: Debian's promtool and server for tests/test_prometheus.py.
# gcc: `make bench` builds bench/slow_fsync.c, its simulated network disk.
# faketime: tests/test_writer_clock.py runs the writer under a shifted clock (libfaketime).
SYSTEM_PACKAGES := wrk chromium nginx openssl prometheus gcc faketime
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

## bench: the receiver vs validation alone, a textbook peer and a no-op app, on the normal and a
## simulated network disk, and the writer alone (see bench/README.md)
# e.g. make bench BENCH_ARGS="--repeat 3 --duration 10", or BENCH_ARGS=--quick for a short run.
# One line per benchmark script below.
BENCH_ARGS ?=
bench: install system-deps
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/vonage_import.py

# The long run (bench/soak.py; 1,000,000 callbacks by default, hours on 2 cores): memory flat,
# none lost, projection lag bounded, `receiver check` clean. Not part of `make test`.
soak: install
	nice $(BIN)/python bench/soak.py $(SOAK_ARGS)

## bench-reconciliation: the per-day reconciliation with Vonage's records at 1,000,000 records, against Datasette's time limit (bench/README.md)
# e.g. make bench-reconciliation RECONCILIATION_ARGS="--records 100000"
.PHONY: bench-reconciliation
RECONCILIATION_ARGS ?=
bench-reconciliation: install
	$(BIN)/python bench/reconciliation.py $(RECONCILIATION_ARGS)

## clean: remove what `make` built (the virtualenv, build metadata, test artifacts); never the
## databases under var/ (your data)
clean:
	rm -rf $(VENV) *.egg-info test-artifacts

## clean-data: delete the databases under var/ (asks first; CONFIRM=yes skips the question)
clean-data:
	@ls var/*.db 2>/dev/null || { echo "no databases under var/"; exit 0; }; \
	if [ "$(CONFIRM)" != yes ]; then \
		printf 'delete these databases? type yes: '; read answer; [ "$$answer" = yes ] || exit 1; \
	fi; \
	rm -f var/*.db var/*.db-wal var/*.db-shm
