from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from d1.config import from_dict, load_config, write_resolved
from d1.errors import ConfigError


@dataclass
class Inner:
    size: int | None = None
    names: list[str] = field(default_factory=list)


@dataclass
class Demo:
    SECTION: ClassVar[str] = "demo"
    lr: float = 1e-3
    steps: int = 10
    flag: bool = False
    inner: dict[str, Inner] = field(default_factory=dict)

    def validate(self):
        if self.steps <= 0:
            raise ConfigError(f"demo.steps: must be positive, got {self.steps}")


def test_nested_values_are_typed():
    cfg = from_dict(Demo, {"lr": 1, "inner": {"a": {"size": 3, "names": ["x"]}}}, "demo")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.inner["a"] == Inner(size=3, names=["x"])


@pytest.mark.parametrize(
    "data, message",
    [
        ({"lrr": 1}, "demo: unknown key 'lrr'"),
        ({"steps": "ten"}, "demo.steps: expected an integer, got 'ten'"),
        ({"steps": True}, "demo.steps: expected an integer, got True"),
        ({"flag": "yes"}, "demo.flag: expected true/false"),
        ({"inner": {"a": {"size": "big"}}}, "demo.inner.a.size"),
        ({"inner": {"a": {"names": "x"}}}, "demo.inner.a.names: expected a list"),
        ({"steps": 0}, "demo.steps: must be positive, got 0"),
    ],
)
def test_bad_values_are_named(data, message):
    with pytest.raises(ConfigError) as exc:
        from_dict(Demo, data, "demo")
    assert message in str(exc.value)


def test_load_and_write_resolved(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("demo:\n  steps: 3\nother: {}\n")
    cfg = load_config(Demo, params)
    assert cfg.steps == 3
    path = write_resolved(cfg, tmp_path / "out")
    assert path.name == "demo_config.json"
    assert json.loads(path.read_text())["steps"] == 3


def test_params_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such params file"):
        load_config(Demo, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("demo: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Demo, bad)
    bad.write_text("other: {}\n")
    with pytest.raises(ConfigError, match="no 'demo' section"):
        load_config(Demo, bad)


def test_overrides(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("demo:\n  steps: 3\n")
    cfg = load_config(Demo, params, overrides=["demo.steps=5", "demo.inner.a.names=[x, y]", "demo.flag=true"])
    assert (cfg.steps, cfg.flag, cfg.inner["a"].names) == (5, True, ["x", "y"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(Demo, params, overrides=["demo.steps"])
    with pytest.raises(ConfigError, match="demo.steps is not a mapping"):
        load_config(Demo, params, overrides=["demo.steps.x=1"])
    with pytest.raises(ConfigError, match="demo: unknown key 'stepz'"):
        load_config(Demo, params, overrides=["demo.stepz=1"])
