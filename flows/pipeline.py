"""The ``d1-full`` flow: every stage of dvc.yaml, in dependency order, each as a Prefect task.

1. The flow's parameters go into params.yaml (flows.params): the
   profile, the task subset, ``dvc exp run -S``-style overrides.
2. DVC resolves the stages and their dependencies (flows.graph);
   the profile's ``flow`` section (flows.config.FlowConfig) maps them to
   work pools.
3. Each stage is a task (named after the stage) with retries: run in this
   process when its pool is the flow's own, dispatched to ``d1-stage/<pool>``
   otherwise (flows.stages). DVC decides what is up to date.
   Stages run one at a time: DVC locks a checkout while it reproduces a stage.
4. A failed stage fails its task with the stage's error; the stages
   downstream of it are not run (logged as such), the others still are, and
   the flow run fails naming the failed stages. Outputs of completed stages
   stay in place (and in dvc.lock), so a rerun continues from there.
5. Stages that ran materialize their outputs as assets; the run publishes
   its artifacts (flows.observe).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from d1.config import load_config, read_params
from d1.errors import D1Error
from d1.locks import checkout_run
from flows.config import FlowConfig
from flows import dvc_ops
from flows.graph import StageInfo, by_name, read_stages, upstream_closure
from flows.params import PARAMS_FILE, apply_flow_params
from flows.stages import RAN, local_stage, remote_stage, retry_condition

NOT_RUN = "not run (upstream failed)"


class PipelineFailed(D1Error):
    """One or more stages failed; the message names them and their errors."""


@dataclass
class PipelinePlan:
    stages: list[StageInfo]
    pools: dict[str, str]
    config: FlowConfig
    own_pool: str
    overrides: list[str] = field(default_factory=list)


def load_flow_config(root: str | Path, profile: str) -> FlowConfig:
    """``<profile>.flow`` of params.yaml as a FlowConfig (the defaults when the section is absent)."""
    params = read_params(Path(root) / PARAMS_FILE)
    section = params.get(profile)
    if not (isinstance(section, dict) and "flow" in section):
        return FlowConfig()
    return load_config(FlowConfig, Path(root) / PARAMS_FILE, section=f"{profile}.flow")


def plan(root: str | Path, profile: str, tasks: Sequence[str] | None = None,
         overrides: Sequence[str] | None = None, own_pool: str | None = None,
         algorithms: Sequence[str] | None = None) -> PipelinePlan:
    """Write the flow's parameters into params.yaml, then resolve the stages and their pools."""
    written = apply_flow_params(root, profile, tasks, overrides, algorithms)
    cfg = load_flow_config(root, profile)
    stages = read_stages(root)
    cfg.check_stages(s.name for s in stages)
    pools = {s.name: cfg.pool_for(s.name) for s in stages}
    return PipelinePlan(stages, pools, cfg, own_pool or cfg.default_pool, written)


def _own_pool() -> str | None:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return getattr(ctx.flow_run, "work_pool_name", None) if ctx and ctx.flow_run else None


def run_pipeline(profile: str = "tiny", tasks: Sequence[str] | None = None, overrides: Sequence[str] | None = None,
                 pull: bool = True, push: bool = True, root: str | Path = ".",
                 algorithms: Sequence[str] | None = None) -> dict:
    """The body of the ``d1-full`` flow (see the module docstring); returns each stage's outcome.

    The flow run holds the checkout (``d1.locks``): a second flow run on it, or a stage command
    started there by hand, is refused with one line naming this run."""
    from prefect.runtime import flow_run

    flow_run_id = str(flow_run.id or "")
    with checkout_run(Path(root).resolve(), flow_run_id=flow_run_id):  # one flow run per checkout
        return _run_pipeline(profile, tasks, overrides, pull, push, Path(root).resolve(), flow_run_id, algorithms)


def _run_pipeline(profile: str, tasks: Sequence[str] | None, overrides: Sequence[str] | None, pull: bool,
                  push: bool, root: Path, flow_run_id: str, algorithms: Sequence[str] | None = None) -> dict:
    from prefect import get_run_logger, task
    from prefect.cache_policies import NO_CACHE
    from prefect.runtime import flow_run

    from flows.observe import emit_stage_assets, publish_artifacts

    logger = get_run_logger()
    p = plan(root, profile, tasks, overrides, own_pool=_own_pool(), algorithms=algorithms)
    logger.info(f"checkout {root}; params: {', '.join(p.overrides)}; flow pool {p.own_pool}; "
                f"{len(p.stages)} stages: " + ", ".join(f"{s.name} [{p.pools[s.name]}]" for s in p.stages))
    if not push and any(pool != p.own_pool for pool in p.pools.values()):
        logger.warning("push=False while some stages run on other pools: they can only read inputs that "
                       "are already in the DVC remote")
    # DVC decides what is up to date: no Prefect result persistence or caching
    options = dict(retries=p.config.retries, retry_delay_seconds=p.config.retry_delay_seconds,
                   retry_condition_fn=retry_condition, cache_policy=NO_CACHE, persist_result=False)
    here = task(local_stage, name="stage", **options)
    there = task(remote_stage, name="dispatch", **options)
    index = by_name(p.stages)
    outcomes: dict[str, str] = {}
    errors: dict[str, str] = {}
    for s in p.stages:
        blocked = [u for u in s.upstream if u in errors or outcomes.get(u) == NOT_RUN]
        if blocked:
            outcomes[s.name] = NOT_RUN
            logger.warning(f"{s.name}: not run, upstream stage(s) {', '.join(blocked)} did not complete")
            continue
        pool = p.pools[s.name]
        if pool == p.own_pool:
            state = here.with_options(task_run_name=s.name)(
                str(root), s.name, list(s.upstream), pull, push, flow_run_id, return_state=True)
        else:
            state = there.with_options(task_run_name=f"{s.name} -> {pool}")(
                str(root), s.name, upstream_closure(p.stages, s.name), pool, p.overrides, flow_run_id,
                p.config.stage_timeout_seconds, return_state=True)
        if not state.is_completed():
            exc = state.result(raise_on_failure=False)
            errors[s.name] = str(exc) if isinstance(exc, BaseException) else (state.message or state.name)
            outcomes[s.name] = "failed"
            logger.error(f"{s.name}: {errors[s.name]}")
            continue
        outcomes[s.name] = state.result()["outcome"]
        if outcomes[s.name].startswith(RAN):
            lock = dvc_ops.read_lock(root)
            emit_stage_assets(index[s.name], lock, p.config.asset_namespace,
                              {"pool": pool, "flow_run_id": flow_run_id, "profile": profile})
    header = f"Flow run `{flow_run.name}` (`{flow_run_id}`), profile `{profile}`"
    publish_artifacts(root, p.stages, dvc_ops.read_lock(root), outcomes, p.pools, header=header)
    if errors:
        not_run = [n for n, o in outcomes.items() if o == NOT_RUN]
        raise PipelineFailed("; ".join(errors.values()) + (f" (not run: {', '.join(not_run)})" if not_run else ""))
    return outcomes
