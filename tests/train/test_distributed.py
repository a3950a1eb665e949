"""Two CPU processes (gloo) under ``accelerate launch``: SFT and GRPO run, save and agree across ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.train.conftest import save_tiny_base, write_tiny_data

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("ddp_script.py")


def test_two_process_training(tmp_path, repo_root):
    data = write_tiny_data(tmp_path / "data")
    base = save_tiny_base(data, tmp_path / "base")
    out = tmp_path / "out"
    accelerate = Path(sys.executable).with_name("accelerate")
    # --multi_gpu on a machine without GPUs gives accelerate's MULTI_CPU mode (torchrun + gloo).
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           str(SCRIPT), str(base), str(data), str(out)]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(repo_root), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads((out / f"summary_{r}.json").read_text()) for r in (0, 1)]
    assert [s["world"] for s in summaries] == [2, 2]
    assert all(s["sft"]["steps"] == 3 and s["grpo"]["steps"] == 3 for s in summaries)
    # one set of weights (DDP kept the ranks in step), per-rank RNG states and rollouts in checkpoints
    assert (out / "sft" / "model" / "model.safetensors").is_file()  # merged
    ckpt = out / "grpo" / "checkpoints" / "step-3"
    assert {p.name for p in ckpt.iterdir()} >= {"rng_state_0.pt", "rng_state_1.pt", "model", "optimizer.pt"}
    mid = out / "grpo" / "checkpoints" / "step-1"
    if mid.exists():  # kept only when save_total_limit allows
        assert (mid / "rollouts_1.pt").is_file()
    # SFT trained (the merged weights moved); GRPO's rewards are all 0 for a random model, so its
    # adapter may legitimately stay at zero: only check it was written.
    merged = load_file(str(out / "sft" / "model" / "model.safetensors"))
    start = load_file(str(base / "model.safetensors"))
    assert any(not (merged[k] == start[k]).all() for k in start)
    assert (out / "grpo" / "model" / "adapter_model.safetensors").is_file()
