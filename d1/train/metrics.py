"""Metrics of a training run in the DVC metrics/plots layout, truncated on resume so a resumed run has no duplicate steps."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from d1.config import write_json_atomic
from d1.errors import ConfigError


# ----------------------------------------------------------------------------- metrics


class MetricsLogger:
    """Training metrics of the main process (no-op elsewhere), in the layout ``dvc metrics`` / ``dvc plots`` read.

    Written to ``cfg.dvclive_dir`` (the files dvclive would write, without
    depending on it): ``metrics.json`` (the last value of every metric, nested
    by ``/``, plus ``"step"``) and ``plots/metrics/<name>.tsv`` (columns
    ``step`` and the metric's last name component, one row per logged step).
    The stage graph declares these files; nothing else is written. On resume
    from step N, rows after N (logged by the interrupted run after its last
    checkpoint) are dropped first so every step appears once.
    """

    def __init__(self, cfg: Any, accelerator: Any, *, resume_step: int | None):
        self.enabled = accelerator.is_main_process
        self.last: dict[str, float] = {}
        self.summary: dict[str, Any] = {}
        self.directory = Path(cfg.dvclive_dir)
        if not self.enabled:
            return
        if resume_step is None:
            clear_metrics_folder(self.directory, where=f"{cfg.SECTION}.logging_dir")
        else:
            _truncate_tsv_after(self.directory / "plots" / "metrics", resume_step)
            summary = self.directory / "metrics.json"
            if summary.is_file():  # a resumed run that has nothing left to do still reports its metrics
                self.summary = json.loads(summary.read_text(encoding="utf-8"))
                self.last = _flatten(self.summary)
                self.last.pop("step", None)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in metrics.items():
            if value is not None and math.isfinite(float(value)):
                self._append(name, step, float(value))
                _set_nested(self.summary, name, float(value))
        self.summary["step"] = step
        write_json_atomic(self.directory / "metrics.json", self.summary)
        self.last = dict(metrics)

    def close(self) -> None:
        """Nothing is buffered: every :meth:`log` has written its rows and the summary."""

    def _append(self, name: str, step: int, value: float) -> None:
        path = self.directory / "plots" / "metrics" / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with path.open("a", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            if new:
                writer.writerow(["step", name.rsplit("/", 1)[-1]])
            writer.writerow([step, value])


def clear_metrics_folder(directory: Path, *, where: str) -> None:
    """Remove the files an earlier run wrote to ``directory`` (``metrics.json``, ``plots/metrics/**.tsv``).

    Anything else there was not written by a training run: ConfigError naming it, and
    nothing is removed (a mistyped ``logging_dir`` must never delete a user's files).
    """
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ConfigError(f"{where}: {directory} is a file, not a folder")
    ours, foreign = [], []
    for path in sorted(directory.rglob("*")):
        if path.is_dir():
            continue
        rel = path.relative_to(directory).as_posix()
        mine = rel == "metrics.json" or (rel.startswith("plots/metrics/") and rel.endswith(".tsv"))
        (ours if mine else foreign).append(path)
    if foreign:
        raise ConfigError(f"{where}: {directory} holds files a training run did not write "
                          f"({foreign[0].relative_to(directory)}"
                          f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}); "
                          "choose an empty or new folder")
    for path in ours:
        path.unlink()
    for folder in sorted((p for p in directory.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                         reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


def _set_nested(tree: dict, name: str, value: float) -> None:
    """``"train/loss"`` -> ``tree["train"]["loss"] = value``."""
    *parents, leaf = name.split("/")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """The nested summary ({"train": {"loss": 1.0}}) -> {"train/loss": 1.0}."""
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
