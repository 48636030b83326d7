# biox: two commands on a fresh machine — `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-unit test-integration test-postgres bench bench-full bench-huge evaluate chaos mutation lint format broker broker-stop schemas rabbitmq chromium postgresql report-screenshot clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,postgres]'
	@touch $@

# Installs Debian's rabbitmq-server when no BIOX_AMQP_URL is given and it is missing.
rabbitmq:
	@bash deploy/rabbitmq/ensure-rabbitmq.sh

# Installs Debian's chromium when missing: the report page is checked in a real browser.
chromium:
	@bash deploy/ensure-chromium.sh

# Installs Debian's postgresql when missing: the integration tests run on it too.
postgresql:
	@bash deploy/ensure-postgresql.sh

demo: $(STAMP) rabbitmq
	$(BIN)/biox demo

# The unit suite, then again with the wall clock a year ahead (time-machine,
# tests/conftest.py: a test that pins a date while the code reads the real clock fails
# today, not on the day it stops passing), then the integration tests on SQLite, then again
# on a throwaway PostgreSQL (the database production uses). Run once: the broker-fault,
# sovereign-broker, browser and fuzz tests (brokers, a browser, decoding), `biox serve`, the
# guide walked from a fresh install (its own SQLite under its own state directory) and the
# 100 000-identity import (SQLite by design). TEST_JOBS: pytest-xdist processes for the
# unit suites and the SQLite integration run (a module's tests stay together, each process
# with a broker of its own; tests/integration/conftest.py keeps the modules on the shared
# exchange together and hands out the longest first); 0 runs everything in one process. The
# PostgreSQL pass stays in one: two of it, each with its own PostgreSQL and broker, took
# longer on two cores.
# docs/testing.md has the times: about 13 minutes on two cores.
TEST_JOBS ?= 2

# Python's byte-code cache written, even where the environment turns it off
# (PYTHONDONTWRITEBYTECODE): the tests start hundreds of Python processes (workers, the
# CLI), each of which would compile biox's sources again, and pytest would rewrite every
# test module in each xdist process of each run.
export PYTHONDONTWRITEBYTECODE :=

test: $(STAMP) rabbitmq chromium postgresql
	$(BIN)/ruff check src workers tests bench
	$(BIN)/ruff format --check src workers tests bench
	$(BIN)/mypy
	@$(MAKE) --no-print-directory test-unit test-integration test-postgres

PG_SELECT := -m "not fault and not sovereign and not browser and not slow" \
	--deselect tests/integration/test_fuzz.py --deselect tests/integration/test_serve.py \
	--deselect tests/integration/test_guide.py

test-postgres: $(STAMP) rabbitmq postgresql
	$(BIN)/pytest tests/integration --postgres $(PG_SELECT)

test-unit: $(STAMP)
	$(BIN)/pytest tests/unit -n $(TEST_JOBS)
	$(BIN)/pytest tests/unit -q -n $(TEST_JOBS) --clock-ahead 365

test-integration: $(STAMP) rabbitmq
	$(BIN)/pytest tests/integration -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder

bench: $(STAMP) rabbitmq
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.sovereign
	$(BIN)/python -m bench.evaluate

bench-full: $(STAMP) rabbitmq
	$(BIN)/python -m bench.run --full

bench-huge: $(STAMP)
	$(BIN)/python -m bench.huge $(HUGE_ARGS)

# Kills workers and restarts the broker while queries flow, then the same on the sovereign
# layout with each broker SIGKILLed in turn and a partner link cut for 150 s; counts lost and
# duplicated answers, by message id at both ends, and verifies every audit chain.
chaos: $(STAMP) rabbitmq
	$(BIN)/python -m bench.chaos

# Mutation testing of the domain and the consume loop against the unit tests (docs/testing.md).
# Not part of `make test`: hours on two cores; resumes where an interrupted run stopped. The
# consume loop's tests mostly wait on timers, so three children per core keep the cores busy.
mutation: $(STAMP)
	BIOX_FUZZ_SCALE=0.1 OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children $$(( $$(nproc) * 3 ))
	$(BIN)/python -m tests.mutation_report

lint: $(STAMP)
	$(BIN)/ruff check src workers tests bench
	$(BIN)/ruff format --check src workers tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix src workers tests bench
	$(BIN)/ruff format src workers tests bench

schemas: $(STAMP)
	$(BIN)/biox schemas

# Decision quality on the hard population: calibration, FNIR at FPIR, DET curves
# (docs/matching.md, docs/det.png). About 10 minutes; EVALUATE_ARGS="--sizes 100000,1000000"
# adds the million-identity gallery (about 12 GB of memory).
evaluate: $(STAMP)
	$(BIN)/python -m bench.evaluate $(EVALUATE_ARGS)

# A local broker left running for manual work; `make broker-stop` ends it.
broker: $(STAMP) rabbitmq
	$(BIN)/biox broker start

broker-stop: $(STAMP)
	$(BIN)/biox broker stop

clean:
	-test -x $(BIN)/biox && $(BIN)/biox broker stop
	rm -rf var .pytest_cache .ruff_cache bench/results mutants
