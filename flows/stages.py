"""Running one DVC stage from a Prefect flow: here, or on another work pool.

A stage on the flow's own pool runs in the flow's process (``run_here``):
``dvc pull`` the outputs of the stages it depends on and its own (a stage done
elsewhere is then up to date here), ``dvc status`` (nothing to do: skipped),
``dvc repro --single-item`` with the provenance variables set and its output
streamed to the Prefect log, ``dvc push`` of its outputs.

A stage on another pool runs as a flow run of the ``d1-stage/<pool>``
deployment in that pool's checkout (``dispatch``), with the same params
overrides and the dvc.lock entries of the stages upstream of it, so it can
``dvc pull`` its inputs from the DVC remote; it runs as above, pushes its
outputs and publishes its new dvc.lock entry as an artifact, which the
calling flow writes into its own dvc.lock. The outputs stay in the DVC
remote until a stage that needs them pulls them (a CPU box never downloads
a GPU stage's model unless a stage running there depends on it): as with
``dvc repro --allow-missing``, a stage on another pool whose only change is
missing outputs counts as up to date.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Mapping, Sequence

from d1.errors import ConfigError, D1Error
from d1.locks import checkout_run
from flows import dvc_ops
from flows.dvc_ops import StageFailed
from d1.provenance import ENV_FLOW_RUN, ENV_STAGE, ENV_TASK_RUN

STAGE_FLOW = "d1-stage"
LOCK_ARTIFACT = "d1-stage-lock"
UP_TO_DATE = "up to date"
RAN = "ran"


def summarize(changes: Mapping[str, list]) -> str:
    """``dvc status`` changes of one stage on one line."""
    parts = []
    for items in changes.values():
        for item in items:
            if isinstance(item, dict):
                for kind, detail in item.items():
                    parts.append(f"{kind}: " + _first_few([f"{k} {v}" for k, v in detail.items()])
                                 if isinstance(detail, dict) else f"{kind}: {detail}")
            else:
                parts.append(str(item))
    return "; ".join(parts) or "no changes"


def _first_few(items: list[str], shown: int = 4) -> str:
    """``a, b, c, d and 9 more``: a log line stays readable when every dependency changed."""
    if len(items) <= shown + 1:
        return ", ".join(items)
    return ", ".join(items[:shown]) + f" and {len(items) - shown} more"


def only_missing_outputs(changes: Mapping[str, list]) -> bool:
    """True when the only change is outputs absent from the workspace (deps, params, command unchanged)."""
    seen = False
    for items in changes.values():
        for item in items:
            if not (isinstance(item, dict) and set(item) == {"changed outs"}):
                return False
            if any(v not in ("deleted", "not in cache") for v in item["changed outs"].values()):
                return False
            seen = True
    return seen


def run_here(
    root: str | Path, stage: str, upstream: Sequence[str], *, pull: bool, push: bool,
    env: Mapping[str, str], log: Callable[[str], None],
) -> str:
    """Pull, check, reproduce and push one stage in this checkout; returns ``ran`` or ``up to date``."""
    if pull:
        targets = [*upstream, stage]
        log(f"dvc pull {' '.join(targets)}")
        dvc_ops.pull(root, list(upstream), log=log)
        # the stage's own outputs with force: a killed try of it (a retry after a crash) left partial files
        dvc_ops.pull(root, [stage], log=log, force=True)
    changes = dvc_ops.status(root, stage)
    if not changes:
        log(f"{stage}: up to date (dvc status), skipped")
        return UP_TO_DATE
    log(f"{stage}: {summarize(changes)}; dvc repro --single-item {stage}")
    dvc_ops.repro(root, stage, env=env, on_line=log)
    if push:
        count = dvc_ops.push(root, [stage])
        log(f"dvc push {stage}: {count} file(s) uploaded")
    return RAN


def retry_condition(task, task_run, state) -> bool:
    """Retry crashes, never a one-line d1 error or a config error (same input, same error)."""
    exc = state.data
    if isinstance(exc, StageFailed):
        return exc.retryable
    return not isinstance(exc, D1Error)


def _runtime_ids() -> tuple[str, str]:
    from prefect.runtime import flow_run, task_run

    return str(flow_run.id or ""), str(task_run.id or "")


def local_stage(root: str, stage: str, upstream: list[str], pull: bool, push: bool,
                flow_run_id: str | None = None) -> dict:
    """The body of the Prefect task that runs a stage in this process."""
    from prefect import get_run_logger

    logger = get_run_logger()
    own_flow, own_task = _runtime_ids()
    env = {ENV_STAGE: stage, ENV_FLOW_RUN: flow_run_id or own_flow, ENV_TASK_RUN: own_task, **QUIET_PROGRESS}
    outcome = run_here(root, stage, upstream, pull=pull, push=push, env=env, log=logger.info)
    return {"stage": stage, "outcome": outcome}


#: progress bars of a stage under Prefect: one update every 10 s (tqdm reads TQDM_* defaults from the
#: environment), not one log record per step in the Prefect database
QUIET_PROGRESS = {"TQDM_MININTERVAL": "10"}

_D1_ERROR_IN_TEXT = re.compile(r"d1 [\w-]+: error: [^\n]+")


def _lock_markdown(stage: str, entry: dict | None, outcome: str) -> str:
    payload = json.dumps({"stage": stage, "outcome": outcome, "lock": entry}, indent=1, sort_keys=True)
    return f"dvc.lock entry of stage `{stage}` ({outcome}):\n\n```json\n{payload}\n```\n"


def parse_lock_markdown(text: str) -> dict:
    m = re.search(r"```json\n(.*?)\n```", text, re.S)
    if not m:
        raise ConfigError("the d1-stage lock artifact holds no JSON block")
    return json.loads(m.group(1))


def remote_stage(root: str, stage: str, upstream: list[str], pool: str, overrides: list[str],
                 flow_run_id: str | None, timeout: float | None) -> dict:
    """The body of the Prefect task that runs a stage on another pool (see the module docstring)."""
    from prefect import get_run_logger
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    changes = dvc_ops.status(root, stage)
    if not changes or only_missing_outputs(changes):
        logger.info(f"{stage}: up to date (dvc status; outputs in the DVC remote), not dispatched")
        return {"stage": stage, "outcome": UP_TO_DATE}
    own_flow, own_task = _runtime_ids()
    lock = dvc_ops.read_lock(root)
    entries = {n: lock[n] for n in upstream if n in lock}
    name = f"{STAGE_FLOW}/{pool}"
    logger.info(f"{stage}: {summarize(changes)}; dispatching to {name}")
    run = run_deployment(
        name, timeout=timeout, poll_interval=2,
        parameters={"stage": stage, "overrides": list(overrides), "lock": entries,
                    "flow_run_id": flow_run_id or own_flow, "task_run_id": own_task, "pull": True, "push": True},
    )
    state = run.state
    if state is None or not state.is_final():
        raise StageFailed(stage, f"flow run {run.name} on pool {pool} did not finish within {timeout} s "
                          f"({state.name if state else 'no state'})", retryable=True)
    if not state.is_completed():
        message = state.message or state.name
        found = _D1_ERROR_IN_TEXT.search(message)
        raise StageFailed(stage, f"{found.group(0) if found else message} (flow run {run.name} on pool {pool})",
                          retryable=found is None)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[LOCK_ARTIFACT]), flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    if not artifacts:
        raise StageFailed(stage, f"flow run {run.name} on pool {pool} published no {LOCK_ARTIFACT} artifact",
                          retryable=True)
    result = parse_lock_markdown(str(artifacts[0].data))
    if not result.get("lock"):
        raise StageFailed(stage, f"flow run {run.name} on pool {pool} has no dvc.lock entry for it", retryable=True)
    dvc_ops.merge_lock(root, {stage: result["lock"]})
    after = dvc_ops.status(root, stage)
    if after and not only_missing_outputs(after):
        raise StageFailed(stage, f"ran on pool {pool}, but its inputs there differ from this checkout's "
                          f"({summarize(after)}); are both checkouts at the same commit?", retryable=False)
    return {"stage": stage, "outcome": f"{result.get('outcome', RAN)} on {pool}"}


def stage_flow_body(stage: str, overrides: list[str], lock: dict, flow_run_id: str | None,
                    task_run_id: str | None, pull: bool, push: bool, root: str | Path = ".") -> dict:
    """The ``d1-stage`` flow: one stage in this checkout, its dvc.lock entry published as an artifact."""
    from prefect import get_run_logger
    from prefect.artifacts import create_markdown_artifact

    from flows.graph import by_name, read_stages
    from flows.params import write_overrides

    logger = get_run_logger()
    root = Path(root).resolve()
    if overrides:
        write_overrides(root, overrides)
    dvc_ops.merge_lock(root, lock or {})
    stages = by_name(read_stages(root))
    if stage not in stages:
        raise ConfigError(f"stage {stage!r} is not in {root}/dvc.yaml (stages: {', '.join(stages)})")
    own_flow, _ = _runtime_ids()
    env = {ENV_STAGE: stage, ENV_FLOW_RUN: flow_run_id or own_flow, ENV_TASK_RUN: task_run_id or "",
           **QUIET_PROGRESS}
    with checkout_run(root, flow_run_id=env[ENV_FLOW_RUN]):
        outcome = run_here(root, stage, stages[stage].upstream, pull=pull, push=push, env=env, log=logger.info)
    entry = dvc_ops.read_lock(root).get(stage)
    create_markdown_artifact(_lock_markdown(stage, entry, outcome), key=LOCK_ARTIFACT,
                             description=f"dvc.lock entry of {stage} for the calling flow")
    return {"stage": stage, "outcome": outcome, "lock": entry}
