"""Settings of the Prefect flow of a profile: the ``<profile>.flow`` section of params.yaml.

.. code-block:: yaml

    llada-8b:
      flow:
        default_pool: cpu          # stages not named below run here
        pools: {sft: gpu, grpo: gpu, eval: gpu}
        retries: 1                 # extra tries of a stage that crashed
        tasks_param: llada-8b.tasks

A key of ``pools`` names a stage of dvc.yaml or a stage prefix: ``grpo``
matches ``grpo`` and every generated ``grpo@<item>`` stage (``foreach`` /
``matrix``); the longest matching key wins, so ``grpo@d1-sudoku: cpu`` can
single out one of them. ``tasks_param`` is the dotted params key listing the
profile's tasks: the flow's ``tasks`` parameter overrides it, so DVC resolves
the stages of those tasks only.

No Prefect import here: the stage graph and pool mapping are plain data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Iterable

from d1.errors import ConfigError

#: work-pool names as Prefect accepts them in deployment names (``d1-stage/<pool>``)
_POOL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_KEY_RE = re.compile(r"[^\s/]+")


@dataclass
class FlowConfig:
    """Where and how the ``d1-full`` flow runs each stage (params section ``flow``)."""

    SECTION: ClassVar[str] = "flow"

    default_pool: str = "cpu"
    pools: dict[str, str] = field(default_factory=dict)  # stage name or prefix -> work pool
    retries: int = 1  # extra tries of a stage whose command crashed (a one-line d1 error is not retried)
    retry_delay_seconds: float = 10.0
    tasks_param: str | None = None  # dotted params key holding the profile's task list
    stage_timeout_seconds: float | None = None  # a stage dispatched to another pool waits at most this long
    asset_namespace: str = "d1-pipeline"  # asset keys: dvc://<asset_namespace>/<path>@<md5>

    def validate(self) -> None:
        if not _POOL_RE.fullmatch(self.default_pool):
            raise ConfigError(f"flow.default_pool: {self.default_pool!r} is not a valid work-pool name")
        for key, pool in self.pools.items():
            if not _KEY_RE.fullmatch(key):
                raise ConfigError(f"flow.pools: {key!r} is not a stage name or prefix")
            if not _POOL_RE.fullmatch(pool):
                raise ConfigError(f"flow.pools.{key}: {pool!r} is not a valid work-pool name")
        if self.retries < 0:
            raise ConfigError(f"flow.retries: must be >= 0, got {self.retries}")
        if self.retry_delay_seconds < 0:
            raise ConfigError(f"flow.retry_delay_seconds: must be >= 0, got {self.retry_delay_seconds}")
        if self.tasks_param is not None and (
            not self.tasks_param or any(not part for part in self.tasks_param.split("."))
        ):
            raise ConfigError(f"flow.tasks_param: {self.tasks_param!r} is not a dotted params key")
        if self.stage_timeout_seconds is not None and self.stage_timeout_seconds <= 0:
            raise ConfigError(f"flow.stage_timeout_seconds: must be positive, got {self.stage_timeout_seconds}")

        if not _POOL_RE.fullmatch(self.asset_namespace):
            raise ConfigError(f"flow.asset_namespace: {self.asset_namespace!r} must be letters, digits, '.', '_' or '-'")

    def pool_key(self, stage: str) -> str | None:
        """The ``pools`` key that applies to ``stage`` (exact name or ``key@...``), longest first."""
        matches = [k for k in self.pools if stage == k or stage.startswith(k + "@")]
        return max(matches, key=len) if matches else None

    def pool_for(self, stage: str) -> str:
        key = self.pool_key(stage)
        return self.pools[key] if key is not None else self.default_pool

    def check_stages(self, stages: Iterable[str]) -> None:
        """Every ``pools`` key must match a stage: a typo would silently run a GPU stage on CPU."""
        names = list(stages)
        for key in self.pools:
            if not any(n == key or n.startswith(key + "@") for n in names):
                raise ConfigError(f"flow.pools: {key!r} matches no stage of dvc.yaml (stages: {', '.join(names)})")
