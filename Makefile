# hubd — `make run` and `make test` bootstrap .venv themselves, with the versions pinned in
# constraints.txt. `make help` lists every target.

PYTHON ?= python3
# Cache bytecode (and pytest's rewritten test modules) even where the environment says not
# to: without it every test run and every hubd the tests start compiles everything again
# (about 4 s of the unit run alone). The caches are in .gitignore.
unexport PYTHONDONTWRITEBYTECODE
VENV   := .venv
BIN    := $(VENV)/bin
# One stamp per install level: `make run` needs only the runtime one, so an operator never
# waits for the test tools; each level is redone when pyproject.toml or constraints.txt
# changes (the test stamp through the runtime one).
RUNTIME_STAMP := $(VENV)/.installed-runtime
TEST_STAMP    := $(VENV)/.installed-test
BENCH_STAMP   := $(VENV)/.installed-bench
BOOTSTRAP  := $(PYTHON) scripts/bootstrap_venv.py --venv $(VENV)
DEV_CONFIG := config/hubd.dev.toml

.PHONY: help run run-cluster test lint unit bench bench-curves abuse chaos soak constraints clean

help:
	@echo "make run          start hubd on $(DEV_CONFIG) (in-memory hub, 127.0.0.1:8080); installs only what running needs"
	@echo "make run-cluster  Redis + two hubd nodes on loopback (config/cluster/: 127.0.0.1:8081 and :8082); needs redis-server"
	@echo "make test         lint, type-check and run the whole test suite (installs the test tools too)"
	@echo "make lint         ruff + mypy --strict only"
	@echo "make unit         the tests that start no process (pytest -m 'not e2e')"
	@echo "make bench        benchmarks (see bench/README.md); ends with latency vs the Node and Python peers, targets met or not"
	@echo "make bench-curves hubd vs the Node and Python peers at 1k-20k subscribers: table + PNG (~1 h; CURVES_ARGS=\"--sizes 1000,5000 --reps 1\")"
	@echo "make abuse        legitimate traffic under attack (ABUSE_ARGS=--quick: 10 s phases)"
	@echo "make chaos        fault injection with an event-by-event loss checker (CHAOS_ARGS=--minutes N)"
	@echo "make soak         10,000 connections held 16 minutes (10 judged): RSS, heap, fds, tasks (SOAK_ARGS=--minutes N)"
	@echo "make constraints  re-pin constraints.txt to the newest versions pyproject.toml allows (then run make test)"
	@echo "make clean        remove .venv and the caches"
	@echo "make help         this list"

$(RUNTIME_STAMP): pyproject.toml constraints.txt
	@$(BOOTSTRAP) install runtime
	@touch $@

$(TEST_STAMP): $(RUNTIME_STAMP)
	@$(BOOTSTRAP) install test
	@touch $@

# The `bench` extra (matplotlib, for bench-curves' PNG), pinned like the rest; hubd itself
# is not reinstalled.
$(BENCH_STAMP): $(RUNTIME_STAMP)
	@echo "installing the bench extra into $(VENV): matplotlib"
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt \
		$$($(BIN)/python -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["bench"]))')
	@touch $@

run: $(RUNTIME_STAMP)
	@echo ""
	@echo "hubd (development config: $(DEV_CONFIG) — public dev credentials, loopback only)"
	@echo ""
	@echo "  Subscribe (in another terminal; prints each event as it arrives):"
	@echo "    .venv/bin/hubctl --token dev-subscriber-token subscribe pdfm,health"
	@echo ""
	@echo "  Publish (in a third terminal):"
	@echo "    .venv/bin/hubctl --api-key dev-publisher-key publish pdfm VM_STATE_CHANGED --body '{\"vm\":\"vm-1\",\"state\":\"running\"}'"
	@echo ""
	@echo "  Counters: .venv/bin/hubctl --token dev-admin-token stats"
	@echo "  Web console: http://127.0.0.1:8080/console (sign in with dev-admin-token; its live tail"
	@echo "  is this machine's one subscriber, so hubctl subscribe then needs --source-address 127.0.0.2)."
	@echo "  Without hubctl: wscat and curl, see README.md. One subscriber per client IP (409 ip_in_use):"
	@echo "  a second one on this machine needs --source-address 127.0.0.2."
	@echo ""
	@echo "  Stop with Ctrl-C."
	@echo ""
	exec $(BIN)/hubd serve --config $(DEV_CONFIG)

run-cluster: $(RUNTIME_STAMP)
	@$(BIN)/python scripts/run_cluster.py

lint: $(TEST_STAMP)
	$(BIN)/ruff check hubd tests bench scripts
	$(BIN)/ruff format --check hubd tests bench scripts
	$(BIN)/mypy
	$(BIN)/mypy --strict bench scripts

unit: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -m "not e2e"

test: lint
	$(BIN)/python -m pytest

bench: $(RUNTIME_STAMP)
	$(BIN)/python -m bench

bench-curves: $(BENCH_STAMP)
	$(BIN)/python -m bench curves $(CURVES_ARGS)

abuse: $(RUNTIME_STAMP)
	$(BIN)/python -m bench.abuse $(ABUSE_ARGS)

chaos: $(RUNTIME_STAMP)
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

soak: $(RUNTIME_STAMP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

constraints:
	@$(BOOTSTRAP) constraints

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
