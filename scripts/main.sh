#!/usr/bin/env bash
# The main job on the embedded CPU default: set up, run the pipeline stages that
# exist so far (data prep, through DVC), then score the published LLaDA-8B-Instruct
# generations to show the evaluator reproduces the d1 paper's baseline row.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== dvc repro (data prep)"
dvc repro
echo "== data written: see data/manifest.json (counts, sources, sha256, seed)"
echo "== d1 score-dir reference/llada-8b-instruct-generations (paper baseline row)"
d1 score-dir reference/llada-8b-instruct-generations
