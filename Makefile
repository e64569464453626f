# Two entry points for a fresh machine (see README.md):
#   make repro   set up .venv, run the whole pipeline (dvc repro: generate -> prepare -> ... -> package)
#   make test    set up .venv, run the test suite
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# No telemetry, no hub look-ups: this project never reaches the network at run time.
export DO_NOT_TRACK=1 BENTOML_DO_NOT_TRACK=true DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
# dvc runs each stage's `python -m ...` from PATH: make that the project's .venv.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: repro test test-heavy env bench grid report

env: $(STAMP)

# Re-installs only when the pins change. pip's "Location ... is ignored" lines come from this
# machine's index configuration and are noise.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.lock 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | { grep -v "is ignored: it is neither" || true; }
	touch $@

# The embedded dataset is the pipeline's first stage (generate: deterministic from the `synthetic` params);
# nothing else under data/ is tracked or cached by DVC.
repro: $(STAMP)
	$(BIN)/dvc repro

# The suite CI runs; the heavy multi-process training tests (launcher, two nodes, cut link, folds, the GPU
# check's dry run) take about 10 minutes of 2 cores and run with `make test-heavy`.
test: $(STAMP)
	bash scripts/install-browser.sh || echo "chromium unavailable: the browser test will skip"
	$(BIN)/python -m pytest -q -m "not heavy"

test-heavy: $(STAMP)
	$(BIN)/python -m pytest -q -m heavy

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

# The reproduction grid: every arm x 5 seeds on the embedded data, then the report. Resumable: a
# finished run is skipped, so running it again continues where it stopped. Options go in GRID_ARGS, e.g.
# `make grid GRID_ARGS="--budget short --seeds 1"`; GRID_SHARDS=N runs N shard processes side by side with
# one thread each (the committed report: `make grid GRID_ARGS="--budget laptop" GRID_SHARDS=2`).
GRID_SHARDS ?= 1
grid: $(STAMP)
	$(BIN)/dvc repro validate
	@if [ "$(GRID_SHARDS)" = 1 ]; then $(BIN)/python -m s4d.experiments.grid $(GRID_ARGS); else \
	  pids=""; for k in $$(seq 1 $(GRID_SHARDS)); do \
	    OMP_NUM_THREADS=1 $(BIN)/python -m s4d.experiments.grid --shard $$k/$(GRID_SHARDS) $(GRID_ARGS) & \
	    pids="$$pids $$!"; done; \
	  status=0; for p in $$pids; do wait $$p || status=1; done; exit $$status; fi
	$(BIN)/python -m s4d.experiments.report

# Only the report (reports/README.md and its plots) from the run records already in experiments/.
report: $(STAMP)
	$(BIN)/python -m s4d.experiments.report
