# Each target builds .venv first (once, and again when pyproject.toml changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bayescale demo --out demo-output

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra --durations=10

bench: $(STAMP)
	$(BIN)/pip install --quiet -e ".[bench]"  # PyMC + nutpie, measured as peers
	$(BIN)/python benchmarks/run.py

docs: $(STAMP)
	$(BIN)/python -m sphinx -W --keep-going -q -b html docs docs/_build/html  # offline; warnings are errors
	@echo "docs: open docs/_build/html/index.html"

clean:
	rm -rf $(VENV) demo-output .pytest_cache docs/_build
