"""research/grpo_overfit.py and research/eval_checkpoints.py on a tiny random model."""

from __future__ import annotations

import copy
import json

import pytest

from research.tests.loader import load_script
from tests.train.conftest import save_tiny_base, write_tiny_data


@pytest.fixture(scope="module")
def overfit():
    return load_script("grpo_overfit")


@pytest.fixture()
def sft_run(tmp_path):
    """A learning_countdown.py-shaped folder: data/countdown/train.jsonl and sft/model (a random tiny LLaDA)."""
    run = tmp_path / "run"
    write_tiny_data(run / "data")
    save_tiny_base(run / "data", run / "sft" / "model")
    return run


def test_rejects_bad_arguments(overfit, tmp_path):
    with pytest.raises(SystemExit, match="no SFT model"):
        overfit.main(["--sft-from", str(tmp_path), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="must be positive"):
        overfit.main(["--sft-from", str(tmp_path), "--out", str(tmp_path / "o"), "--prompts", "0"])


def test_needs_puzzles_with_reward_spread(overfit, sft_run, tmp_path, monkeypatch):
    monkeypatch.setattr(overfit.lc, "GRPO", copy.deepcopy(overfit.lc.GRPO))
    settings = copy.deepcopy(overfit.lc.GRPO)
    settings["sampler"].update(block_length=8, steps=8)
    # a random model solves no puzzle in any sample: none has reward spread
    with pytest.raises(SystemExit, match="only 0 of 3 training puzzles have reward spread; need 2"):
        overfit.pick_puzzles(sft_run / "sft" / "model", overfit.read_split(sft_run / "data", "countdown", "train")[:3],
                             2, seed=0, settings=settings)


def test_trains_on_the_chosen_puzzles_every_round(overfit, sft_run, tmp_path, monkeypatch):
    monkeypatch.setattr(overfit.lc, "GRPO", copy.deepcopy(overfit.lc.GRPO))
    chosen = []

    def first_examples(model_dir, examples, n, *, seed, settings):
        chosen.extend(examples[:n])
        return examples[:n]

    monkeypatch.setattr(overfit, "pick_puzzles", first_examples)
    out = tmp_path / "overfit"
    result = overfit.main(["--sft-from", str(sft_run), "--out", str(out), "--prompts", "8", "--steps", "8",
                           "--steps-per-answer", "8", "--set", "grpo.full_finetune=false", "--set", "grpo.lora_r=4"])
    # 8 prompts x 8 completions fill a round (16 x 4 rows), mu = 4: 8 steps are 2 rounds on the same puzzles
    assert len(result["reward_per_round"]) == 2
    written = [json.loads(line) for line in (out / "data" / "countdown" / "train.jsonl").read_text().splitlines()]
    assert [r["question"] for r in written] == [ex.question for ex in chosen]
    assert json.loads((out / "overfit.json").read_text())["reward_per_round"] == result["reward_per_round"]
    grpo_config = json.loads((out / "grpo" / "grpo_config.json").read_text())
    sampler = grpo_config["sampler"]
    assert sampler["block_length"] == 8 and sampler["steps"] == 8 and grpo_config["lora_r"] == 4


def test_eval_checkpoints_checks_its_folder(tmp_path):
    evals = load_script("eval_checkpoints")
    with pytest.raises(SystemExit, match="expected results.json and grpo/checkpoints"):
        evals.main([str(tmp_path)])
