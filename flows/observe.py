"""What a flow run shows: asset materializations keyed by DVC hashes, and its artifacts.

Assets. A stage that ran materializes one asset per output, keyed
``dvc://<namespace>/<out path>@<md5>`` (the md5 DVC recorded in dvc.lock, so
a key names one exact version of a dataset, model or metrics file), with the
stage's dependencies as upstream assets: a dep produced by another stage is
that stage's output asset (the one holding it), other deps (code, data
files) are keyed the same way by their own md5. Following the upstream
links in Prefect's asset graph answers "which data, code and parent model
produced this metric" in the UI, as ``d1 lineage`` does in the terminal.

Artifacts (one set per flow run, keys shared by runs so the UI keeps their history):
``d1-eval-metrics`` (table: model x task x gen length accuracies, from the
eval stages' metrics files), ``d1-results`` (markdown: the report's
results table, ``results.md``), ``d1-outputs`` (markdown: every stage, what
the run did with it, where it ran, its outputs and their md5).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping

from flows.dvc_ops import dep_hashes, out_hashes
from flows.graph import StageInfo

ASSET_SCHEME = "dvc"
METRICS_KEY = "d1-eval-metrics"
RESULTS_KEY = "d1-results"
OUTPUTS_KEY = "d1-outputs"
MODEL_ORDER = ("base", "sft", "d1", "wd1", "spg", "espo")


# ----------------------------------------------------------------------------- assets


def asset_key(namespace: str, path: str, md5: str) -> str:
    """``dvc://<namespace>/<path>@<md5>``; characters Prefect refuses in keys are replaced by ``_``."""
    from prefect.types.names import RESTRICTED_ASSET_CHARACTERS

    key = f"{ASSET_SCHEME}://{namespace}/{PurePosixPath(path).as_posix().lstrip('/')}@{md5 or 'unknown'}"
    for char in RESTRICTED_ASSET_CHARACTERS:
        key = key.replace(char, "_")
    return key


def _within(inner: str, outer: str) -> bool:
    a, b = PurePosixPath(inner).parts, PurePosixPath(outer).parts
    return a[: len(b)] == b


def stage_assets(stage: StageInfo, lock: Mapping[str, dict], namespace: str) -> tuple[list[dict], list[str]]:
    """(outputs, upstream keys) of ``stage`` after it ran: each output as ``{key, path, md5,
    size, nfiles, metric}``; upstream keys of its deps (see the module docstring)."""
    entry = lock.get(stage.name) or {}
    outs = []
    for o in entry.get("outs") or []:
        md5 = o.get("md5") or o.get("etag") or o.get("checksum") or ""
        info = next((x for x in stage.outs if x.path == o["path"]), None)
        outs.append({"key": asset_key(namespace, o["path"], md5), "path": o["path"], "md5": md5,
                     "size": o.get("size"), "nfiles": o.get("nfiles"), "metric": bool(info and info.metric)})
    upstream: list[str] = []
    for dep_path, md5 in dep_hashes(lock, stage.name).items():
        produced = []
        for up in stage.upstream:
            for out_path, out_md5 in out_hashes(lock, up).items():
                if _within(dep_path, out_path) or _within(out_path, dep_path):
                    produced.append(asset_key(namespace, out_path, out_md5))
        upstream.extend(produced or [asset_key(namespace, dep_path, md5)])
    return outs, sorted(set(upstream))


def emit_stage_assets(stage: StageInfo, lock: Mapping[str, dict], namespace: str,
                      extra: Mapping[str, Any]) -> list[str]:
    """Record the materialization of ``stage``'s outputs (a small Prefect task, ``assets <stage>``,
    whose completion emits the events); returns the asset keys."""
    from prefect.assets import Asset, AssetProperties, add_asset_metadata, materialize

    outs, upstream = stage_assets(stage, lock, namespace)
    if not outs:
        return []
    assets = [Asset(key=o["key"], properties=AssetProperties(
        name=o["path"], description=f"{o['path']} (DVC md5 {o['md5']}) from stage {stage.name}")) for o in outs]

    def record() -> list[str]:
        for o in outs:
            add_asset_metadata(o["key"], {"path": o["path"], "md5": o["md5"], "size": o["size"],
                                          "nfiles": o["nfiles"], "metric": o["metric"], "stage": stage.name,
                                          **dict(extra)})
        return [o["key"] for o in outs]

    task = materialize(*assets, by="dvc", asset_deps=upstream, name="assets", task_run_name=f"assets {stage.name}")
    return task(record)()


# ----------------------------------------------------------------------------- eval metrics table


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _metric_files(root: Path, stages: Iterable[StageInfo]) -> list[tuple[str, Path]]:
    found = []
    for s in stages:
        for o in s.outs:
            p = root / o.path
            if o.metric and p.is_file():
                found.append((s.name, p))
    return found


def eval_rows(root: str | Path, stages: Iterable[StageInfo]) -> list[dict]:
    """One row per (model, task, gen length) from every metrics out shaped like the eval stage's
    ``metrics.json`` (``{task: {gen_length: {accuracy, correct, total, ...}}}``); the model
    label is the ``model_name`` of the eval config written next to it (else the stage name)."""
    root = Path(root)
    rows = []
    for stage, path in _metric_files(root, stages):
        data = _read_json(path)
        if not isinstance(data, dict):
            continue
        resolved = _read_json(path.parent / "eval_config.json")
        model = resolved.get("model_name") if isinstance(resolved, dict) else None
        for task, per_len in data.items():
            if not isinstance(per_len, dict):
                continue
            for length, m in per_len.items():
                if not (isinstance(m, dict) and "accuracy" in m and str(length).isdigit()):
                    continue
                rows.append({"model": model or stage, "task": task, "gen_length": int(length),
                             "accuracy": m.get("accuracy"), "correct": m.get("correct"), "total": m.get("total"),
                             "stage": stage, "file": path.relative_to(root).as_posix()})

    def order(r: dict) -> tuple:
        m = r["model"]
        return (r["task"], r["gen_length"], MODEL_ORDER.index(m) if m in MODEL_ORDER else len(MODEL_ORDER), m)

    return sorted(rows, key=order)


def find_results_markdown(root: str | Path, stages: Iterable[StageInfo]) -> Path | None:
    """The report's ``results.md``: an out of that name, or one at the top of a folder out."""
    root = Path(root)
    for s in stages:
        for o in s.outs:
            p = root / o.path
            if p.is_file() and p.name == "results.md":
                return p
            if p.is_dir() and (p / "results.md").is_file():
                return p / "results.md"
    return None


def outputs_markdown(root: str | Path, stages: Iterable[StageInfo], lock: Mapping[str, dict],
                     outcomes: Mapping[str, str], pools: Mapping[str, str]) -> str:
    """The ``d1-outputs`` artifact: each stage, its outcome and pool, its outputs with md5 and path."""
    root = Path(root)
    lines = [f"Checkout: `{root}`", "", "| stage | outcome | pool | outputs (DVC md5) |", "|---|---|---|---|"]
    for s in stages:
        hashes = out_hashes(lock, s.name)
        outs = "<br>".join(f"`{o.path}` {hashes.get(o.path, '-')[:12]}" for o in s.outs) or "-"
        lines.append(f"| {s.name} | {outcomes.get(s.name, 'not run')} | {pools.get(s.name, '-')} | {outs} |")
    lines += ["", "Inspect: `dvc metrics show`, `dvc status`, `d1 lineage <output path>`."]
    return "\n".join(lines) + "\n"


def publish_artifacts(root: str | Path, stages: list[StageInfo], lock: Mapping[str, dict],
                      outcomes: Mapping[str, str], pools: Mapping[str, str], header: str = "") -> dict:
    """Create the flow run's artifacts from what exists in the checkout; returns what was made."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    made: dict[str, Any] = {}
    rows = eval_rows(root, stages)
    if rows:
        create_table_artifact(rows, key=METRICS_KEY,
                              description="Eval accuracy (%) per model x task x gen length")
        made[METRICS_KEY] = len(rows)
    results = find_results_markdown(root, stages)
    if results is not None:
        text = results.read_text(encoding="utf-8")
        create_markdown_artifact(f"{header}\n\n{text}" if header else text, key=RESULTS_KEY,
                                 description=f"The report's results table ({results})")
        made[RESULTS_KEY] = str(results)
        page = results.parent / "index.html"
        if page.is_file():
            create_link_artifact(page.resolve().as_uri(), link_text="report page (offline HTML)",
                                 key="d1-report-page", description="The report's self-contained page")
            made["d1-report-page"] = str(page)
    create_markdown_artifact(outputs_markdown(root, stages, lock, outcomes, pools), key=OUTPUTS_KEY,
                             description="Stages, outcomes, pools and outputs of this run")
    made[OUTPUTS_KEY] = len(stages)
    return made
