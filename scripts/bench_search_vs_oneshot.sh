#!/usr/bin/env bash
# The search against autoq's one-shot knapsack at equal size (issue 22), SmolLM2-135M on
# WikiText-2, CPU: three size budgets equal to the one-shot sensitivity knapsack plans at
# 4.0, 4.5 and 5.5 bits per searched weight (whole model: every decoder linear and the tied
# embedding/head, groups >= 64: results/benchmarks/smollm2-splits/space.yaml), one budget
# study each (`autoq search --max-size-mib S`: evolve sampler, multi-fidelity pruning),
# searched on the first 40 validation windows of 512 tokens and reported on the first 160
# test windows. Then summary.json and plot.png (scripts/search_vs_oneshot.py).
# Usage: bash scripts/bench_search_vs_oneshot.sh [python] (default .venv/bin/python);
# TRIALS and TIMEOUT (seconds of trials per budget) may be set in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
OUT=results/benchmarks/search-vs-oneshot
VALID=../shared/data/wikitext-2-raw/wiki.valid.raw
TEST=../shared/data/wikitext-2-raw/wiki.test.raw
TRIALS=${TRIALS:-5000}
TIMEOUT=${TIMEOUT:-1200}
mkdir -p "$OUT/sensitivity" "$OUT/baselines"
log() { echo "[$(date -u +%FT%TZ)] $* (load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$OUT/bench.log"; }
timed() { log "$*" >&2; /usr/bin/time -f "%e s wall" -a -o "$OUT/bench.log" "$@"; }
log "start: $(nproc) cores, $("$PY" --version 2>&1), torch $("$PY" -c 'import torch; print(torch.__version__)'), optuna $("$PY" -c 'import optuna; print(optuna.__version__)'), git $(git rev-parse --short HEAD)"
cp results/benchmarks/smollm2-splits/space.yaml "$OUT/space.yaml"
# caches keyed by a hash of model, data, options and method: used only where they match
cp -n results/benchmarks/smollm2-splits/sensitivity/*.json "$OUT/sensitivity/" 2>/dev/null || true
cp -n results/benchmarks/smollm2-splits/baselines/single-layer-kl-*.json "$OUT/baselines/" 2>/dev/null || true
[ -s "$OUT/budgets.json" ] || PYTHONPATH=. timed "$PY" scripts/search_vs_oneshot.py budgets \
    --space "$OUT/space.yaml" --data "$VALID" --bits 4.0,4.5,5.5 \
    --sensitivity "$OUT/sensitivity" --cache-dir "$OUT/layer-cache" --out "$OUT/budgets.json"
COMMON=(--model smollm2 --data "$VALID" --seq-len 512 --limit 40 --report-data "$TEST"
        --report-limit 160 --space "$OUT/space.yaml" --out "$OUT" --seed 0 --measure-front 0
        --report-front 3 --trials "$TRIALS" --timeout "$TIMEOUT" -q)
for BITS in 4 4.5 5.5; do
    MIB=$("$PY" -c "import json; print(repr(json.load(open('$OUT/budgets.json'))['$BITS']['max_size_mib']))")
    timed "$PY" -m autoq.cli search "${COMMON[@]}" --max-size-mib "$MIB" --study "b$BITS"
done
log "summary"
PYTHONPATH=. "$PY" scripts/search_vs_oneshot.py summary "$OUT" | tee -a "$OUT/bench.log"
log "done"
