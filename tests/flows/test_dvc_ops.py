"""DVC operations on one stage (flows/dvc_ops.py) on toy projects."""

from __future__ import annotations

import pytest

from d1.errors import ConfigError
from flows import dvc_ops
from flows.dvc_ops import StageFailed, failure_detail
from flows.params import write_overrides
from tests.flows.toy_project import clone, runs


def test_failure_detail_prefers_the_d1_one_line_error():
    lines = ["Running stage 'sft':", "> d1 sft --section tiny.sft",
             "d1 sft: error: tiny.sft.lr: must be a positive number, got -1.0",
             "ERROR: failed to reproduce 'sft': failed to run: d1 sft, exited with 1"]
    assert failure_detail(lines) == ("d1 sft: error: tiny.sft.lr: must be a positive number, got -1.0", False)


def test_failure_detail_of_a_crash_is_the_exception_line_and_retryable():
    lines = ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
             "RuntimeError: CUDA out of memory", "ERROR: failed to reproduce 'grpo@d1-countdown': exited with 1"]
    assert failure_detail(lines) == ("RuntimeError: CUDA out of memory", True)
    assert failure_detail(["ERROR: failed to reproduce 'x': dependency 'a' does not exist"]) == (
        "failed to reproduce 'x': dependency 'a' does not exist", True)
    assert failure_detail([]) == ("no output", True)


def test_repro_streams_the_output_and_sets_the_environment(toy):
    lines = []
    out = dvc_ops.repro(toy, "prepare", env={"D1_DVC_STAGE": "prepare", "D1_FLOW_RUN_ID": "fr-1"},
                        on_line=lines.append)
    assert "> python toy.py prepare" in lines
    # DVC's terminal hints and blank lines stay out of the log, not out of the returned output.
    assert any("git add dvc.lock" in line for line in out)
    assert not [line for line in lines if not line.strip() or "git add dvc.lock" in line or "autostage" in line]
    assert '"D1_FLOW_RUN_ID": "fr-1"' in (toy / "out/data/env.json").read_text()
    assert dvc_ops.status(toy, "prepare") == {}
    assert dvc_ops.status(toy, "train@a")  # not run yet


def test_a_d1_error_fails_the_stage_with_its_message_and_is_not_retryable(toy):
    dvc_ops.repro(toy, "prepare")
    write_overrides(toy, ["micro.train.scale=-1"])
    with pytest.raises(StageFailed) as err:
        dvc_ops.repro(toy, "train@a")
    assert str(err.value) == "stage 'train@a' failed: d1 train: error: micro.train.scale: must be positive, got -1"
    assert err.value.retryable is False
    assert (toy / "out/data/train.txt").read_text() == "3"  # the completed stage's output is intact
    assert dvc_ops.status(toy, "prepare") == {}


def test_a_crash_is_retryable(toy):
    write_overrides(toy, ["micro.prepare.crash=true"])
    with pytest.raises(StageFailed, match="RuntimeError: toy prepare crashed") as err:
        dvc_ops.repro(toy, "prepare")
    assert err.value.retryable is True


def test_outputs_travel_to_another_checkout_through_the_remote_and_lock_entries(toy, tmp_path):
    for stage in ("prepare", "train@a"):
        dvc_ops.repro(toy, stage)
    assert dvc_ops.push(toy, ["prepare", "train@a"]) > 0
    other = clone(toy, tmp_path / "other")
    assert dvc_ops.read_lock(other) == {}
    lock = dvc_ops.read_lock(toy)
    dvc_ops.merge_lock(other, {k: lock[k] for k in ("prepare", "train@a")})
    dvc_ops.pull(other, ["prepare", "train@a"])
    assert (other / "out/train/a/model.txt").read_text() == "6"
    assert dvc_ops.status(other, "train@a") == {}
    assert runs(other) == []  # nothing ran there
    assert dvc_ops.out_hashes(dvc_ops.read_lock(other), "train@a") == dvc_ops.out_hashes(lock, "train@a")


def test_merge_lock_keeps_the_other_entries(toy):
    dvc_ops.repro(toy, "prepare")
    dvc_ops.merge_lock(toy, {"train@a": {"cmd": "python toy.py train a", "outs": [{"path": "x", "md5": "1"}]}})
    lock = dvc_ops.read_lock(toy)
    assert set(lock) == {"prepare", "train@a"}
    assert dvc_ops.out_hashes(lock, "train@a") == {"x": "1"}
    assert dvc_ops.dep_hashes(lock, "prepare")["toy.py"]


def test_push_without_a_remote_says_what_to_do(toy):
    (toy / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    dvc_ops.repro(toy, "prepare")
    with pytest.raises(ConfigError, match="push=False"):
        dvc_ops.push(toy, ["prepare"])


def test_pulling_outputs_not_in_the_remote_is_one_info_line_not_a_warning(toy, tmp_path, caplog):
    dvc_ops.repro(toy, "prepare")  # in dvc.lock and the local cache, never pushed
    other = clone(toy, tmp_path / "other")
    dvc_ops.merge_lock(other, {"prepare": dvc_ops.read_lock(toy)["prepare"]})
    said = []
    with caplog.at_level("INFO"):
        dvc_ops.pull(other, ["prepare"], log=said.append)
    assert not [r for r in caplog.records if "cache files" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("dvc pull: ") and "in neither the cache nor the remote" in said[0]
    count = int(said[0].split()[2])
    assert count >= 1
    # Without the filter DVC does warn about them (what the line replaces): the check above can fail.
    caplog.clear()
    with caplog.at_level("INFO"), dvc_ops.open_repo(other) as repo:
        repo.pull(targets=["prepare"], allow_missing=True)
    assert [r for r in caplog.records if r.levelname == "WARNING" and "Missing cache files" in r.getMessage()]
