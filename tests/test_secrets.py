"""Planted credentials never leak: not into any file a stage writes, not into its output.

Fake AWS, Hugging Face and Prefect credentials are set in the environment of the cheap stages of the
micro profile (``d1 prepare``, ``d1 base``, ``d1 sft``, ``d1 eval`` on one task), each run as the
installed ``d1`` console script in a temporary project folder, with ``--provenance`` records. Every
file under that folder (data, models, checkpoints, metrics, resolved configs, provenance records,
lock files) and the captured stdout and stderr of every command must hold none of the values.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from d1.provenance import REDACTED, make_record

REPO = Path(__file__).resolve().parents[1]

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKE1234567890XY",
    "AWS_SECRET_ACCESS_KEY": "fakeSecret/abcdefghijklmnopqrstuvwxyz0123",
    "HF_TOKEN": "hf_fakeTokenAbcdefghijklmnopqrstuv",
    "PREFECT_API_KEY": "pnu_fakeKeyAbcdefghijklmnopqrstuvwxyz",
}

STAGES = [
    ["prepare"],
    ["base"],
    ["sft"],
    ["eval", "--set", "eval.tasks=[countdown]", "--set", "eval.out_dir=outputs/eval/sft/countdown/64"],
]


def leaks(data: bytes) -> list[str]:
    """The names of the planted credentials whose value occurs in ``data``."""
    return [name for name, value in SECRETS.items() if value.encode() in data]


def test_the_scan_finds_a_planted_value(tmp_path):
    assert leaks(b"x " + SECRETS["HF_TOKEN"].encode() + b" y") == ["HF_TOKEN"]
    assert leaks(b"nothing here") == []


def test_stages_write_and_print_no_credential(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    env = dict(os.environ, **SECRETS, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("D1_FLOW_RUN_ID", None)
    exe = str(Path(sys.executable).parent / "d1")
    found = []
    for stage, *extra in STAGES:
        argv = [exe, stage, "--params", "params.yaml", "--section", f"micro.{stage}",
                "--provenance", f"provenance/{stage}.json", *extra]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
        found += [f"{stage} stdout: {name}" for name in leaks(done.stdout)]
        found += [f"{stage} stderr: {name}" for name in leaks(done.stderr)]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    written = {p.relative_to(tmp_path).as_posix() for p in files}
    # the scan covered what the stages write: data, the models, checkpoints, metrics, configs, records
    for expected in ("data/manifest.json", "outputs/base/model/model.safetensors", "outputs/sft/model/config.json",
                     "outputs/sft/sft_config.json", "outputs/eval/sft/countdown/64/metrics.json",
                     "provenance/prepare.json", "provenance/base.json", "provenance/sft.json", "provenance/eval.json"):
        assert expected in written, sorted(written)
    assert any(name.startswith(".d1-locks/") for name in written)
    found += [f"{p.relative_to(tmp_path)}: {name}" for p in files for name in leaks(p.read_bytes())]
    assert found == []


def test_provenance_redacts_a_credential_typed_on_the_command_line(tmp_path):
    argv = ["d1", "prepare", "--set", f"prepare.tasks.gsm8k.train=hf:org/data?token={SECRETS['HF_TOKEN']}"]
    record = make_record(command="prepare", section="prepare", started_at="t", argv=argv,
                         env=dict(SECRETS, D1_FLOW_RUN_ID="run-1"), cwd=tmp_path)
    assert record["argv"][-1] == f"prepare.tasks.gsm8k.train=hf:org/data?token={REDACTED}"
    assert record["flow_run_id"] == "run-1"
    assert leaks(repr(record).encode()) == []
