"""Running one stage in a checkout (flows/stages.py), without Prefect."""

from __future__ import annotations

import json

import pytest

from d1.errors import ConfigError
from flows import dvc_ops
from flows.dvc_ops import StageFailed
from flows.graph import read_stages
from flows.stages import (
    RAN, UP_TO_DATE, only_missing_outputs, parse_lock_markdown, retry_condition, run_here, summarize,
    _lock_markdown,
)
from tests.flows.toy_project import clone, runs


def _all(root, **kw):
    out = {}
    for s in read_stages(root):
        out[s.name] = run_here(root, s.name, s.upstream, env={"D1_FLOW_RUN_ID": "fr"}, log=lambda _: None, **kw)
    return out


def test_dvc_decides_what_runs(toy):
    assert set(_all(toy, pull=True, push=True).values()) == {RAN}
    assert runs(toy) == ["prepare", "train@a", "train@b", "eval@a", "eval@b", "report"]
    assert set(_all(toy, pull=True, push=True).values()) == {UP_TO_DATE}
    assert len(runs(toy)) == 6  # nothing ran again
    (toy / "params.yaml").write_text((toy / "params.yaml").read_text().replace("scale: 2", "scale: 4"))
    outcomes = _all(toy, pull=False, push=False)
    assert [n for n, o in outcomes.items() if o == RAN] == ["train@a", "train@b", "eval@a", "eval@b", "report"]
    assert json.loads((toy / "out/eval/a/env.json").read_text())["D1_FLOW_RUN_ID"] == "fr"


def test_a_stage_done_in_another_checkout_is_up_to_date_after_pull(toy, tmp_path):
    other = clone(toy, tmp_path / "other")
    _all(toy, pull=True, push=True)
    dvc_ops.merge_lock(other, dvc_ops.read_lock(toy))
    assert set(_all(other, pull=True, push=False).values()) == {UP_TO_DATE}
    assert runs(other) == []
    assert (other / "out/report/results.md").is_file()


def test_status_helpers():
    missing = {"eval@a": [{"changed outs": {"out/eval/a/metrics.json": "deleted"}}]}
    assert only_missing_outputs(missing)
    assert not only_missing_outputs({"x": [{"changed deps": {"a": "modified"}}, {"changed outs": {"b": "deleted"}}]})
    assert not only_missing_outputs({"x": ["changed command"]})
    assert not only_missing_outputs({})
    assert summarize(missing) == "changed outs: out/eval/a/metrics.json deleted"
    many = {"s": [{"changed deps": {f"d1/m{i}.py": "modified" for i in range(9)}}]}
    assert summarize(many) == ("changed deps: d1/m0.py modified, d1/m1.py modified, d1/m2.py modified, "
                               "d1/m3.py modified and 5 more")


def test_lock_artifact_roundtrip():
    entry = {"cmd": "d1 eval", "outs": [{"path": "outputs/eval", "md5": "abc.dir"}]}
    assert parse_lock_markdown(_lock_markdown("eval@x", entry, RAN)) == {"stage": "eval@x", "outcome": RAN, "lock": entry}
    with pytest.raises(ConfigError):
        parse_lock_markdown("no block")


class _State:
    def __init__(self, data):
        self.data = data


def test_retry_only_what_may_succeed_next_time():
    assert retry_condition(None, None, _State(StageFailed("s", "RuntimeError: boom", retryable=True)))
    assert not retry_condition(None, None, _State(StageFailed("s", "d1 s: error: bad", retryable=False)))
    assert not retry_condition(None, None, _State(ConfigError("bad params")))
    assert retry_condition(None, None, _State(OSError("disk hiccup")))
