"""Two checkouts exchanging stage data through a real S3 DVC remote (SeaweedFS ``weed mini``).

Checkout A (the "CPU box", micro profile on one task) points its default DVC remote at
``s3://<bucket>/<prefix>`` with the server's endpoint (``.dvc/config``, committed: URL and endpoint,
nothing else), runs the first stages with ``dvc repro``, ``dvc push``es them and commits dvc.lock.
Checkout B (the "GPU box") is a ``git clone`` of A: git and the remote, no DVC cache, no data, no
outputs. The ``d1-stage/gpu`` deployment runs one stage there (local Prefect server, a ``--run-once``
worker on the gpu pool, the deployment's working directory B), with the parameters ``d1-full`` would
send: it pulls the stage's inputs from S3, runs the stage and pushes its outputs. A then takes the
stage's dvc.lock entry from the flow run's artifact (as ``d1-full`` does) and pulls the outputs from
S3: both checkouts end with the same dvc.lock, the same files, and a clean ``dvc status`` (B ran the
stage on exactly A's inputs).

Why not run the stage in both checkouts and compare: every run of a stage writes its wall time
(eval's generations files, training metrics) and its provenance record (flow run, host, times), so
two runs are never byte-identical; identical inputs are shown by the dvc.lock deps, identical
outputs by the exchange.

Credentials: only ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` in the environment (random per
run; AWS config files pointed at nothing); without them the same checkout cannot read the remote.
The secret appears in no file of either checkout (logs, outputs, provenance, caches, git), nowhere
in the Prefect server's folder (its database holds the flow run logs), in no flow run log and in no
process output.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows import dvc_ops
from flows.stages import LOCK_ARTIFACT, RAN, parse_lock_markdown
from infra.local.stack import LocalStack
from tests.checkout import GIT, working_tree_copy
from tests.s3_server import WeedNotFound, running_s3_server

pytestmark = [pytest.mark.slow, pytest.mark.s3]

TASK, LENGTH = "countdown", 64
STAGE = f"eval@base-{TASK}-{LENGTH}"  # runs on the "GPU box"
UPSTREAM = ["prepare", "base"]  # run on the "CPU box" (the stage's upstream closure)
PREFIX = "dvc/d1-pipeline"  # the DVC remote: s3://<bucket>/<PREFIX>
REMOTE = "storage"


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """A SeaweedFS S3 server with random credentials, given to clients through AWS_* variables only."""
    key, secret = f"d1key{secrets.token_hex(6)}", secrets.token_hex(20)
    try:
        with running_s3_server(tmp_path / "s3", key=key, secret=secret) as server:
            for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                         "AWS_ENDPOINT_URL_S3"):
                monkeypatch.delenv(name, raising=False)
            # no credentials from files or an instance: the environment is the only source
            monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
            monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
            monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.key)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret)
            yield server
    except WeedNotFound as exc:
        pytest.skip(str(exc))


def micro_on_one_task(dst: Path) -> None:
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["profile"] = "micro"
    params["pipeline"] = {"tasks": [TASK], "gen_lengths": [LENGTH], "models": ["base", "sft", "d1"],
                          "algorithms": ["d1"]}
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run(cmd: list[str], cwd: Path, env: dict, *, check: bool = True, timeout: int = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}"
    return out


def remote_objects(server) -> set[str]:
    import s3fs

    fs = s3fs.S3FileSystem(**server.storage_options, skip_instance_cache=True)
    return set(fs.find(f"{server.bucket}/{PREFIX}"))


def digest(path: Path) -> dict[str, str]:
    """``{relative file: sha256}`` of a file or of every file under a folder."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def files_containing(roots: list[Path], needle: bytes) -> list[str]:
    return [str(p) for root in roots for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_a_stage_runs_in_a_second_checkout_with_data_through_s3(repo_root, tmp_path, s3, monkeypatch):
    for key in ("D1_DVC_STAGE", "D1_FLOW_RUN_ID", "D1_TASK_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               DVC_NO_ANALYTICS="1")
    outputs: list[str] = []  # everything the processes printed
    t0 = time.perf_counter()

    # --- A, the "CPU box": S3 remote (URL + endpoint only), the stage's upstream, push, commit
    a = working_tree_copy(repo_root, tmp_path / "cpu-box", micro_on_one_task)
    url = f"s3://{s3.bucket}/{PREFIX}"
    outputs.append(run(["dvc", "remote", "add", "-d", REMOTE, url], a, env))
    outputs.append(run(["dvc", "remote", "modify", REMOTE, "endpointurl", s3.endpoint_url], a, env))
    outputs.append(run(["dvc", "remote", "remove", "local"], a, env))  # S3 is the only remote
    config = (a / ".dvc" / "config").read_text()
    assert url in config and s3.endpoint_url in config
    assert s3.key not in config and s3.secret not in config
    repro = run(["dvc", "repro", UPSTREAM[-1]], a, env)
    outputs.append(repro)
    assert set(re.findall(r"Running stage '([^']+)'", repro)) == set(UPSTREAM)
    outputs.append(run(["dvc", "push"], a, env))
    pushed_by_a = remote_objects(s3)
    assert pushed_by_a, "dvc push put nothing in the S3 remote"
    subprocess.run(GIT + ["add", "-A"], cwd=a, check=True)
    subprocess.run(GIT + ["commit", "-qm", "prepare and base, S3 remote"], cwd=a, check=True)
    lock_a = dvc_ops.read_lock(a)
    assert set(lock_a) == set(UPSTREAM)
    print(f"\nA: S3 remote, dvc repro {UPSTREAM[-1]}, dvc push, commit: {time.perf_counter() - t0:.1f} s")

    # --- B, the "GPU box": git and the remote only
    b = tmp_path / "gpu-box"
    subprocess.run(["git", "clone", "-q", str(a), str(b)], check=True)
    assert not (b / "data").exists() and not (b / "outputs").exists() and not (b / ".dvc" / "cache").exists()
    assert dvc_ops.read_lock(b) == lock_a
    # the remote is configured (from git) but unusable without the credentials in the environment
    no_credentials = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    denied = subprocess.run(["dvc", "fetch", "prepare"], cwd=b, env=no_credentials, capture_output=True,
                            text=True, timeout=300)
    outputs.append(denied.stdout + denied.stderr)
    assert denied.returncode != 0 and not (b / "data").exists(), denied.stdout + denied.stderr
    assert "credentials" in denied.stdout + denied.stderr  # "Unable to locate credentials"

    t1 = time.perf_counter()
    stack = LocalStack(a, state_dir=tmp_path / "stack", gpu_checkout=b)
    worker: list[str] = []
    try:
        stack.start_server()
        stack.create_pools()
        stack.deploy()  # prefect.yaml: d1-stage/gpu works in $D1_GPU_CHECKOUT, here B
        with stack.client() as client:
            deployment = client.read_deployment_by_name("d1-stage/gpu")
            # the parameters d1-full's dispatch sends (flows.stages.remote_stage)
            created = client.create_flow_run_from_deployment(deployment.id, parameters={
                "stage": STAGE, "overrides": [], "lock": {n: lock_a[n] for n in UPSTREAM},
                "flow_run_id": None, "task_run_id": None, "pull": True, "push": True})
        stack.run_worker_once("gpu", timeout=400, echo=worker.append)
        flow_run = stack.wait(str(created.id), timeout=60)
        outputs.append("\n".join(worker))
        assert flow_run.state.is_completed(), f"{flow_run.state.message}\n" + "\n".join(worker)[-4000:]
        from prefect.client.schemas.filters import (
            ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey, LogFilter, LogFilterFlowRunId,
        )

        with stack.client() as client:
            logs: list[str] = []
            while True:  # the API returns at most 200 a page
                page = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])),
                                        limit=200, offset=len(logs))
                logs += [log.message for log in page]
                if len(page) < 200:
                    break
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[LOCK_ARTIFACT]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
    finally:
        stack.down()
    print(f"B: d1-stage/gpu flow run of {STAGE} (server, deploy, worker): {time.perf_counter() - t1:.1f} s")

    # B pulled its inputs (A's outputs) from S3, ran the stage and pushed its outputs there
    text = "\n".join(logs)
    assert f"dvc pull {' '.join(UPSTREAM)} {STAGE}" in text, text[-4000:]
    assert f"dvc repro --single-item {STAGE}" in text
    uploaded = re.search(rf"dvc push {re.escape(STAGE)}: (\d+) file\(s\) uploaded", text)
    assert uploaded and int(uploaded.group(1)) > 0, text[-4000:]
    assert remote_objects(s3) > pushed_by_a
    for stage in UPSTREAM:
        for out in dvc_ops.out_hashes(lock_a, stage):
            assert digest(b / out) == digest(a / out), out
    lock_b = dvc_ops.read_lock(b)
    assert {n: lock_b[n] for n in UPSTREAM} == lock_a
    deps = dvc_ops.dep_hashes(lock_b, STAGE)
    assert deps["data"] == dvc_ops.out_hashes(lock_a, "prepare")["data"]
    assert deps["outputs/base"] == dvc_ops.out_hashes(lock_a, "base")["outputs/base"]
    assert dvc_ops.status(b, STAGE) == {}

    # A takes the entry from the flow run's artifact and the outputs from S3
    assert len(artifacts) == 1
    published = parse_lock_markdown(str(artifacts[0].data))
    assert published["outcome"] == RAN and published["lock"] == lock_b[STAGE]
    outs = list(dvc_ops.out_hashes(lock_b, STAGE))
    assert outs and not any((a / out).exists() for out in outs)
    dvc_ops.merge_lock(a, {STAGE: published["lock"]})
    dvc_ops.pull(a, [STAGE])
    assert dvc_ops.read_lock(a) == lock_b
    for out in outs:
        assert digest(a / out) == digest(b / out), out
    assert dvc_ops.status(a, STAGE) == {}
    metrics = yaml.safe_load((a / f"outputs/eval/base/{TASK}/{LENGTH}/metrics.json").read_text())
    assert metrics[TASK][str(LENGTH)]["n"] == 8
    provenance = yaml.safe_load((a / f"outputs/provenance/{STAGE}.json").read_text())
    assert provenance["stage"] == STAGE and provenance["flow_run_id"] == str(flow_run.id)

    # the secret: in the environment only
    assert s3.secret not in "\n".join(outputs) and s3.secret not in text
    assert s3.secret not in str(artifacts[0].data)
    leaks = files_containing([a, b, tmp_path / "stack"], s3.secret.encode())
    assert not leaks, f"the secret key is written in {leaks}"
    print(f"total: {time.perf_counter() - t0:.1f} s")
