# umc_nb: two commands do everything on a fresh machine.
#   make demo   runs the curation demo on the built-in benchmark
#   make test   runs every test (notebooks through nbdev-test, then pytest tests/)
# Both create (or reuse) the project virtualenv .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
# Extra flags for `python -m venv`, e.g. VENV_FLAGS=--system-site-packages to reuse a torch you already have.
VENV_FLAGS ?=
# Installed only when the environment has no torch yet: the CPU wheel (an open range would pull a CUDA build).
TORCH ?= torch==2.13.0
EXTRAS ?= dev,text,peers
BIN := $(VENV)/bin
STAMP := $(VENV)/.umc-installed
ARGS ?=

.PHONY: setup demo test test-slow sync-check readme docs help

help:
	@echo "make demo   - run the curation demo on the built-in benchmark (ARGS='--rounds 3 ...')"
	@echo "make test   - run every test: notebooks (nbdev-test), then pytest tests/"
	@echo "make docs   - build the documentation site offline into _docs/ (fails on a cell error or a broken chart)"
	@echo "make setup  - create/refresh $(VENV) and install umc_nb with its [$(EXTRAS)] extras"

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' || \
	  { echo "umc_nb needs Python >= 3.10; run e.g. 'make PYTHON=python3.11 ...'"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -c 'import torch' 2>/dev/null && echo "keeping the installed torch" || \
	  $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

# The built-in benchmark's data comes from Debian packages (`apt-get download`, no install): as root on a machine whose
# package lists were never fetched, fetch them first. `umc demo` prepares the data cache on first use (a few minutes).
demo: setup
	@if [ "$$(id -u)" = 0 ] && [ -z "$$(ls /var/lib/apt/lists/ 2>/dev/null | grep _Packages | head -1)" ]; then \
	  echo "fetching the Debian package lists (apt-get update) ..."; apt-get update -qq || true; fi
	$(BIN)/umc demo $(ARGS)

test: setup
	$(BIN)/nbdev-test nbs
	$(BIN)/python -m pytest -q tests

test-slow: setup
	$(BIN)/nbdev-test nbs --flags slow
	UMC_SLOW=1 $(BIN)/python -m pytest -q tests

# Fails when nbdev-export or nbdev-clean would change a committed file.
sync-check: setup
	$(BIN)/nbdev-export
	$(BIN)/nbdev-clean
	@if [ -n "$$(git status --porcelain)" ]; then \
	  echo "Notebooks and modules are out of sync (or notebooks are not clean):"; git status --porcelain; \
	  git --no-pager diff --stat; exit 1; fi

# README.md is generated from nbs/index.ipynb (executed), without Quarto.
readme: setup
	$(BIN)/jupyter nbconvert --to markdown --execute nbs/index.ipynb --output-dir . --output README
	sed -i 's#](images/#](nbs/images/#g' README.md

# The docs site, offline (no Quarto): executes every notebook (#| slow cells skipped), renders _docs/ with charts as
# inline SVG; fails on a missing page, a cell that raises, a chart that does not render, or a CDN load.
# nbdev-docs still works where Quarto is installed.
docs: setup
	$(BIN)/python -m umc_nb.docs --workers 2
