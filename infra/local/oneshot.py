"""The README's main command: run ``d1-full/<profile>`` through the local stack, wait, report.

``python -m infra.local run --profile tiny`` calls :func:`run_and_report`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from infra.local.stack import LocalStack, StackError


def _profile_pools(root: Path, profile: str) -> set[str]:
    from flows.pipeline import load_flow_config

    cfg = load_flow_config(root, profile)
    return {cfg.default_pool, *cfg.pools.values()}


def _deployment_pool(stack: LocalStack, deployment: str) -> str:

    with stack.client() as client:
        pool = client.read_deployment_by_name(deployment).work_pool_name
    if not pool:
        raise StackError(f"deployment {deployment} has no work pool")
    return pool


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def eval_metrics_table(stack: LocalStack) -> str:
    """``dvc metrics show --json`` of the eval stages' metrics files, one ``file | metric | value`` row
    each (the wide default table has a column per task x length x field)."""
    from flows.graph import read_stages
    from flows.observe import eval_rows

    files = sorted({r["file"] for r in eval_rows(stack.root, read_stages(stack.root))})
    if not files:
        return "(no eval metrics yet)"
    proc = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show", "--json", *files], cwd=stack.root,
                          env=stack.env(), capture_output=True, text=True)
    try:
        shown = json.loads(proc.stdout)[""]["data"]
    except (ValueError, KeyError, TypeError):
        return (proc.stderr or proc.stdout).strip() or "(dvc metrics show printed nothing)"
    rows = ["| file | metric | value |", "|---|---|---|"]
    for path in sorted(shown):
        flat: dict = {}
        _flatten("", (shown[path] or {}).get("data", {}), flat)
        rows += [f"| {path} | {k} | {v} |" for k, v in flat.items()
                 if k.rsplit(".", 1)[-1] in ("accuracy", "correct", "total")]
    return "\n".join(rows)


def run_and_report(
    root: str | Path = ".", profile: str = "tiny", params: Sequence[str] = (), timeout: float = 3600,
    stop_after: bool = False, echo: Callable[[str], None] = print, stack: LocalStack | None = None,
) -> int:
    """Run ``d1-full/<profile>`` through the local stack and wait; 0 when the run COMPLETED.

    Brings the stack up (server, pools, deployments; a background worker for each other pool the
    profile uses), runs ``prefect deployment run d1-full/<profile>``, serves it with a foreground
    ``--run-once`` worker on the deployment's pool, then prints the final state, the report's
    results table, the UI URL, ``dvc metrics show`` and the ``d1 lineage`` hint.
    """
    from flows.graph import read_stages
    from flows.observe import find_results_markdown

    stack = stack or LocalStack(Path(root))
    deployment = f"d1-full/{profile}"
    echo(f"== local Prefect stack ({stack.state_dir})")
    stack.start_server()
    stack.create_pools()
    stack.deploy()
    pool = _deployment_pool(stack, deployment)
    for other in sorted(_profile_pools(stack.root, profile) - {pool}):
        stack.start_worker(other)
    echo(f"== prefect deployment run {deployment}")
    run_id = stack.create_run(deployment, params)
    echo(f"flow run {run_id}; worker on pool {pool!r} until it finishes")
    started = time.monotonic()
    stack.run_worker_once(pool, timeout=timeout, echo=echo)
    run = stack.wait(run_id, timeout=max(30.0, timeout - (time.monotonic() - started)))
    state = run.state
    echo("")
    echo(f"== flow run {run.name} ({run_id}): {state.type.value if state else 'no state'}"
         + (f" - {state.message}" if state and state.message and not state.is_completed() else ""))
    completed = state is not None and state.is_completed()
    results = find_results_markdown(stack.root, read_stages(stack.root)) if completed else None
    if results is not None:
        echo(f"== {results.relative_to(stack.root)}")
        echo(results.read_text(encoding="utf-8").rstrip())
    elif not completed:
        echo("== no results table: the run did not complete (the failed stage and its error are above)")
    echo(f"== Prefect UI: {stack.ui_url}/runs/flow-run/{run_id}  (API {stack.api_url})")
    echo("== dvc metrics show (the eval cells; `dvc metrics show` lists every metric)")
    echo(eval_metrics_table(stack))
    lineage_target = results.with_suffix(".json") if results is not None else None
    if lineage_target is not None and lineage_target.is_file():
        echo(f"== lineage: d1 lineage {lineage_target.relative_to(stack.root)}")
    else:
        echo("== lineage: d1 lineage <any output path>")
    if stop_after:
        stack.down()
        echo("== local stack stopped")
    else:
        echo("== the stack keeps running (UI above); stop it with: python -m infra.local down")
    return 0 if completed else 1
