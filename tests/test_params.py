"""params.yaml: every stage section loads into its config dataclass and validates."""

from __future__ import annotations

import pytest

from d1.cli import STAGES, _load
from d1.config import load_config, read_params


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_section_is_valid(repo_root, stage):
    cls = _load(STAGES[stage][0])
    cfg = load_config(cls, repo_root / "params.yaml")
    assert cls.SECTION == stage and type(cfg) is cls


def test_no_unknown_sections(repo_root):
    assert set(read_params(repo_root / "params.yaml")) <= set(STAGES)


def test_stage_chain_is_wired(repo_root):
    """Each stage reads what the previous one writes (tiny profile)."""
    cfgs = {s: load_config(_load(STAGES[s][0]), repo_root / "params.yaml") for s in STAGES}
    assert cfgs["sft"].model_path == f"{cfgs['pretrain'].out_dir}/model"
    assert cfgs["grpo"].model_path == f"{cfgs['sft'].out_dir}/model"
    assert cfgs["eval"].model == f"{cfgs['grpo'].out_dir}/model"
    for s in ("pretrain", "sft", "grpo", "eval"):
        assert cfgs[s].data_dir == cfgs["prepare"].out_dir
