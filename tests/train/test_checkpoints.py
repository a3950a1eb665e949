"""Checkpoint states are read safely (d1/train/checkpoints.py): tensors and plain data, never code."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from d1.errors import ConfigError
from d1.train.checkpoints import (
    _restore_rng_states,
    _rng_states,
    checkpoint_problem,
    load_state,
    write_complete_marker,
)
from tests.train.test_sft import Killed, kill_after


class RunsACommand:
    """A pickle that runs a shell command when loaded unsafely."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "optimizer.pt"
    torch.save({"state": {}, "hook": RunsACommand(str(marker))}, bad)
    with pytest.raises(ConfigError, match="optimizer.pt: not a readable checkpoint state"):
        load_state(bad)
    assert not marker.exists()
    # The same file loaded the unsafe way does run it: the refusal above is what protects.
    torch.load(bad, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x80\x04garbage", os.urandom(256)])
def test_a_truncated_or_random_file_is_one_error_naming_it(tmp_path, content):
    good = tmp_path / "good.pt"
    torch.save({"step": torch.tensor(3.0), "lr": 0.1}, good)
    assert load_state(good)["lr"] == 0.1
    bad = tmp_path / "scheduler.pt"
    bad.write_bytes(content or good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(ConfigError, match=r"scheduler\.pt: not a readable checkpoint state"):
        load_state(bad)
    with pytest.raises(ConfigError, match=r"missing\.pt: missing from the checkpoint"):
        load_state(tmp_path / "missing.pt")


def test_rng_states_round_trip_through_safe_loading(tmp_path):
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    path = tmp_path / "rng_state_0.pt"
    torch.save(_rng_states(), path)
    expected = (torch.rand(3), random.random(), np.random.rand(2))
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    _restore_rng_states(load_state(path))
    again = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(expected[0], again[0]) and expected[1] == again[1]
    np.testing.assert_array_equal(expected[2], again[2])


def test_optimizer_and_scheduler_states_load_safely(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step(), scheduler.step()
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp_path / "scheduler.pt")
    restored = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1.0)
    restored.load_state_dict(load_state(tmp_path / "optimizer.pt"))
    assert restored.param_groups[0]["betas"] == (0.9, 0.95)
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert load_state(tmp_path / "scheduler.pt")["last_epoch"] == 1


def complete_checkpoint(folder, step=3):
    folder.mkdir(parents=True)
    (folder / "model").mkdir()
    (folder / "model" / "weights.bin").write_bytes(b"w" * 100)
    (folder / "trainer_state.json").write_text('{"global_step": 3}')
    write_complete_marker(folder, step)
    return folder


def test_a_checkpoint_is_complete_only_with_its_marker_and_every_file_unchanged(tmp_path):
    ok = complete_checkpoint(tmp_path / "ok")
    assert checkpoint_problem(ok) is None
    assert json.loads((ok / "complete.json").read_text())["files"]["model/weights.bin"]["bytes"] == 100

    truncated = complete_checkpoint(tmp_path / "truncated")
    (truncated / "model" / "weights.bin").write_bytes(b"w" * 40)
    assert checkpoint_problem(truncated) == "model/weights.bin has 40 bytes, 100 were written"
    altered = complete_checkpoint(tmp_path / "altered")
    (altered / "model" / "weights.bin").write_bytes(b"x" * 100)
    assert checkpoint_problem(altered) == "model/weights.bin changed since it was written"
    missing = complete_checkpoint(tmp_path / "missing")
    (missing / "trainer_state.json").unlink()
    assert checkpoint_problem(missing) == "trainer_state.json is missing"
    unfinished = complete_checkpoint(tmp_path / "unfinished")
    (unfinished / "complete.json").unlink()
    assert checkpoint_problem(unfinished) == "no complete.json (the save did not finish)"
    garbled = complete_checkpoint(tmp_path / "garbled")
    (garbled / "complete.json").write_text("{not json")
    assert checkpoint_problem(garbled) == "complete.json is not readable"


def test_resume_skips_a_damaged_newest_checkpoint_with_a_warning(tiny_base, tiny_data, tmp_path, caplog):
    from safetensors.torch import load_file

    from d1.train.sft import run_sft
    from tests.train.test_sft import sft_config

    common = dict(max_steps=4, save_steps=1, save_total_limit=None)
    straight = sft_config(tiny_base, tiny_data, tmp_path / "straight", **common)
    run_sft(straight)
    broken = sft_config(tiny_base, tiny_data, tmp_path / "broken", **common)
    with pytest.raises(Killed):
        run_sft(broken, callbacks=[kill_after(4)])  # checkpoints 1, 2, 3; step 4 lost
    newest = tmp_path / "broken" / "checkpoints" / "step-3" / "optimizer.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # a copy cut short
    with caplog.at_level("WARNING"):
        summary = run_sft(broken, resume=True)
    assert summary["resumed_from"] == 2
    assert any("skipping checkpoint" in r.getMessage() and "step-3" in r.getMessage()
               and "optimizer.pt has 100 bytes" in r.getMessage() for r in caplog.records)
    a = load_file(str(tmp_path / "straight" / "model" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "broken" / "model" / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)



def test_the_fingerprint_follows_config_and_inputs_not_length_or_places(tiny_base, tiny_data, tmp_path):
    from d1.train.checkpoints import run_fingerprint
    from tests.train.test_sft import sft_config

    base = run_fingerprint(sft_config(tiny_base, tiny_data, tmp_path / "a"), "sft")["sha256"]
    same = sft_config(tiny_base, tiny_data, tmp_path / "b", max_steps=99, save_steps=7, checkpoint_root="x")
    assert run_fingerprint(same, "sft")["sha256"] == base
    assert run_fingerprint(sft_config(tiny_base, tiny_data, tmp_path / "a", lr=2e-3), "sft")["sha256"] != base
    assert run_fingerprint(sft_config(tiny_base, tiny_data, tmp_path / "a"), "grpo")["sha256"] != base
    train = next(tiny_data.rglob("train.jsonl"))
    train.write_text(train.read_text() + "\n")
    assert run_fingerprint(sft_config(tiny_base, tiny_data, tmp_path / "a"), "sft")["sha256"] != base


def test_a_stage_resumes_by_itself_after_its_outputs_were_deleted(tiny_base, tiny_data, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from d1.train.sft import run_sft
    from tests.train.test_sft import sft_config

    common = dict(max_steps=4, save_steps=1, lora_dropout=0.1, checkpoint_root=str(tmp_path / "ckpt"))
    run_sft(sft_config(tiny_base, tiny_data, tmp_path / "straight", **common))
    cfg = sft_config(tiny_base, tiny_data, tmp_path / "out", **common)
    with pytest.raises(Killed):
        run_sft(cfg, callbacks=[kill_after(3)])  # checkpoints 1 and 2 saved, step 3 lost
    assert not (tmp_path / "out" / "checkpoints").exists()  # kept outside the outputs
    shutil.rmtree(tmp_path / "out")  # what DVC does before it runs a stage again
    summary = run_sft(cfg)  # no --resume
    assert summary["resumed_from"] == 2
    a = load_file(str(tmp_path / "straight" / "model" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "out" / "model" / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)
    for name in ("straight", "out"):  # the curves survive the deletion: every step once, same values
        rows = (tmp_path / name / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
        assert [r.split("\t")[0] for r in rows] == ["step", "1", "2", "3", "4"]
    assert (tmp_path / "straight" / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").read_text() == \
        (tmp_path / "out" / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").read_text()


def test_another_fingerprint_starts_fresh_and_removes_the_old_checkpoints_once_it_succeeds(
        tiny_base, tiny_data, tmp_path, capsys):
    from d1.train.sft import run_sft
    from tests.train.test_sft import sft_config

    root = tmp_path / "ckpt"
    common = dict(max_steps=3, save_steps=1, checkpoint_root=str(root))
    first = sft_config(tiny_base, tiny_data, tmp_path / "out", **common)
    with pytest.raises(Killed):
        run_sft(first, callbacks=[kill_after(3)])
    stage_dir = root / (tmp_path / "out").as_posix().strip("/").replace("/", "--")
    old = [p for p in stage_dir.iterdir()]
    assert len(old) == 1 and (old[0] / "fingerprint.json").is_file()

    changed = sft_config(tiny_base, tiny_data, tmp_path / "out", lr=2e-3, **common)
    with pytest.raises(Killed):
        run_sft(changed, callbacks=[kill_after(2)])
    assert old[0].is_dir()  # left alone while the new run has not succeeded
    assert "no checkpoint of this config and these inputs" in capsys.readouterr().err
    summary = run_sft(changed)
    assert summary["resumed_from"] == 1
    assert "sft: resuming from step 1" in capsys.readouterr().err
    assert not old[0].exists() and len(list(stage_dir.iterdir())) == 1

    kept = sft_config(tiny_base, tiny_data, tmp_path / "out", lr=3e-3, keep_old_checkpoints=True, **common)
    run_sft(kept)
    assert len(list(stage_dir.iterdir())) == 2
