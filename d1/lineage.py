"""``d1 lineage PATH``: which stages, params, inputs, code and run produced an output.

Combines ``dvc.lock`` (per stage: the command, the params values, every dep
and out with its md5) with the ``provenance.json`` each ``d1`` stage writes
(git commit, Prefect flow-run id, times, host; see d1.provenance). Starting at
the stage whose out holds PATH, it follows every dep to the stage that produced
it (a dep may be an out, a file inside one, or a folder holding several, like
the report's ``outputs/eval``), up to the stages with no produced deps
(``prepare``). dvc.lock is read as YAML: no DVC import, no hashing.

The hashes are those dvc.lock recorded; ``dvc status`` tells whether the
workspace still matches them.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from d1.config import load_yaml_file
from d1.errors import DataError
from d1.provenance import PROVENANCE_FILE, read_provenance


def read_lock(lock_path: str | Path) -> dict[str, dict]:
    """``{stage name: entry}`` of a dvc.lock (schema 2.0)."""
    path = Path(lock_path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (run `dvc repro` first)")
    data = load_yaml_file(path, DataError, "dvc.lock") or {}
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, dict) or str(data.get("schema")) != "2.0":
        raise DataError(f"{path}: not a dvc.lock with schema 2.0")
    for name, entry in stages.items():
        _check_stage(path, name, entry)
    return stages


def _check_stage(path: Path, name: Any, entry: Any) -> None:
    """DataError naming the stage and key when a dvc.lock entry does not have dvc.lock's shape."""
    where = f"{path}: stages.{name}"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected a mapping, got {type(entry).__name__}")
    for key in ("deps", "outs"):
        items = entry.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            raise DataError(f"{where}.{key}: expected a list, got {type(items).__name__}")
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("path"), str) or not item["path"]:
                raise DataError(f"{where}.{key}[{i}]: expected a mapping with a 'path' string, got {item!r:.80}")
    if entry.get("params") is not None and not isinstance(entry["params"], dict):
        raise DataError(f"{where}.params: expected a mapping, got {type(entry['params']).__name__}")


def _parts(path: str) -> tuple[str, ...]:
    return PurePosixPath(path).parts


def _within(inner: tuple[str, ...], outer: tuple[str, ...]) -> bool:
    return inner[: len(outer)] == outer


def _md5(entry: dict) -> str | None:
    return entry.get("md5") or entry.get("etag") or entry.get("checksum")


def producers(stages: dict[str, dict], path: str) -> list[tuple[str, dict]]:
    """(stage, out entry) of every out that is ``path``, holds it, or lies inside it."""
    target = _parts(path)
    found = []
    for name, entry in stages.items():
        for out in entry.get("outs") or []:
            op = _parts(out["path"])
            if _within(target, op) or _within(op, target):
                found.append((name, out))
    return found


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def _provenance(root: Path, entry: dict) -> dict | None:
    """The stage's record: an out named provenance.json or kept in a ``provenance`` folder, else a
    provenance.json inside one of its output folders."""
    outs = [root / out["path"] for out in entry.get("outs") or []]
    files = [p for p in outs if p.suffix == ".json" and (p.name == PROVENANCE_FILE or p.parent.name == "provenance")]
    for p in files + [p / PROVENANCE_FILE for p in outs if p.is_dir()]:
        record = read_provenance(p)
        if record is not None:
            return record
    return None


def stage_record(root: Path, stages: dict[str, dict], name: str) -> dict:
    entry = stages[name]
    deps = []
    for dep in entry.get("deps") or []:
        made_by = sorted({s for s, _ in producers(stages, dep["path"]) if s != name})
        deps.append({"path": dep["path"], "md5": _md5(dep), "produced_by": made_by})
    params = {}
    for file, values in (entry.get("params") or {}).items():
        for key, value in _flatten(values or {}).items():
            params[key if file == "params.yaml" else f"{file}:{key}"] = value
    prov = _provenance(root, entry)
    return {
        "stage": name,
        "cmd": entry.get("cmd"),
        "params": params,
        "deps": deps,
        "outs": [{"path": o["path"], "md5": _md5(o)} for o in entry.get("outs") or []],
        "git_commit": prov.get("git_commit") if prov else None,
        "git_dirty": prov.get("git_dirty") if prov else None,
        "flow_run_id": prov.get("flow_run_id") if prov else None,
        "task_run_id": prov.get("task_run_id") if prov else None,
        "finished_at": prov.get("finished_at") if prov else None,
        "provenance": prov,
    }


def relative_to_root(path: str | Path, root: Path) -> str:
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise DataError(f"{path}: outside the project at {root}")
    return PurePosixPath(Path(rel)).as_posix()


def lineage(path: str | Path, lock_path: str | Path = "dvc.lock") -> dict:
    """The chain of stages behind ``path``: ``{"path", "stage", "out", "md5", "stages": [record, ...]}``.

    ``stages`` starts with the stage that produced the path and lists every upstream stage once,
    each before the stages it read from (reverse topological order, ties by name)."""
    root = Path(lock_path).parent
    stages = read_lock(lock_path)
    rel = relative_to_root(path, root)
    holders = [(s, o) for s, o in producers(stages, rel) if _within(_parts(rel), _parts(o["path"]))]
    if not holders:
        raise DataError(f"{path}: no stage in {lock_path} produced it (not an out nor inside one)")
    first = holders[0][0]
    records: dict[str, dict] = {}
    queue = [first]
    while queue:  # every upstream stage, once
        name = queue.pop()
        if name in records:
            continue
        records[name] = stage_record(root, stages, name)
        queue.extend(up for dep in records[name]["deps"] for up in dep["produced_by"] if up not in records)
    ups = {n: {u for d in r["deps"] for u in d["produced_by"]} for n, r in records.items()}
    consumers = {n: sum(n in u for u in ups.values()) for n in records}
    order, ready = [], [n for n, c in consumers.items() if c == 0]
    while ready:
        ready.sort()
        name = ready.pop(0)
        order.append(name)
        for up in ups[name]:
            consumers[up] -= 1
            if consumers[up] == 0:
                ready.append(up)
    order += sorted(set(records) - set(order))  # a cycle (not in a valid dvc.lock): list it anyway
    return {"path": rel, "stage": first, "out": holders[0][1]["path"], "md5": _md5(holders[0][1]),
            "stages": [records[n] for n in order]}


def format_text(result: dict) -> str:
    """Human-readable lineage: one block per stage."""
    lines = [f"{result['path']}: produced by stage {result['stage']} (out {result['out']}, md5 {result['md5']})"]
    for rec in result["stages"]:
        lines.append("")
        lines.append(f"stage {rec['stage']}")
        lines.append(f"  cmd: {rec['cmd']}")
        if rec["provenance"] is None:
            lines.append("  provenance: none recorded (stage not run by `d1`, or its outputs are not checked out)")
        else:
            dirty = " (uncommitted changes)" if rec["git_dirty"] else ""
            lines.append(f"  git commit: {rec['git_commit']}{dirty}")
            lines.append(f"  flow run: {rec['flow_run_id']}  task run: {rec['task_run_id']}  "
                         f"finished: {rec['finished_at']}")
        if rec["params"]:
            lines.append("  params:")
            lines.extend(f"    {k} = {v!r}" for k, v in sorted(rec["params"].items()))
        lines.append("  deps:")
        for d in rec["deps"]:
            made = f"  <- {', '.join(d['produced_by'])}" if d["produced_by"] else ""
            lines.append(f"    {d['path']}  md5 {d['md5']}{made}")
        lines.append("  outs:")
        lines.extend(f"    {o['path']}  md5 {o['md5']}" for o in rec["outs"])
    return "\n".join(lines)
