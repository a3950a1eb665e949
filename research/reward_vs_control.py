"""Does a GRPO run raise the reward of the prompts it samples? Paired, round by round, against a control run.

A GRPO run's training reward per round is noisy (each round draws new prompts, some easier, some
harder), so a trend in it says little: a stretch of rounds can draw harder prompts by chance.
The control is a second run with the same seed and settings but a learning rate of about zero
(``--set grpo.lr=1e-12``): it samples the same prompts in the same rounds with the same rollout
generator, from a model that does not move. The difference per round isolates what the update
did to the reward of prompts it had not trained on yet (each round's prompts are sampled before
that round's update). It is the reward of the sampling policy (the rollout temperature), not
greedy accuracy: a run can raise the greedy answer of held-out puzzles without raising it
(research/README.md, the control runs of 2026-11-27), so a flat difference alone does not rule out a
greedy gain.

    .venv/bin/python benchmarks/learning_countdown.py ... --out RUN
    .venv/bin/python benchmarks/learning_countdown.py ... --set grpo.lr=1e-12 --eval-limit 1 --out CONTROL
    .venv/bin/python research/reward_vs_control.py RUN CONTROL [--window 10]

RUN and CONTROL are GRPO output folders (``grpo_config.json`` + ``dvclive/``) or
``learning_countdown.py`` outputs holding one in ``grpo/``. The rounds are read from the
``reward/mean`` curve (one value per optimiser step, the same for the ``num_iterations``
steps of a round). The mean per-round difference comes with a paired 95% interval over
rounds (``d1.stats.paired_gain``), over all rounds or from ``--from-round K`` on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from d1.report import read_curve  # noqa: E402
from d1.stats import paired_gain  # noqa: E402

# settings that must agree for the two runs to see the same prompts and rollout noise
SAME = ("seed", "tasks", "num_generations", "generation_batch_size", "num_iterations", "max_steps")
# ... and the rollout sampler's (grpo.sampler; a grpo_config.json written before that section held the
# first four flat, steps as diffusion_steps, and the others at these defaults)
SAMPLER_DEFAULTS = {"gen_length": None, "block_length": None, "steps": None, "temperature": None, "cfg_scale": 0.0,
                    "remasking": "low_confidence", "cache": "none", "threshold": None}
FLAT_SAMPLER_KEYS = {"gen_length": "gen_length", "block_length": "block_length", "diffusion_steps": "steps",
                     "temperature": "temperature", "cfg_scale": "cfg_scale", "remasking": "remasking"}


def compared_settings(config: dict) -> dict:
    """The settings of a grpo_config.json (either layout) that must agree: SAME, then ``sampler.<key>``."""
    sampler = config.get("sampler")
    if not isinstance(sampler, dict):
        sampler = {new: config[old] for old, new in FLAT_SAMPLER_KEYS.items() if old in config}
    sampler = {**SAMPLER_DEFAULTS, **sampler}
    if sampler["steps"] is None and isinstance(sampler["gen_length"], int):
        sampler["steps"] = sampler["gen_length"] // 2  # null: the d1 rule
    return {**{k: config.get(k) for k in SAME}, **{f"sampler.{k}": v for k, v in sampler.items()}}


def grpo_dir(path: Path) -> Path:
    for candidate in (path, path / "grpo"):
        if (candidate / "grpo_config.json").is_file():
            return candidate
    raise SystemExit(f"{path}: no grpo_config.json here or in {path / 'grpo'}")


def train_file_digest(config: dict) -> str | None:
    tasks = config.get("tasks") or []
    if len(tasks) != 1:
        return None
    path = Path(config["data_dir"]) / tasks[0] / "train.jsonl"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def round_rewards(run: Path, num_iterations: int) -> list[float]:
    """The training reward of each round: the ``reward/mean`` value of the round's first step."""
    curve = read_curve(run / "dvclive", "reward/mean")
    if curve is None:
        raise SystemExit(f"{run}: no dvclive/plots/metrics/reward/mean.tsv")
    by_step = dict(zip((int(s) for s in curve[0]), curve[1]))
    firsts = range(1, max(by_step, default=0) + 1, num_iterations)  # logged steps count from 1
    missing = [s for s in firsts if s not in by_step]
    if missing:
        raise SystemExit(f"{run}: the reward curve has no value at step {missing[0]}, the start of a round "
                         f"(logged with logging_steps > 1?)")
    return [by_step[s] for s in firsts]


def compare(run: Path, control: Path, window: int, from_round: int = 1) -> dict:
    run, control = grpo_dir(run), grpo_dir(control)
    cfg_run, cfg_ctl = (json.loads((d / "grpo_config.json").read_text(encoding="utf-8")) for d in (run, control))
    same_run, same_ctl = compared_settings(cfg_run), compared_settings(cfg_ctl)
    differ = {k: (same_run[k], same_ctl[k]) for k in same_run if same_run[k] != same_ctl[k]}
    if differ:
        raise SystemExit("the runs differ in " + ", ".join(f"{k} ({a!r} vs {b!r})" for k, (a, b) in differ.items())
                         + ": they would not sample the same prompts")
    digests = train_file_digest(cfg_run), train_file_digest(cfg_ctl)
    if None not in digests and digests[0] != digests[1]:
        raise SystemExit("the runs' training prompts differ (train.jsonl of their data_dir)")
    mu = int(cfg_run["num_iterations"])
    rewards_run, rewards_ctl = round_rewards(run, mu), round_rewards(control, mu)
    n = min(len(rewards_run), len(rewards_ctl))
    if n < 2:
        raise SystemExit(f"need at least 2 rounds in both runs, got {len(rewards_run)} and {len(rewards_ctl)}")
    rewards_run, rewards_ctl = rewards_run[:n], rewards_ctl[:n]
    if not 1 <= from_round < n:
        raise SystemExit(f"--from-round must lie in 1..{n - 1} (the runs have {n} rounds), got {from_round}")
    windows = []
    for start in range(0, n, window):
        a, b = rewards_run[start:start + window], rewards_ctl[start:start + window]
        windows.append({"rounds": [start + 1, start + len(a)], "run": sum(a) / len(a), "control": sum(b) / len(b)})
    # rounds before from_round are left out of the mean: the update needs rounds to act
    gain = paired_gain(rewards_ctl[from_round - 1:], rewards_run[from_round - 1:], seed=0)
    return {"rounds": n, "from_round": from_round, "lr": [cfg_run.get("lr"), cfg_ctl.get("lr")],
            "windows": windows, "gain": gain, "prompts_checked": None not in digests}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the GRPO run")
    ap.add_argument("control", type=Path, help="the same run with a learning rate of about zero")
    ap.add_argument("--window", type=int, default=10, help="rounds per row of the table (default 10)")
    ap.add_argument("--from-round", type=int, default=1,
                    help="average the difference over this round and the later ones (default 1: all)")
    args = ap.parse_args(argv)
    if args.window < 1:
        raise SystemExit(f"--window must be positive, got {args.window}")
    result = compare(args.run, args.control, args.window, args.from_round)
    lr_run, lr_ctl = result["lr"]
    print(f"{result['rounds']} rounds; run lr {lr_run}, control lr {lr_ctl}"
          + ("" if result["prompts_checked"] else " (training files not found: prompts not checked)"))
    print("\n| rounds | run reward | control reward | run - control |\n|---|---|---|---|")
    for w in result["windows"]:
        print(f"| {w['rounds'][0]}-{w['rounds'][1]} | {w['run']:.3f} | {w['control']:.3f} | "
              f"{w['run'] - w['control']:+.3f} |")
    g = result["gain"]
    lo, hi = g["normal_ci"]
    print(f"\nrun - control, mean over rounds {result['from_round']}-{result['rounds']}: {g['gain']:+.3f} "
          f"[95% CI {lo:+.3f}, {hi:+.3f}] (higher in {g['improved']} rounds, lower in {g['worsened']})")
    return result


if __name__ == "__main__":
    main()
