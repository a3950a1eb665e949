"""Where a tiny Countdown model's reasoning fails: memorisation, arithmetic, copying.

Reads a ``learning_countdown.py`` output folder (its ``data/`` and a stage's
``model/``) and prints two tables:

1. solved puzzles, greedy, on the first N *training* puzzles and the first N
   held-out ones (a model that memorises solves many more of the first);
2. the first trace line's result token (``a op b = [c]``) predicted by the model
   with the gold SFT response around it, in two contexts:
   - ``rest gold``: every other response token shown (line 2 starts with ``c``,
     so the value can be copied from there);
   - ``rest masked``: the response shown only up to ``a op b = ``, everything
     after it masked (what the sampler meets when it decodes left to right):
     the model has to *compute* ``c``.
   A model that scores high on the first and low on the second has learned to
   copy the intermediate value, not the arithmetic (research/README.md).

    .venv/bin/python research/trace_probe.py RUN_DIR [--stage sft] [--n 500] [--threads 2]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TASK = "countdown"


def first_result_position(response: str, offsets: list[tuple[int, int]]) -> int | None:
    """Index of the response token holding the first trace line's result (after the first ``= ``), or None."""
    match = re.search(r"= ", response)
    if match is None:
        return None
    pos = match.end()
    return next((i for i, (a, b) in enumerate(offsets) if a <= pos < b), None)


@torch.no_grad()
def probe_first_result(model, tokenizer, examples: list, *, mask_id: int) -> dict[str, list[int]]:
    """Per example with a trace line: 1/0 for the argmax at the first result token in each context."""
    from d1.generation.sampler import as_logits
    from d1.tasks import get_task
    from d1.models.chat import sft_texts

    task = get_task(TASK)
    hits: dict[str, list[int]] = {"rest gold": [], "rest masked": []}
    for ex in examples:
        prompt, response = sft_texts(tokenizer, task, ex)
        enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
        index = first_result_position(response, enc["offset_mapping"])
        if index is None:
            continue
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        gold = torch.tensor([p_ids + enc["input_ids"]])
        j = len(p_ids) + index
        shown = gold.clone()
        shown[0, j] = mask_id
        hits["rest gold"].append(int(as_logits(model(shown))[0, j].argmax() == gold[0, j]))
        shown[0, j:] = mask_id
        hits["rest masked"].append(int(as_logits(model(shown))[0, j].argmax() == gold[0, j]))
    return hits


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a learning_countdown.py --out folder")
    ap.add_argument("--stage", default="sft", help="which model of the run: sft or grpo (default sft)")
    ap.add_argument("--n", type=int, default=500, help="puzzles of each split (default 500)")
    ap.add_argument("--block-length", type=int, default=None,
                    help="sampler block of the greedy evaluation (default: learning_countdown.py's)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.n < 1:
        raise SystemExit(f"--n must be >= 1, got {args.n}")
    run = Path(args.run)
    model_dir = run / args.stage / "model"
    if not model_dir.is_dir():
        raise SystemExit(f"{args.run}: no model at {model_dir}")
    if args.threads:
        torch.set_num_threads(args.threads)

    # learning_countdown.py (benchmarks/, not a package) holds the benchmark's sampler settings and evaluate()
    sys.path.insert(0, str(REPO / "benchmarks"))
    import learning_countdown as lc
    from d1.models.loading import load_for_inference, token_ids
    from d1.prepare import read_split

    if args.block_length is not None:
        if args.block_length < 1 or lc.GEN_LENGTH % args.block_length:
            raise SystemExit(f"--block-length must divide {lc.GEN_LENGTH}, got {args.block_length}")
        lc.BLOCK_LENGTH = args.block_length
    splits = {name: list(read_split(str(run / "data"), TASK, name))[:args.n] for name in ("train", "test")}
    result: dict = {"solved": {}, "first_result": {}}
    print(f"{run} ({args.stage} model), first {args.n} puzzles of each split, block {lc.BLOCK_LENGTH}\n")
    print("| split | solved (greedy) [95% CI] |")
    print("|---|---|")
    for name, label in (("train", "training"), ("test", "held-out")):
        res = lc.evaluate(model_dir, splits[name], desc=label)
        lo, hi = res.summary()["ci95"]
        result["solved"][name] = res.accuracy
        print(f"| {label} | {100 * res.accuracy:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] |")

    model, tokenizer = load_for_inference(str(model_dir), dtype=torch.float32)
    model.eval()
    mask_id = token_ids(model, tokenizer).mask_id
    print("\n| split | first result, rest gold | first result, rest masked |")
    print("|---|---|---|")
    for name, label in (("train", "training"), ("test", "held-out")):
        hits = probe_first_result(model, tokenizer, splits[name], mask_id=mask_id)
        result["first_result"][name] = {k: sum(v) / max(len(v), 1) for k, v in hits.items()}
        cells = [f"{sum(v)}/{len(v)} = {100 * sum(v) / max(len(v), 1):.0f}%" for v in hits.values()]
        print(f"| {label} | {cells[0]} | {cells[1]} |")
    return result


if __name__ == "__main__":
    main()
