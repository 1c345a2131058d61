# Two commands for a newcomer on a fresh machine (Python >= 3.10 with venv, make):
#   make reproduce   full reproduction on the built-in study-shaped dataset -> results/
#   make test        the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= test
OUT ?= results
# test processes (pytest-xdist): 2 halves the suite's time on 2 cores; each takes ~3 GB
TEST_WORKERS ?= 2

.PHONY: install reproduce test test-fast notebooks benchmark clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-$(EXTRAS): pyproject.toml constraints/cpu.txt | $(BIN)/activate
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

reproduce: install
	$(BIN)/mscpotency reproduce --out $(OUT)

test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

test-fast: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not slow"

notebooks: install
	$(BIN)/python scripts/build_notebooks.py

benchmark: install
	$(BIN)/python benchmarks/reference_analysis.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
