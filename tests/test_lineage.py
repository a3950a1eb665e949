"""d1 lineage on a hand-written dvc.lock: producers, upstream order, params, provenance, errors."""

from __future__ import annotations

import json

import pytest
import yaml

from d1.errors import DataError
from d1.lineage import format_text, lineage, producers, read_lock


def _dep(path, md5):
    return {"path": path, "hash": "md5", "md5": md5}


LOCK = {
    "schema": "2.0",
    "stages": {
        "prepare": {"cmd": "d1 prepare --section tiny.prepare", "deps": [_dep("d1/prepare.py", "p1")],
                    "params": {"params.yaml": {"tiny.prepare": {"seed": 42, "tasks": {"countdown": {"train_size": 10}}}}},
                    "outs": [_dep("data", "d0.dir")]},
        "sft": {"cmd": "d1 sft", "deps": [_dep("data", "d0.dir"), _dep("d1/train", "t1.dir")],
                "params": {"params.yaml": {"tiny.sft": {"lr": 0.001}}},
                "outs": [_dep("outputs/sft", "s0.dir"), _dep("outputs/dvclive/sft/metrics.json", "m0")]},
        "grpo@d1-countdown": {"cmd": "d1 grpo", "deps": [_dep("data", "d0.dir"), _dep("outputs/sft", "s0.dir")],
                           "params": {"params.yaml": {"tiny.grpo": {"lr": 0.0001}}},
                           "outs": [_dep("outputs/d1/countdown", "g0.dir")]},
        "grpo@d1-sudoku": {"cmd": "d1 grpo", "deps": [_dep("data", "d0.dir"), _dep("outputs/sft", "s0.dir")],
                        "outs": [_dep("outputs/d1/sudoku", "g2.dir"), _dep("outputs/provenance/grpo@d1-sudoku.json", "gp")]},
        "eval@d1-countdown-64": {"cmd": "d1 eval", "deps": [_dep("outputs/d1", "g1.dir"), _dep("data", "d0.dir")],
                                 "outs": [_dep("outputs/eval/d1/countdown/64/generations", "e0.dir"),
                                          _dep("outputs/eval/d1/countdown/64/provenance.json", "e1"),
                                          _dep("outputs/eval/d1/countdown/64/metrics.json", "e2")]},
        "eval@sft-countdown-64": {"cmd": "d1 eval", "deps": [_dep("outputs/sft", "s0.dir"), _dep("data", "d0.dir")],
                                  "outs": [_dep("outputs/eval/sft/countdown/64/metrics.json", "e3")]},
        "report": {"cmd": "d1 report", "deps": [_dep("outputs/eval", "ev.dir"), _dep("d1/report.py", "r1")],
                   "params": {"params.yaml": {"tiny.report": {"seed": 42}}, "other.yaml": {"x": 1}},
                   "outs": [_dep("outputs/report/results.json", "res"), _dep("outputs/report/provenance.json", "rp")]},
    },
}


@pytest.fixture
def project(tmp_path):
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(LOCK))
    for out_dir, record in [
        ("data", {"stage": "prepare", "git_commit": "c0", "git_dirty": False, "flow_run_id": "flow-A"}),
        ("outputs/sft", {"stage": "sft", "git_commit": "c1", "git_dirty": True, "flow_run_id": "flow-A"}),
        ("outputs/eval/d1/countdown/64", {"stage": "eval@d1-countdown-64", "git_commit": "c2", "flow_run_id": "flow-B"}),
        ("outputs/report", {"stage": "report", "git_commit": "c3", "flow_run_id": "flow-B", "task_run_id": "t-7"}),
    ]:
        (tmp_path / out_dir).mkdir(parents=True, exist_ok=True)
        (tmp_path / out_dir / "provenance.json").write_text(json.dumps(record))
    (tmp_path / "data" / "countdown").mkdir()
    (tmp_path / "outputs/provenance").mkdir()
    record = {"stage": "grpo@d1-sudoku", "flow_run_id": "flow-C"}
    (tmp_path / "outputs/provenance/grpo@d1-sudoku.json").write_text(json.dumps(record))
    return tmp_path


def test_producers_match_outs_inside_and_around():
    stages = LOCK["stages"]
    assert [s for s, _ in producers(stages, "data/countdown/test.jsonl")] == ["prepare"]
    found = producers(stages, "outputs/eval")
    assert sorted({s for s, _ in found}) == ["eval@d1-countdown-64", "eval@sft-countdown-64"] and len(found) == 4
    assert sorted({s for s, _ in producers(stages, "outputs/d1")}) == ["grpo@d1-countdown", "grpo@d1-sudoku"]
    assert producers(stages, "d1/report.py") == []


def test_report_lineage_names_every_upstream_stage(project):
    result = lineage(project / "outputs/report/results.json", project / "dvc.lock")
    names = [s["stage"] for s in result["stages"]]
    assert result["stage"] == "report" and result["md5"] == "res"
    # each stage before the stages it read from; every upstream stage once
    assert names == ["report", "eval@d1-countdown-64", "eval@sft-countdown-64", "grpo@d1-countdown", "grpo@d1-sudoku",
                     "sft", "prepare"]
    rec = {s["stage"]: s for s in result["stages"]}
    assert rec["report"]["flow_run_id"] == "flow-B" and rec["report"]["task_run_id"] == "t-7"
    assert rec["report"]["params"] == {"tiny.report.seed": 42, "other.yaml:x": 1}
    assert rec["prepare"]["params"]["tiny.prepare.tasks.countdown.train_size"] == 10
    assert rec["sft"]["git_commit"] == "c1" and rec["sft"]["git_dirty"] is True
    assert rec["grpo@d1-countdown"]["provenance"] is None  # its out folder holds no provenance.json
    assert rec["grpo@d1-sudoku"]["flow_run_id"] == "flow-C"  # a record of its own in outputs/provenance/
    deps = {d["path"]: d for d in rec["report"]["deps"]}
    assert deps["outputs/eval"]["md5"] == "ev.dir"
    assert deps["outputs/eval"]["produced_by"] == ["eval@d1-countdown-64", "eval@sft-countdown-64"]
    assert deps["d1/report.py"]["produced_by"] == []
    text = format_text(result)
    for needle in ("stage prepare", "d0.dir", "flow run: flow-A", "git commit: c1 (uncommitted changes)",
                   "tiny.sft.lr = 0.001", "outputs/eval  md5 ev.dir  <- eval@d1-countdown-64, eval@sft-countdown-64",
                   "provenance: none recorded"):
        assert needle in text, needle


def test_lineage_of_a_file_inside_an_out(project, monkeypatch):
    monkeypatch.chdir(project)
    result = lineage("data/countdown", "dvc.lock")
    assert [s["stage"] for s in result["stages"]] == ["prepare"]
    assert result["out"] == "data" and result["stages"][0]["flow_run_id"] == "flow-A"
    result = lineage("outputs/sft/model", "dvc.lock")
    assert [s["stage"] for s in result["stages"]] == ["sft", "prepare"]


def test_errors(project, tmp_path_factory):
    lock = project / "dvc.lock"
    with pytest.raises(DataError, match="d1/report.py: no stage in .* produced it"):
        lineage(project / "d1/report.py", lock)
    with pytest.raises(DataError, match="outside the project"):
        lineage(tmp_path_factory.mktemp("elsewhere") / "x", lock)
    with pytest.raises(DataError, match="no such file"):
        read_lock(project / "missing.lock")
    bad = project / "bad.lock"
    bad.write_text("stages: [1, 2]\n")
    with pytest.raises(DataError, match="not a dvc.lock with schema 2.0"):
        read_lock(bad)
    bad.write_text("stages: {a: [\n")
    with pytest.raises(DataError, match="invalid YAML"):
        read_lock(bad)


def test_cli_lineage(project, monkeypatch, capsys):
    from d1.cli import main

    monkeypatch.chdir(project)
    assert main(["lineage", "outputs/report/results.json", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in out["stages"]][-1] == "prepare"
    assert main(["lineage", "outputs/report/results.json"]) == 0
    assert "stage report" in capsys.readouterr().out
    assert main(["lineage", "nowhere.txt"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nowhere.txt: no stage" in err
