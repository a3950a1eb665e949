"""Reading the resolved DVC stage graph (flows/graph.py) of a toy project."""

from __future__ import annotations

import pytest

from d1.errors import ConfigError
from flows.graph import downstream_closure, read_stages, upstream_closure
from flows.params import apply_flow_params


def test_stages_come_resolved_and_in_dependency_order(toy):
    stages = read_stages(toy)
    names = [s.name for s in stages]
    assert names == ["prepare", "train@a", "train@b", "eval@a", "eval@b", "report"]
    by = {s.name: s for s in stages}
    assert by["prepare"].upstream == ()
    assert by["train@b"].upstream == ("prepare",)
    assert by["eval@a"].upstream == ("train@a",)
    assert by["report"].upstream == ("eval@a", "eval@b")  # a dep folder holding several outs
    assert by["train@a"].cmd == "python toy.py train a"
    assert by["train@a"].params == ("micro.train",)
    assert "out/data" in by["train@a"].deps and "params.yaml" not in by["train@a"].deps
    metrics = [o.path for o in by["eval@a"].outs if o.metric]
    assert metrics == ["out/eval/a/metrics.json"]
    assert by["eval@a"].family == "eval"


def test_the_graph_follows_params(toy):
    apply_flow_params(toy, "micro", tasks=["b"])
    assert [s.name for s in read_stages(toy)] == ["prepare", "train@b", "eval@b", "report"]


def test_closures(toy):
    stages = read_stages(toy)
    assert upstream_closure(stages, "report") == ["prepare", "train@a", "train@b", "eval@a", "eval@b"]
    assert upstream_closure(stages, "prepare") == []
    assert downstream_closure(stages, {"train@a"}) == {"eval@a", "report"}


def test_an_unresolvable_pipeline_is_a_one_line_error(toy):
    (toy / "dvc.yaml").write_text((toy / "dvc.yaml").read_text().replace("${tasks}", "${nosuchkey}"))
    with pytest.raises(ConfigError, match="DVC cannot resolve the pipeline: .*nosuchkey") as err:
        read_stages(toy)
    assert "\n" not in str(err.value)


def test_a_folder_without_dvc_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no dvc.yaml"):
        read_stages(tmp_path)
