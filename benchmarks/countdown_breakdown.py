"""Where a Countdown model's held-out accuracy comes from, and what GRPO moved.

Reads the output folders of ``learning_countdown.py`` (``--out``): the held-out
puzzles with their generator's worked solutions (``heldout.jsonl``,
``heldout_extra.jsonl``) and the greedy completions of the SFT and GRPO models
(``eval_{sft,grpo}_heldout.json``). Prints, per model:

* held-out accuracy split by the operators of the puzzle's reference solution
  (``+`` = the target is ``a + b + c``; ``*-`` = it uses one product and one
  difference; ...), the most common kinds first;
* the operators the model writes in its ``<answer>``, per answer.

Usage::

    .venv/bin/python benchmarks/countdown_breakdown.py OUT [OUT ...]

The SFT model of runs made with ``--sft-from`` is the same model; its row is
printed once per distinct SFT folder. Reads only; trains nothing.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S)
OPERATORS = "+-*/"


def operator_set(expression: str) -> str:
    """The distinct operators of an expression, sorted: ``"7 * 3 - 2"`` -> ``"*-"``."""
    return "".join(sorted({c for c in expression if c in OPERATORS}, key=OPERATORS.index))


def reference_kinds(out: Path) -> tuple[list[str], list[str]]:
    """(questions, kinds) of the held-out puzzles of one run, in evaluation order."""
    rows = []
    for name in ("heldout.jsonl", "heldout_extra.jsonl"):
        path = out / name
        if path.is_file():
            rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"{out}: no heldout.jsonl (not a learning_countdown.py --out folder?)")
    kinds = []
    for row in rows:
        m = ANSWER.search(row["solution"])
        if m is None:
            raise SystemExit(f"{out}: a held-out solution has no <answer>: {row['solution'][:80]!r}")
        kinds.append(operator_set(m.group(1)))
    return [row["question"] for row in rows], kinds


def model_rows(out: Path, stage: str, questions: list[str]) -> list[dict] | None:
    path = out / f"eval_{stage}_heldout.json"
    if not path.is_file():
        return None
    items = json.loads(path.read_text(encoding="utf-8"))["generations"]
    if [it["question"] for it in items] != questions:
        raise SystemExit(f"{path}: its puzzles are not those of {out / 'heldout.jsonl'} in order")
    return items


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outs", nargs="+", type=Path, metavar="OUT", help="learning_countdown.py --out folders")
    ap.add_argument("--kinds", type=int, default=6, help="columns: the N most common solution kinds (default 6)")
    args = ap.parse_args(argv)

    questions, kinds = reference_kinds(args.outs[0])
    counts = Counter(kinds)
    columns = [k for k, _ in counts.most_common(args.kinds)]
    models: list[tuple[str, list[dict]]] = []
    seen_sft: set[str] = set()
    for out in args.outs:
        q, _ = reference_kinds(out)
        if q != questions:
            raise SystemExit(f"{out}: other held-out puzzles than {args.outs[0]} (another --seed?)")
        results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
        sft_key = str(Path(results.get("sft_from") or out).resolve())
        for stage in ("sft", "grpo"):
            if stage == "sft" and sft_key in seen_sft:
                continue
            items = model_rows(out, stage, questions)
            if items is None:
                continue
            if stage == "sft":
                seen_sft.add(sft_key)
            seed = results.get("grpo_seed")
            seed = results.get("seed") if seed is None else seed  # no --grpo-seed: GRPO ran with --seed
            label = f"{out.name} {stage}" + (f" (GRPO seed {seed})" if stage == "grpo" and seed is not None else "")
            models.append((label, items))

    print(f"held-out accuracy (%) by the operators of the reference solution; {len(kinds)} puzzles")
    print()
    print("| model | " + " | ".join(f"`{k}` ({counts[k]})" for k in columns) + " | all |")
    print("|---" * (len(columns) + 2) + "|")
    for label, items in models:
        cells = []
        for k in columns:
            hits = [it["correct"] for it, kind in zip(items, kinds) if kind == k]
            cells.append(f"{100 * sum(hits) / len(hits):.1f}")
        total = 100 * sum(it["correct"] for it in items) / len(items)
        print(f"| {label} | " + " | ".join(cells) + f" | {total:.1f} |")
    print()
    print("operators per <answer> written by the model (greedy)")
    print()
    print("| model | " + " | ".join(f"`{op}`" for op in OPERATORS) + " | no answer |")
    print("|---" * (len(OPERATORS) + 2) + "|")
    for label, items in models:
        ops: Counter = Counter()
        missing = 0
        for it in items:
            m = ANSWER.search(it["generations"])
            if m is None:
                missing += 1
                continue
            ops.update(c for c in m.group(1) if c in OPERATORS)
        n = len(items)
        print(f"| {label} | " + " | ".join(f"{ops[op] / n:.2f}" for op in OPERATORS) + f" | {missing / n:.2f} |")


if __name__ == "__main__":
    main()
