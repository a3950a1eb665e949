"""Assets and artifacts content (flows/observe.py), computed without Prefect."""

from __future__ import annotations

import pytest

from flows import dvc_ops
from flows.graph import by_name, read_stages
from flows.observe import (
    asset_key, eval_rows, find_results_markdown, outputs_markdown, stage_assets,
)
from flows.stages import run_here
from tests.flows.toy_project import copy_toy


@pytest.fixture(scope="module")
def done(toy_template, tmp_path_factory):
    base = tmp_path_factory.mktemp("observe")
    root = copy_toy(toy_template, base / "toy", base / "remote")
    for s in read_stages(root):
        run_here(root, s.name, s.upstream, pull=False, push=False, env={}, log=lambda _: None)
    return root


def test_asset_keys_are_uris_with_the_dvc_hash():
    assert asset_key("d1-pipeline", "outputs/sft/model", "ab12.dir") == "dvc://d1-pipeline/outputs/sft/model@ab12.dir"
    assert asset_key("ns", "a b/c#d", "") == "dvc://ns/a_b/c_d@unknown"


def test_stage_assets_link_deps_to_the_outputs_that_produced_them(done):
    stages = by_name(read_stages(done))
    lock = dvc_ops.read_lock(done)
    outs, upstream = stage_assets(stages["train@a"], lock, "ns")
    md5 = dvc_ops.out_hashes(lock, "train@a")["out/train/a"]
    assert outs == [{"key": f"dvc://ns/out/train/a@{md5}", "path": "out/train/a", "md5": md5,
                     "size": lock["train@a"]["outs"][0]["size"], "nfiles": 2, "metric": False}]
    data = dvc_ops.out_hashes(lock, "prepare")["out/data"]
    code = dvc_ops.dep_hashes(lock, "train@a")["toy.py"]
    assert upstream == sorted([f"dvc://ns/out/data@{data}", f"dvc://ns/toy.py@{code}"])
    # the report depends on the folder out/eval, which holds the eval stages' outputs
    _, report_up = stage_assets(stages["report"], lock, "ns")
    evals = [asset_key("ns", p, m) for s in ("eval@a", "eval@b") for p, m in dvc_ops.out_hashes(lock, s).items()]
    assert set(evals) <= set(report_up) and len(evals) == 6
    eval_outs, _ = stage_assets(stages["eval@a"], lock, "ns")
    assert [o["metric"] for o in eval_outs] == [False, False, True]


def test_eval_rows_results_and_outputs(done):
    stages = read_stages(done)
    rows = eval_rows(done, stages)
    assert [(r["model"], r["task"], r["gen_length"], r["accuracy"]) for r in rows] == [
        ("d1", "a", 64, 6.0), ("d1", "b", 64, 6.0)]
    assert rows[0]["file"] == "out/eval/a/metrics.json" and rows[0]["stage"] == "eval@a"
    assert find_results_markdown(done, stages) == done / "out/report/results.md"
    text = outputs_markdown(done, stages, dvc_ops.read_lock(done), {"prepare": "ran"}, {"prepare": "cpu"})
    assert "| prepare | ran | cpu | `out/data` " in text
    assert "| report | not run | - |" in text
