"""The data-prep stage: files, manifest, determinism, no train/test overlap, clear errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from d1.config import from_dict, load_config
from d1.errors import ConfigError, DataError
from d1.prepare import PrepareConfig, prepare, read_split


def small_config(out_dir: Path, seed: int = 7) -> PrepareConfig:
    return from_dict(
        PrepareConfig,
        {
            "out_dir": str(out_dir),
            "seed": seed,
            "tasks": {
                "gsm8k": {"train_size": 20, "test_size": 10},
                "math500": {"train": None, "test_size": 10},
                "countdown": {"train": "generate", "train_size": 200},
                "sudoku": {"train": "generate", "train_size": 200, "test_size": 256},
            },
        },
        "prepare",
    )


def _bytes(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_writes_splits_and_manifest(tmp_path):
    out = tmp_path / "data"
    manifest = prepare(small_config(out))
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["seed"] == 7
    expected = {"gsm8k": {"train": 20, "test": 10}, "math500": {"test": 10},
                "countdown": {"train": 200, "test": 256}, "sudoku": {"train": 200, "test": 256}}
    assert {t: {s: v["count"] for s, v in e.items()} for t, e in manifest["tasks"].items()} == expected
    for task, splits in manifest["tasks"].items():
        for split, entry in splits.items():
            path = Path(entry["path"])
            assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
            assert len(path.read_text().splitlines()) == entry["count"]
            assert len(read_split(out, task, split)) == entry["count"]
    assert (out / "prepare_config.json").is_file()
    assert "generated" in manifest["tasks"]["countdown"]["train"]["source"]


def test_generated_train_never_overlaps_test(tmp_path):
    out = tmp_path / "data"
    prepare(small_config(out))
    for task in ("countdown", "sudoku"):
        test_q = {ex.question for ex in read_split(out, task, "test")}
        train = read_split(out, task, "train")
        assert not test_q & {ex.question for ex in train}
        assert all(ex.solution for ex in train), "generated examples carry a worked solution"


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    prepare(small_config(tmp_path / "a"))
    prepare(small_config(tmp_path / "b"))
    a, b = _bytes(tmp_path / "a"), _bytes(tmp_path / "b")
    # paths inside manifest/config differ by folder name only
    for name in a:
        if name.endswith(".jsonl"):
            assert a[name] == b[name], name
    prepare(small_config(tmp_path / "c", seed=8))
    c = _bytes(tmp_path / "c")
    assert c["countdown/train.jsonl"] != a["countdown/train.jsonl"]
    assert c["gsm8k/test.jsonl"] == a["gsm8k/test.jsonl"]


def test_shipped_params_file_is_valid(repo_root):
    # the active profile (tiny) prepares the pipeline's tasks; llada-8b all four of the paper
    cfg = load_config(PrepareConfig, repo_root / "params.yaml")
    assert set(cfg.tasks) == {"countdown", "sudoku"}
    paper = load_config(PrepareConfig, repo_root / "params.yaml", section="llada-8b.prepare")
    assert set(paper.tasks) == {"gsm8k", "math500", "countdown", "sudoku"}


@pytest.mark.parametrize(
    "tasks, message",
    [
        ({"chess": {}}, "prepare.tasks.chess: unknown task 'chess'"),
        ({"gsm8k": {"train": "generate", "train_size": 5}}, "prepare.tasks.gsm8k.train: task gsm8k cannot generate"),
        ({"countdown": {"train": "generate"}}, "prepare.tasks.countdown.train_size: required"),
        ({"sudoku": {"train": None, "test_size": 0}}, "prepare.tasks.sudoku.test_size: must be positive, got 0"),
        ({"math500": {}}, "prepare.tasks.math500.train: no builtin train data"),
        ({}, "prepare.tasks: no task configured"),
    ],
)
def test_config_errors_name_the_key(tmp_path, tasks, message):
    with pytest.raises(ConfigError) as exc:
        from_dict(PrepareConfig, {"out_dir": str(tmp_path), "tasks": tasks}, "prepare")
    assert message in str(exc.value)


def test_bad_source_leaves_previous_outputs_intact(tmp_path):
    out = tmp_path / "data"
    prepare(small_config(out))
    before = _bytes(out)
    bad = from_dict(
        PrepareConfig,
        {"out_dir": str(out), "tasks": {"gsm8k": {"test": str(tmp_path / "nope.jsonl")}}},
        "prepare",
    )
    with pytest.raises(DataError, match="nope.jsonl"):
        prepare(bad)
    assert _bytes(out) == before


def test_malformed_record_is_named(tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps({"question": "q"}) + "\n")
    cfg = from_dict(PrepareConfig, {"out_dir": str(tmp_path / "o"), "tasks": {"gsm8k": {"train": None, "test": str(src)}}}, "prepare")
    with pytest.raises(DataError, match="rows.jsonl"):
        prepare(cfg)


def test_cli_prepare(tmp_path, capsys):
    from d1.cli import main

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"prepare": {"out_dir": str(tmp_path / "d"), "tasks": {"countdown": {"train": "generate", "train_size": 30}}}}))
    assert main(["prepare", "--params", str(params)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["counts"] == {"countdown": {"train": 30, "test": 256}}
    # --set overrides a param without editing the file
    assert main(["prepare", "--params", str(params), "--set", "prepare.tasks.countdown.train_size=12"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["counts"] == {"countdown": {"train": 12, "test": 256}}


def test_generated_test_split_is_held_out_from_generated_train(tmp_path):
    gen = {"num_numbers": 3, "number_range": [1, 20], "target_range": [1, 100]}
    cfg = from_dict(PrepareConfig, {"out_dir": str(tmp_path / "d"), "seed": 3, "tasks": {
        "countdown": {"train": "generate", "train_size": 300, "test": "generate", "test_size": 50, "generator": gen},
        "sudoku": {"train": "generate", "train_size": 100, "test": "generate", "test_size": 40}}}, "prepare")
    manifest = prepare(cfg)
    assert manifest["tasks"]["countdown"]["test"]["count"] == 50 and manifest["tasks"]["sudoku"]["test"]["count"] == 40
    assert "generated" in manifest["tasks"]["countdown"]["test"]["source"]
    for task in ("countdown", "sudoku"):
        test, train = read_split(cfg.out_dir, task, "test"), read_split(cfg.out_dir, task, "train")
        assert not {ex.question for ex in test} & {ex.question for ex in train}
    test = read_split(cfg.out_dir, "countdown", "test")
    assert all(1 <= n <= 20 for ex in test for n in ex.ground_truth[0])  # the generator options apply to test too
    with pytest.raises(ConfigError, match="test_size: required with test: generate"):
        from_dict(PrepareConfig, {"tasks": {"countdown": {"train": None, "test": "generate"}}}, "prepare")
    with pytest.raises(ConfigError, match="gsm8k.test: task gsm8k cannot generate data"):
        from_dict(PrepareConfig, {"tasks": {"gsm8k": {"test": "generate", "test_size": 5}}}, "prepare")
