# Two commands do everything on a fresh machine with Python 3.11+ and make:
#   make run   - create .venv, install tbot with pinned dependencies, run the main job
#   make test  - create or update .venv, then: nbdev-clean + nbdev-export (must change nothing),
#                nbdev-test (the notebooks' lesson cells), pytest tests/ (installing Debian's chromium with apt
#                first when /usr/bin/chromium is missing: the dashboard's browser tests drive it)
#   make lab   - create or update .venv, then start JupyterLab on the notebooks (nbs/); options through LAB_ARGS
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast install bench lab dashboard clean-venv

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

# The dashboard demo, offline: a replay trader on the last 30 days of the stored candles at an hour a second, and `tbot dashboard`
# beside it (the URL with its token is printed). With no candles in the store it first writes a synthetic market, labelled
# SYNTHETIC on the page. A fresh demo ledger (<data_dir>/dashboard-demo.sqlite) each time. Ctrl-C stops both.
# e.g. make dashboard DASH_ARGS="--port 8899 --no-browser"
DASH_ARGS ?=
dashboard: install
	@set -e; set -- $$($(BIN)/python -c 'from tbot.dashboard import demo_plan; print(*demo_plan())'); \
	echo "demo: paper trading $$3 ($$1 candles) replayed from $$2 at an hour a second; ledger $$4 (trader log: $$4.log)"; \
	TBOT_EXCHANGE_ID=$$1 $(BIN)/tbot paper start --replay $$2 --symbols $$3 --speed 3600 --ledger $$4 > $$4.log 2>&1 & trader=$$!; \
	trap 'kill -TERM $$trader 2>/dev/null || true' INT TERM; \
	$(BIN)/tbot dashboard --ledger $$4 $(DASH_ARGS) || true; \
	kill -TERM $$trader 2>/dev/null || true; wait $$trader 2>/dev/null || true; echo "demo stopped: the trader and the dashboard"

# Hash every file under nbs/ and tbot/ before and after clean+export: any change means the
# committed notebooks and package were out of sync (or a notebook was not clean).
SYNC_HASH = find nbs tbot -type f -not -path '*/__pycache__/*' -not -path '*/.ipynb_checkpoints/*' | LC_ALL=C sort | xargs sha1sum | sha1sum

test: install
	@[ -x /usr/bin/chromium ] || { echo "installing Debian's chromium (as root) for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium || exit 1; }
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
