#!/usr/bin/env bash
# The committed digits-vit benchmark (CPU, offline), end to end, as run: the embedded
# model's fp and uniform 8/4/3/2/1-bit accuracy with `autoq eval`, two searches to
# accuracy targets (0.95: between the 2-bit and 1-bit levels; 0.97: just under the
# 2-bit ones), and `autoq report`. Everything it wrote before is removed first, so
# every number in results/benchmarks/digits-vit/ comes from one run of this script.
# A few minutes on 2 CPU cores. Usage: bash scripts/bench_digits.sh
# (PYTHON=/path/to/python picks the interpreter; default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=results/benchmarks/digits-vit
PY=${PYTHON:-.venv/bin/python}
AUTOQ=("$PY" -m autoq.cli)   # from the repository root: this checkout's autoq
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
rm -rf "$OUT"/acc* "$OUT"/baselines "$OUT"/sensitivity "$OUT"/report "$OUT"/layer-cache \
    "$OUT"/latency "$OUT"/evals.jsonl "$OUT"/bench.log
log() { echo "[$(date -u +%FT%TZ)] $*" | tee -a "$OUT/bench.log" >&2; }
timed() {  # log the command, run it, log its wall time (stdout stays the command's)
  log "$*"
  local t0=$(date +%s.%N)
  "$@"
  log "wall $(echo "$(date +%s.%N) - $t0" | bc) s"
}
log "machine: $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
    "$(free -g | awk '/Mem:/ {print $2}') GiB, OMP_NUM_THREADS=$OMP_NUM_THREADS"
log "versions: $("$PY" -c 'import platform, torch, timm, hqq, optuna, sklearn
print(f"python {platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}, "
      f"hqq {hqq.__version__}, optuna {optuna.__version__}, scikit-learn {sklearn.__version__}")')"
log "git $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- autoq eval search_spaces || echo ' (autoq modified)')," \
    "checkpoint sha256 $(sha256sum autoq/models/weights/digits-vit.pt | cut -c1-16)"
for config in fp 8:64 4:64 3:64 2:64 2:128 1:32 1:64; do
  flag=(); [ "$config" = fp ] || flag=(--uniform "$config")
  timed "${AUTOQ[@]}" eval --model digits-vit --device cpu "${flag[@]}" --json -q \
      >> "$OUT/evals.jsonl"
done
SEARCH=(search --model digits-vit --device cpu --space "$OUT/space.yaml" --out "$OUT"
        --trials 24 --seed 0 --one-shot 2,2.25,2.5,3 -q)   # one-shot budgets where the trade-off is
timed "${AUTOQ[@]}" "${SEARCH[@]}" --target-acc 0.95 --study acc0.95
timed "${AUTOQ[@]}" "${SEARCH[@]}" --target-acc 0.97 --study acc0.97
timed "${AUTOQ[@]}" report "$OUT" --out "$OUT/report" --format png,md -q  # html: 5 MB, not committed
log "done"
