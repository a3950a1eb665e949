"""diffu-GRPO in the tiny pipeline: its effect on a test set, over several seeds.

The tiny pipeline runs a few rounds of diffu-GRPO per task and reports d1 - +SFT
from one run. This script asks how much of that gap is the algorithm and how
much is the seed: from the SFT model of a finished tiny run it runs the grpo
stage once per seed (the profile's settings plus ``--set`` overrides), evaluates
each result exactly as the eval stage does, and prints one row per seed (test
score, paired gain over the SFT model with its 95% interval) and the mean and
spread of the gains. ``--overfit N`` adds a sanity check of the optimiser
itself: GRPO on N training prompts only (a seeded draw), every round the same
prompts, printing the training reward per round (it should rise).

    bash scripts/main.sh        # or `dvc repro`: a finished tiny run in the repo
    .venv/bin/python benchmarks/grpo_seeds.py --task sudoku --seeds 42 1 2 3 4 --overfit 8

Every step is a library call (``d1.train.run_grpo``, ``d1.eval.run_eval``,
``d1.stats.paired_gain``); outputs go under ``--out`` (default a temp folder),
never into the workspace's ``outputs/``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from d1.config import load_config, read_params, write_json_atomic  # noqa: E402
from d1.data.io import read_records, write_jsonl  # noqa: E402
from d1.errors import ConfigError  # noqa: E402
from d1.report import read_cell, read_curve  # noqa: E402
from d1.stats import paired_gain  # noqa: E402


def evaluate(params: Path, section: str, task: str, length: int, model: str, out: Path) -> tuple[float, list, list]:
    from d1.eval import EvalConfig, run_eval

    cfg = load_config(EvalConfig, params, section, [
        f"eval.model={model}", "eval.model_name=model", "eval.models={}", f"eval.tasks=[{task}]",
        f"eval.gen_lengths=[{length}]", f"eval.out_dir={out}",
    ])
    run_eval(cfg)
    cell = read_cell(out, "model", task, length)  # the eval stage's metrics.json + generations file
    return cell.accuracy, cell.correct, cell.totals


def run_grpo_stage(params: Path, section: str, task: str, out: Path, overrides: list[str]) -> tuple[dict, float, list]:
    from d1.train import GRPOConfig, run_grpo

    cfg = load_config(GRPOConfig, params, section, [
        *overrides, f"grpo.tasks=[{task}]", f"grpo.out_dir={out}", f"grpo.logging_dir={out}/dvclive",
    ])
    t0 = time.perf_counter()
    summary = run_grpo(cfg)
    return summary, time.perf_counter() - t0, reward_per_round(out / "dvclive", cfg.num_iterations)


def reward_per_round(logging_dir: Path, steps_per_round: int) -> list[float]:
    """The training reward of each round: dvclive logs one value per optimiser step, and the
    ``steps_per_round`` (mu) steps of a round share its rollouts, so the first of each is kept."""
    curve = read_curve(logging_dir, "reward/mean")
    if curve is None:
        raise RuntimeError(f"{logging_dir}: no reward/mean metric logged")
    return [v for step, v in zip(*curve) if (int(step) - 1) % steps_per_round == 0]


def overfit_data(data_dir: Path, task: str, n: int, out: Path) -> Path:
    """A data folder whose training split of ``task`` is ``n`` of its examples drawn at random
    (seeded; the first rows of a generated split are its most common, easiest puzzles)."""
    import torch

    target = out / "data"
    (target / task).mkdir(parents=True, exist_ok=True)
    rows = read_records(str(data_dir / task / "train.jsonl"))
    pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:n].tolist()
    write_jsonl(target / task / "train.jsonl", [rows[i] for i in pick])
    return target


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, default=REPO,
                    help="a folder holding a finished tiny run: params.yaml, data/, the SFT model")
    ap.add_argument("--profile", default=None, help="params.yaml profile (default: its `profile:`)")
    ap.add_argument("--task", default="sudoku")
    ap.add_argument("--length", type=int, default=None, help="eval generation length (default: the profile's first)")
    ap.add_argument("--seeds", type=int, nargs="*", default=[42, 1, 2, 3, 4],
                    help="one grpo run per seed (none: only the --overfit check)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="grpo.KEY=VALUE",
                    help="override a key of the profile's grpo section (repeatable)")
    ap.add_argument("--overfit", type=int, default=0, metavar="N",
                    help="also run GRPO on N training prompts only (a seeded random draw) and print the reward per round")
    ap.add_argument("--overfit-steps", type=int, default=40)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    ws = args.workspace.resolve()
    params_path = ws / "params.yaml"
    params = read_params(params_path)
    profile = args.profile or params.get("profile")
    if profile not in params:
        raise ConfigError(f"profile {profile!r} is not a section of {params_path}")
    length = args.length or params["pipeline"]["gen_lengths"][0]
    out = (args.out or Path(tempfile.mkdtemp(prefix="grpo_seeds_"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    grpo_section, eval_section = f"{profile}.grpo", f"{profile}.eval"
    sft_model = params[profile]["grpo"]["model_path"]
    os.chdir(ws)  # the profile's paths (data, outputs/sft/model) are relative to the workspace
    if not Path(sft_model).exists():
        raise ConfigError(f"{ws / sft_model} does not exist: run the tiny pipeline first (bash scripts/main.sh)")

    sft_acc = None
    if args.seeds:
        sft_acc, sft_correct, totals = evaluate(params_path, eval_section, args.task, length, sft_model,
                                                out / "eval_sft")
        print(f"+SFT ({sft_model}): {sft_acc:.2f} on {len(totals)} test items of {args.task}", flush=True)
    rows = []
    for seed in args.seeds:
        run_dir = out / f"seed{seed}"
        summary, secs, rewards = run_grpo_stage(params_path, grpo_section, args.task, run_dir,
                                       [*args.overrides, f"grpo.seed={seed}"])
        acc, correct, _ = evaluate(params_path, eval_section, args.task, length, str(run_dir / "model"),
                                   run_dir / "eval")
        gain = paired_gain(sft_correct, correct, totals=totals, seed=0)
        rows.append({"seed": seed, "steps": summary["steps"], "seconds": round(secs, 1), "accuracy": acc,
                     "gain": 100 * gain["gain"], "ci": [100 * x for x in gain["bootstrap_ci"]],
                     "improved": gain["improved"], "worsened": gain["worsened"],
                     "train_reward_per_round": rewards})
        print(f"seed {seed}: {acc:.2f} ({rows[-1]['gain']:+.2f})", flush=True)

    result = {"task": args.task, "profile": profile, "overrides": args.overrides, "sft": sft_acc, "runs": rows}
    if args.overfit:
        run_dir = out / f"overfit{args.overfit}"
        data = overfit_data(Path(params[profile]["grpo"]["data_dir"]), args.task, args.overfit, run_dir)
        _, _, rewards = run_grpo_stage(params_path, grpo_section, args.task, run_dir,
                                       [*args.overrides, f"grpo.data_dir={data}", f"grpo.max_steps={args.overfit_steps}"])
        result["overfit"] = {"prompts": args.overfit, "steps": args.overfit_steps, "train_reward_per_round": rewards}
    write_json_atomic(out / "grpo_seeds.json", result)

    print(f"\ndiffu-GRPO on {args.task} from {ws / sft_model} (profile {profile}"
          f"{', ' + ' '.join(args.overrides) if args.overrides else ''})")
    if rows:
        print(f"+SFT: {sft_acc:.2f}\n")
        print("| seed | steps | seconds | test | d1 - +SFT [paired 95% CI] | items up / down |")
        print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['steps']} | {r['seconds']:.0f} | {r['accuracy']:.2f} | "
              f"{r['gain']:+.2f} [{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}] | {r['improved']} / {r['worsened']} |")
    gains = [r["gain"] for r in rows]
    if len(gains) > 1:
        print(f"\ngain over {len(gains)} seeds: mean {statistics.mean(gains):+.2f}, sd {statistics.stdev(gains):.2f}, "
              f"min {min(gains):+.2f}, max {max(gains):+.2f}; positive in {sum(g > 0 for g in gains)}/{len(gains)}")
    if args.overfit:
        rr = result["overfit"]["train_reward_per_round"]
        print(f"\noverfit check: GRPO on {args.overfit} training prompts (the same every round), {args.overfit_steps} steps; "
              f"training reward per round: {' '.join(f'{x:.3f}' for x in rr)}")
    print(f"\nfull results: {out / 'grpo_seeds.json'}")
    return result


if __name__ == "__main__":
    main()
