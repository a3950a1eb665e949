"""The ``d1-full`` flow: the DVC pipeline of a profile, stage by stage, on the right work pools.

Entry point of the ``d1-full/<profile>`` deployments (prefect.yaml); runs in
the checkout the deployment's pull step moves to. See flows.pipeline.
"""

from __future__ import annotations

from prefect import flow

from flows.pipeline import run_pipeline


@flow(name="d1-full", log_prints=True)
def d1_full(
    profile: str = "tiny",
    tasks: list[str] | None = None,
    overrides: list[str] | None = None,
    pull: bool = True,
    push: bool = True,
    algorithms: list[str] | None = None,
) -> dict:
    """Run every stage of dvc.yaml for ``profile`` in dependency order (DVC skips what is up to date).

    Args:
        profile: the params.yaml profile to select (``profile=<name>``).
        tasks: run only these of the profile's tasks (written to the key named by ``<profile>.flow.tasks_param``).
        overrides: ``dvc exp run -S`` style ``KEY=VALUE`` params overrides, keys from the top of
            params.yaml, e.g. ``tiny.grpo.lr=2e-4``; written into params.yaml before DVC resolves the stages.
        pull: ``dvc pull`` each stage's inputs (and its own outputs) from the DVC remote before it runs.
        push: ``dvc push`` each stage's outputs after it ran.
        algorithms: train and compare these RL algorithms (names of ``<profile>.grpo.algorithms``:
            d1, wd1, spg, espo) instead of those the profile's report lists.
    """
    return run_pipeline(profile=profile, tasks=tasks, overrides=overrides, pull=pull, push=push,
                        algorithms=algorithms)


if __name__ == "__main__":
    d1_full()
