#!/usr/bin/env bash
# The one-shot GPU check (bench/gpu_check.py) on a machine with CuPy, PyTorch and JAX but no network:
#   bash bench/gpu_check.sh [REPORT_DIR] [--budget SECONDS]     (REPORT_DIR defaults to $OUT)
# Installs nn_eos without touching its dependencies (they are there already), then runs the check.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
  || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # no pip install possible: run from the tree
for wheel in bench/wheels/*.whl; do               # optional peers carried in the tree (no network there)
  [ -e "$wheel" ] && python3 -m pip install -q --no-deps "$wheel" >/dev/null 2>&1
done
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 bench/gpu_check.py "$@"
