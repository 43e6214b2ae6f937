# Two commands set everything up on a fresh machine with Python 3.11 and Node.js: `make course`, `make test`.
# Each executes every notebook once on the small track and keeps the executed copies, their pages (maths
# typeset offline with the MathJax from site/node_modules) and run.json in build/; `make site` reuses them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.coursekit-installed

SITE_VENV := .venv-site
SITE_STAMP := $(SITE_VENV)/.site-installed

.PHONY: install course test lab bench clean site site-test

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install -c constraints.txt -e ".[test,notebooks]"
	touch $@

install: $(STAMP)

MATHJAX := site/node_modules/mathjax/es5
SITE_ARGS ?=

course: $(STAMP) site/node_modules/.package-lock.json
	$(BIN)/coursekit run units --track small --out build --mathjax $(MATHJAX)

# Unit tests, the notebooks (nbval, once each, into build/) and the full-track rehearsal on two workers
# (conftest.py shares them out file by file).
test: $(STAMP) site/node_modules/.package-lock.json
	$(BIN)/ruff check coursekit tests benchmarks scripts site conftest.py
	bash scripts/install_browser.sh
	$(BIN)/python -m pytest -n 2

lab: $(STAMP)
	$(BIN)/jupyter lab units

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# The course website (Jupyter Book 1 in its own venv, MathJax from npm), from the notebooks executed on
# the small track: those in build/ from `make test` or `make course` are reused when newer than their
# source (SITE_ARGS=--no-execute: always, and never execute one).
$(SITE_STAMP): site/requirements.txt
	test -x $(SITE_VENV)/bin/python || $(PYTHON) -m venv $(SITE_VENV)
	$(SITE_VENV)/bin/pip install --quiet --upgrade pip
	$(SITE_VENV)/bin/pip install --quiet -r site/requirements.txt
	touch $@

site/node_modules/.package-lock.json: site/package.json site/package-lock.json
	npm ci --prefix site --silent --no-audit --no-fund

site: $(STAMP) $(SITE_STAMP) site/node_modules/.package-lock.json
	$(BIN)/python scripts/build_site.py --jupyter-book $(SITE_VENV)/bin/jupyter-book $(SITE_ARGS)

site-test: site
	bash scripts/install_browser.sh
	$(BIN)/python -m pytest site/test_site.py

clean:
	rm -rf build
