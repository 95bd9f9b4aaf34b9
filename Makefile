# hubd — the two commands: `make run` and `make test`. Both bootstrap .venv themselves.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV_CONFIG := config/hubd.dev.toml

.PHONY: run test lint unit bench abuse chaos soak clean help

help:
	@echo "make run    start hubd on $(DEV_CONFIG) (in-memory hub, 127.0.0.1:8080)"
	@echo "make test   lint, type-check and run the whole test suite"
	@echo "make lint   ruff + mypy --strict only"
	@echo "make bench  benchmarks (see bench/README.md)"
	@echo "make abuse  legitimate traffic under attack (ABUSE_ARGS=--quick: 10 s phases)"
	@echo "make chaos  fault injection with an event-by-event loss checker (CHAOS_ARGS=--minutes N)"
	@echo "make soak   10,000 connections held 16 minutes (10 judged): RSS, heap, fds, tasks (SOAK_ARGS=--minutes N)"

$(STAMP): pyproject.toml
	@if [ ! -x $(BIN)/python ] || ! $(BIN)/python -m pip --version >/dev/null 2>&1; then \
	  $(PYTHON) scripts/bootstrap_venv.py $(VENV) || { \
	    echo "error: could not create $(VENV) with $(PYTHON) (needs Python >= 3.11)." >&2; \
	    echo "On Debian/Ubuntu, 'apt-get install -y python3-venv' also fixes it." >&2; \
	    rm -rf $(VENV); exit 1; }; \
	fi
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

run: $(STAMP)
	@echo ""
	@echo "hubd (development config: $(DEV_CONFIG) — public dev credentials, loopback only)"
	@echo ""
	@echo "  Subscribe (in another terminal; 'npm i -g wscat' if you lack it):"
	@echo "    wscat -c 'ws://127.0.0.1:8080/v1/ws/subscribe?event_types=pdfm,health' -H 'Authorization: Bearer dev-subscriber-token'"
	@echo "    then type: {\"event_type\":\"health\",\"message\":\"ping\",\"id\":\"1\"}"
	@echo ""
	@echo "  Publish:"
	@echo "    curl -sS -X POST http://127.0.0.1:8080/v1/events -H 'X-Api-Key: dev-publisher-key' -H 'Content-Type: application/json' -d '{\"event_type\":\"pdfm\",\"message\":\"VM_STATE_CHANGED\",\"body\":{\"vm\":\"vm-1\",\"state\":\"running\"}}'"
	@echo ""
	@echo "  Stop with Ctrl-C."
	@echo ""
	exec $(BIN)/hubd serve --config $(DEV_CONFIG)

lint: $(STAMP)
	$(BIN)/ruff check hubd tests bench scripts
	$(BIN)/ruff format --check hubd tests bench scripts
	$(BIN)/mypy
	$(BIN)/mypy --strict bench scripts

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not e2e"

test: lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m bench

abuse: $(STAMP)
	$(BIN)/python -m bench.abuse $(ABUSE_ARGS)

chaos: $(STAMP)
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

soak: $(STAMP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
