"""The micro profile end to end through DVC, in a throwaway git clone of the working tree:
`dvc repro` (one RL stage per algorithm: d1, wd1, SPG, ESPO, and a report row each), a no-op second
`dvc repro`, a GRPO param sweep point with `dvc exp run -S` (re-runs only the RL stages, their
evaluations and the report), `d1 lineage` on the report, and `dvc push`/`dvc pull` through the
default local remote."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.checkout import GIT, working_tree_copy

pytestmark = pytest.mark.slow

TASK, LENGTH = "countdown", 64
ALGORITHMS = ("d1", "wd1", "spg", "espo")  # every RL algorithm the micro profile defines, side by side
MODELS = ("base", "sft", *ALGORITHMS)


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 600) -> tuple[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}"
    return out, wall


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def changed_stages(root: Path, env: dict, module: str) -> set[str]:
    """The stages ``dvc status`` marks after a comment is appended to ``module`` (restored afterwards)."""
    path = root / module
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n# edited\n")
        done = subprocess.run(["dvc", "status", "--json"], cwd=root, env=env, capture_output=True, text=True,
                              timeout=300)
    finally:
        path.write_bytes(original)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout))


@pytest.fixture
def project(repo_root, tmp_path):
    """The working tree's tracked and new (not ignored) files, micro profile on one task, committed."""

    def micro_on_one_task(dst: Path) -> None:
        params = yaml.safe_load((dst / "params.yaml").read_text())
        params["profile"] = "micro"
        params["pipeline"] = {"tasks": [TASK], "gen_lengths": [LENGTH], "models": list(MODELS),
                              "algorithms": list(ALGORITHMS)}
        (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    dst = working_tree_copy(repo_root, tmp_path / "clone", micro_on_one_task)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               GIT_AUTHOR_NAME="ci", GIT_AUTHOR_EMAIL="ci@example.com", GIT_COMMITTER_NAME="ci",
               GIT_COMMITTER_EMAIL="ci@example.com", DVC_NO_ANALYTICS="1")
    for key in ("D1_DVC_STAGE", "D1_FLOW_RUN_ID", "D1_TASK_RUN_ID"):
        env.pop(key, None)
    return dst, env


def test_dvc_pipeline_micro(project):
    root, env = project
    evals = {f"eval@{m}-{TASK}-{LENGTH}" for m in MODELS}
    grpo_stages = {f"grpo@{a}-{TASK}" for a in ALGORITHMS}
    stages = {"prepare", "base", "sft", "report"} | grpo_stages | evals

    out, wall = run(["dvc", "repro"], root, env)
    print(f"\ndvc repro (micro, 1 task): {wall:.1f} s")
    assert ran_stages(out) == stages
    for model in MODELS:
        metrics = json.loads((root / f"outputs/eval/{model}/{TASK}/{LENGTH}/metrics.json").read_text())
        assert metrics[TASK][str(LENGTH)]["n"] == 8
    for algorithm in ALGORITHMS:  # each trained with its own objective and estimator
        resolved = json.loads((root / f"outputs/{algorithm}/{TASK}/grpo_config.json").read_text())
        assert resolved["algorithm"] == algorithm
        assert (resolved["objective"], resolved["estimator"]) == {
            "d1": ("diffu_grpo", "one_step"), "wd1": ("wd1", "one_step"), "spg": ("spg", "spg_blocks"),
            "espo": ("espo", "elbo")}[algorithm]
    results = json.loads((root / "outputs/report/results.json").read_text())
    assert set(results["accuracy"]) == set(MODELS)
    assert set(results["gaps"]) == {"sft-base"} | {f"{a}-sft" for a in ALGORITHMS}
    table = (root / "outputs/report/results.md").read_text()
    for label in ("| base |", "| +SFT |", "| d1 |", "| wd1 |", "| SPG |", "| ESPO |", "| ESPO − +SFT |"):
        assert label in table, label
    assert (root / f"outputs/report/plots/accuracy_{TASK}.png").is_file()
    assert (root / f"outputs/report/plots/reward_{TASK}.png").is_file()
    assert "data:image/png;base64," in (root / "outputs/report/index.html").read_text()
    shown, _ = run(["dvc", "metrics", "show", "--json"], root, env)
    assert "outputs/report/results.json" in shown and "outputs/dvclive/sft/metrics.json" in shown

    # Nothing changed: nothing runs (the time is printed, not asserted).
    out, wall = run(["dvc", "repro"], root, env)
    print(f"second dvc repro: {wall:.2f} s")
    assert ran_stages(out) == set() and "up to date" in out
    status, _ = run(["dvc", "status"], root, env)
    assert "up to date" in status

    # An edited module marks the stages that run it, nothing upstream: the GRPO trainer -> grpo only
    # (its descendants follow once its outputs change), the SFT module -> sft only.
    descendants = {f"eval@{a}-{TASK}-{LENGTH}" for a in ALGORITHMS} | {"report"}
    assert changed_stages(root, env, "d1/train/grpo.py") & grpo_stages == grpo_stages
    assert changed_stages(root, env, "d1/train/grpo.py") <= grpo_stages | descendants
    assert changed_stages(root, env, "d1/algo/grpo.py") == grpo_stages
    assert changed_stages(root, env, "d1/train/sft.py") == {"sft"}
    assert changed_stages(root, env, "d1/generation/sampler.py") == grpo_stages | evals
    status, _ = run(["dvc", "status"], root, env)
    assert "up to date" in status

    # One GRPO param changed: the RL stages, their evaluations and the report re-run, nothing else.
    subprocess.run(GIT + ["add", "-A"], cwd=root, env=env, check=True)
    subprocess.run(GIT + ["commit", "-qm", "repro"], cwd=root, env=env, check=True)
    before = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    out, wall = run(["dvc", "exp", "run", "-S", "micro.grpo.lr=2e-3"], root, env)
    print(f"dvc exp run -S micro.grpo.lr=2e-3: {wall:.1f} s")
    rerun = grpo_stages | descendants
    assert ran_stages(out) == rerun
    after = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert {name for name in after if after[name] != before[name]} == rerun
    assert after[f"grpo@d1-{TASK}"]["params"]["params.yaml"]["micro.grpo"]["lr"] == 2e-3

    # Lineage of the final metrics: every upstream stage, with input hashes and its provenance.
    out, _ = run(["d1", "lineage", "outputs/report/results.json", "--json"], root, env)
    lin = json.loads(out)
    assert {s["stage"] for s in lin["stages"]} == stages and lin["stages"][-1]["stage"] == "prepare"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    for rec in lin["stages"]:
        assert rec["deps"] and all(d["md5"] for d in rec["deps"]), rec["stage"]
        assert rec["provenance"]["stage"] == rec["stage"] and rec["git_commit"], rec["stage"]
        assert "flow_run_id" in rec and rec["flow_run_id"] is None  # run by dvc, not by a Prefect flow
    assert {r["stage"]: r["git_commit"] for r in lin["stages"]}[f"grpo@d1-{TASK}"] == commit
    text, _ = run(["d1", "lineage", "outputs/report/results.json"], root, env)
    assert f"stage grpo@d1-{TASK}" in text and "micro.grpo.lr = 0.002" in text

    # The default remote (a folder in .dvc/, git-ignored) takes the outputs and gives them back.
    run(["dvc", "push"], root, env)
    saved = (root / "outputs/report/results.json").read_bytes()
    shutil.rmtree(root / "outputs")
    shutil.rmtree(root / "data")
    shutil.rmtree(root / ".dvc" / "cache")
    run(["dvc", "pull"], root, env)
    assert (root / "outputs/report/results.json").read_bytes() == saved
    status, _ = run(["dvc", "status"], root, env)
    assert "up to date" in status
    ignored = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=root,
                             capture_output=True, text=True).stdout
    assert ".dvc/remote" not in ignored and "outputs/" not in ignored
