"""4x4 Sudoku solver, deduction trace and generator: unique, verified, unseen, deterministic."""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter
from importlib import resources

import pytest

from d1.errors import ConfigError
from d1.tasks import get_task
from d1.tasks.sudoku_gen import (
    UNITS,
    _next_step,
    all_grids,
    deduction_steps,
    example_puzzle,
    generate_sudoku,
    parse_grid,
    puzzle_from_question,
    shipped_test_puzzles,
    solve_sudoku,
    worked_solution,
)

TASK = get_task("sudoku")


def _test_rows() -> list[dict]:
    text = resources.files("d1.data").joinpath("benchmarks", "sudoku/4x4_test.csv").read_text()
    return list(csv.DictReader(io.StringIO(text)))


def _is_complete_grid(grid: str) -> bool:
    return all(sorted(grid[i] for i in unit) == ["1", "2", "3", "4"] for _, unit in UNITS)


def _serialised(examples) -> bytes:
    return "\n".join(json.dumps(e.to_record(), sort_keys=True) for e in examples).encode()


# --- solver -----------------------------------------------------------------------------

def test_all_grids():
    grids = all_grids()
    assert len(grids) == 288 == len(set(grids))
    assert all(_is_complete_grid(g) for g in grids)


def test_every_test_solution_completes_its_puzzle():
    rows = _test_rows()
    assert len(rows) == 500
    ambiguous = 0
    for row in rows:
        solutions = solve_sudoku(row["Puzzle"], limit=100)
        assert row["Solution"] in solutions
        ambiguous += len(solutions) > 1
    # A data fact worth knowing: d1's test set is not all unique-solution puzzles, so
    # its cell-level score can mark a valid alternative solution wrong. Ours are unique.
    assert ambiguous == 124


def test_solver_edge_cases():
    assert len(solve_sudoku("0" * 16)) == 2  # stops counting at the limit
    assert len(solve_sudoku("0" * 16, limit=1000)) == 288
    assert solve_sudoku("1100" + "0" * 12) == []  # givens already clash
    assert solve_sudoku("1234341221434321") == ["1234341221434321"]
    for bad in ("123", "5" + "0" * 15, "x" * 16, 1234):
        with pytest.raises(ValueError):
            solve_sudoku(bad)  # type: ignore[arg-type]


def test_parse_grid_and_question():
    assert parse_grid("1234000000000000")[:5] == [1, 2, 3, 4, 0]
    assert puzzle_from_question("Solve the following Sudoku puzzle: 0140432014020000\n") == "0140432014020000"
    assert puzzle_from_question("0140432014020000 rest") == "0140432014020000"
    assert puzzle_from_question("no puzzle here") is None


# --- deduction trace --------------------------------------------------------------------

def test_trace_of_a_test_puzzle():
    puzzle, solution = "3102200002100320", "3142243142131324"
    steps = deduction_steps(puzzle, solution)
    assert len(steps) == puzzle.count("0")
    assert steps[0] == "R1C3 = 4 (its row, column and box already hold 1, 2, 3)"
    grid = list(puzzle)
    for line in steps:  # replaying the lines fills exactly the empty cells with the solution
        cell, digit = line.split(" (")[0].split(" = ")
        i = 4 * (int(cell[1]) - 1) + int(cell[3]) - 1
        assert grid[i] == "0"
        grid[i] = digit
    assert "".join(grid) == solution
    text = worked_solution(puzzle, solution)
    assert text.startswith("<reasoning>\nGrid rows: 3102 / 2000 / 0210 / 0320\nR1C3 = 4")
    assert text.endswith("</reasoning>\n<answer>\n3142243142131324\n</answer>")


def test_hidden_single_and_fallback_reasons():
    # No cell has a single candidate here, but row 3 has one place for a 3.
    i, d, why = _next_step(parse_grid("0030300000000003"), parse_grid("1432321423414123"))
    assert (i, d, why) == (9, 3, "the only cell of row 3 that can hold 3")
    # From an empty grid nothing is forced: the trace falls back to the solution.
    steps = deduction_steps("0" * 16, "1234341221434321")
    assert len(steps) == 16 and "contradiction" in steps[0]
    with pytest.raises(ValueError):
        deduction_steps("3102200002100320", "1234341221434321")  # not this puzzle's solution


# --- generator --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ten_thousand():
    return generate_sudoku(10_000, seed=1234)


def test_ten_thousand_are_unique_distinct_and_unseen(ten_thousand):
    test_puzzles = shipped_test_puzzles()
    assert len(test_puzzles) == 500
    puzzles = [ex.meta["puzzle"] for ex in ten_thousand]
    assert len(set(puzzles)) == 10_000 and not set(puzzles) & test_puzzles
    for ex in ten_thousand:
        puzzle = ex.meta["puzzle"]
        assert solve_sudoku(puzzle) == [ex.ground_truth]
        assert ex.question == f"Solve the following Sudoku puzzle: {puzzle}\n"
        assert 6 <= puzzle.count("0") <= 10


def test_empty_cell_counts_are_uniform(ten_thousand):
    counts = Counter(ex.meta["puzzle"].count("0") for ex in ten_thousand)
    assert set(counts) == {6, 7, 8, 9, 10}
    assert max(counts.values()) < 1.2 * min(counts.values())


def test_worked_solutions_earn_full_reward_and_score(ten_thousand):
    for ex in ten_thousand[:300]:
        assert TASK.reward(ex.solution, ex).total == 1.0
        s = TASK.score(ex.solution, ex)
        assert s.correct == s.total == ex.meta["puzzle"].count("0")


def test_empty_cells_option():
    out = generate_sudoku(200, seed=3, empty_cells=(11, 12))
    assert {ex.meta["puzzle"].count("0") for ex in out} == {11, 12}
    assert all(len(solve_sudoku(ex.meta["puzzle"])) == 1 for ex in out)
    assert TASK.generate(3, seed=3, exclude=[], empty_cells=[8, 8])[0].meta["puzzle"].count("0") == 8


def test_deterministic_in_the_seed():
    a, b, c = (generate_sudoku(300, seed=s) for s in (7, 7, 8))
    assert _serialised(a) == _serialised(b)
    assert _serialised(a) != _serialised(c)


def test_does_not_touch_global_random_state():
    random.seed(0)
    expected = random.random()
    random.seed(0)
    generate_sudoku(50, seed=3)
    assert random.random() == expected


def test_exclude():
    first = generate_sudoku(300, seed=9)
    again = generate_sudoku(300, seed=9, exclude=first)
    assert not {example_puzzle(e) for e in first} & {example_puzzle(e) for e in again}


@pytest.mark.parametrize(
    "n, empty_cells",
    [(-1, (6, 10)), (2.0, (6, 10)), (5, (0, 4)), (5, (8, 13)), (5, (9, 8)), (5, (8,)), (5, "68"), (5, None)],
)
def test_bad_parameters(n, empty_cells):
    with pytest.raises(ConfigError):
        generate_sudoku(n, seed=0, empty_cells=empty_cells)


def test_unknown_generator_option():
    with pytest.raises(ConfigError):
        TASK.generate(3, seed=0, exclude=[], num_numbers=3)


def test_trace_without_reasons_is_shorter_and_still_earns_full_reward():
    task = get_task("sudoku")
    full = generate_sudoku(20, seed=5)
    short = generate_sudoku(20, seed=5, reasons=False)
    assert [ex.question for ex in full] == [ex.question for ex in short]  # same puzzles, same order
    for a, b in zip(full, short):
        assert "(" not in b.solution and len(b.solution) < len(a.solution) / 2
        lines_a = [ln.split(" (")[0] for ln in a.solution.splitlines() if ln.startswith("R")]
        assert [ln for ln in b.solution.splitlines() if ln.startswith("R")] == lines_a
        assert task.reward_components(b.solution, b)["sudoku"] == 1.0
    assert len(task.generate(3, seed=1, exclude=[], reasons=False)) == 3


def test_rows_trace_has_a_fixed_layout_and_earns_full_reward():
    task = get_task("sudoku")
    deductions = generate_sudoku(20, seed=5, empty_cells=(4, 8))
    rows = generate_sudoku(20, seed=5, empty_cells=(4, 8), trace="rows")
    assert [ex.question for ex in deductions] == [ex.question for ex in rows]  # the trace changes nothing else
    assert len({len(ex.solution) for ex in rows}) == 1  # 4 to 8 blanks, one length: every digit at a fixed place
    for ex in rows:
        puzzle, solution = ex.meta["puzzle"], ex.ground_truth
        grid = " / ".join(puzzle[r:r + 4] for r in range(0, 16, 4))
        solved = " / ".join(solution[r:r + 4] for r in range(0, 16, 4))
        assert ex.solution == (f"<reasoning>\nGrid rows: {grid}\nSolved rows: {solved}\n</reasoning>\n"
                               f"<answer>\n{solution}\n</answer>")
        assert task.reward_components(ex.solution, ex)["sudoku"] == 1.0
    assert len(task.generate(3, seed=1, exclude=[], trace="rows")) == 3


def test_rows_trace_checks_its_inputs():
    with pytest.raises(ConfigError, match="trace must be one of"):
        generate_sudoku(2, seed=0, trace="grid")
    with pytest.raises(ConfigError, match="trace must be one of"):
        worked_solution("1000230042133124", "1432234142133124", trace="cells")
    with pytest.raises(ValueError, match="not a solution"):  # not a valid grid
        worked_solution("1000230042133124", "1432234142133142", trace="rows")
    with pytest.raises(ValueError, match="not a solution"):  # a valid grid that changes a given
        worked_solution("1000230042133124", "2341412334121234", trace="rows")
