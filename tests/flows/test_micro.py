"""The real micro profile through the README's one-shot (infra.local.stack.run_and_report):
local Prefect server, deployments from prefect.yaml, ``prefect deployment run d1-full/micro``, a
``--run-once`` process worker, the run COMPLETED with its metrics, artifacts and provenance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.local.oneshot import run_and_report
from tests.checkout import working_tree_copy
from infra.local.stack import LocalStack

pytestmark = pytest.mark.slow

TASK = "countdown"
MODELS = ("base", "sft", "d1", "wd1", "spg", "espo")  # the micro profile's report rows: every RL algorithm


@pytest.fixture
def checkout(repo_root, tmp_path):
    """The working tree's tracked and new (not ignored) files, committed in a throwaway git repo."""
    return working_tree_copy(repo_root, tmp_path / "checkout")


def _artifacts(stack: LocalStack, run_id) -> dict:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with SyncPrefectClient(stack.api_url) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return {a.key: a for a in arts}


def test_micro_profile_through_a_prefect_deployment(checkout, tmp_path, monkeypatch):
    for key in ("D1_DVC_STAGE", "D1_FLOW_RUN_ID", "D1_TASK_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    LENGTH = yaml.safe_load((checkout / "params.yaml").read_text())["pipeline"]["gen_lengths"][0]
    stack = LocalStack(checkout, state_dir=tmp_path / "stack")
    lines: list[str] = []
    params = [f'tasks=["{TASK}"]', f'overrides=["pipeline.gen_lengths=[{LENGTH}]"]']  # one task, one length
    try:
        rc = run_and_report(checkout, "micro", params, timeout=900, echo=lines.append, stack=stack)
        text = "\n".join(lines)
        print(text)  # the one-shot's output (pytest -s shows it)
        assert rc == 0, text[-6000:]
        assert "): COMPLETED" in text
        assert f"== Prefect UI: http://127.0.0.1:{stack.port}/runs/flow-run/" in text
        assert f"| outputs/eval/d1/{TASK}/{LENGTH}/metrics.json | {TASK}.{LENGTH}.accuracy |" in text
        assert "d1 lineage outputs/report/results.json" in text
        run_id = next(line.split()[2] for line in lines if line.startswith("flow run ") and "worker on pool" in line)
        run_id = run_id.rstrip(";")

        for model in MODELS:
            metrics = json.loads((checkout / f"outputs/eval/{model}/{TASK}/{LENGTH}/metrics.json").read_text())
            assert metrics[TASK][str(LENGTH)]["n"] > 0
        arts = _artifacts(stack, run_id)
        assert {"d1-eval-metrics", "d1-results", "d1-outputs"} <= set(arts)
        table = arts["d1-eval-metrics"].data
        table = json.loads(table) if isinstance(table, str) else table
        assert [(r["model"], r["task"], r["gen_length"]) for r in table] == [(m, TASK, LENGTH) for m in MODELS]
        results_md = (checkout / "outputs/report/results.md").read_text()
        assert results_md.strip() in arts["d1-results"].data
        assert results_md.strip() in text  # the one-shot printed the report's table
        provenance = json.loads((checkout / "outputs/provenance/report.json").read_text())
        assert provenance["flow_run_id"] == run_id and provenance["stage"] == "report"
        lineage = subprocess.run([str(Path(sys.executable).parent / "d1"), "lineage", "outputs/report/results.json",
                                  "--json"], cwd=checkout, capture_output=True, text=True)
        assert lineage.returncode == 0, lineage.stderr
        assert run_id in lineage.stdout and '"prepare"' in lineage.stdout  # the flow run behind every stage
        status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=checkout, capture_output=True,
                                text=True, env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"))
        assert "up to date" in status.stdout, status.stdout
    finally:
        stack.down()
