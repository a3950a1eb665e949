"""scripts/gpu-check.sh --cpu: the GPU check's code paths on a tiny LLaDA, every check reporting success."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def load_module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def parse(out: str) -> tuple[str, list[list[str]]]:
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("GPU check"))
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines
            if line.startswith("| ") and not line.startswith("| section")]
    assert all(len(r) == 5 for r in rows), rows
    return header, rows


def run_script(*args: str) -> tuple[str, list[list[str]]]:
    start = time.perf_counter()
    done = subprocess.run(["bash", "scripts/gpu-check.sh", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    print(f"\ngpu-check.sh {' '.join(args)}: {time.perf_counter() - start:.1f} s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    header, rows = parse(done.stdout)
    assert "torch " in header and "commit " in header and "UTC" in header
    ok = sum(r[4] == "ok" for r in rows)
    assert done.stdout.rstrip().endswith(f"{ok} ok, {len(rows) - ok} skipped, 0 failed")
    return done.stdout, rows


def check_model_rows(rows: list[list[str]]) -> None:
    """The rows of the model sections, each check successful; the 4-bit base skipped (no CUDA here)."""
    by_section: dict[str, list[list[str]]] = {}
    for row in rows:
        by_section.setdefault(row[0].split(" (")[0], []).append(row)
    assert set(by_section) == {"model", "sampler", "masked SFT", "diffu-GRPO", "micro stages"}
    assert [r[2] for r in by_section["model"]] == ["parameters", "build s", "weights GiB"]

    sampler = by_section["sampler"]
    settings = [r[1] for r in sampler if r[2] == "tokens/s"]
    assert settings == [f"batch {b}, cache {c}" for b in (1, 16) for c in ("none", "prefix", "dual")]
    assert all(float(r[3].replace(",", "")) > 0 for r in sampler if r[2] == "tokens/s")
    assert all(r[3] == "n/a" for r in sampler if r[2] == "peak GiB")  # no CUDA memory on the CPU

    sft = {r[2]: r for r in by_section["masked SFT"]}
    assert set(sft) == {"step s", "tokens/s", "peak GiB", "loss", "grad norm"}
    assert "LoRA r128 / alpha 256 on q_proj, k_proj, v_proj" in sft["step s"][0] and "seq 128" in sft["step s"][0]
    assert float(sft["grad norm"][3]) > 0

    grpo = {r[2]: r for r in by_section["diffu-GRPO"] if "4-bit" not in r[0]}
    assert set(grpo) == {"rollout s", "rollout tokens/s", "log-probs + backward s", "grad norm", "peak GiB"}
    assert "G 6 x gen 32" in grpo["rollout s"][1] and "LoRA r128 / alpha 64" in grpo["rollout s"][0]
    assert float(grpo["grad norm"][3]) > 0
    qlora = [r for r in by_section["diffu-GRPO"] if "4-bit" in r[0]]
    assert [r[2] for r in qlora] == ["rollout s", "log-probs + backward s", "grad norm", "peak GiB"]
    assert {r[4] for r in qlora} <= {"skipped: 4-bit needs CUDA", "skipped: bitsandbytes not installed"}

    model_rows = [r for r in rows if not r[0].startswith("micro stages")]
    assert all(r[4] == "ok" for r in model_rows if r not in qlora), [r for r in model_rows if r[4] != "ok"]


def test_cpu_mode_runs_every_check():
    _, rows = run_script("--cpu", "--skip-stages")
    check_model_rows(rows)
    assert [r[4] for r in rows if r[0].startswith("micro stages")] == ["skipped: --skip-stages"]


@pytest.mark.slow
def test_cpu_mode_with_the_micro_stages():
    """The whole --cpu mode, the micro profile's dvc repro included (under a minute on a 2-core CPU)."""
    _, rows = run_script("--cpu")
    check_model_rows(rows)
    stages = [r for r in rows if r[0].startswith("micro stages")]
    algorithms = ("d1", "wd1", "spg", "espo")  # every RL algorithm of the micro profile
    assert {r[1] for r in stages[:-1]} == {"prepare", "base", "sft", "report"} | {
        f"grpo@{a}-countdown" for a in algorithms} | {f"eval@{m}-countdown-64" for m in ("base", "sft", *algorithms)}
    assert all(r[2] == "s (outputs present)" and r[4] == "ok" for r in stages[:-1]), stages
    assert stages[-1][1:3] == ["all 14 stages", "dvc repro s"] and stages[-1][4] == "ok"


def test_a_spent_budget_skips_everything_and_is_not_a_failure(capsys):
    gpu_check = load_module()
    assert gpu_check.main(["--cpu", "--budget-s", "0", "--skip-stages"]) == 0
    _, rows = parse(capsys.readouterr().out)
    assert rows and all(r[4].startswith("skipped:") for r in rows)
    assert any("time budget" in r[4] for r in rows)


def test_a_failing_check_is_a_failed_row_and_exit_status_1(monkeypatch, capsys):
    gpu_check = load_module()

    def broken(*args, **kwargs):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(gpu_check, "sft_rows", broken)
    assert gpu_check.main(["--cpu", "--skip-stages", "--sections", "sft", "grpo"]) == 1
    _, rows = parse(capsys.readouterr().out)
    assert ["sft", "-", "-", "-", "FAILED: RuntimeError: planted failure"] in rows
    assert all(r[4] == "ok" for r in rows if r[0].startswith(("model", "diffu-GRPO")))  # the next section ran


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the GPU mode")
def test_without_a_gpu_the_gpu_mode_says_so():
    assert load_module().main([]) == 2


def test_micro_workspace_selects_the_micro_profile_on_the_device(tmp_path):
    gpu_check = load_module()
    if not (REPO / ".git").exists():
        pytest.skip("needs a git checkout")
    root = gpu_check.micro_workspace(tmp_path / "micro", "cuda")
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["profile"] == "micro"
    assert params["pipeline"] == {"tasks": ["countdown"], "gen_lengths": [64], "algorithms": ["d1", "wd1", "spg", "espo"],
                                  "models": ["base", "sft", "d1", "wd1", "spg", "espo"]}
    micro = params["micro"]
    assert [s["device"] for s in (micro["base"]["pretrain"], micro["sft"], micro["grpo"], micro["eval"])] \
        == ["cuda"] * 4
    assert not (root / "dvc.lock").exists() and (root / "dvc.yaml").is_file()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
    assert status.stdout == ""  # committed
