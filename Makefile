# Two commands for a newcomer on a fresh machine (Python >= 3.10 with venv, make):
#   make reproduce   full reproduction on the built-in study-shaped dataset -> results/
#   make test        the test suite
# and for contributors: make lint (ruff), make docs (the Sphinx site, warnings as errors).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= test
OUT ?= results
# test processes (pytest-xdist): 2 halves the suite's time on 2 cores; each takes ~3 GB
TEST_WORKERS ?= 2
# what `make lint` checks and `make format` rewrites
LINT_PATHS := src tests benchmarks tutorials scripts docs/conf.py docs/_ext
# the docs need the docs extra on top of EXTRAS
comma := ,
DOCS_EXTRAS := $(if $(filter docs,$(subst $(comma), ,$(EXTRAS))),$(EXTRAS),$(EXTRAS)$(comma)docs)
SPHINXOPTS ?= -W --keep-going

.PHONY: install reproduce test test-fast lint format docs notebooks benchmark clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# one stamp per set of extras (e.g. .installed-test, .installed-test,docs)
$(VENV)/.installed-%: pyproject.toml constraints/cpu.txt | $(BIN)/activate
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt -e ".[$*]"
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

reproduce: install
	$(BIN)/mscpotency reproduce --out $(OUT)

test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

test-fast: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not slow"

lint: install
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/ruff check $(LINT_PATHS)

format: install
	$(BIN)/ruff format $(LINT_PATHS)
	$(BIN)/ruff check --fix $(LINT_PATHS)

# renders the executed notebooks in notebooks/ as they are (no execution); -W: warnings fail
docs: $(VENV)/.installed-$(DOCS_EXTRAS)
	MPLBACKEND=Agg $(BIN)/sphinx-build $(SPHINXOPTS) -b html docs docs/_build/html
	@echo "docs: open docs/_build/html/index.html"

notebooks: install
	$(BIN)/python scripts/build_notebooks.py

benchmark: install
	$(BIN)/python benchmarks/reference_analysis.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache docs/_build docs/api docs/tutorials
