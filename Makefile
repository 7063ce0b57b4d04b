# Two commands do everything on a fresh machine with Python 3.11+ and make:
#   make run   - create .venv, install tbot with pinned dependencies, run the main job
#   make test  - create or update .venv, then: nbdev-clean + nbdev-export (must change nothing),
#                nbdev-test (the notebooks' lesson cells), pytest tests/
#   make lab   - create or update .venv, then start JupyterLab on the notebooks (nbs/); options through LAB_ARGS
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast install bench lab clean-venv

# Tests run on both cores: notebooks in parallel, pytest through pytest-xdist. Each test file goes whole to one worker
# (module and session fixtures are made once), in the order tests/conftest.py gives: the longest files first.
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/tbot run

# JupyterLab, the research environment, on the notebooks. e.g. make lab LAB_ARGS="--no-browser --port 8899"
# (as root, in a container, JupyterLab needs --allow-root: added then.)
LAB_ARGS ?=
lab: install
	$(BIN)/jupyter lab --ServerApp.root_dir=nbs $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# Hash every file under nbs/ and tbot/ before and after clean+export: any change means the
# committed notebooks and package were out of sync (or a notebook was not clean).
SYNC_HASH = find nbs tbot -type f -not -path '*/__pycache__/*' -not -path '*/.ipynb_checkpoints/*' | LC_ALL=C sort | xargs sha1sum | sha1sum

test: install
	@before=$$($(SYNC_HASH)); \
	$(BIN)/nbdev-clean && $(BIN)/nbdev-export || exit 1; \
	after=$$($(SYNC_HASH)); \
	if [ "$$before" != "$$after" ]; then \
	  echo "nbdev-clean/nbdev-export changed files: notebooks and tbot/ are out of sync. Commit the result:"; \
	  git status --short nbs tbot; exit 1; fi
	$(BIN)/nbdev-test --n-workers $(TEST_WORKERS) --flags slow
	$(BIN)/python -m pytest tests/ $(XDIST)

# The same without the slow notebook cells and tests, for quick iterations.
test-fast: install
	$(BIN)/nbdev-clean && $(BIN)/nbdev-export
	$(BIN)/nbdev-test --n-workers $(TEST_WORKERS)
	$(BIN)/python -m pytest tests/ $(XDIST) -m "not slow"

bench: install
	for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done
