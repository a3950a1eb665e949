"""Does diffu-GRPO fit the puzzles it trains on? GRPO on N fixed Countdown puzzles, the same every round.

From a ``learning_countdown.py`` run's SFT model: picks the first N training
puzzles that the model solves in 2 to 6 of 8 samples at the rollout settings
(so every group has reward spread at the start), runs GRPO on them alone with
the benchmark's GRPO settings (plus ``--set`` overrides) and prints the mean
training reward of every round. A working update drives it towards 1; compare
estimators or learning rates on the same puzzles and seed.

    .venv/bin/python research/grpo_overfit.py --sft-from OUT --out DIR [--prompts 8] [--steps 60] \\
        [--seed 0] [--set grpo.KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

# learning_countdown.py is a product benchmark in benchmarks/, not a package: put that folder on
# sys.path to reuse its settings and stage helpers (importing it puts the repository on sys.path too).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import learning_countdown as lc  # noqa: E402

from d1.algo.grpo import completion_mask  # noqa: E402
from d1.data.io import write_jsonl  # noqa: E402
from d1.generation import SamplerConfig, generate  # noqa: E402
from d1.prepare import read_split  # noqa: E402
from d1.tasks import get_task  # noqa: E402


def pick_puzzles(model_dir: Path, examples: list, n: int, *, seed: int, settings: dict) -> list:
    """The first ``n`` puzzles whose 8 samples are solved 2..6 times (sampling as GRPO's rollouts do)."""
    from d1.models.loading import load_for_inference, token_ids
    from d1.models.chat import prompt_text

    task = get_task(lc.TASK)
    model, tokenizer = load_for_inference(str(model_dir), dtype=torch.float32)
    model.eval()
    ids = token_ids(model, tokenizer)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for ex in examples:
        prompt = tokenizer(prompt_text(tokenizer, task, ex), return_tensors="pt", add_special_tokens=False).input_ids
        out = generate(model, prompt.repeat(8, 1), **SamplerConfig(**settings["sampler"]).generate_kwargs(),
                       mask_id=ids.mask_id, generator=generator)
        completions = out[:, prompt.shape[1]:]
        keep = completion_mask(completions, ids.end_of_turn_ids())
        solved = sum(task.reward(tokenizer.decode(row[:int(k.sum())], skip_special_tokens=True), ex).total == 1.0
                     for row, k in zip(completions, keep))
        if 2 <= solved <= 6:
            chosen.append(ex)
            if len(chosen) == n:
                return chosen
    raise SystemExit(f"only {len(chosen)} of {len(examples)} training puzzles have reward spread; need {n}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sft-from", required=True, metavar="OUT", help="a learning_countdown.py --out folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--block-length", type=int, default=8)
    ap.add_argument("--steps-per-answer", type=int, default=32, help="sampler steps for the 32 answer tokens")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.prompts < 1 or args.steps < 1:
        raise SystemExit(f"--prompts {args.prompts} and --steps {args.steps} must be positive")
    sft_from, out = Path(args.sft_from), Path(args.out)
    model_dir = sft_from / "sft" / "model"
    if not model_dir.is_dir():
        raise SystemExit(f"--sft-from {args.sft_from}: no SFT model at {model_dir}")
    lc.apply_settings([f"grpo.sampler.block_length={args.block_length}", f"grpo.sampler.steps={args.steps_per_answer}",
                       *args.overrides])
    examples = read_split(sft_from / "data", lc.TASK, "train")
    chosen = pick_puzzles(model_dir, examples, args.prompts, seed=args.seed, settings=lc.GRPO)
    write_jsonl(out / "data" / lc.TASK / "train.jsonl", (ex.to_record() for ex in chosen))
    cfg = lc.stage_config("grpo", out, args.seed, args.steps, str(model_dir))
    rewards: list[float] = []

    def first_iteration(step: int, metrics: dict) -> None:
        if metrics.get("train/iteration") == 0:  # one entry per round: the reward of its rollouts
            rewards.append(metrics["reward/mean"])

    start = time.perf_counter()
    lc.run_stage("grpo", cfg, callbacks=[first_iteration])
    result = {"prompts": args.prompts, "steps": args.steps, "seed": args.seed, "overrides": args.overrides,
              "seconds": round(time.perf_counter() - start, 1), "reward_per_round": rewards}
    (out / "overfit.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"GRPO on {args.prompts} fixed puzzles, {args.steps} steps, {result['seconds']} s; "
          f"training reward per round: {', '.join(f'{r:.2f}' for r in rewards)}")
    return result


if __name__ == "__main__":
    main()
