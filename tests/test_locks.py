"""One writer at a time (d1/locks.py): a held output folder or checkout refuses a second run with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from d1.cli import main
from d1.locks import (
    BusyError,
    check_checkout_free,
    checkout_run,
    exclusive,
    holder_record,
    lock_path,
    stage_lock_name,
    stage_run,
)


def test_a_held_lock_refuses_a_second_holder_naming_the_first(tmp_path):
    path = tmp_path / "x.lock"
    with exclusive(path, what="sft.out_dir outputs/sft", holder=holder_record(flow_run_id="fr-1")):
        with pytest.raises(BusyError) as err:
            with exclusive(path, what="sft.out_dir outputs/sft"):
                pass
    message = str(err.value)
    assert message.startswith("sft.out_dir outputs/sft is in use by flow run fr-1 (pid ")
    assert f"pid {os.getpid()} " in message and "\n" not in message
    with exclusive(path, what="again"):  # released
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    path = tmp_path / "x.lock"
    code = ("import sys, time; sys.path.insert(0, %r); from pathlib import Path; from d1.locks import exclusive\n"
            "with exclusive(Path(%r), what='x'):\n    print('held', flush=True); time.sleep(60)\n") % (
        str(os.getcwd()), str(path))
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(BusyError, match=r"x is in use by \(pid %d " % holder.pid):
        with exclusive(path, what="x"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    deadline = time.monotonic() + 10
    while True:  # the kernel drops the lock with the process
        try:
            with exclusive(path, what="x"):
                break
        except BusyError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_flow_run_holds_the_checkout_against_others_not_its_own_stages(tmp_path):
    with checkout_run(tmp_path, flow_run_id="fr-1"):
        check_checkout_free(tmp_path, env={"D1_FLOW_RUN_ID": "fr-1"})  # its own stage
        with pytest.raises(BusyError, match=r"checkout .* is in use by flow run fr-1"):
            check_checkout_free(tmp_path, env={})  # `dvc repro` by hand
        with pytest.raises(BusyError, match=r"checkout .* is in use by flow run fr-1"):
            with checkout_run(tmp_path, flow_run_id="fr-2"):  # another flow run
                pass
        with checkout_run(tmp_path, flow_run_id="fr-1"):  # its own d1-stage run, same checkout
            pass
        with stage_run("outputs/sft", section="sft", root=tmp_path, env={"D1_FLOW_RUN_ID": "fr-1"}):
            pass
    check_checkout_free(tmp_path, env={})


def test_a_stage_command_on_a_busy_output_folder_is_refused_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("D1_FLOW_RUN_ID", raising=False)
    params = tmp_path / "params.yaml"
    params.write_text("profile: p\np:\n  prepare:\n    out_dir: data\n    tasks:\n      gsm8k: {train: builtin, test: builtin}\n")
    with exclusive(lock_path(stage_lock_name("data")), what="x", holder=holder_record(flow_run_id="other")):
        code = main(["prepare", "--params", str(params)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("d1 prepare: error: p.prepare.out_dir data is in use by flow run other (pid ")
    assert not (tmp_path / "data").exists()
    assert main(["prepare", "--params", str(params)]) == 0  # free again: it runs
    assert (tmp_path / "data" / "gsm8k" / "test.jsonl").is_file()
