#!/usr/bin/env bash
# The committed SmolLM2-135M / WikiText-2 benchmark (CPU, offline), end to end:
# searches for each quality target given (sharing baselines, sensitivities and the
# layer cache), then the trial-cost comparison and the report. Usage:
#   bash scripts/bench_smollm2.sh [TRIALS] [TARGET ...]   (default: 12 trials, ppl 35)
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${1:-12}
shift || true
TARGETS=("${@:-35}")
OUT=results/benchmarks/smollm2-wikitext2
DATA=../shared/data/wikitext-2-raw/wiki.test.raw
COMMON=(--model smollm2 --task wikitext2 --data "$DATA" --seq-len 512 --limit 40
        --space "$OUT/space.yaml" --out "$OUT" --trials "$TRIALS" --seeds 8 --seed 0 --measure-front 4)
log() { echo "[$(date -u +%FT%TZ)] $*" | tee -a "$OUT/bench.log"; }
log "start: $(nproc) cores, $(python3 --version 2>&1)"
for target in "${TARGETS[@]}"; do
  study="ppl$target"
  log "autoq search ${COMMON[*]} --target-ppl $target --study $study"
  /usr/bin/time -f "%e s wall" -a -o "$OUT/bench.log" \
    .venv/bin/autoq search "${COMMON[@]}" --target-ppl "$target" --study "$study"
done
log "trial cost"
.venv/bin/python scripts/trial_cost.py "$OUT/ppl${TARGETS[0]}" --sample 1
log "report"
.venv/bin/autoq report "$OUT" --out "$OUT/report" -q
log "done"
