"""benchmarks/sampler_speed.py stays runnable: its GPU section on a tiny config on CPU, its speed rows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sampler_speed.py"


def load_script():
    spec = importlib.util.spec_from_file_location("sampler_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_section_runs_on_a_tiny_config(capsys):
    bench = load_script()
    assert bench.main(["--skip-cpu", "--gpu", "--gpu-config", "tiny", "--gpu-lengths", "64",
                       "--gpu-batches", "1", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 2 * 4  # batches x (none, prefix, dual, dual + threshold)
    assert [r.split(" | ")[2] for r in rows[:4]] == ["none", "prefix", "dual", "dual + threshold 0.9"]
    # steps = gen / 2: every mode makes gen / 2 passes without a threshold
    assert all(r.split(" | ")[5] == "0.500" for r in rows if "threshold" not in r)


def test_speed_rows_count_one_pass_per_token_at_steps_equal_gen_length():
    bench = load_script()
    model = bench.random_llada(32, 2, 2, 64)
    with torch.no_grad():
        rows = bench.speed_rows(model, [[1, 2, 3, 4]], pad_id=0, mask_id=63, threshold=0.9, gen_length=32,
                                block_length=8, steps=32)
    assert [r[0] for r in rows] == ["none", "prefix", "dual", "none + threshold 0.9", "prefix + threshold 0.9",
                                    "dual + threshold 0.9"]
    assert [r[2] for r in rows[:3]] == ["1.000"] * 3
    assert all(float(r[2]) <= 1.0 for r in rows[3:])  # a threshold never needs more than one pass per token
    assert rows[0][3] == "1.0x"
