#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with the CPU build of torch
# and the project (editable) with its dev extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.d1-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    # CPU path: pin torch so pip takes the CPU wheel instead of a multi-GB CUDA build.
    .venv/bin/python -m pip install -q "torch==${D1_TORCH_VERSION:-2.13.0}"
    .venv/bin/python -m pip install -q -e ".[dev]" "torch==${D1_TORCH_VERSION:-2.13.0}"
    echo "$want" > "$stamp"
fi
