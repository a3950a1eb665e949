"""Score d1-format generations files and compute per-item rewards.

A generations file is JSON: ``{"generations": [{"question", "generations",
"ground_truth"}, ...], ...}`` (the format of d1's ``eval/`` and of our eval
stage). Several files are pooled: accuracy = 100 * sum(correct) / sum(total).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Iterator

from d1.data.io import json_value_problem, read_json_file
from d1.errors import DataError
from d1.tasks import get_task
from d1.tasks.base import Task

REQUIRED_FIELDS = ("question", "generations", "ground_truth")


def load_generations(path: str | Path) -> list[dict]:
    """The ``generations`` list of a d1 generations file, validated.

    Raises DataError naming the file (and item) for a missing file, invalid
    JSON, or an item without question/generations/ground_truth.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    data = read_json_file(path)
    items = data.get("generations") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected an object with a 'generations' list")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"{path}: generations[{i}] is not an object")
        missing = [k for k in REQUIRED_FIELDS if k not in item]
        if missing:
            raise DataError(f"{path}: generations[{i}] lacks {', '.join(missing)}")
        if not isinstance(item["generations"], str):
            raise DataError(f"{path}: generations[{i}].generations is not a string")
    return items


def _examples(task: Task, items: Iterable[dict], where: str) -> Iterator[tuple[int, dict, object]]:
    for i, item in enumerate(items):
        try:
            example = task.example_from_generation(item)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            reason = json_value_problem(exc) if isinstance(exc, ValueError) else exc
            raise DataError(f"{where}: generations[{i}] is not a {task.name} item ({reason})") from None
        yield i, item, example


def score_items(task: Task, items: Iterable[dict], where: str = "<items>") -> dict:
    """Pooled score of generation items: task, n, correct, total, accuracy (percent)."""
    n = correct = total = 0
    for _, item, example in _examples(task, items, where):
        s = task.score(item["generations"], example)
        n += 1
        correct += s.correct
        total += s.total
    accuracy = 100.0 * correct / total if total else 0.0
    return {"task": task.name, "n": n, "correct": correct, "total": total, "accuracy": accuracy}


def score_files(task_name: str, paths: Iterable[str | Path]) -> dict:
    """Pool the items of several generations files and score them (see score_items)."""
    task = get_task(task_name)
    paths = [Path(p) for p in paths]
    if not paths:
        raise DataError("no generations files given")
    items: list[dict] = []
    for p in paths:
        items.extend(load_generations(p))
    result = score_items(task, items, where=", ".join(map(str, paths)))
    result["files"] = [str(p) for p in paths]
    return result


def reward_records(task_name: str, path: str | Path) -> Iterator[dict]:
    """Per item of a generations file: index, total reward and each component."""
    task = get_task(task_name)
    for i, item, example in _examples(task, load_generations(path), str(path)):
        r = task.reward(item["generations"], example)
        yield {"index": i, "total": r.total, "components": r.components}


_SETTING_NAME = re.compile(r"^(?P<task>[a-z0-9]+)_.*?_(?P<gen_length>\d+)_(?P<steps>\d+)_(?P<shard>\d+)_generations\.json$")


def setting_of(path: Path) -> tuple[str, int] | None:
    """(task, gen_length) of a d1 generations file named
    ``{task}_{model}_{gen_length}_{steps}_{shard}_generations.json``; None otherwise."""
    m = _SETTING_NAME.match(path.name)
    return (m.group("task"), int(m.group("gen_length"))) if m else None


def score_directory(directory: str | Path) -> list[dict]:
    """Score every d1 generations file in ``directory``, pooled per (task, gen_length).

    Returns one score_files result per setting, with ``gen_length`` added,
    sorted by task then length. Raises DataError if no file matches.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory")
    groups: dict[tuple[str, int], list[Path]] = {}
    for path in sorted(directory.glob("*_generations.json")):
        setting = setting_of(path)
        if setting is not None:
            groups.setdefault(setting, []).append(path)
    if not groups:
        raise DataError(f"{directory}: no {{task}}_..._{{gen_length}}_{{steps}}_{{shard}}_generations.json files")
    results = []
    for (task, gen_length), paths in sorted(groups.items()):
        result = score_files(task, paths)
        result["gen_length"] = gen_length
        results.append(result)
    return results


def markdown_table(results: list[dict]) -> str:
    """Accuracy table (rows: task, columns: gen length) from score_directory results."""
    lengths = sorted({r["gen_length"] for r in results})
    cells = {(r["task"], r["gen_length"]): r["accuracy"] for r in results}
    tasks = list(dict.fromkeys(r["task"] for r in results))
    lines = ["| task | " + " | ".join(str(n) for n in lengths) + " |"]
    lines.append("|---" * (len(lengths) + 1) + "|")
    for task in tasks:
        row = [f"{cells[(task, n)]:.2f}" if (task, n) in cells else "-" for n in lengths]
        lines.append(f"| {task} | " + " | ".join(row) + " |")
    return "\n".join(lines)
