"""Fixtures for the training tests: a small prepared data folder and a tiny base model folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from d1.data.io import write_jsonl
from d1.tasks import get_task

TINY_SIZES = dict(d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64, max_sequence_length=512)


def write_tiny_data(root: Path) -> Path:
    """Prepared-data layout (``<root>/<task>/train.jsonl``): 48 Countdown and 16 Sudoku examples."""
    for name, n, opts in (("countdown", 48, {"num_numbers": 3}), ("sudoku", 16, {})):
        examples = get_task(name).generate(n, seed=7, exclude=[], **opts)
        write_jsonl(root / name / "train.jsonl", (ex.to_record() for ex in examples))
    return root


def save_tiny_base(data_dir: Path, out: Path) -> Path:
    """A tokenizer trained on the tiny data and a randomly initialised tiny LLaDA, saved together."""
    from d1.models.llada import LLaDAModelLM, initialize_llada_weights, tiny_llada_config_for_tokenizer
    from d1.models.tokenizer import task_corpus, train_tokenizer

    tokenizer = train_tokenizer(task_corpus(data_dir, ["countdown", "sudoku"]), vocab_size=512)
    model = LLaDAModelLM(tiny_llada_config_for_tokenizer(tokenizer, **TINY_SIZES))
    initialize_llada_weights(model, generator=torch.Generator().manual_seed(0))
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, tiny_data) -> Path:
    return save_tiny_base(tiny_data, tmp_path_factory.mktemp("base"))
