"""Metrics of a training run: dvclive logging, truncated on resume so a resumed run has no duplicate steps."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any


# ----------------------------------------------------------------------------- metrics


class MetricsLogger:
    """dvclive metrics of the main process (no-op elsewhere).

    Written to ``cfg.dvclive_dir``: ``metrics.json`` (the last values, for
    ``dvc exp show`` / ``dvc metrics``) and ``plots/metrics/**.tsv`` (one row per
    logged step, for ``dvc plots``). dvclive is told not to touch ``dvc.yaml``
    nor to make experiments: the stage graph declares these files. On resume
    from step N, rows after N (logged by the interrupted run after its last
    checkpoint) are dropped first so every step appears once.
    """

    def __init__(self, cfg: Any, accelerator: Any, *, resume_step: int | None):
        self.enabled = accelerator.is_main_process
        self.live = None
        self.last: dict[str, float] = {}
        if not self.enabled:
            return
        from dvclive import Live

        directory = Path(cfg.dvclive_dir)
        if resume_step is None:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            _truncate_tsv_after(directory / "plots" / "metrics", resume_step)
            summary = directory / "metrics.json"
            if summary.is_file():  # a resumed run that has nothing left to do still reports its metrics
                self.last = _flatten(json.loads(summary.read_text(encoding="utf-8")))
                self.last.pop("step", None)
        self.live = Live(dir=str(directory), resume=resume_step is not None, save_dvc_exp=False, dvcyaml=None,
                         report=None)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled or self.live is None:
            return
        self.live.step = step
        for name, value in metrics.items():
            if value is not None and math.isfinite(float(value)):
                self.live.log_metric(name, float(value))
        self.live.make_summary()
        self.last = dict(metrics)

    def close(self) -> None:
        if self.live is not None:
            self.live.end()
            self.live = None


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """dvclive's nested summary ({"train": {"loss": 1.0}}) -> {"train/loss": 1.0}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}/"))
        else:
            out[name] = value
    return out


def _truncate_tsv_after(directory: Path, step: int) -> None:
    if not directory.is_dir():
        return
    for path in directory.rglob("*.tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        if not rows:
            continue
        header, body = rows[0], rows[1:]
        col = header.index("step") if "step" in header else None
        if col is None:
            continue
        kept = [r for r in body if r and int(float(r[col])) <= step]
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(header)
            writer.writerows(kept)
