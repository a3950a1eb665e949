"""grpo.per_task: one grpo section for every grpo@<algorithm>-<task> stage, with a task's own settings over it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from d1.config import from_dict, load_config
from d1.errors import ConfigError
from d1.train.checkpoints import run_fingerprint
from d1.train.grpo_config import GRPOConfig

SECTION = {
    "tasks": ["gsm8k"], "num_iterations": 12, "sampler": {"gen_length": 256, "temperature": 0.9},
    "per_task": {"countdown": {"num_iterations": 8}, "sudoku": {"num_iterations": 8, "sampler": {"temperature": 0.3}}},
}


def grpo(tasks, **changes) -> GRPOConfig:
    return from_dict(GRPOConfig, {**SECTION, "tasks": tasks, **changes}, "llada-8b.grpo")


def test_a_one_task_run_takes_its_tasks_entry_over_the_section():
    assert grpo(["gsm8k"]).num_iterations == 12 and grpo(["math500"]).num_iterations == 12
    countdown = grpo(["countdown"])
    assert countdown.num_iterations == 8 and countdown.sampler.temperature == 0.9
    sudoku = grpo(["sudoku"])
    # a sampler entry replaces only the keys it names, over the section's sampler (not the defaults)
    assert sudoku.num_iterations == 8 and sudoku.sampler.temperature == 0.3 and sudoku.sampler.gen_length == 256
    assert grpo(["gsm8k"]).sampler.temperature == 0.9


def test_the_entry_applies_through_the_stage_command_overrides(tmp_path):
    """As dvc.yaml runs a grpo@<algorithm>-<task> stage: the profile's section, then --set grpo.tasks=[<task>]."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"profile": "p", "p": {"grpo": SECTION}}))
    mu = {t: load_config(GRPOConfig, params, "p.grpo", [f"grpo.tasks=[{t}]"]).num_iterations
          for t in ("gsm8k", "math500", "countdown", "sudoku")}
    assert mu == {"gsm8k": 12, "math500": 12, "countdown": 8, "sudoku": 8}


def test_resolving_twice_gives_the_same_config_and_fingerprint():
    first = grpo(["sudoku"])
    again = from_dict(GRPOConfig, json.loads(json.dumps(dataclasses.asdict(first))), "grpo")  # grpo_config.json
    assert again == first
    # the other tasks' entries do not change a run's checkpoint fingerprint (its own is in its fields)
    other = grpo(["sudoku"], per_task={**SECTION["per_task"], "countdown": {"num_iterations": 6}})
    assert run_fingerprint(other, "grpo")["sha256"] == run_fingerprint(first, "grpo")["sha256"]


@pytest.mark.parametrize("per_task, tasks, message", [
    ({"chess": {"num_iterations": 8}}, ["gsm8k"],
     "llada-8b.grpo.per_task: unknown task 'chess'; available: countdown, gsm8k, math500, sudoku"),
    ({"sudoku": {"num_iteration": 8}}, ["gsm8k"], "llada-8b.grpo.per_task.sudoku: unknown key 'num_iteration' (known:"),
    ({"sudoku": {"num_iterations": 0}}, ["gsm8k"],
     "llada-8b.grpo.per_task.sudoku.num_iterations: must be a positive integer, got 0"),
    ({"sudoku": {"num_iterations": "8x"}}, ["gsm8k"], "llada-8b.grpo.per_task.sudoku.num_iterations: expected an integer"),
    ({"sudoku": {"diffusion_steps": 64}}, ["gsm8k"], "llada-8b.grpo.per_task.sudoku.diffusion_steps: moved to"),
    ({"sudoku": {"sampler": {"block_length": 48}}}, ["gsm8k"],
     "llada-8b.grpo.per_task.sudoku.sampler.block_length: 48 does not divide gen_length 256"),
    ({"sudoku": {"sampler": {"tempreature": 0.3}}}, ["gsm8k"], "llada-8b.grpo.per_task.sudoku.sampler: unknown key"),
    ({"sudoku": {"tasks": ["gsm8k"]}}, ["sudoku"], "llada-8b.grpo.per_task.sudoku.tasks: cannot be set per task"),
    ({"sudoku": None}, ["gsm8k"], "llada-8b.grpo.per_task.sudoku: expected a mapping"),
    ({"sudoku": {"num_iterations": 8}}, ["gsm8k", "sudoku"],
     "llada-8b.grpo.per_task: holds settings for sudoku, which apply to a run of that task alone"),
])
def test_bad_entries_are_one_line_errors_in_every_tasks_stage(per_task, tasks, message):
    with pytest.raises(ConfigError) as err:
        grpo(tasks, per_task=per_task)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_run_of_several_tasks_without_their_entries_is_fine():
    cfg = grpo(["gsm8k", "math500"])
    assert cfg.num_iterations == 12
