"""The RL algorithms side by side: d1, wd1, SPG and ESPO from the same SFT model, same budget, several seeds.

For every algorithm x task x seed, trains the profile's ``grpo`` section with
``algorithm=<name>`` (its objective, estimator and settings: params.yaml
``<profile>.grpo.algorithms``) from one SFT model for the same number of
rollout rounds, then evaluates it with the profile's ``eval`` section on the
held-out test items; the SFT model is evaluated the same way once per task.
Prints one table (and writes ``results.json``): per algorithm and task, the
mean gain over +SFT across seeds with a paired 95% bootstrap interval over the
test items (each item's score averaged over the seeds, against its +SFT score),
each seed's own gain, and the wall time per round (rollouts + mu optimiser
steps).

    .venv/bin/python benchmarks/rl_algorithms.py --sft-model outputs/sft/model --data data \\
        [--profile tiny] [--algorithms d1 wd1 spg espo] [--tasks countdown sudoku] [--seeds 0 1 2] \\
        [--rounds 20] [--jobs 2] [--threads 1] [--set lr=1e-5 ...] [--out benchmarks/out/rl_algorithms]

Runs are separate processes (``--jobs`` at a time, ``--threads`` torch threads
each); a run whose result file exists is not run again (delete ``--out`` to
start over). Wall times are only comparable within one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from d1.config import load_config  # noqa: E402
from d1.errors import ConfigError  # noqa: E402


def grpo_config(args: argparse.Namespace, algorithm: str, task: str, seed: int, out_dir: Path):
    """The profile's grpo section for one run: its algorithm, one task, the seed, ``rounds`` rounds."""
    from d1.train.grpo_config import GRPOConfig

    section = f"{args.profile}.grpo"
    overrides = [f"{section}.algorithm={algorithm}", f"{section}.tasks=[{task}]", f"{section}.seed={seed}",
                 f"{section}.model_path={args.sft_model}", f"{section}.data_dir={args.data}",
                 f"{section}.out_dir={out_dir}", f"{section}.logging_dir={out_dir}/dvclive",
                 f"{section}.checkpoint_root={out_dir}/checkpoints", f"{section}.save_steps=0"]
    if args.device:
        overrides.append(f"{section}.device={args.device}")
    # the same change for every algorithm, set in the algorithm's own entry: the entry applies over the
    # section (an lr it sets would win over the section's); the entry's per_task values still apply after it
    overrides += [f"{section}.algorithms.{algorithm}.{item}" for item in args.set]
    cfg = load_config(GRPOConfig, args.params, section=section, overrides=overrides)
    # the same budget for every algorithm: `rounds` rounds of rollouts, mu optimiser steps each
    return load_config(GRPOConfig, args.params, section=section,
                       overrides=overrides + [f"{section}.max_steps={args.rounds * cfg.num_iterations}"])


def eval_config(args: argparse.Namespace, model: str, name: str, task: str, out_dir: Path):
    from d1.eval import EvalConfig

    section = f"{args.profile}.eval"
    overrides = [f"{section}.model={model}", f"{section}.model_name={name}", f"{section}.tasks=[{task}]",
                 f"{section}.data_dir={args.data}", f"{section}.out_dir={out_dir}", f"{section}.models={{}}"]
    if args.device:
        overrides.append(f"{section}.device={args.device}")
    return load_config(EvalConfig, args.params, section=section, overrides=overrides)


def item_scores(out_dir: Path, name: str, task: str, length: int) -> dict:
    """Accuracy and per-item scores of one evaluation (the report's reader)."""
    from d1.report import read_cell

    cell = read_cell(out_dir, name, task, length)
    return {"accuracy": cell.accuracy, "correct": cell.correct, "totals": cell.totals, "questions": cell.questions}


def run_one(spec: dict) -> dict:
    """One run in this process: train (unless ``spec['algorithm']`` is None: the SFT model), evaluate."""
    import torch

    from d1.eval import run_eval
    from d1.train.grpo import run_grpo

    torch.set_num_threads(spec["threads"])
    args = argparse.Namespace(**spec["args"])
    out = Path(spec["out"])
    record: dict = {"algorithm": spec["algorithm"], "task": spec["task"], "seed": spec["seed"]}
    model = args.sft_model
    if spec["algorithm"] is not None:
        cfg = grpo_config(args, spec["algorithm"], spec["task"], spec["seed"], out / "run")
        start = time.perf_counter()
        summary = run_grpo(cfg)
        seconds = time.perf_counter() - start
        rounds = cfg.max_steps // cfg.num_iterations
        record.update({"objective": cfg.objective, "estimator": cfg.estimator, "steps": summary["steps"],
                       "rounds": rounds, "grpo_seconds": seconds, "seconds_per_round": seconds / rounds,
                       "last_reward": summary["last_metrics"].get("reward/mean")})
        model = summary["model_dir"]
    name = spec["algorithm"] or "sft"
    ecfg = eval_config(args, model, name, spec["task"], out / "eval")
    run_eval(ecfg)
    record["gen_length"] = length = ecfg.gen_lengths[0]
    record.update(item_scores(out / "eval", name, spec["task"], length))
    return record


def launch(spec: dict, result: Path, threads: int) -> dict:
    """Run :func:`run_one` in a fresh process (its own torch threads); cached in ``result``."""
    if result.is_file():
        return json.loads(result.read_text())
    result.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log = result.with_suffix(".log")
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, __file__, "--job", json.dumps(spec)], env=env, stdout=f,
                              stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"run {spec['algorithm'] or 'sft'}/{spec['task']}/seed {spec['seed']} failed "
                           f"({proc.returncode}); its log: {log}")
    record = json.loads(log.read_text().strip().splitlines()[-1])
    tmp = result.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(result)
    return record


def summarise(records: list[dict], algorithms: list[str], tasks: list[str], seed: int = 42) -> list[dict]:
    """Per algorithm x task: mean gain over +SFT (points) with the paired bootstrap interval of the
    seed-averaged item scores, each seed's gain, seconds per round."""
    from d1.stats import paired_gain

    rows = []
    for task in tasks:
        sft = next(r for r in records if r["algorithm"] is None and r["task"] == task)
        for algorithm in algorithms:
            runs = sorted((r for r in records if r["algorithm"] == algorithm and r["task"] == task),
                          key=lambda r: r["seed"])
            if not runs:
                continue
            for r in runs:
                if r["questions"] != sft["questions"]:
                    raise ValueError(f"{algorithm}/{task}: evaluated on other items than +SFT")
            mean_correct = [statistics.fmean(r["correct"][i] for r in runs) for i in range(len(sft["correct"]))]
            pooled = paired_gain(sft["correct"], mean_correct, totals=sft["totals"], seed=seed)
            per_seed = [100 * paired_gain(sft["correct"], r["correct"], totals=sft["totals"], seed=seed,
                                          resamples=100)["gain"] for r in runs]
            rows.append({"task": task, "algorithm": algorithm, "sft_accuracy": sft["accuracy"],
                         "accuracy": statistics.fmean(r["accuracy"] for r in runs),
                         "gain": 100 * pooled["gain"], "ci95": [100 * x for x in pooled["bootstrap_ci"]],
                         "seed_gains": per_seed, "seeds": [r["seed"] for r in runs],
                         "seconds_per_round": statistics.fmean(r["seconds_per_round"] for r in runs),
                         "objective": runs[0]["objective"], "estimator": runs[0]["estimator"],
                         "rounds": runs[0]["rounds"]})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| task | algorithm | objective / estimator | +SFT | after RL (mean) | gain over +SFT [95% CI] | "
             "gain per seed | s / round |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ci95"]
        seeds = ", ".join(f"{g:+.1f}" for g in r["seed_gains"])
        lines.append(f"| {r['task']} | {r['algorithm']} | {r['objective']} / {r['estimator']} | "
                     f"{r['sft_accuracy']:.2f} | {r['accuracy']:.2f} | {r['gain']:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
                     f"{seeds} | {r['seconds_per_round']:.1f} |")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", default=str(REPO / "params.yaml"))
    p.add_argument("--profile", default="tiny")
    p.add_argument("--sft-model", help="the SFT model every algorithm starts from (e.g. outputs/sft/model)")
    p.add_argument("--data", default="data", help="the prepared data folder (train and test splits)")
    p.add_argument("--algorithms", nargs="+", default=["d1", "wd1", "spg", "espo"])
    p.add_argument("--tasks", nargs="+", default=["countdown", "sudoku"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=20, help="rollout rounds per run (mu optimiser steps each)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--device", default=None, help="override the sections' device (cpu, cuda)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a grpo setting for every run, set in each algorithm's own entry (e.g. lr=1e-5)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "rl_algorithms"))
    p.add_argument("--job", help=argparse.SUPPRESS)  # internal: one run, spec as JSON
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.job:
        print(json.dumps(run_one(json.loads(args.job))))
        return 0
    if not args.sft_model or not Path(args.sft_model).is_dir():
        print(f"rl_algorithms: --sft-model {args.sft_model!r} is not a model folder (run the pipeline's sft stage)",
              file=sys.stderr)
        return 2
    if args.rounds < 1 or args.jobs < 1 or args.threads < 1:
        print("rl_algorithms: --rounds, --jobs and --threads must be >= 1", file=sys.stderr)
        return 2
    try:  # every run's settings resolve before anything starts
        for algorithm in args.algorithms:
            for task in args.tasks:
                grpo_config(args, algorithm, task, args.seeds[0], Path(args.out) / "check")
    except ConfigError as exc:
        print(f"rl_algorithms: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    shared = {k: v for k, v in vars(args).items() if k != "job"}
    specs = [(None, task, 0) for task in args.tasks] + [
        (a, t, s) for s in args.seeds for a in args.algorithms for t in args.tasks]
    started = time.perf_counter()

    def one(item: tuple) -> dict:
        algorithm, task, seed = item
        folder = out / (algorithm or "sft") / task / (f"seed{seed}" if algorithm else "")
        spec = {"algorithm": algorithm, "task": task, "seed": seed, "out": str(folder), "threads": args.threads,
                "args": shared}
        record = launch(spec, folder / "result.json", args.threads)
        print(f"[{time.perf_counter() - started:7.0f} s] {algorithm or 'sft'}/{task}"
              f"{'' if algorithm is None else f'/seed {seed}'}: accuracy {record['accuracy']:.2f}", flush=True)
        return record

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        records = list(pool.map(one, specs))
    rows = summarise(records, args.algorithms, args.tasks)
    text = table(rows)
    (out / "results.json").write_text(json.dumps({"rows": rows, "args": shared}, indent=1))
    (out / "results.md").write_text(text + "\n")
    print(text)
    print(f"\n{len(specs)} runs in {time.perf_counter() - started:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
