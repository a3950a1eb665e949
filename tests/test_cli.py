"""The d1 command line: help for every command, one-line errors, JSON outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from d1.cli import build_parser, main

COMMANDS = ["prepare", "base", "pretrain", "sft", "grpo", "eval", "report", "merge", "score", "score-dir", "reward",
            "lineage"]


def run_main(capsys, *argv):
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse exits for --help and usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_every_command_is_documented(capsys):
    rc, out, _ = run_main(capsys, "--help")
    assert rc == 0
    for cmd in COMMANDS:
        assert cmd in out
    sub = build_parser()._subparsers._group_actions[0].choices
    assert sorted(sub) == sorted(COMMANDS)
    for cmd in COMMANDS:
        rc, out, _ = run_main(capsys, cmd, "--help")
        assert rc == 0 and "usage: d1 " + cmd in out
        assert len(sub[cmd].description) > 60, f"{cmd} has no real description"


def _single_line_error(rc, out, err, *needles):
    assert rc != 0
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_unknown_task(capsys):
    rc, out, err = run_main(capsys, "score", "--task", "chess", "x.json")
    _single_line_error(rc, out, err, "'chess'", "gsm8k")


def test_missing_file(capsys, tmp_path):
    rc, out, err = run_main(capsys, "score", "--task", "gsm8k", str(tmp_path / "missing.json"))
    _single_line_error(rc, out, err, "missing.json", "no such file")


def test_malformed_json(capsys, tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('{"generations": [')
    rc, out, err = run_main(capsys, "reward", "--task", "gsm8k", str(p))
    _single_line_error(rc, out, err, "broken.json", "not valid JSON")


def test_malformed_item_prints_nothing(capsys, tmp_path):
    p = tmp_path / "half.json"
    good = {"question": "q", "generations": "<answer>\n3\n</answer>", "ground_truth": 3.0}
    p.write_text(json.dumps({"generations": [good, {"question": "q"}]}))
    rc, out, err = run_main(capsys, "reward", "--task", "gsm8k", str(p))
    _single_line_error(rc, out, err, "generations[1]")


def test_unknown_command_and_missing_argument(capsys):
    rc, out, err = run_main(capsys, "fly")
    _single_line_error(rc, out, err, "fly")
    rc, out, err = run_main(capsys, "score", "x.json")
    _single_line_error(rc, out, err, "--task")


def test_score_prints_one_json_object(capsys, reference_dir):
    files = sorted(reference_dir.glob("countdown_instruct_128_*"))
    rc, out, err = run_main(capsys, "score", "--task", "countdown", *map(str, files))
    assert rc == 0, err
    result = json.loads(out)
    assert {"task", "n", "correct", "total", "accuracy"} <= set(result)
    assert result["task"] == "countdown" and result["n"] == result["total"] == 256
    assert result["accuracy"] == pytest.approx(20.70, abs=0.01)


def test_reward_one_line_per_item(capsys, tmp_path):
    p = tmp_path / "g.json"
    items = [
        {"question": "Numbers: [1, 2, 3]\nTarget: 6", "generations": "<reasoning>\n1+2+3=6\n</reasoning>\n<answer>\n1+2+3\n</answer>", "ground_truth": [[1, 2, 3], 6]},
        {"question": "Numbers: [1, 2, 3]\nTarget: 6", "generations": "<answer>\n1*2\n</answer>", "ground_truth": [[1, 2, 3], 6]},
        {"question": "Numbers: [1, 2, 3]\nTarget: 6", "generations": "no idea", "ground_truth": [[1, 2, 3], 6]},
    ]
    p.write_text(json.dumps({"generations": items}))
    rc, out, err = run_main(capsys, "reward", "--task", "countdown", str(p))
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert [r["total"] for r in rows] == pytest.approx([1.0, 0.1, 0.0])
    for r in rows:
        assert r["total"] == pytest.approx(sum(r["components"].values()))


def test_console_script_end_to_end(tmp_path):
    """The installed `d1` entry point (not just main()) gives a one-line error and exit 1/2."""
    exe = shutil.which("d1") or str(__import__("pathlib").Path(sys.executable).parent / "d1")
    proc = subprocess.run([exe, "score", "--task", "sudoku", str(tmp_path / "x.json")], capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "x.json" in proc.stderr
    proc = subprocess.run([exe, "reward", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "components" in proc.stdout


def _profiled_params(tmp_path):
    import yaml

    params = tmp_path / "params.yaml"
    task = {"countdown": {"train": "generate", "train_size": 8, "test_size": 2}}
    params.write_text(yaml.safe_dump({"profile": "small", "small": {"prepare": {"out_dir": str(tmp_path / "d"), "tasks": task}},
                                      "other": {"prepare": {"out_dir": str(tmp_path / "e"), "tasks": task}}}))
    return params


def test_stage_reads_the_profile_and_records_provenance(capsys, tmp_path, monkeypatch):
    params = _profiled_params(tmp_path)
    monkeypatch.setenv("D1_DVC_STAGE", "prepare")
    monkeypatch.setenv("D1_FLOW_RUN_ID", "0f1e2d")
    monkeypatch.delenv("D1_TASK_RUN_ID", raising=False)
    rc, out, err = run_main(capsys, "prepare", "--params", str(params), "--set", "prepare.tasks.countdown.train_size=5")
    assert rc == 0, err
    assert json.loads(out.strip().splitlines()[-1])["counts"] == {"countdown": {"train": 5, "test": 2}}
    prov = json.loads((tmp_path / "d" / "provenance.json").read_text())
    assert (prov["stage"], prov["section"], prov["command"]) == ("prepare", "small.prepare", "prepare")
    assert prov["flow_run_id"] == "0f1e2d" and prov["task_run_id"] is None and prov["finished_at"] >= prov["started_at"]
    rc, out, err = run_main(capsys, "prepare", "--params", str(params), "--section", "other.prepare",
                            "--provenance", str(tmp_path / "prov" / "prepare.json"))
    assert rc == 0, err
    assert json.loads((tmp_path / "prov" / "prepare.json").read_text())["section"] == "other.prepare"
    assert not (tmp_path / "e" / "provenance.json").exists()  # kept out of the output folder


def test_bad_section_and_override_are_one_line(capsys, tmp_path):
    params = _profiled_params(tmp_path)
    rc, out, err = run_main(capsys, "prepare", "--params", str(params), "--section", "nope.prepare")
    _single_line_error(rc, out, err, "no 'nope' section")
    rc, out, err = run_main(capsys, "prepare", "--params", str(params), "--set", "other.prepare.seed=1")
    _single_line_error(rc, out, err, "not a key of the section being read, 'small.prepare'")
    rc, out, err = run_main(capsys, "prepare", "--params", str(params), "--set", "prepare.seed=x")
    _single_line_error(rc, out, err, "small.prepare.seed: expected an integer, got 'x'")
    assert not (tmp_path / "d").exists()  # nothing ran, no provenance
