"""The data-prep stage: write the train/test files every later stage reads.

For each configured task it loads (or, for Countdown/Sudoku, generates) the
training split and loads the test split, converts rows to task Examples and
writes ``<out_dir>/<task>/{train,test}.jsonl`` plus ``<out_dir>/manifest.json``
(counts, sources, sha256 of every file, seed) and the resolved config. SFT data
sets that are not tasks (``sft_data``: s1K, :mod:`d1.data.s1k`) are read too and
written as ``<out_dir>/<name>/{train,heldout}.jsonl``. The output depends only
on the config and the inputs (no timestamps), so DVC sees identical hashes when
nothing changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar


from d1.config import write_json_atomic, write_resolved
from d1.data.io import read_records, sha256_file, write_jsonl
from d1.data.s1k import HELDOUT_FRACTION, SFT_DATA_FORMATS, heldout_split, read_s1k
from d1.errors import ConfigError, DataError
from d1.progress import progress
from d1.tasks import available_tasks, get_task
from d1.tasks.base import Example, Task

BUILTIN = "builtin"
GENERATE = "generate"


@dataclass
class TaskDataConfig:
    """Where one task's splits come from.

    train/test: ``builtin`` (the copy shipped in d1/data/benchmarks), ``generate``
    (Countdown/Sudoku), a local file, ``hf:...`` or ``s3://...`` (see
    d1.data.io.read_records); train may be null (evaluation-only task).
    A generated test set (a held-out set from the training distribution, e.g.
    for the tiny profile's easier puzzles) is drawn first, with its own seed,
    and the training set is then generated disjoint from it.
    train_size: number of generated examples, or a cap on loaded rows (first N).
    test_size: number of generated test examples (required with test: generate),
    or a cap on test rows (first N, as d1 evaluates 256 of 500 Sudoku puzzles).
    generator: extra options for the task's generator (Countdown: num_numbers,
    number_range, target_range; Sudoku: empty_cells), used for both splits.
    """

    train: str | None = BUILTIN
    test: str = BUILTIN
    train_size: int | None = None
    test_size: int | None = None
    generator: dict[str, Any] = field(default_factory=dict)


@dataclass
class SFTDataConfig:
    """An SFT data set that is not a task (``prepare.sft_data.<name>``; names: d1.data.s1k.SFT_DATA_FORMATS).

    source: ``hf:NAME[?split=...]`` or a local / S3 ``.jsonl/.json/.parquet`` file of the set's shape
    (d1.data.io.read_records). heldout_fraction: the share held out of training (d1: 1%, rounded
    down), drawn with a generator seeded from ``prepare.seed``. size: the first N rows (null: all).
    """

    source: str = ""
    heldout_fraction: float = HELDOUT_FRACTION
    size: int | None = None


@dataclass
class PrepareConfig:
    SECTION: ClassVar[str] = "prepare"

    out_dir: str = "data"
    seed: int = 42
    tasks: dict[str, TaskDataConfig] = field(default_factory=dict)
    # SFT data sets that are not tasks, by name (s1k): <out_dir>/<name>/{train,heldout}.jsonl
    sft_data: dict[str, SFTDataConfig] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.tasks:
            raise ConfigError("prepare.tasks: no task configured")
        for name, sc in self.sft_data.items():
            where = f"prepare.sft_data.{name}"
            if name not in SFT_DATA_FORMATS:
                raise ConfigError(f"{where}: unknown SFT data set {name!r}; known: {', '.join(SFT_DATA_FORMATS)}")
            if name in self.tasks:
                raise ConfigError(f"{where}: also a task of prepare.tasks (both would write {name}/train.jsonl)")
            if not sc.source.strip():
                raise ConfigError(f"{where}.source: required (hf:NAME or a data file)")
            if not 0.0 <= sc.heldout_fraction < 1.0:
                raise ConfigError(f"{where}.heldout_fraction: must be in [0, 1), got {sc.heldout_fraction}")
            if sc.size is not None and sc.size <= 0:
                raise ConfigError(f"{where}.size: must be positive, got {sc.size}")
        for name, tc in self.tasks.items():
            where = f"prepare.tasks.{name}"
            if name not in available_tasks():
                raise ConfigError(f"{where}: unknown task {name!r}; available: {', '.join(available_tasks())}")
            task = get_task(name)
            for split in ("train", "test"):
                src = getattr(tc, split)
                if src == BUILTIN and split not in task.builtin_data:
                    raise ConfigError(f"{where}.{split}: no builtin {split} data for {name}")
            for split in ("train", "test"):
                if getattr(tc, split) == GENERATE:
                    if not task.can_generate:
                        raise ConfigError(f"{where}.{split}: task {name} cannot generate data")
                    if not getattr(tc, f"{split}_size"):
                        raise ConfigError(f"{where}.{split}_size: required with {split}: generate")
            for key in ("train_size", "test_size"):
                val = getattr(tc, key)
                if val is not None and val <= 0:
                    raise ConfigError(f"{where}.{key}: must be positive, got {val}")
            if tc.generator and GENERATE not in (tc.train, tc.test):
                raise ConfigError(f"{where}.generator: only used with train: generate or test: generate")
            if GENERATE in (tc.train, tc.test):
                _check_generator(task, tc.generator, f"{where}.generator")


def _check_generator(task: Task, options: dict[str, Any], where: str) -> None:
    """Try the generator options on 0 examples: a bad option fails here, before any work is done."""
    try:
        task.generate(0, seed=0, exclude=[], **options)
    except (ConfigError, TypeError, ValueError) as exc:
        message = str(exc)
        prefix = f"{task.name} generator: "
        raise ConfigError(f"{where}: {message[len(prefix):] if message.startswith(prefix) else message}") from None


def builtin_path(relative: str) -> Path:
    return Path(str(resources.files("d1.data").joinpath("benchmarks", relative)))


def _load_split(task: Task, source: str, split: str, limit: int | None) -> list[Example]:
    if source == BUILTIN:
        source = str(builtin_path(task.builtin_data[split]))
    records = read_records(source)
    if not records:
        raise DataError(f"{source}: holds no rows (the {task.name} {split} split would be empty)")
    if limit is not None:
        records = records[:limit]
    examples = []
    for i, rec in enumerate(records):
        try:
            examples.append(task.example_from_record(rec))
        except DataError as exc:
            raise DataError(f"{source}: row {i}: {exc}") from None
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DataError(f"{source}: row {i} is not a {task.name} record ({exc!r})") from None
    return examples


def _task_seed(seed: int, name: str) -> int:
    """Independent, stable per-task seed (no global RNG, order of tasks irrelevant)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big")


def _loaded_splits(cfg: PrepareConfig, name: str) -> dict[str, tuple[list[Example], str]]:
    """{split: (examples, source)} of the task's splits read from a source (not generated)."""
    tc = cfg.tasks[name]
    task = get_task(name)
    loaded = {}
    if tc.test != GENERATE:
        loaded["test"] = (_load_split(task, tc.test, "test", tc.test_size), tc.test)
    if tc.train not in (GENERATE, None):
        loaded["train"] = (_load_split(task, tc.train, "train", tc.train_size), tc.train)
    return loaded


def _build_splits(cfg: PrepareConfig, name: str,
                  loaded: dict[str, tuple[list[Example], str]] | None = None) -> dict[str, tuple[list[Example], str]]:
    """{split: (examples, source description)} for one task; nothing is written. ``loaded``: the
    splits :func:`_loaded_splits` already read."""
    tc = cfg.tasks[name]
    task = get_task(name)
    loaded = _loaded_splits(cfg, name) if loaded is None else loaded
    if tc.test == GENERATE:
        seed = _task_seed(cfg.seed, f"{name}:test")
        test = task.generate(tc.test_size, seed=seed, exclude=[], **tc.generator)
        splits: dict[str, tuple[list[Example], str]] = {
            "test": (test, f"generated(seed={cfg.seed}:test, {json.dumps(tc.generator, sort_keys=True)})")}
    else:
        test = loaded["test"][0]
        splits = {"test": loaded["test"]}
    if tc.train == GENERATE:
        train = task.generate(tc.train_size, seed=_task_seed(cfg.seed, name), exclude=test, **tc.generator)
        splits["train"] = (train, f"generated(seed={cfg.seed}, {json.dumps(tc.generator, sort_keys=True)})")
    elif tc.train is not None:
        splits["train"] = loaded["train"]
    return splits


def _sft_data_splits(cfg: PrepareConfig, name: str) -> dict[str, tuple[list[Example], str]]:
    """{train|heldout: (examples, source description)} of the SFT data set ``name``."""
    sc = cfg.sft_data[name]
    examples = read_s1k(sc.source, limit=sc.size)
    train, heldout = heldout_split(examples, sc.heldout_fraction, _task_seed(cfg.seed, f"{name}:heldout"))
    if not train:
        raise DataError(f"{sc.source}: no {name} row left to train on after holding out {len(heldout)}")
    held = f"{sc.source} (held out: {sc.heldout_fraction:g}, seed {cfg.seed})"
    return {"train": (train, sc.source), "heldout": (heldout, held)}


def _write_splits(out: Path, name: str, splits: dict[str, tuple[list[Example], str]]) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for split, (examples, source) in splits.items():
        path = out / name / f"{split}.jsonl"
        write_jsonl(path, (ex.to_record() for ex in examples))
        entry[split] = {
            "path": path.as_posix(),
            "count": len(examples),
            "source": source,
            "sha256": sha256_file(path),
        }
    return entry


def prepare(cfg: PrepareConfig) -> dict:
    """Run the data-prep stage; returns the manifest (also written to out_dir).

    Every split is loaded or generated before anything is written, so a bad
    source or record leaves the previous outputs untouched; each file is then
    written atomically and the manifest last.
    """
    out = Path(cfg.out_dir)
    # Read every source first (quick), so that a bad file or row stops the stage on one line, before the
    # progress of the (slow) generation starts.
    loaded = {name: _loaded_splits(cfg, name) for name in sorted(cfg.tasks)}
    sft_data = {name: _sft_data_splits(cfg, name) for name in sorted(cfg.sft_data)}
    built = {name: _build_splits(cfg, name, loaded[name])
             for name in progress(sorted(cfg.tasks), desc="prepare", unit="task")}
    manifest: dict[str, Any] = {"seed": cfg.seed, "tasks": {}}
    for name, splits in built.items():
        manifest["tasks"][name] = _write_splits(out, name, splits)
    if sft_data:  # absent without SFT data sets: the manifests of task-only profiles stay as they were
        manifest["sft_data"] = {name: _write_splits(out, name, splits) for name, splits in sft_data.items()}
    write_resolved(cfg, out)
    write_json_atomic(out / "manifest.json", manifest)
    return manifest


def read_split(data_dir: str | Path, task_name: str, split: str) -> list[Example]:
    """The Examples a previous ``prepare`` wrote for ``task_name``/``split``."""
    path = Path(data_dir) / task_name / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: no such file (run `d1 prepare` first)")
    records = read_records(str(path))
    if not records:
        raise DataError(f"{path}: holds no {split} example (an empty file; run `d1 prepare` again)")
    examples = []
    for i, rec in enumerate(records):
        try:
            examples.append(Example.from_record(rec))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: row {i}: not a prepared {task_name} example ({exc!r})") from None
    return examples
