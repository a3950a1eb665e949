"""The flow's parameters written into params.yaml (flows/params.py)."""

from __future__ import annotations

import pytest
import yaml

from d1.errors import ConfigError
from flows.params import apply_flow_params, write_overrides


def _params(toy):
    return yaml.safe_load((toy / "params.yaml").read_text())


def test_profile_tasks_and_overrides_are_written_like_dvc_exp_run(toy):
    written = apply_flow_params(toy, "local", tasks=["a"], overrides=["local.train.scale=7"])
    assert written == ["profile=local", 'tasks=["a"]', "local.train.scale=7"]
    p = _params(toy)
    assert p["profile"] == "local" and p["tasks"] == ["a"] and p["local"]["train"]["scale"] == 7
    text = (toy / "params.yaml").read_text()
    assert "# toy params" in text and "# must be positive" in text  # comments kept


def test_overrides_that_change_nothing_leave_the_file_untouched(toy):
    before = (toy / "params.yaml").read_text()
    apply_flow_params(toy, "micro", overrides=["micro.train.scale=2"])
    assert (toy / "params.yaml").read_text() == before
    assert write_overrides(toy, ["profile=micro"]) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"profile": "nope"}, "profile 'nope': no such profile in params.yaml (profiles: local, micro)"),
    ({"profile": "micro", "tasks": ["c"]}, "tasks: 'c' is not one of tasks = ['a', 'b']"),
    ({"profile": "micro", "overrides": ["micro.train.scal=1"]}, "Could not override 'micro.train.scal'"),
    ({"profile": "micro", "overrides": ["micro.train.scale"]}, "override 'micro.train.scale': expected KEY=VALUE"),
])
def test_bad_parameters_are_one_line_errors_and_write_nothing(toy, kwargs, message):
    before = (toy / "params.yaml").read_text()
    with pytest.raises(ConfigError) as err:
        apply_flow_params(toy, **kwargs)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert (toy / "params.yaml").read_text() == before


def test_tasks_need_the_profiles_tasks_param(toy):
    text = (toy / "params.yaml").read_text().replace(", tasks_param: tasks", "")
    (toy / "params.yaml").write_text(text)
    with pytest.raises(ConfigError, match="micro.flow.tasks_param is not set"):
        apply_flow_params(toy, "micro", tasks=["a"])
