"""Held-out accuracy along a GRPO run: every saved checkpoint of a learning_countdown.py run, paired with its SFT model.

Run ``learning_countdown.py ... --set grpo.save_steps=N --set grpo.save_total_limit=K`` with LoRA
(``--set grpo.full_finetune=false ...``), then

    .venv/bin/python research/eval_checkpoints.py OUT [--steps 200 400 ...] [--threads 2]

Each checkpoint's adapter is merged into the SFT model (``d1.models.lora.merge_adapter``,
written to ``OUT/merged-STEP``) and evaluated exactly as the benchmark evaluates (greedy, the
run's block length and steps, the same held-out puzzles); the gain over the SFT model is paired
on those puzzles (the run's ``eval_sft_heldout.json``), on all of them and on the first 500.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

# learning_countdown.py is a product benchmark in benchmarks/, not a package: put that folder on
# sys.path to reuse its settings and stage helpers (importing it puts the repository on sys.path too).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import learning_countdown as lc  # noqa: E402

from d1.prepare import read_split  # noqa: E402
from d1.stats import paired_gain  # noqa: E402
from d1.tasks import get_task  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="a learning_countdown.py --out folder with grpo/checkpoints")
    ap.add_argument("--steps", type=int, nargs="*", default=None, help="checkpoint steps (default: all)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    results_file, checkpoints = out / "results.json", out / "grpo" / "checkpoints"
    if not results_file.is_file() or not checkpoints.is_dir():
        raise SystemExit(f"{out}: expected results.json and grpo/checkpoints from a learning_countdown.py run")
    settings = json.loads(results_file.read_text(encoding="utf-8"))
    sft_dir = Path(settings["sft_from"] or out) / "sft" / "model"
    sampler = settings["settings"]
    lc.GEN_LENGTH, lc.BLOCK_LENGTH, lc.EVAL_STEPS = sampler["gen_length"], sampler["block_length"], sampler["eval_steps"]
    lc.STOP_AT_END_OF_TURN = sampler.get("stop_at_end_of_turn", True)
    task = get_task(lc.TASK)
    heldout = list(read_split(out / "data", lc.TASK, "test"))
    extra = out / "heldout_extra.jsonl"
    if extra.is_file():
        heldout += [task.example_from_record(json.loads(line))
                    for line in extra.read_text(encoding="utf-8").splitlines() if line.strip()]
    sft = [item["correct"] for item in
           json.loads((out / "eval_sft_heldout.json").read_text(encoding="utf-8"))["generations"]]
    if len(sft) != len(heldout):
        raise SystemExit(f"{out}: {len(sft)} SFT results for {len(heldout)} held-out puzzles")
    available = sorted(int(p.name.split("-", 1)[1]) for p in checkpoints.glob("step-*"))
    steps = args.steps or available
    missing = sorted(set(steps) - set(available))
    if missing:
        raise SystemExit(f"{checkpoints}: no checkpoint for step(s) {missing}; saved: {available}")
    from d1.models.lora import merge_adapter

    rows = []
    for step in steps:
        merged = out / f"merged-{step}"
        if not merged.is_dir():
            merge_adapter(sft_dir, checkpoints / f"step-{step}" / "model", merged, dtype="float32")
        result = lc.evaluate(merged, heldout, desc=f"step {step}")
        row = {"step": step, "accuracy": result.accuracy,
               "gain": paired_gain(sft, result.correct, seed=0),
               "gain_first": paired_gain(sft[:lc.HELDOUT], result.correct[:lc.HELDOUT], seed=0)}
        rows.append(row)
        lo, hi = row["gain"]["bootstrap_ci"]
        lo5, hi5 = row["gain_first"]["bootstrap_ci"]
        print(f"step {step}: {lc.pct(result.accuracy)}% on {len(heldout)}, gain {100 * row['gain']['gain']:+.1f} "
              f"[{100 * lo:+.1f}, {100 * hi:+.1f}]; first {lc.HELDOUT}: {100 * row['gain_first']['gain']:+.1f} "
              f"[{100 * lo5:+.1f}, {100 * hi5:+.1f}]", flush=True)
    (out / "checkpoint_evals.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return rows


if __name__ == "__main__":
    main()
