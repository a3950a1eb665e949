"""Countdown and Sudoku training-data generation: speed and validity.

Prints a table: puzzles generated, seconds, puzzles/s, how many the solver
verified, overlaps with the shipped test sets, and whether a second run with
the same seed gives byte-identical output.

    .venv/bin/python benchmarks/generators.py [--n 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

from d1.tasks.countdown_gen import generate_countdown, is_valid_solution, shipped_test_keys, puzzle_key
from d1.tasks.formats import extract_xml_answer
from d1.tasks.sudoku_gen import generate_sudoku, shipped_test_puzzles, solve_sudoku


def _digest(examples) -> str:
    blob = "\n".join(json.dumps(e.to_record(), sort_keys=True) for e in examples)
    return hashlib.sha256(blob.encode()).hexdigest()


def _countdown(n: int, seed: int, size: int):
    t0 = time.perf_counter()
    exs = generate_countdown(n, seed=seed, num_numbers=size)
    secs = time.perf_counter() - t0
    numbers = lambda e: e.ground_truth[0]  # noqa: E731
    target = lambda e: e.ground_truth[1]  # noqa: E731
    verified = sum(is_valid_solution(numbers(e), target(e), extract_xml_answer(e.solution)) for e in exs)
    test = shipped_test_keys()
    overlap = sum(puzzle_key(numbers(e), target(e)) in test for e in exs)
    same = _digest(exs) == _digest(generate_countdown(n, seed=seed, num_numbers=size))
    return f"countdown ({size} numbers)", len(exs), secs, verified, overlap, same


def _sudoku(n: int, seed: int):
    t0 = time.perf_counter()
    exs = generate_sudoku(n, seed=seed)
    secs = time.perf_counter() - t0
    verified = sum(solve_sudoku(e.meta["puzzle"]) == [e.ground_truth] for e in exs)
    test = shipped_test_puzzles()
    overlap = sum(e.meta["puzzle"] in test for e in exs)
    same = _digest(exs) == _digest(generate_sudoku(n, seed=seed))
    return "sudoku (4x4, unique)", len(exs), secs, verified, overlap, same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = [_countdown(args.n, args.seed, 3), _countdown(args.n, args.seed, 4), _sudoku(args.n, args.seed)]
    print("| generator | puzzles | seconds | puzzles/s | solver-verified | in test set | same seed -> same bytes |")
    print("|---|---|---|---|---|---|---|")
    for name, n, secs, verified, overlap, same in rows:
        print(f"| {name} | {n} | {secs:.2f} | {n / secs:,.0f} | {verified} | {overlap} | {same} |")


if __name__ == "__main__":
    main()
