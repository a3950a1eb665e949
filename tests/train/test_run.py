"""The non-finite guard of a training run (d1/train/run.py): skip, count, stop, never save non-finite weights."""

from __future__ import annotations

import json

import pytest
import torch

import d1.train.masked_diffusion as loop_module
from d1.errors import TrainingError
from d1.train.run import TrainingRun
from d1.train.sft import run_sft
from tests.train.test_sft import sft_config


def test_a_huge_learning_rate_stops_with_one_error_and_saves_nothing(tiny_base, tiny_data, tmp_path):
    cfg = sft_config(tiny_base, tiny_data, tmp_path / "out", lr=1e10, max_steps=12, save_steps=1,
                     full_finetune=True)
    with pytest.raises(TrainingError) as err:
        run_sft(cfg)
    message = str(err.value)
    assert message.startswith("sft: step ") and "not finite" in message and "lr 1e+10" in message
    assert "\n" not in message
    assert not (tmp_path / "out" / "model").exists()
    for checkpoint in (tmp_path / "out" / "checkpoints").glob("step-*"):  # whatever was saved is finite
        from safetensors.torch import load_file

        for name, tensor in load_file(str(next(checkpoint.glob("model/*.safetensors")))).items():
            assert torch.isfinite(tensor).all(), (checkpoint.name, name)


def test_one_non_finite_step_is_skipped_counted_and_training_goes_on(tiny_base, tiny_data, tmp_path,
                                                                     monkeypatch):
    real_loss = loop_module.masked_sft_loss
    calls = {"n": 0}

    def nan_on_third_micro_batch(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss  # step 2 (2 micro-batches a step)

    monkeypatch.setattr(loop_module, "masked_sft_loss", nan_on_third_micro_batch)
    snapshots = []
    real_end_step = TrainingRun.end_step

    def snapshot_then_end_step(self, step, metrics, **kwargs):
        snapshots.append({n: p.detach().clone() for n, p in self.unwrapped.named_parameters() if p.requires_grad})
        return real_end_step(self, step, metrics, **kwargs)

    monkeypatch.setattr(TrainingRun, "end_step", snapshot_then_end_step)
    summary = run_sft(sft_config(tiny_base, tiny_data, tmp_path / "out", max_steps=4, lora_dropout=0.0))
    assert summary["last_metrics"]["train/nonfinite_skipped"] == 1
    metrics = json.loads((tmp_path / "out" / "dvclive" / "metrics.json").read_text())
    assert metrics["train"]["nonfinite_skipped"] == 1
    assert (tmp_path / "out" / "model").is_dir()
    changed = [any(not torch.equal(a[n], b[n]) for n in a) for a, b in zip(snapshots, snapshots[1:])]
    assert changed == [False, True, True]  # step 2 made no update, steps 3 and 4 did


def test_a_save_cut_short_leaves_no_model_folder(tiny_base, tiny_data, tmp_path, monkeypatch):
    import d1.train.run as run_module

    real_save = run_module.save_model_dir

    def save_then_die(model, tokenizer, path):
        real_save(model, tokenizer, path)
        raise KeyboardInterrupt("killed while saving")  # after the weights, before the rename

    monkeypatch.setattr(run_module, "save_model_dir", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_sft(sft_config(tiny_base, tiny_data, tmp_path / "out", max_steps=1, full_finetune=True))
    out = tmp_path / "out"
    assert not (out / "model").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".model.tmp")]  # the partial one is gone


def test_a_killed_writer_leaves_the_old_folder_or_none(tmp_path):
    import os
    import subprocess
    import sys

    target = tmp_path / "model"
    target.mkdir()
    (target / "weights.bin").write_bytes(b"old")
    code = ("import os, signal; from d1.config import atomic_dir\n"
            "with atomic_dir(%r) as tmp:\n"
            "    (tmp / 'weights.bin').write_bytes(b'new, half')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n") % str(target)
    done = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd())
    assert done.returncode == -9
    assert (target / "weights.bin").read_bytes() == b"old"
