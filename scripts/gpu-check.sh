#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): an LLaDA-8B-shaped model (our class, the 8B config, random
# weights, bf16) through the sampler, a masked-SFT step, a diffu-GRPO step (bf16 and 4-bit base) and the
# micro profile's stages, printed as one markdown table; within 6 minutes on one H200-class GPU, offline.
#
#   bash scripts/gpu-check.sh                 # on a GPU box (--budget-s 330, --skip-stages, --sections ...)
#   bash scripts/gpu-check.sh --cpu           # the same code paths on a tiny model, on the CPU (CI)
#
# Arguments go to the module. Python: the project's .venv when there is one (scripts/setup.sh), else
# $PYTHON or python3 (the GPU image installs the project into its own Python). Sets nothing up.
# Exit status: the module's (1 when a check failed, 2 without a GPU and without --cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
    export PATH="$PWD/.venv/bin:$PATH"
else
    PY=${PYTHON:-python3}
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 DVC_NO_ANALYTICS=1
exec "$PY" benchmarks/gpu_check.py "$@"
