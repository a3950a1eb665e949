"""Training infrastructure: seeds, data order, precision, checkpoints, metrics files."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest
import torch

from d1.config import to_dict
from d1.errors import ConfigError
from d1.train.checkpoints import check_resumable, list_checkpoints
from d1.train.common import (
    derive_seed,
    epoch_permutation,
    positions_for_step,
    resolve_mixed_precision,
    scoped_rng,
    warmup_steps,
)
from d1.train.metrics import _truncate_tsv_after
from d1.train.grpo_config import GRPOConfig
from d1.train.sft_config import SFTConfig


def test_derive_seed_is_stable_and_distinguishes_keys():
    assert derive_seed(42, "mask", 3, 0) == derive_seed(42, "mask", 3, 0)
    seeds = {derive_seed(42, "mask", step, rank) for step in range(50) for rank in range(4)}
    assert len(seeds) == 200
    assert derive_seed(42, "a") != derive_seed(43, "a")
    assert 0 <= derive_seed(1, "x") < 2**63


def test_positions_cover_every_item_once_per_epoch_and_cross_epochs():
    n, per_step = 10, 4
    stream = [i for step in range(5) for i in positions_for_step(step, per_step, n, seed=3)]  # 20 = 2 epochs
    assert Counter(stream[:10]) == Counter(range(10)) and Counter(stream[10:]) == Counter(range(10))
    assert stream[:10] == epoch_permutation(10, 3, 0) and stream[10:] == epoch_permutation(10, 3, 1)
    assert stream[:10] != stream[10:]  # a fresh shuffle per epoch
    # a pure function of the step (what makes resume reproducible)
    assert positions_for_step(2, per_step, n, seed=3) == stream[8:12]


def test_mixed_precision_is_off_on_cpu():
    cpu = torch.device("cpu")
    assert [resolve_mixed_precision(p, cpu) for p in ("auto", "no", "bf16", "fp16")] == ["no"] * 4


def test_scoped_rng_is_reproducible_and_restores_the_callers_state():
    before = torch.get_rng_state()
    with scoped_rng(123, torch.device("cpu")):
        a = torch.rand(3)
    with scoped_rng(123, torch.device("cpu")):
        b = torch.rand(3)
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), before)


def test_warmup_steps_prefers_steps_then_ratio():
    assert warmup_steps(GRPOConfig(), 1000) == 1  # ceil(0.0001 * 1000), d1's warmup_ratio
    assert warmup_steps(SFTConfig(warmup_steps=7, warmup_ratio=0.5), 100) == 7
    assert warmup_steps(SFTConfig(warmup_ratio=0.1), 95) == 10


def test_check_resumable_names_changed_keys():
    cfg = SFTConfig(max_steps=10)
    saved = json.loads(json.dumps(cfg.__dict__))
    check_resumable(SFTConfig(max_steps=20, save_steps=5), saved)  # length and saving may change
    with pytest.raises(ConfigError, match=r"sft: cannot resume.*lr: 1e-05 -> 0.001"):
        check_resumable(SFTConfig(max_steps=10, lr=1e-3), saved)
    # a key of a nested section is named by its dotted path
    grpo = GRPOConfig()
    saved = json.loads(json.dumps(to_dict(grpo)))
    check_resumable(GRPOConfig(max_steps=20), saved)
    hotter = GRPOConfig(sampler=dataclasses.replace(grpo.sampler, temperature=1.3))
    with pytest.raises(ConfigError, match=r"grpo: cannot resume.*\(sampler\.temperature: 0\.9 -> 1\.3\)"):
        check_resumable(hotter, saved)


def test_list_checkpoints_ignores_incomplete_ones(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 10, 4):
        (root / f"step-{step}").mkdir(parents=True)
        (root / f"step-{step}" / "trainer_state.json").write_text("{}")
    (root / "step-12").mkdir()  # no trainer_state.json: a save that was cut short
    (root / ".step-14.tmp").mkdir()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4, 10]


def test_truncate_tsv_drops_rows_logged_after_the_checkpoint(tmp_path):
    path = tmp_path / "train" / "loss.tsv"
    path.parent.mkdir()
    path.write_text("step\tloss\n1\t3.0\n2\t2.0\n3\t1.5\n4\t1.0\n")
    _truncate_tsv_after(tmp_path, 2)
    assert path.read_text() == "step\tloss\n1\t3.0\n2\t2.0\n"


def test_a_fresh_run_clears_only_the_metrics_files_it_writes(tmp_path):
    from d1.errors import ConfigError
    from d1.train.metrics import clear_metrics_folder

    ours = tmp_path / "dvclive"
    (ours / "plots" / "metrics" / "train").mkdir(parents=True)
    (ours / "metrics.json").write_text("{}")
    (ours / "plots" / "metrics" / "train" / "loss.tsv").write_text("step\tloss\n")
    clear_metrics_folder(ours, where="sft.logging_dir")
    assert not (ours / "metrics.json").exists() and not (ours / "plots").exists()

    foreign = tmp_path / "papers"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    (foreign / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"sft.logging_dir: .*papers holds files a training run did not write "
                                          r"\(thesis.tex\); choose an empty or new folder"):
        clear_metrics_folder(foreign, where="sft.logging_dir")
    assert (foreign / "thesis.tex").read_text() == "years of work" and (foreign / "metrics.json").exists()
