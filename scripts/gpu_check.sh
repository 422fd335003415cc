#!/usr/bin/env bash
# The GPU check as one command on the GPU machine (an H100/H200 with torch, triton and
# transformers installed, nothing fetched): installs the wheels that
# scripts/prepare_gpu_carry.sh put in .gpu/, then runs scripts/gpu_check.py, which stops
# each part when its share of the budget is spent and always writes the summary.
#   bash scripts/gpu_check.sh [OUT [ARGS...]]   OUT: $OUT if set (the device tool's), else
#                                               results/gpu; ARGS go to gpu_check.py
# Writes OUT/summary.json, plans.md, gpu_check.log, search_trials.jsonl and console.log
# (everything printed, the install included). The whole command stays within
# AUTOQ_GPU_BUDGET seconds (default 480: 8 minutes).
set -uo pipefail
began=$(date +%s)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CARRY=${AUTOQ_CARRY:-$ROOT/.gpu}
DEST=${1:-${OUT:-$ROOT/results/gpu}}
shift $(( $# > 0 ? 1 : 0 ))
BUDGET=${AUTOQ_GPU_BUDGET:-480}
PY=${PYTHON:-python3}
SITE=${AUTOQ_SITE:-/tmp/autoq-site}
mkdir -p "$DEST"
{
    echo "gpu_check.sh: $(date -u +%FT%TZ), carry $CARRY, out $DEST, budget ${BUDGET}s"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    if ! ls "$CARRY"/wheels/*.whl >/dev/null 2>&1; then
        echo "gpu_check.sh: no wheels in $CARRY/wheels: run scripts/prepare_gpu_carry.sh first and carry $CARRY" >&2
        exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$CARRY"/wheels/*.whl || exit 3
    export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
    left=$(( BUDGET - ($(date +%s) - began) - 10 ))
    echo "gpu_check.sh: installed in $(( $(date +%s) - began ))s; ${left}s left for the check"
    "$PY" "$ROOT/scripts/gpu_check.py" --out "$DEST" --carry "$CARRY" --budget "$left" "$@"
} 2>&1 | tee "$DEST/console.log"
