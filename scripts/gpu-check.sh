#!/usr/bin/env bash
# GPU check of the training engine and serving (scripts/gpu_check.py --help). --dry-run: the same steps
# at micro sizes on the CPU. Uses .venv when the repository has one, else the python on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
export DO_NOT_TRACK=1 BENTOML_DO_NOT_TRACK=true HF_HUB_OFFLINE=1
exec "$PY" scripts/gpu_check.py "$@"
