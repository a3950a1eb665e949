from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from d1.config import (
    default_section,
    from_dict,
    get_section,
    load_config,
    scope_overrides,
    write_bytes_atomic,
    write_resolved,
    write_text_atomic,
)
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


def test_yaml11_exponent_strings_are_numbers_for_float_fields():
    # PyYAML reads 1e-4 (no dot) as a string; a float field must still accept it, and only numbers.
    from d1.train import SFTConfig

    assert from_dict(SFTConfig, {"lr": "1e-4"}, "sft").lr == 1e-4
    assert from_dict(SFTConfig, {"lr": "2.5E-3"}, "sft").lr == 0.0025
    with pytest.raises(ConfigError, match="sft.lr: expected a number, got '1e-4x'"):
        from_dict(SFTConfig, {"lr": "1e-4x"}, "sft")


PROFILED = """\
profile: tiny
tiny:
  demo: {steps: 3}
  nested:
    demo: {steps: 4}
micro:
  demo: {steps: 1}
"""


def test_dotted_sections_and_the_active_profile(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(PROFILED)
    assert load_config(Demo, params).steps == 3  # default: <profile>.demo
    assert load_config(Demo, params, section="micro.demo").steps == 1
    assert load_config(Demo, params, section="tiny.nested.demo").steps == 4
    with pytest.raises(ConfigError, match="no 'micro.nested' section \\(for section 'micro.nested.demo'\\)"):
        load_config(Demo, params, section="micro.nested.demo")
    with pytest.raises(ConfigError, match="bad section name 'tiny..demo'"):
        load_config(Demo, params, section="tiny..demo")


def test_default_section():
    assert default_section({"profile": "tiny", "tiny": {}}, "sft") == "tiny.sft"
    assert default_section({"sft": {}}, "sft") == "sft"
    assert default_section({"profile": "tiny", "sft": {}}, "sft") == "sft"  # a flat section wins
    assert get_section({"a": {"b": {"c": 1}}}, "a.b") == {"c": 1}


def test_overrides_are_scoped_to_the_section(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(PROFILED)
    # full path, or short from the stage's name
    assert load_config(Demo, params, overrides=["tiny.demo.steps=7"]).steps == 7
    assert load_config(Demo, params, overrides=["demo.steps=8"]).steps == 8
    assert load_config(Demo, params, section="micro.demo", overrides=["demo.steps=9"]).steps == 9
    # an override that would land outside the section read is an error, not silently ignored
    with pytest.raises(ConfigError, match="override 'micro.demo.steps=2': not a key of the section being read, 'tiny.demo'"):
        load_config(Demo, params, overrides=["micro.demo.steps=2"])
    assert scope_overrides(["x.y=1"], "x", "x") == ["x.y=1"]
    assert scope_overrides(["sft.lr=1", "tiny.sft.seed=2"], "tiny.sft", "sft") == ["tiny.sft.lr=1", "tiny.sft.seed=2"]


def test_errors_name_the_dotted_path(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(PROFILED)
    with pytest.raises(ConfigError) as exc:  # a type error found while reading
        load_config(Demo, params, overrides=["demo.steps=ten"])
    assert str(exc.value).startswith("tiny.demo.steps: expected an integer")
    with pytest.raises(ConfigError) as exc:  # a value error raised by validate() in the class's own words
        load_config(Demo, params, overrides=["demo.steps=0"])
    assert str(exc.value) == "tiny.demo.steps: must be positive, got 0"
    with pytest.raises(ConfigError) as exc:
        load_config(Demo, params, section="tiny.nested.demo", overrides=["demo.steps=-1"])
    assert str(exc.value) == "tiny.nested.demo.steps: must be positive, got -1"


def test_atomic_writers_leave_no_temp_files(tmp_path):
    write_text_atomic(tmp_path / "sub" / "a.txt", "hello")
    write_bytes_atomic(tmp_path / "sub" / "b.bin", b"\x00\x01")
    assert (tmp_path / "sub" / "a.txt").read_text() == "hello"
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.txt", "b.bin"]
