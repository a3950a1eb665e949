"""benchmarks/rl_algorithms.py on a tiny model: two algorithms x two seeds from one model, its table and
its bookkeeping (same items, per-seed gains, cached runs, bad arguments)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("rl_algorithms", REPO / "benchmarks" / "rl_algorithms.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["rl_algorithms"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.train.conftest import save_tiny_base, write_tiny_data

    root = tmp_path_factory.mktemp("bench")
    data = write_tiny_data(root / "data")
    for task in ("countdown", "sudoku"):  # held-out items: the train file stands in for a test split
        shutil.copy(data / task / "train.jsonl", data / task / "test.jsonl")
    model = save_tiny_base(data, root / "model")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    micro = params["micro"]
    micro["eval"].update({"limit": {"countdown": 6}, "batch_size": 6})
    micro["grpo"].update({"max_examples": 4})
    micro["grpo"]["algorithms"]["wd1"]["lr"] = 5e-3  # an algorithm's own lr, which --set must override
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root, data, model


def test_two_algorithms_two_seeds(setup, capsys):
    bench = load_benchmark()
    root, data, model = setup
    out = root / "out"
    argv = ["--params", str(root / "params.yaml"), "--profile", "micro", "--sft-model", str(model), "--data",
            str(data), "--algorithms", "d1", "wd1", "--tasks", "countdown", "--seeds", "0", "1", "--rounds", "1",
            "--jobs", "2", "--threads", "1", "--set", "lr=2e-3", "--out", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| countdown | d1 | diffu_grpo / one_step |" in printed and "| countdown | wd1 | wd1 / one_step |" in printed
    results = json.loads((out / "results.json").read_text())
    rows = {r["algorithm"]: r for r in results["rows"]}
    assert set(rows) == {"d1", "wd1"}
    sft = json.loads((out / "sft" / "countdown" / "result.json").read_text())
    for name, row in rows.items():
        runs = [json.loads((out / name / "countdown" / f"seed{s}" / "result.json").read_text()) for s in (0, 1)]
        assert [r["seed"] for r in runs] == [0, 1] and all(r["rounds"] == 1 for r in runs)
        assert all(r["steps"] == r["rounds"] * 1 for r in runs)  # micro's mu is 1: one optimiser step per round
        assert all(r["questions"] == sft["questions"] and len(r["correct"]) == 6 for r in runs)
        # the gain of the seed-averaged item scores is the mean of the seeds' gains (a paired gain is linear)
        assert row["gain"] == pytest.approx(sum(row["seed_gains"]) / 2, abs=1e-9)
        lo, hi = row["ci95"]
        assert lo <= row["gain"] <= hi
        assert row["sft_accuracy"] == pytest.approx(sft["accuracy"])
        assert row["seconds_per_round"] > 0
    # each run trained the named algorithm with its seed and the budget (the resolved config beside its model)
    for name in ("d1", "wd1"):
        for seed in (0, 1):
            resolved = json.loads((out / name / "countdown" / f"seed{seed}" / "run" / "grpo_config.json").read_text())
            assert (resolved["algorithm"], resolved["seed"], resolved["max_steps"]) == (name, seed, 1)
            assert resolved["lr"] == 2e-3  # --set applies to every run
            assert resolved["model_path"] == str(model) and resolved["tasks"] == ["countdown"]
    # finished runs are not run again
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    assert bench.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == stamps


def test_bad_arguments_are_one_line_and_run_nothing(setup, tmp_path, capsys):
    bench = load_benchmark()
    root, data, model = setup
    common = ["--params", str(root / "params.yaml"), "--profile", "micro", "--data", str(data),
              "--out", str(tmp_path / "out")]
    assert bench.main(common + ["--sft-model", str(tmp_path / "none")]) == 2
    assert "is not a model folder" in capsys.readouterr().err
    assert bench.main(common + ["--sft-model", str(model), "--algorithms", "ppo"]) == 2
    assert "micro.grpo.algorithm: 'ppo' is not one of grpo.algorithms" in capsys.readouterr().err
    assert bench.main(common + ["--sft-model", str(model), "--rounds", "0"]) == 2
    assert "--rounds, --jobs and --threads must be >= 1" in capsys.readouterr().err
    assert bench.main(common + ["--sft-model", str(model), "--set", "lr=-1"]) == 2
    assert "micro.grpo.algorithms.d1.lr: must be a positive number, got -1.0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
