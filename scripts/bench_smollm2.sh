#!/usr/bin/env bash
# The committed SmolLM2-135M / WikiText-2 benchmark (CPU, offline), end to end, as run:
# two searches (ppl 35; ppl 30.12) sharing baselines, sensitivities and the layer
# cache under one --out, the trial-cost comparison, the independent hqq check of the
# plans, and the report.
# Usage: bash scripts/bench_smollm2.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=results/benchmarks/smollm2-wikitext2
DATA=../shared/data/wikitext-2-raw/wiki.test.raw
COMMON=(--model smollm2 --task wikitext2 --data "$DATA" --seq-len 512 --limit 40
        --space "$OUT/space.yaml" --out "$OUT" --seed 0)
log() { echo "[$(date -u +%FT%TZ)] $*" | tee -a "$OUT/bench.log"; }
search() {
  log "autoq search ${COMMON[*]} $*"
  /usr/bin/time -f "%e s wall" -a -o "$OUT/bench.log" .venv/bin/autoq search "${COMMON[@]}" "$@"
}
log "start: $(nproc) cores, $(python3 --version 2>&1), git $(git rev-parse --short HEAD)"
search --target-ppl 35 --study ppl35 --trials 24 --seeds 6 --measure-front 2
search --target-ppl 30.12 --study ppl30.12 --trials 30 --seeds 6 --measure-front 2
log "trial cost"
.venv/bin/python scripts/trial_cost.py "$OUT/ppl35" --sample 1
.venv/bin/python scripts/trial_cost.py "$OUT/ppl30.12" --sample 1
log "independent check"
.venv/bin/python scripts/independent_check.py "$OUT/ppl35/best.json" \
    "$OUT/ppl30.12/best.json" --out "$OUT/independent-check.json"
log "report"
.venv/bin/autoq report "$OUT" --out "$OUT/report" -q
log "done"
