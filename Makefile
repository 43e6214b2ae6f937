# Two commands set everything up on a fresh machine with Python 3.11: `make course`, `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.coursekit-installed

.PHONY: install course test lab bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install -c constraints.txt -e ".[test,notebooks]"
	touch $@

install: $(STAMP)

course: $(STAMP)
	$(BIN)/coursekit run units --track small --out build

test: $(STAMP)
	$(BIN)/ruff check coursekit tests benchmarks scripts conftest.py
	bash scripts/install_browser.sh
	$(BIN)/python -m pytest

lab: $(STAMP)
	$(BIN)/jupyter lab units

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf build
