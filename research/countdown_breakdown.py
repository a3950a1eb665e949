"""Where a Countdown model's held-out accuracy comes from, and what GRPO moved.

Reads the output folders of ``learning_countdown.py`` (``--out``): the held-out
puzzles with their generator's worked solutions (``heldout.jsonl``,
``heldout_extra.jsonl``) and the greedy completions of the SFT and GRPO models
(``eval_{sft,grpo}_heldout.json``). Prints, per model:

* held-out accuracy split by the operators of the puzzle's reference solution
  (``+`` = the target is ``a + b + c``; ``*-`` = it uses one product and one
  difference; ...), the most common kinds first;
* the operators the model writes in its ``<answer>``, per answer;
* with ``--marginals N``: on the first N held-out puzzles, the model's
  *fully-masked* operator marginals (prompt + every completion token masked:
  what d1's one-step estimator scores), summed over the completion positions and
  normalised over the four operators, by solution kind, and how much they vary
  between puzzles (mean total-variation distance to their mean) next to the same
  spread of the greedy answers' operators.

Usage::

    .venv/bin/python research/countdown_breakdown.py OUT [OUT ...] [--marginals 500]

The SFT model of runs made with ``--sft-from`` is the same model; its row is
printed once per distinct SFT folder. Trains nothing; only ``--marginals`` loads the models (``OUT/sft/model``,
``OUT/grpo/model``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from d1.data.io import read_records  # noqa: E402
from d1.tasks.formats import first_answer_block  # noqa: E402

OPERATORS = "+-*/"


def operator_set(expression: str) -> str:
    """The distinct operators of an expression, sorted: ``"7 * 3 - 2"`` -> ``"*-"``."""
    return "".join(sorted({c for c in expression if c in OPERATORS}, key=OPERATORS.index))


def heldout_rows(out: Path) -> list[dict]:
    """The held-out puzzles of one run (with the generator's worked solutions), in evaluation order."""
    rows = []
    for name in ("heldout.jsonl", "heldout_extra.jsonl"):
        if (out / name).is_file():
            rows += read_records(str(out / name))
    if not rows:
        raise SystemExit(f"{out}: no heldout.jsonl (not a learning_countdown.py --out folder?)")
    return rows


def reference_answers(out: Path, rows: list[dict]) -> list[str]:
    """The ``<answer>`` expression of each held-out puzzle's reference solution."""
    answers = [first_answer_block(row["solution"]) for row in rows]
    if None in answers:
        bad = rows[answers.index(None)]["solution"]
        raise SystemExit(f"{out}: a held-out solution has no <answer>: {bad[:80]!r}")
    return answers


def operator_shares(expressions: list[str]) -> list[list[float]]:
    """Per expression, the share of each operator (OPERATORS order) among its operators (zeros if none)."""
    shares = []
    for expr in expressions:
        c = Counter(ch for ch in expr if ch in OPERATORS)
        n = sum(c.values())
        shares.append([c[op] / n if n else 0.0 for op in OPERATORS])
    return shares


def spread(rows: list[list[float]]) -> float:
    """Mean total-variation distance of the rows (distributions over OPERATORS) to their mean."""
    mean = [sum(col) / len(rows) for col in zip(*rows)]
    return sum(0.5 * sum(abs(a - b) for a, b in zip(row, mean)) for row in rows) / len(rows)


def masked_marginals(model_dir: Path, records: list[dict], gen_length: int) -> list[list[float]]:
    """Per puzzle, the fully-masked completion's probability mass on each operator token (every
    vocabulary entry that decodes to the bare operator), summed over the ``gen_length`` masked
    positions and normalised over the four operators."""
    import torch

    from d1.models.loading import load_for_inference, token_ids
    from d1.tasks import get_task
    from d1.models.chat import prompt_text

    task = get_task("countdown")
    model, tokenizer = load_for_inference(str(model_dir), dtype=torch.float32)
    model.eval()
    mask_id = token_ids(model, tokenizer).mask_id
    op_ids = {op: [i for i in range(len(tokenizer)) if tokenizer.decode([i]).strip() == op] for op in OPERATORS}
    if not all(op_ids.values()):
        raise SystemExit(f"{model_dir}: no token for operator(s) {[op for op, ids in op_ids.items() if not ids]}")
    rows = []
    with torch.no_grad():
        for record in records:
            prompt = tokenizer(prompt_text(tokenizer, task, task.example_from_record(record)),
                               add_special_tokens=False).input_ids
            out = model(torch.tensor([prompt + [mask_id] * gen_length]))
            probs = (out.logits if hasattr(out, "logits") else out)[0, len(prompt):].float().softmax(-1)
            mass = [float(probs[:, op_ids[op]].sum()) for op in OPERATORS]
            rows.append([m / sum(mass) for m in mass])
    return rows


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
    ap.add_argument("--marginals", type=int, default=0, metavar="N",
                    help="also the fully-masked operator marginals of each model on the first N puzzles")
    ap.add_argument("--gen-length", type=int, default=32, help="masked completion length for --marginals (default 32)")
    args = ap.parse_args(argv)
    for flag, value, least in (("--marginals", args.marginals, 0), ("--gen-length", args.gen_length, 1),
                               ("--kinds", args.kinds, 1)):
        if value < least:
            raise SystemExit(f"{flag} must be >= {least}, got {value}")

    rows = heldout_rows(args.outs[0])
    answers = reference_answers(args.outs[0], rows)
    questions, kinds = [row["question"] for row in rows], [operator_set(a) for a in answers]
    counts = Counter(kinds)
    columns = [k for k, _ in counts.most_common(args.kinds)]
    models: list[tuple[str, list[dict], Path]] = []
    seen_sft: set[str] = set()
    for out in args.outs:
        if out != args.outs[0] and [row["question"] for row in heldout_rows(out)] != questions:
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
            model_dir = (Path(sft_key) if stage == "sft" else out) / stage / "model"
            models.append((label, items, model_dir))

    print(f"held-out accuracy (%) by the operators of the reference solution; {len(kinds)} puzzles")
    print()
    print("| model | " + " | ".join(f"`{k}` ({counts[k]})" for k in columns) + " | all |")
    print("|---" * (len(columns) + 2) + "|")
    for label, items, _ in models:
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
    for label, items, _ in models:
        ops: Counter = Counter()
        missing = 0
        for it in items:
            answer = first_answer_block(it["generations"])
            if answer is None:
                missing += 1
                continue
            ops.update(c for c in answer if c in OPERATORS)
        n = len(items)
        print(f"| {label} | " + " | ".join(f"{ops[op] / n:.2f}" for op in OPERATORS) + f" | {missing / n:.2f} |")

    if args.marginals:
        print_marginals(args, models, rows, answers, kinds, columns)


def print_marginals(args: argparse.Namespace, models: list, rows: list[dict], answers: list[str],
                    kinds: list[str], columns: list[str]) -> None:
    n = min(args.marginals, len(kinds))
    records = rows[:n]
    reference = operator_shares(answers[:n])
    print()
    print(f"fully-masked operator marginals (share of `+` / `-` / `*` / `/`) on the first {n} puzzles, by solution "
          f"kind; spread = mean TV distance to the mean (reference solutions: {spread(reference):.2f})")
    print()
    print("| model | " + " | ".join(f"`{k}`" for k in columns) + " | all | spread | greedy answers' spread |")
    print("|---" * (len(columns) + 4) + "|")
    for label, items, model_dir in models:
        if not model_dir.is_dir():
            raise SystemExit(f"--marginals: no model at {model_dir}")
        shares = masked_marginals(model_dir, records, args.gen_length)
        greedy = operator_shares([first_answer_block(it["generations"]) or "" for it in items[:n]])
        cells = []
        for k in [*columns, None]:
            sel = [r for r, kind in zip(shares, kinds[:n]) if k is None or kind == k]
            cells.append(" / ".join(f"{sum(col) / len(sel):.2f}" for col in zip(*sel)) if sel else "")
        print(f"| {label} | " + " | ".join(cells) + f" | {spread(shares):.2f} | {spread(greedy):.2f} |")


if __name__ == "__main__":
    main()
