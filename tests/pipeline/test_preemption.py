"""A stage killed under `dvc repro` resumes where it stopped when `dvc repro` runs again.

The micro profile in a throwaway copy of the working tree, with a checkpoint every step. The sft
stage, then the grpo stage, is SIGKILLed (its whole process group: dvc and the d1 command) once
a randomly drawn checkpoint of it is complete; DVC deletes the stage's outputs before the rerun,
the checkpoints live outside them (`checkpoint_root`). Each rerun must report `resumed_from`
(not null) and end with the weights of an uninterrupted run in another copy.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.checkout import working_tree_copy

pytestmark = pytest.mark.slow

TASK = "countdown"
SFT_STEPS, GRPO_STEPS = 30, 12
KILL_POINTS = 2  # random kill points per stage


def with_checkpoints_every_step(dst: Path) -> None:
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["profile"] = "micro"
    params["pipeline"] = {"tasks": [TASK], "gen_lengths": [64], "models": ["base", "sft", "d1"], "algorithms": ["d1"]}
    micro = params["micro"]
    micro["sft"].update(max_steps=SFT_STEPS, save_steps=1, save_total_limit=2)
    micro["grpo"].update(max_steps=GRPO_STEPS, save_steps=1, save_total_limit=2, num_iterations=2)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", DVC_NO_ANALYTICS="1")
    for key in ("D1_DVC_STAGE", "D1_FLOW_RUN_ID", "D1_TASK_RUN_ID"):
        env.pop(key, None)
    return env


def repro(root: Path, target: str, env: dict) -> str:
    done = subprocess.run(["dvc", "repro", target], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"dvc repro {target} failed:\n{out[-4000:]}"
    return out


def resumed_from(output: str, stage: str) -> int | None:
    found = re.findall(r'\{"stage": "%s".*?"resumed_from": (null|\d+)' % stage, output)
    assert found, f"no {stage} summary in:\n{output[-3000:]}"
    return None if found[-1] == "null" else int(found[-1])


def complete_steps(root: Path, out_dir: str) -> list[int]:
    stage_dir = root / ".d1-checkpoints" / out_dir.replace("/", "--")
    return sorted(int(p.parent.name.split("-")[1]) for p in stage_dir.glob("*/step-*/complete.json"))


def kill_after_checkpoint(root: Path, target: str, out_dir: str, step: int, env: dict) -> None:
    """Start `dvc repro target`, SIGKILL its process group once checkpoint ``step`` is complete."""
    proc = subprocess.Popen(["dvc", "repro", target], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while not any(s >= step for s in complete_steps(root, out_dir)):
            assert proc.poll() is None, f"dvc repro {target} ended before checkpoint {step} (rc {proc.returncode})"
            assert time.monotonic() < deadline, f"no checkpoint {step} of {target} in 600 s"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    assert tensors, f"no weights in {folder}"
    return tensors


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6, msg=key)


def test_killed_training_stages_resume_under_dvc_repro(repo_root, tmp_path, env):
    straight = working_tree_copy(repo_root, tmp_path / "straight", with_checkpoints_every_step)
    repro(straight, f"grpo@d1-{TASK}", env)
    killed = working_tree_copy(repo_root, tmp_path / "killed", with_checkpoints_every_step)
    draw = random.Random(int(os.environ.get("D1_KILL_SEED", "0")))

    for stage, target, out_dir, steps, model in (
        ("sft", "sft", "outputs/sft", SFT_STEPS, "outputs/sft/model"),
        ("grpo", f"grpo@d1-{TASK}", f"outputs/d1/{TASK}", GRPO_STEPS, f"outputs/d1/{TASK}/model"),
    ):
        points = sorted(draw.sample(range(1, steps // 2), KILL_POINTS))
        print(f"\n{stage}: killed after checkpoints {points} of {steps} steps")
        for point in points:
            kill_after_checkpoint(killed, target, out_dir, point, env)
            assert not (killed / model).exists()  # nothing half written passes for the stage's output
        out = repro(killed, target, env)
        start = resumed_from(out, stage)
        assert start is not None and points[-1] <= start < steps, (stage, points, start)
        assert f"{stage}: resuming from step {start}" in out
        assert_same_weights(straight / model, killed / model)
    status = subprocess.run(["dvc", "status", "--json"], cwd=killed, env=env, capture_output=True, text=True)
    changed = set(json.loads(status.stdout))
    assert not changed & {"prepare", "base", "sft", f"grpo@d1-{TASK}"}, changed
