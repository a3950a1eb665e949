"""A stage process killed inside a Prefect flow run: the task's retry resumes it from its checkpoint.

The micro deployment through the local stack (as tests/flows/test_micro.py), sft with a checkpoint
every step. A watcher SIGKILLs the `d1 sft` process (its pid is in the stage's lock record,
d1.locks) once a checkpoint is complete; `dvc repro` fails, the flow's retry runs the stage
again, which resumes (its summary says `resumed_from`) and ends with the weights of an
uninterrupted `dvc repro sft` in another copy.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from d1.locks import LOCK_DIR, stage_lock_name
from infra.local.oneshot import run_and_report
from infra.local.stack import LocalStack
from tests.checkout import working_tree_copy

pytestmark = pytest.mark.slow

TASK, SFT_STEPS, KILL_AFTER = "countdown", 30, 6


def sft_with_checkpoints(dst: Path) -> None:
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["profile"] = "micro"
    params["pipeline"] = {"tasks": [TASK], "gen_lengths": [64], "models": ["base", "sft", "d1"], "algorithms": ["d1"]}
    params["micro"]["sft"].update(max_steps=SFT_STEPS, save_steps=1, save_total_limit=2)
    params["micro"]["flow"]["retry_delay_seconds"] = 1
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def kill_sft_after_checkpoint(root: Path, killed: list[int], stop: threading.Event) -> None:
    checkpoints = root / ".d1-checkpoints" / "outputs--sft"
    lock = root / LOCK_DIR / stage_lock_name("outputs/sft")
    while not stop.is_set():
        if any(checkpoints.glob(f"*/step-{KILL_AFTER}/complete.json")):
            pid = json.loads(lock.read_text())["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.02)


def test_a_killed_stage_is_retried_by_prefect_and_resumes(repo_root, tmp_path, monkeypatch):
    for key in ("D1_DVC_STAGE", "D1_FLOW_RUN_ID", "D1_TASK_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    straight = working_tree_copy(repo_root, tmp_path / "straight", sft_with_checkpoints)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["dvc", "repro", "sft"], cwd=straight, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    checkout = working_tree_copy(repo_root, tmp_path / "checkout", sft_with_checkpoints)
    stack = LocalStack(checkout, state_dir=tmp_path / "stack")
    killed: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(target=kill_sft_after_checkpoint, args=(checkout, killed, stop), daemon=True)
    watcher.start()
    lines: list[str] = []
    try:
        rc = run_and_report(checkout, "micro", [f'tasks=["{TASK}"]', 'overrides=["pipeline.gen_lengths=[64]"]',
                                                'algorithms=["d1"]'],
                            timeout=900, echo=lines.append, stack=stack)
    finally:
        stop.set()
        stack.down()
    text = "\n".join(lines)
    assert killed, "the watcher never saw the checkpoint it waits for"
    assert rc == 0, text[-6000:]
    resumed = [int(n) for n in re.findall(r'"stage": "sft".*?"resumed_from": (\d+)', text)]
    assert resumed and KILL_AFTER <= resumed[-1] < SFT_STEPS, text[-6000:]
    assert f"sft: resuming from step {resumed[-1]}" in text
    a, b = (load_file(str(next((root / "outputs/sft/model").glob("*.safetensors")))) for root in (straight, checkout))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
