#!/usr/bin/env bash
# The main job on the embedded CPU default: set up, then run the tiny d1 pipeline
# through the local Prefect stack (server on SQLite at 127.0.0.1, work pools,
# deployments, a worker) with `prefect deployment run d1-full/tiny`, wait for it,
# print the results table and where to look, and stop the stack. Finally score the
# published LLaDA-8B-Instruct generations (the paper's baseline row).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export PREFECT_SERVER_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=1
python -m infra.local run --profile tiny --down
echo
echo "== d1 score-dir reference/llada-8b-instruct-generations (the paper's LLaDA-8B-Instruct row, published generations)"
d1 score-dir reference/llada-8b-instruct-generations
