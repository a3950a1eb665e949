"""4x4 Sudoku: a solver, a deduction-trace writer and a seeded puzzle generator.

Grids are 16-character strings read left to right, top to bottom, ``0`` for an
empty cell (d1's format). Rows, columns and the four 2x2 boxes must each hold
1-4 once.

Generator. :func:`generate_sudoku` picks one of the 288 valid 4x4 grids, blanks
a random set of cells (their number uniform in ``empty_cells``, default 6..10;
d1's 4x4 test set has 8 empty cells in every puzzle, so the training puzzles
sit around it, a little easier and harder), and keeps the puzzle only if the
solver finds exactly one solution (it stops counting at 2). Puzzles are unique,
never equal to a puzzle of the shipped d1 test set or of ``exclude``; a puzzle
with a unique solution determines its grid, so the puzzle string is the
identity. Only an explicit ``random.Random(seed)`` is used.

Worked solution (the SFT target; ``trace="rows"`` gives a fixed-layout variant, see
:func:`worked_solution`): the grid rows, then one line per filled cell
in the order a person would find them: a *naked single* (the only digit the
cell's row, column and box allow), else a *hidden single* (the only cell of a
row/column/box that can take a digit), else the cell with the fewest
candidates, whose other candidates lead to a contradiction (true because the
solution is unique). The answer block holds the 16-digit solution.
"""

from __future__ import annotations

import csv
import io
import random
import re
from functools import lru_cache
from importlib import resources
from typing import Iterable

from d1.errors import ConfigError
from d1.tasks.base import Example

N_CELLS = 16
MAX_EMPTY = 12  # a 4x4 Sudoku needs at least 4 clues for a unique solution
DEFAULT_EMPTY_CELLS = (6, 10)
TEST_SET = "sudoku/4x4_test.csv"  # under d1/data/benchmarks
_QUESTION_PUZZLE = re.compile(r"Sudoku puzzle: ([0-9]{16})")


def _units() -> list[tuple[str, tuple[int, ...]]]:
    rows = [(f"row {r + 1}", tuple(4 * r + c for c in range(4))) for r in range(4)]
    cols = [(f"column {c + 1}", tuple(4 * r + c for r in range(4))) for c in range(4)]
    boxes = [
        (f"box {2 * br + bc + 1}", tuple(4 * (2 * br + r) + 2 * bc + c for r in range(2) for c in range(2)))
        for br in range(2)
        for bc in range(2)
    ]
    return rows + cols + boxes


UNITS = _units()
PEERS = tuple(tuple(sorted({j for _, u in UNITS if i in u for j in u} - {i})) for i in range(N_CELLS))


def parse_grid(text: str) -> list[int]:
    """Digits of a 16-character grid string; ValueError unless every char is 0-4."""
    if not isinstance(text, str) or len(text) != N_CELLS or any(c not in "01234" for c in text):
        raise ValueError(f"not a 4x4 Sudoku grid string: {text!r}")
    return [int(c) for c in text]


def _candidates(grid: list[int], i: int) -> list[int]:
    used = {grid[j] for j in PEERS[i]}
    return [d for d in (1, 2, 3, 4) if d not in used]


def _search(grid: list[int], out: list[str], limit: int) -> None:
    best, best_cands = -1, None
    for i in range(N_CELLS):  # most-constrained empty cell first
        if grid[i] == 0:
            cands = _candidates(grid, i)
            if not cands:
                return
            if best_cands is None or len(cands) < len(best_cands):
                best, best_cands = i, cands
                if len(cands) == 1:
                    break
    if best_cands is None:
        out.append("".join(map(str, grid)))
        return
    for d in best_cands:
        grid[best] = d
        _search(grid, out, limit)
        grid[best] = 0
        if len(out) >= limit:
            return


def solve_sudoku(puzzle: str, limit: int = 2) -> list[str]:
    """Up to ``limit`` solutions of ``puzzle`` (16 chars, 0 = empty), in a fixed order.

    ``len(solve_sudoku(p)) == 1`` means the solution is unique. Givens that
    already clash give []. ValueError for a string that is not a grid.
    """
    grid = parse_grid(puzzle)
    if any(v and v in (grid[j] for j in PEERS[i]) for i, v in enumerate(grid)):
        return []
    out: list[str] = []
    _search(grid, out, limit)
    return out


@lru_cache(maxsize=1)
def all_grids() -> tuple[str, ...]:
    """The 288 complete 4x4 Sudoku grids, sorted."""
    return tuple(sorted(solve_sudoku("0" * N_CELLS, limit=10_000)))


def _cell(i: int) -> str:
    return f"R{i // 4 + 1}C{i % 4 + 1}"


def _next_step(grid: list[int], solution: list[int]) -> tuple[int, int, str]:
    """(cell, digit, reason) of the easiest next deduction."""
    empties = [i for i in range(N_CELLS) if grid[i] == 0]
    cands = {i: _candidates(grid, i) for i in empties}
    for i in empties:
        if len(cands[i]) == 1:
            seen = ", ".join(str(d) for d in (1, 2, 3, 4) if d != cands[i][0])
            return i, cands[i][0], f"its row, column and box already hold {seen}"
    for name, unit in UNITS:
        present = {grid[i] for i in unit}
        for d in (1, 2, 3, 4):
            if d not in present:
                places = [i for i in unit if grid[i] == 0 and d in cands[i]]
                if len(places) == 1:
                    return places[0], d, f"the only cell of {name} that can hold {d}"
    i = min(empties, key=lambda j: len(cands[j]))
    return i, solution[i], "the other candidates lead to a contradiction"


def deduction_steps(puzzle: str, solution: str, *, reasons: bool = True) -> list[str]:
    """Lines ``"R1C3 = 2 (reason)"`` filling every empty cell of ``puzzle`` (see module doc);
    ``reasons=False``: ``"R1C3 = 2"`` (the order of deduction without the why)."""
    grid, target = parse_grid(puzzle), parse_grid(solution)
    lines = []
    while 0 in grid:
        i, d, why = _next_step(grid, target)
        if d != target[i]:  # singles are sound, so this means the solution is not the puzzle's
            raise ValueError(f"{solution} is not the unique solution of {puzzle}")
        grid[i] = d
        lines.append(f"{_cell(i)} = {d} ({why})" if reasons else f"{_cell(i)} = {d}")
    return lines


TRACES = ("deductions", "rows")


def _rows(grid: str) -> str:
    return " / ".join(grid[r : r + 4] for r in range(0, N_CELLS, 4))


def worked_solution(puzzle: str, solution: str, *, reasons: bool = True, trace: str = "deductions") -> str:
    """The SFT target: the reasoning, then the answer block.

    ``trace="deductions"``: the grid rows, then one deduction line per empty cell
    (see the module doc). ``trace="rows"``: the grid rows, then the solved rows
    (``"Solved rows: 1432 / 2341 / ..."``): every digit of the trace and of the
    answer then sits at a fixed distance from the puzzle digit of its cell, whatever
    the number of blanks, which a tiny model learns to line up far sooner than
    the shifting layout of a variable number of deduction lines (the tiny CPU
    profile's choice).
    """
    if trace not in TRACES:
        raise ConfigError(f"sudoku generator: trace must be one of {TRACES}, got {trace!r}")
    if trace == "rows":
        # A valid grid that keeps every given solves the puzzle (the generator has checked uniqueness).
        if solution not in all_grids() or any(p not in ("0", s) for p, s in zip(puzzle, solution)):
            raise ValueError(f"{solution} is not a solution of {puzzle}")
        lines = [f"Grid rows: {_rows(puzzle)}", f"Solved rows: {_rows(solution)}"]
    else:
        lines = [f"Grid rows: {_rows(puzzle)}"] + deduction_steps(puzzle, solution, reasons=reasons)
    body = "\n".join(lines)
    return f"<reasoning>\n{body}\n</reasoning>\n<answer>\n{solution}\n</answer>"


def sudoku_question(puzzle: str) -> str:
    """The question exactly as d1's eval files store it."""
    return f"Solve the following Sudoku puzzle: {puzzle}\n"


def puzzle_from_question(question: str) -> str | None:
    """The puzzle in a question, as d1's scorer finds it: the first 16 characters if they
    are all digits, else the 16 digits after ``"Sudoku puzzle: "``; None if neither."""
    head = question[:N_CELLS]
    if len(head) == N_CELLS and all(c in "0123456789" for c in head):
        return head
    m = _QUESTION_PUZZLE.search(question)
    return m.group(1) if m else None


def example_puzzle(example: Example) -> str | None:
    """The puzzle of an Example: ``meta["puzzle"]``, else read from its question."""
    puzzle = example.meta.get("puzzle")
    return puzzle if isinstance(puzzle, str) else puzzle_from_question(example.question)


def sudoku_example(puzzle: str, solution: str, worked: str | None = None) -> Example:
    return Example(question=sudoku_question(puzzle), ground_truth=solution, solution=worked, meta={"puzzle": puzzle})


def shipped_test_puzzles() -> set[str]:
    """Puzzle strings of the d1 4x4 test set shipped in d1/data/benchmarks."""
    text = resources.files("d1.data").joinpath("benchmarks", TEST_SET).read_text(encoding="utf-8")
    return {row["Puzzle"] for row in csv.DictReader(io.StringIO(text))}


def generate_sudoku(
    n: int, *, seed: int, empty_cells: tuple[int, int] = DEFAULT_EMPTY_CELLS, exclude: Iterable[Example] = (),
    reasons: bool = True, trace: str = "deductions",
) -> list[Example]:
    """``n`` distinct unique-solution puzzles with worked solutions (see module doc).

    ``reasons=False`` leaves the reason out of each deduction line: a trace about
    half as long. ``trace``: the layout of the worked solution, ``"deductions"``
    (default) or ``"rows"`` (see :func:`worked_solution`).

    ``empty_cells``: inclusive (low, high) range of blanks per puzzle, within
    1..12. ``exclude``: Examples whose puzzles must not be produced (see
    :func:`example_puzzle`). Deterministic in its arguments; ConfigError for a bad
    parameter or when no new puzzle turns up after many draws.
    """
    if not isinstance(n, int) or n < 0:
        raise ConfigError(f"sudoku generator: n must be a non-negative integer, got {n!r}")
    lo, hi = empty_cells if isinstance(empty_cells, (tuple, list)) and len(empty_cells) == 2 else (None, None)
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi <= MAX_EMPTY):
        raise ConfigError(
            f"sudoku generator: empty_cells must be [low, high] with 1 <= low <= high <= {MAX_EMPTY}, "
            f"got {empty_cells!r}"
        )
    if trace not in TRACES:
        raise ConfigError(f"sudoku generator: trace must be one of {TRACES}, got {trace!r}")
    rng = random.Random(seed)
    grids = all_grids()
    seen = shipped_test_puzzles() | {example_puzzle(ex) for ex in exclude}
    out: list[Example] = []
    misses, max_misses = 0, 10_000 + 20 * n
    n_empty = None
    while len(out) < n:
        # Keep the drawn blank count until a puzzle with it is accepted, so the
        # counts stay uniform although more blanks are more often ambiguous.
        n_empty = rng.randint(lo, hi) if n_empty is None else n_empty
        grid = rng.choice(grids)
        holes = set(rng.sample(range(N_CELLS), n_empty))
        puzzle = "".join("0" if i in holes else grid[i] for i in range(N_CELLS))
        if puzzle in seen or len(solve_sudoku(puzzle, limit=2)) != 1:
            misses += 1
            if misses > max_misses:
                raise ConfigError(f"sudoku generator: could not find {n} distinct unique-solution puzzles")
            continue
        n_empty = None
        seen.add(puzzle)
        out.append(sudoku_example(puzzle, grid, worked_solution(puzzle, grid, reasons=reasons, trace=trace)))
    return out
