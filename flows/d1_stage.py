"""The ``d1-stage`` flow: one DVC stage in this checkout, for a ``d1-full`` run on another pool.

Entry point of the ``d1-stage/<pool>`` deployments (prefect.yaml); the data
travels through the DVC remote. See flows.stages.
"""

from __future__ import annotations

from prefect import flow

from flows.stages import stage_flow_body


@flow(name="d1-stage", log_prints=True)
def d1_stage(
    stage: str,
    overrides: list[str] | None = None,
    lock: dict | None = None,
    flow_run_id: str | None = None,
    task_run_id: str | None = None,
    pull: bool = True,
    push: bool = True,
) -> dict:
    """Run DVC stage ``stage`` here (``dvc pull`` inputs, ``dvc repro --single-item``, ``dvc push``).

    Args:
        stage: the DVC stage name, e.g. ``grpo@d1-countdown``.
        overrides: the params overrides of the calling d1-full run (``profile=...`` first).
        lock: dvc.lock entries of the stages upstream of ``stage``, from the calling checkout.
        flow_run_id, task_run_id: the calling d1-full run and task, recorded in the stage's provenance.json.
        pull, push: exchange inputs and outputs through the DVC remote.
    """
    return stage_flow_body(stage=stage, overrides=list(overrides or []), lock=dict(lock or {}),
                           flow_run_id=flow_run_id, task_run_id=task_run_id, pull=pull, push=push)
