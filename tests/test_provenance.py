"""provenance.json records: env ids, git state, atomic write and tolerant read."""

from __future__ import annotations

import json
import subprocess

import pytest

from d1 import __version__
from d1.provenance import git_state, is_main_process, make_record, read_provenance, write_provenance


def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.fixture
def repo(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-qm", "first")
    return tmp_path


def test_git_state(repo, tmp_path_factory):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert git_state(repo) == {"commit": head, "dirty": False}
    (repo / "untracked.txt").write_text("x")  # untracked files do not make the tree dirty
    assert git_state(repo)["dirty"] is False
    (repo / "a.txt").write_text("two\n")
    assert git_state(repo) == {"commit": head, "dirty": True}
    assert git_state(tmp_path_factory.mktemp("nogit")) == {"commit": None, "dirty": None}


def test_record_fields_from_env(repo):
    env = {"D1_DVC_STAGE": "grpo@d1-countdown", "DVC_STAGE": "ignored", "D1_FLOW_RUN_ID": "flow-1",
           "D1_TASK_RUN_ID": "task-9"}
    rec = make_record(command="grpo", section="tiny.grpo", started_at="2026-01-01T00:00:00+00:00",
                      argv=["d1", "grpo"], env=env, cwd=repo)
    assert rec["stage"] == "grpo@d1-countdown" and rec["section"] == "tiny.grpo" and rec["command"] == "grpo"
    assert (rec["flow_run_id"], rec["task_run_id"]) == ("flow-1", "task-9")
    assert rec["git_commit"] and len(rec["git_commit"]) == 40 and rec["git_dirty"] is False
    assert rec["d1_version"] == __version__ and rec["argv"] == ["d1", "grpo"] and rec["host"]
    assert rec["started_at"] == "2026-01-01T00:00:00+00:00" and rec["finished_at"] >= rec["started_at"]
    # dvc repro sets DVC_STAGE; outside any orchestrator everything is null
    assert make_record(command="sft", section="sft", started_at="t", env={"DVC_STAGE": "sft"}, cwd=repo)["stage"] == "sft"
    bare = make_record(command="sft", section="sft", started_at="t", env={}, cwd=repo)
    assert bare["stage"] is None and bare["flow_run_id"] is None and bare["task_run_id"] is None


def test_write_and_read(tmp_path):
    path = write_provenance(tmp_path / "out", {"stage": "sft"})
    assert path == tmp_path / "out" / "provenance.json"
    named = write_provenance(tmp_path / "records" / "grpo@d1-countdown.json", {"stage": "grpo@d1-countdown"})
    assert named == tmp_path / "records" / "grpo@d1-countdown.json"
    assert read_provenance(named) == {"stage": "grpo@d1-countdown"}
    assert read_provenance(tmp_path / "out") == {"stage": "sft"} == read_provenance(path)
    assert read_provenance(tmp_path / "missing") is None
    path.write_text("{broken")
    assert read_provenance(path) is None
    path.write_text(json.dumps([1, 2]))
    assert read_provenance(path) is None


def test_main_process_only():
    assert is_main_process({}) and is_main_process({"RANK": "0"})
    assert not is_main_process({"RANK": "1"})
