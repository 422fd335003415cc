#!/usr/bin/env bash
# The committed SmolLM2-135M / WikiText-2 benchmark (CPU, offline), end to end, as run:
# three searches (ppl 35; ppl 30.12; ppl 30.12 within 184 MiB = 6.0 bits/weight) sharing
# baselines, sensitivities and the layer cache under one --out, the trial-cost
# comparison, the independent hqq check of the plans, and the report.
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
log "start: $(nproc) cores, $(python3 --version 2>&1)"
search --target-ppl 35 --study ppl35 --trials 12 --seeds 8 --measure-front 4
log "trial cost"
.venv/bin/python scripts/trial_cost.py "$OUT/ppl35" --sample 1
search --target-ppl 30.12 --study ppl30.12 --trials 5 --seeds 5 --measure-front 2
search --target-ppl 30.12 --max-size-mib 184 --study ppl30.12-184MiB --trials 4 --seeds 4 \
    --measure-front 2
log "independent check"
.venv/bin/python scripts/independent_check.py "$OUT/ppl35/best.json" \
    "$OUT/ppl30.12/best.json" --out "$OUT/independent-check.json"
.venv/bin/python scripts/independent_check.py "$OUT/ppl30.12-184MiB/pareto-01.json" \
    --out "$OUT/independent-check-184MiB.json"
log "report"
.venv/bin/autoq report "$OUT" --out "$OUT/report" -q
log "done"
