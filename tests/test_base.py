"""The base-model stage: an existing model is recorded, the tiny one is pre-trained."""

from __future__ import annotations

import json

import pytest

from d1.base import BaseConfig, run_base
from d1.config import from_dict
from d1.errors import ConfigError


def test_existing_model_is_recorded(tmp_path):
    cfg = from_dict(BaseConfig, {"out_dir": str(tmp_path / "b"), "model": "GSAI-ML/LLaDA-8B-Instruct"}, "base")
    summary = run_base(cfg)
    record = json.loads((tmp_path / "b" / "base.json").read_text())
    assert record == {"model": "GSAI-ML/LLaDA-8B-Instruct", "source": "existing", "revision": None}
    assert summary["base"] == record and (tmp_path / "b" / "base_config.json").is_file()
    assert cfg.model_path == "GSAI-ML/LLaDA-8B-Instruct"


def test_pretrain_writes_the_model(tmp_path):
    from d1.prepare import PrepareConfig, prepare

    data = tmp_path / "data"
    prepare(from_dict(PrepareConfig, {"out_dir": str(data), "tasks": {
        "countdown": {"train": "generate", "train_size": 32, "test_size": 2}}}, "prepare"))
    out = str(tmp_path / "base")
    cfg = from_dict(BaseConfig, {"out_dir": out, "pretrain": {
        "data_dir": str(data), "tasks": ["countdown"], "out_dir": out, "tokenizer_vocab_size": 400,
        "d_model": 32, "n_layers": 2, "n_heads": 2, "mlp_hidden_size": 64, "max_sequence_length": 128,
        "seq_len": 64, "batch_size": 4, "max_steps": 2, "warmup_steps": 1, "save_steps": 0, "device": "cpu"}}, "base")
    summary = run_base(cfg)
    assert summary["steps"] == 2 and summary["base"]["source"] == "pretrain"
    record = json.loads((tmp_path / "base" / "base.json").read_text())
    assert record["model"] == cfg.model_path == f"{out}/model"
    assert (tmp_path / "base" / "model" / "config.json").is_file()
    assert (tmp_path / "base" / "dvclive" / "metrics.json").is_file()


@pytest.mark.parametrize("values, message", [
    ({}, "base: set exactly one of model"),
    ({"model": "x", "pretrain": {"out_dir": "o"}}, "base: set exactly one of model"),
    ({"model": " "}, "base.model: empty"),
    ({"pretrain": {"out_dir": "elsewhere"}}, "base.pretrain.out_dir: must be the stage's out_dir 'o'"),
    ({"pretrain": {"out_dir": "o", "lr": -1}}, "base.pretrain.lr: must be a positive number"),
    ({"pretrain": {"out_dir": "o"}, "revision": "main"}, "base.revision: only applies to an existing model"),
])
def test_bad_config(values, message):
    with pytest.raises(ConfigError) as exc:
        from_dict(BaseConfig, {"out_dir": "o", **values}, "base")
    assert message in str(exc.value)
