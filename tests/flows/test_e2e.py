"""End to end through a real Prefect server: deployments from prefect.yaml, process workers,
``prefect deployment run d1-full/micro`` on the toy project (stages on two pools, two checkouts
exchanging data through the DVC remote), artifacts, asset events, a failing stage and its rerun."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from flows import dvc_ops
from infra.local.stack import LocalStack
from tests.flows.toy_project import clone, copy_toy, runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory, toy_template):
    """One Prefect server (SQLite, 127.0.0.1) with the cpu and gpu pools, and a gpu worker."""
    state = tmp_path_factory.mktemp("stack")
    stack = LocalStack(toy_template, state_dir=state)
    try:
        stack.start_server()
        stack.create_pools()
        stack.start_worker("gpu")
        yield stack
    finally:
        stopped = stack.down()
        assert any(s.startswith("server") for s in stopped)


def _deployed(server: LocalStack, toy: Path, gpu: Path) -> LocalStack:
    stack = LocalStack(toy, state_dir=server.state_dir, port=server.port, gpu_checkout=gpu)
    stack.deploy()
    return stack


def _run(stack: LocalStack, *params: str):
    run_id = stack.create_run("d1-full/micro", params)
    stack.run_worker_once("cpu", timeout=400)
    return stack.wait(run_id, timeout=60)


def _task_runs(stack: LocalStack, run_id) -> dict:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with SyncPrefectClient(stack.api_url) as client:
        trs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return {tr.name: tr for tr in trs}


def _artifacts(stack: LocalStack, run_id) -> dict:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with SyncPrefectClient(stack.api_url) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return {a.key: a for a in arts}


def _logs(stack: LocalStack, task_run_id) -> list[str]:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    with SyncPrefectClient(stack.api_url) as client:
        logs = client.read_logs(LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id])), limit=200)
    return [log.message for log in logs]


def _asset_events(stack: LocalStack) -> list[dict]:
    body = {"filter": {"event": {"prefix": ["prefect.asset.materialization.succeeded"]}}, "limit": 50}
    r = httpx.post(f"{stack.api_url}/events/filter", json=body, timeout=30)
    r.raise_for_status()
    return r.json()["events"]


def test_deployment_run_completes_across_pools_with_artifacts_and_assets(server, toy_template, tmp_path):
    toy = copy_toy(toy_template, tmp_path / "toy", tmp_path / "remote")
    gpu = clone(toy, tmp_path / "toy-gpu")
    stack = _deployed(server, toy, gpu)

    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(stack.api_url) as client:  # prefect.yaml as deployed
        llada = client.read_deployment_by_name("d1-full/llada-8b")
        tiny = client.read_deployment_by_name("d1-full/tiny")
    assert llada.work_pool_name == "gpu" and [s.active for s in llada.schedules] == [True]
    assert tiny.work_pool_name == "cpu" and [s.active for s in tiny.schedules] == [False]

    run = _run(stack)
    assert run.state.is_completed(), run.state.message
    # eval@* are mapped to the gpu pool: they ran in the other checkout, the rest here
    assert runs(toy) == ["prepare", "train@a", "train@b", "report"]
    assert runs(gpu) == ["eval@a", "eval@b"]
    assert dvc_ops.status(toy, "report") == {} and dvc_ops.status(toy, "eval@b") == {}
    for out in ("out/data", "out/train/a", "out/eval/a", "out/report"):  # provenance variables reached every stage
        env = json.loads((toy / out / "env.json").read_text())
        assert env["D1_FLOW_RUN_ID"] == str(run.id)
        assert env["D1_DVC_STAGE"] and env["D1_TASK_RUN_ID"]

    tasks = _task_runs(stack, run.id)
    assert {"prepare", "train@a", "train@b", "eval@a -> gpu", "eval@b -> gpu", "report"} <= set(tasks)
    assert all(tasks[n].state.is_completed() for n in ("prepare", "eval@a -> gpu", "report"))

    arts = _artifacts(stack, run.id)
    assert {"d1-eval-metrics", "d1-results", "d1-outputs"} <= set(arts)
    table = arts["d1-eval-metrics"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert [(r["model"], r["task"], r["gen_length"], r["accuracy"]) for r in table] == [
        ("d1", "a", 64, 6.0), ("d1", "b", 64, 6.0)]
    assert "| d1 | a | 6.00 |" in arts["d1-results"].data
    assert "| eval@a | ran on gpu | gpu |" in arts["d1-outputs"].data

    lock = dvc_ops.read_lock(toy)
    keys = {e["resource"]["prefect.resource.id"]: e for e in _asset_events(stack)}
    data_key = f"dvc://d1-pipeline/out/data@{dvc_ops.out_hashes(lock, 'prepare')['out/data']}"
    metrics_key = f"dvc://d1-pipeline/out/eval/a/metrics.json@{dvc_ops.out_hashes(lock, 'eval@a')['out/eval/a/metrics.json']}"
    model_key = f"dvc://d1-pipeline/out/train/a@{dvc_ops.out_hashes(lock, 'train@a')['out/train/a']}"
    assert data_key in keys and metrics_key in keys
    related = {r["prefect.resource.id"] for r in keys[metrics_key]["related"]}
    assert model_key in related  # the metric's upstream asset is the exact model version it evaluated
    assert keys[metrics_key]["payload"]["stage"] == "eval@a"

    again = _run(stack)  # DVC decides: nothing to do
    assert again.state.is_completed(), again.state.message
    assert runs(toy) == ["prepare", "train@a", "train@b", "report"] and runs(gpu) == ["eval@a", "eval@b"]
    assert "| report | up to date | cpu |" in _artifacts(stack, again.id)["d1-outputs"].data


def test_a_failing_stage_fails_its_task_and_a_rerun_continues(server, toy_template, tmp_path):
    toy = copy_toy(toy_template, tmp_path / "toy", tmp_path / "remote")
    gpu = clone(toy, tmp_path / "toy-gpu")
    stack = _deployed(server, toy, gpu)

    error = "d1 train: error: micro.train.scale: must be positive, got -1"
    run = _run(stack, 'overrides=["micro.train.scale=-1"]')
    assert run.state.is_failed()
    assert error in run.state.message
    tasks = _task_runs(stack, run.id)
    assert tasks["prepare"].state.is_completed()
    assert tasks["train@a"].state.is_failed() and error in tasks["train@a"].state.message
    assert not any(n.startswith(("eval", "report")) for n in tasks)  # downstream stages not run
    logs = _logs(stack, tasks["train@a"].id)  # the stage's output, streamed to the task's log
    assert "> python toy.py train a" in logs and error in logs
    assert runs(toy) == ["prepare", "train@a", "train@b"] and runs(gpu) == []  # a d1 error is not retried
    assert (toy / "out/data/train.txt").read_text() == "3"  # completed output intact
    assert dvc_ops.status(toy, "prepare") == {}

    fixed = _run(stack, 'overrides=["micro.train.scale=2"]')
    assert fixed.state.is_completed(), fixed.state.message
    assert runs(toy) == ["prepare", "train@a", "train@b", "train@a", "train@b", "report"]  # prepare not again
    assert runs(gpu) == ["eval@a", "eval@b"]
    assert "| prepare | up to date | cpu |" in _artifacts(stack, fixed.id)["d1-outputs"].data


def test_crashes_are_retried_and_d1_errors_are_not(server, toy_template, tmp_path, monkeypatch):
    """The flow called in-process (no worker), profile `local`: retries 1, every stage on this pool."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.d1_full import d1_full

    toy = copy_toy(toy_template, tmp_path / "toy", tmp_path / "remote")
    monkeypatch.chdir(toy)
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        crashed = d1_full(profile="local", overrides=["local.prepare.crash=true"], return_state=True)
        assert crashed.is_failed() and "RuntimeError: toy prepare crashed" in crashed.message
        assert runs(toy) == ["prepare", "prepare"]  # one retry
        bad = d1_full(profile="local", overrides=["local.prepare.crash=false", "local.train.scale=0"],
                      tasks=["b"], return_state=True)
    assert bad.is_failed() and "d1 train: error: local.train.scale: must be positive, got 0" in bad.message
    assert runs(toy) == ["prepare", "prepare", "prepare", "train@b"]  # the d1 error ran once
