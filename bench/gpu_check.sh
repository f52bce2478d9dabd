#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py; README "Several GPUs and nodes").
#   bash bench/gpu_check.sh --out DIR          on a lent GPU
#   bash bench/gpu_check.sh --dry --out DIR    the same steps, tiny, on the CPU (the tests run it)
# On the device machine nothing is installed: the packages it lacks travel as wheels in
# .whl/ (bench/gpu_wheels.sh fetches them here) and the repository itself is on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
export PYTHONUNBUFFERED=1
exec "$PYTHON" bench/gpu_check.py "$@"
