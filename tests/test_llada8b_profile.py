"""The llada-8b profile is d1's recipe: every row of the tables in docs/algorithms.md section 9 equals
the value the project's loader resolves from params.yaml (so the doc and the profile cannot drift apart);
the profile's tasks and lengths live in params.yaml and selecting the profile makes them the graph's axes."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import yaml

from d1.cli import STAGES, _load, main
from d1.config import GRAPH_AXES, check_graph_axes, load_config, profile_axes, read_params
from d1.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
PROFILE = "llada-8b"
TASKS = ["gsm8k", "math500", "countdown", "sudoku"]
CODE = re.compile(r"`([^`]*)`")


# ----------------------------------------------------------------------------- the doc's tables


def section_9() -> str:
    text = (REPO / "docs" / "algorithms.md").read_text(encoding="utf-8")
    start = text.index("\n## 9.")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def tables(markdown: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table as (header cells, rows of cells)."""
    found, block = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif block:
            if len(block) >= 2 and set("".join(block[1])) <= set("-: "):
                found.append((block[0], block[2:]))
            block = []
    return found


def first_code(cell: str) -> str:
    m = CODE.search(cell)
    assert m, f"no `value` in the cell {cell!r}"
    return m.group(1)


def keyed_rows() -> dict[str, str]:
    """{key: value text} of the tables whose first column is `key` (value column: the second)."""
    rows = {}
    for header, body in tables(section_9()):
        if header[0] == "key":
            for cells in body:
                key = first_code(cells[0])
                assert key not in rows, f"{key} twice in section 9"
                rows[key] = first_code(cells[1])
    return rows


def per_task_rows() -> list[tuple[str, str, str]]:
    """(task, key with <task> replaced, value text) of the tables whose first column is `task`."""
    out = []
    for header, body in tables(section_9()):
        if header[0] != "task":
            continue
        keys = {i: CODE.search(h).group(1) for i, h in enumerate(header) if CODE.search(h)}
        for cells in body:
            task = first_code(cells[0])
            for i, key in keys.items():
                out.append((task, key.replace("<task>", task), first_code(cells[i])))
    return out


# ----------------------------------------------------------------------------- the resolved profile


def resolved(stage: str, task: str | None = None):
    """``llada-8b.<stage>`` through d1.config.load_config; a grpo@<algorithm>-<task> stage as dvc.yaml runs it."""
    cls = _load(STAGES[stage][0])
    overrides = [f"grpo.tasks=[{task}]"] if stage == "grpo" and task else []
    return load_config(cls, REPO / "params.yaml", section=f"{PROFILE}.{stage}", overrides=overrides)


def lookup(key: str, task: str | None = None):
    stage, *path = key.split(".")
    node = resolved(stage, task)
    for i, part in enumerate(path):
        where = ".".join([stage, *path[: i + 1]])
        if dataclasses.is_dataclass(node):
            assert part in {f.name for f in dataclasses.fields(node)}, f"{where}: no such key"
            node = getattr(node, part)
        else:
            assert isinstance(node, dict) and part in node, f"{where}: no such key"
            node = node[part]
    return node


def same(actual, expected) -> bool:
    if isinstance(actual, (list, tuple)) and isinstance(expected, (list, tuple)):
        return len(actual) == len(expected) and all(same(a, e) for a, e in zip(actual, expected))
    if isinstance(actual, float) and not isinstance(expected, bool):
        try:
            return math.isclose(actual, float(expected), rel_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return type(actual) is type(expected) and actual == expected


def test_section_9_lists_the_recipe():
    keys = set(keyed_rows())
    essential = {
        "prepare.sft_data.s1k.source", "prepare.sft_data.s1k.heldout_fraction", "sft.sft_data",
        "sft.max_length", "sft.epochs", "sft.batch_size", "sft.grad_accum", "sft.lr", "sft.lora_r", "sft.lora_alpha",
        "sft.lora_dropout", "sft.merge_adapter", "grpo.model_path", "grpo.num_generations", "grpo.lr", "grpo.beta",
        "grpo.epsilon", "grpo.p_mask_prompt", "grpo.sampler.gen_length", "grpo.sampler.block_length",
        "grpo.sampler.steps", "grpo.sampler.temperature", "grpo.sampler.cache", "grpo.sampler.threshold",
        "eval.tasks", "eval.gen_lengths", "eval.sampler.block_length", "eval.sampler.steps",
        "eval.sampler.temperature", "eval.sampler.cache", "eval.sampler.threshold", "grpo.load_in_4bit",
    }
    assert essential <= keys, sorted(essential - keys)
    assert {(t, k) for t, k, _ in per_task_rows()} >= {(t, "grpo.num_iterations") for t in TASKS}


@pytest.mark.parametrize("key", sorted(keyed_rows()))
def test_every_keyed_row_is_the_profiles_value(key):
    expected = yaml.safe_load(keyed_rows()[key])
    actual = lookup(key)
    assert same(actual, expected), f"docs/algorithms.md section 9: {key} = {expected!r}, llada-8b resolves {actual!r}"


@pytest.mark.parametrize("task, key, value", per_task_rows())
def test_every_per_task_row_is_that_tasks_value(task, key, value):
    expected = yaml.safe_load(value)
    actual = lookup(key, task)
    assert same(actual, expected), f"section 9, {task}: {key} = {expected!r}, grpo@d1-{task} resolves {actual!r}"


def test_mu_is_d1s_per_task_and_the_rest_of_grpo_is_shared():
    configs = {t: resolved("grpo", t) for t in TASKS}
    assert {t: c.num_iterations for t, c in configs.items()} == {"gsm8k": 12, "math500": 12, "countdown": 8,
                                                                   "sudoku": 8}
    shared = {t: dataclasses.replace(c, num_iterations=0, tasks=[], out_dir="", logging_dir=None)
              for t, c in configs.items()}
    assert len({repr(c) for c in shared.values()}) == 1  # only mu differs between the tasks' stages


def test_sft_trains_on_s1k_and_grpo_starts_from_the_merged_model():
    prepare, sft, grpo = resolved("prepare"), resolved("sft"), resolved("grpo")
    assert sft.tasks == [] and sft.sft_data == ["s1k"] and set(sft.sft_data) <= set(prepare.sft_data)
    assert sft.merge_adapter and not sft.full_finetune and grpo.model_path == f"{sft.out_dir}/model"
    assert sft.data_dir == prepare.out_dir


# ----------------------------------------------------------------------------- the profile's tasks and lengths


def test_the_profiles_tasks_and_lengths_are_in_params_not_in_prefect_yaml():
    params = read_params(REPO / "params.yaml")
    assert params[PROFILE]["eval"]["tasks"] == TASKS and params[PROFILE]["eval"]["gen_lengths"] == [128, 256, 512]
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    llada = next(d for d in deployments if d["name"] == PROFILE)
    assert "overrides" not in llada["parameters"]
    # the committed axes are the active profile's
    active = params["profile"]
    axes = profile_axes(params, active)
    assert set(axes) == set(GRAPH_AXES)
    for key, own in axes.items():
        top, _, leaf = key.partition(".")
        assert params[top][leaf] == own, key
    assert axes["pipeline.algorithms"] == [m for m in axes["pipeline.models"] if m not in ("base", "sft")]


def test_selecting_a_profile_copies_its_lists_to_the_graph_axes(tmp_path):
    from flows.params import apply_flow_params

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    written = apply_flow_params(tmp_path, PROFILE)
    assert written == [f"profile={PROFILE}", f"pipeline.tasks={json.dumps(TASKS)}", "pipeline.gen_lengths=[128, 256, 512]",
                       'pipeline.models=["base", "sft", "d1"]', 'pipeline.algorithms=["d1"]']
    params = read_params(tmp_path / "params.yaml")
    assert params["pipeline"] == {"tasks": TASKS, "gen_lengths": [128, 256, 512], "models": ["base", "sft", "d1"],
                                  "algorithms": ["d1"]}
    assert "# The stage graph's axes" in (tmp_path / "params.yaml").read_text()  # comments kept
    check_graph_axes(params, f"{PROFILE}.eval")
    apply_flow_params(tmp_path, PROFILE, tasks=["countdown"])  # the flow's tasks narrow the profile's
    assert read_params(tmp_path / "params.yaml")["pipeline"] == {
        "tasks": ["countdown"], "gen_lengths": [128, 256, 512], "models": ["base", "sft", "d1"], "algorithms": ["d1"]}
    with pytest.raises(ConfigError, match=r"tasks: 'chess' is not one of pipeline.tasks = \['gsm8k'"):
        apply_flow_params(tmp_path, PROFILE, tasks=["chess"])
    # the algorithms to train and compare: any the profile defines, evaluated with base and sft
    apply_flow_params(tmp_path, PROFILE, tasks=["countdown"], algorithms=["d1", "wd1", "spg", "espo"])
    params = read_params(tmp_path / "params.yaml")
    assert params["pipeline"]["algorithms"] == ["d1", "wd1", "spg", "espo"]
    assert params["pipeline"]["models"] == ["base", "sft", "d1", "wd1", "spg", "espo"]
    check_graph_axes(params, f"{PROFILE}.grpo")  # within the profile's grpo.algorithms
    with pytest.raises(ConfigError, match=r"algorithms: 'ppo' is not one of llada-8b.grpo.algorithms \(d1, wd1"):
        apply_flow_params(tmp_path, PROFILE, algorithms=["d1", "ppo"])
    params["pipeline"]["algorithms"] = ["d1", "ppo"]
    with pytest.raises(ConfigError, match=r"pipeline.algorithms \['d1', 'ppo'\] is not within llada-8b.grpo.algorithms"):
        check_graph_axes(params, f"{PROFILE}.grpo")
    apply_flow_params(tmp_path, "tiny")  # and back
    back = read_params(tmp_path / "params.yaml")
    assert back["pipeline"] == read_params(REPO / "params.yaml")["pipeline"] and back["profile"] == "tiny"


def test_dvc_resolves_the_profiles_stages_after_selecting_it(tmp_path):
    from dvc.repo import Repo

    from flows.params import apply_flow_params

    Repo.init(str(tmp_path), no_scm=True)
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    apply_flow_params(tmp_path, PROFILE)
    with Repo(str(tmp_path)) as repo:
        names = [s.name for s in repo.index.stages]
    assert sorted(n for n in names if n.startswith("grpo@")) == sorted(f"grpo@d1-{t}" for t in TASKS)
    assert len([n for n in names if n.startswith("eval@")]) == 3 * 4 * 3
    assert "eval@d1-sudoku-512" in names
    apply_flow_params(tmp_path, PROFILE, algorithms=["d1", "espo"])  # one RL stage per algorithm x task
    with Repo(str(tmp_path)) as repo:
        names = [s.name for s in repo.index.stages]
    assert sorted(n for n in names if n.startswith("grpo@")) == sorted(
        f"grpo@{a}-{t}" for a in ("d1", "espo") for t in TASKS)
    assert len([n for n in names if n.startswith("eval@")]) == 4 * 4 * 3 and "eval@espo-math500-256" in names


def test_a_stage_refuses_axes_outside_its_profiles_lists(tmp_path, capsys):
    params = read_params(REPO / "params.yaml")
    params["profile"] = PROFILE  # `dvc exp run -S profile=llada-8b` alone: tiny's 64 tokens stay in pipeline
    params["pipeline"] = {"tasks": ["countdown", "sudoku"], "gen_lengths": [64]}
    with pytest.raises(ConfigError) as err:
        check_graph_axes(params, f"{PROFILE}.prepare", "params.yaml")
    assert str(err.value).startswith("params.yaml: pipeline.gen_lengths [64] is not within llada-8b.eval.gen_lengths")
    assert "python -m flows.params llada-8b" in str(err.value)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    rc = main(["prepare", "--params", str(path), "--section", f"{PROFILE}.prepare"])
    err_text = capsys.readouterr().err
    assert rc == 1 and err_text.count("\n") == 1 and "pipeline.gen_lengths [64]" in err_text
    assert not (tmp_path / "data").exists()
    # a subset of the profile's lists is fine (a flow run of some tasks); flat params files are not checked
    params["pipeline"] = {"tasks": ["countdown"], "gen_lengths": [256]}
    check_graph_axes(params, f"{PROFILE}.grpo")
    check_graph_axes(params, "grpo")
