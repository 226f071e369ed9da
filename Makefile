# bap: two commands on a fresh machine.
#   make demo   create .venv, install, train on the embedded suite, export budget 0.5, benchmark on the CPU
#               (at the trained 32x32 and at 224x224), then summarise what it measured (bap summary)
#   make test   create .venv, install, run the test suite
# Everything is installed by these targets; nothing needs to be installed by hand.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.bap-installed
DEMO   := demo

.PHONY: install demo test test-all lint format clean-demo

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@if [ -f $(DEMO)/run/report.json ]; then echo "reusing $(DEMO)/run (delete it to retrain)"; \
	elif [ -d $(DEMO)/run ]; then $(BIN)/bap train --out $(DEMO)/run --resume; \
	else $(BIN)/bap train --out $(DEMO)/run; fi
	$(BIN)/bap export $(DEMO)/run --budget 0.5 --specialise mnist --out $(DEMO)/export
	$(BIN)/bap eval $(DEMO)/export
	$(BIN)/bap bench $(DEMO)/export --device cpu --batch-sizes 1,16 --warmup-s 0.5 --duration-s 2 \
		--json $(DEMO)/bench.json --plot $(DEMO)/bench.png
	@echo "--- the same models at 224x224 (the convs are resolution-agnostic): the regime edge deployments run in"
	$(BIN)/bap bench $(DEMO)/export --device cpu --batch-sizes 1,16 --input-size 224 --warmup-s 0.5 --duration-s 2 \
		--json $(DEMO)/bench-224.json
	@echo "--- what the demo measured"
	$(BIN)/bap summary --run $(DEMO)/run --export $(DEMO)/export --bench $(DEMO)/bench.json --bench $(DEMO)/bench-224.json

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check bap tests benchmarks
	$(BIN)/ruff format --check bap tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format bap tests benchmarks
	$(BIN)/ruff check --fix bap tests benchmarks

clean-demo:
	rm -rf $(DEMO)
