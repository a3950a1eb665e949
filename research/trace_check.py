"""Does a tiny Countdown model's answer follow from its reasoning?

Reads evaluation files written by ``learning_countdown.py`` (``eval_*_heldout.json``:
the greedy completions with their puzzles and whether each was solved) and
sorts every completion into one of three kinds by its ``<reasoning>`` lines:

* ``valid trace``: every line is ``a op b = c`` with right arithmetic, its operands
  are numbers still unused (a puzzle number or an earlier line's result), and
  the lines end at the target with every number used: the trace is a solution;
* ``first line right``: the first line is right arithmetic on two of the puzzle's
  numbers, but the trace is not a solution (typically line 2 writes the target
  as the result of an operation that does not make it);
* ``first line wrong``: anything else (wrong first value, unparsable lines).

For each kind it prints how many completions and how many of them were solved
(the answer block is scored, not the trace). A model whose answers follow its
traces solves nearly every valid trace and little else; the learning benchmark's
1,700-step SFT models (2026-11-26) solved most of their puzzles with a wrong first
line (the answer written from the puzzle directly; research/README.md).

Usage::

    .venv/bin/python research/trace_check.py EVAL.json [EVAL.json ...] [--n 500]

Loads no model; runs in a second.
"""

from __future__ import annotations

import argparse
import json
import re
from fractions import Fraction
from pathlib import Path

LINE = re.compile(r"^\s*(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(\d+)\s*$")
REASONING = re.compile(r"<reasoning>(.*?)</reasoning>", re.S)
KINDS = ("valid trace", "first line right", "first line wrong")


def _value(a: int, op: str, b: int) -> Fraction | None:
    if op == "/":
        return None if b == 0 else Fraction(a, b)
    return Fraction({"+": a + b, "-": a - b, "*": a * b}[op])


def _uses_two_numbers(numbers: list[int], a: int, b: int) -> bool:
    rest = list(numbers)
    if a not in rest:
        return False
    rest.remove(a)
    return b in rest


def classify(numbers: list[int], target: int, completion: str) -> str:
    """One of :data:`KINDS` for a completion of the puzzle ``numbers -> target``."""
    found = REASONING.search(completion)
    lines = [line for line in (found.group(1).strip().splitlines() if found else []) if line.strip()]
    parsed = [LINE.match(line) for line in lines]
    if not lines or not parsed[0]:
        return KINDS[2]
    steps = [(int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))) if m else None for m in parsed]
    a, op, b, c = steps[0]
    first_right = _value(a, op, b) == c and _uses_two_numbers(numbers, a, b)
    pool = list(numbers)
    for step in steps:
        if step is None:
            return KINDS[1] if first_right else KINDS[2]
        a, op, b, c = step
        if _value(a, op, b) != c or a not in pool:
            break
        pool.remove(a)
        if b not in pool:
            break
        pool.remove(b)
        pool.append(c)
    else:
        if pool == [target]:
            return KINDS[0]
    return KINDS[1] if first_right else KINDS[2]


def table(path: Path, n: int | None) -> dict[str, list[int]]:
    items = json.loads(path.read_text(encoding="utf-8"))["generations"]
    counts = {kind: [0, 0] for kind in KINDS}
    for item in items[:n]:
        numbers, target = item["ground_truth"]
        kind = classify(list(numbers), int(target), item["generations"])
        counts[kind][0] += 1
        counts[kind][1] += int(item["correct"])
    return counts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("evals", nargs="+", type=Path, help="eval_*_heldout.json files of learning_countdown.py")
    ap.add_argument("--n", type=int, default=None, help="only the first N puzzles of each file (default: all)")
    args = ap.parse_args(argv)
    for path in args.evals:
        if not path.is_file():
            raise SystemExit(f"trace_check: no such file: {path}")
    print("| file | puzzles | " + " | ".join(f"{kind} (solved)" for kind in KINDS) + " | solved |")
    print("|---|---|" + "---|" * (len(KINDS) + 1))
    for path in args.evals:
        counts = table(path, args.n)
        total = sum(c[0] for c in counts.values())
        solved = sum(c[1] for c in counts.values())
        cells = " | ".join(f"{counts[k][0]} ({counts[k][1]})" for k in KINDS)
        print(f"| {path} | {total} | {cells} | {solved} ({100 * solved / max(total, 1):.1f}%) |")


if __name__ == "__main__":
    main()
