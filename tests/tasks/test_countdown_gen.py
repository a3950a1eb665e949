"""Countdown solver and generator: solvable, verified, distinct, unseen, deterministic."""

from __future__ import annotations

import json
import random
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

from d1.errors import ConfigError
from d1.tasks import get_task
from d1.tasks.arith import evaluate
from d1.tasks.countdown_gen import (
    _render,
    _steps,
    generate_countdown,
    is_valid_solution,
    puzzle_key,
    reachable,
    search_trace,
    shipped_test_keys,
    solve_countdown,
)

TASK = get_task("countdown")


def _serialised(examples) -> bytes:
    return "\n".join(json.dumps(e.to_record(), sort_keys=True) for e in examples).encode()


def _check_steps(steps, target):
    """Every step is "a op b = c" with positive integer a, b, c that is arithmetically right."""
    last = None
    for line in steps:
        lhs, c = line.split(" = ")
        a, op, b = lhs.split(" ")
        a, b, c = int(a), int(b), int(c)
        assert min(a, b, c) >= 1
        assert evaluate(f"{a} {op} {b}") == c
        last = c
    assert last == target


# --- solver -----------------------------------------------------------------------------

def test_reachable_values():
    assert set(reachable([2, 3])) == {5, 1, 6}  # 3/2 is no integer, 2-3 not positive
    assert set(reachable([2, 3], integers_only=False)) == {5, 1, -1, 6, Fraction(2, 3), Fraction(3, 2)}
    assert set(reachable([4, 4])) == {8, 16, 1}  # 4-4 = 0 is not a positive intermediate
    assert reachable([]) == {}
    with pytest.raises(ValueError):
        reachable([0, 3])


def test_solve_known_puzzles():
    sol = solve_countdown([49, 55, 53], 51)
    assert sol is not None and sol.value == 51
    assert is_valid_solution([49, 55, 53], 51, sol.expression)
    _check_steps(sol.steps, 51)
    assert sol.worked_solution() == (
        "<reasoning>\n" + "\n".join(sol.steps) + "\n</reasoning>\n<answer>\n" + sol.expression + "\n</answer>"
    )
    # 3 3 8 8 -> 24 needs a fraction: 8 / (3 - 8 / 3)
    assert solve_countdown([3, 3, 8, 8], 24) is None
    frac = solve_countdown([3, 3, 8, 8], 24, integers_only=False)
    assert frac is not None and evaluate(frac.expression) == 24
    assert solve_countdown([1, 1, 1], 50) is None


@pytest.mark.parametrize(
    "tree, text",
    [
        (("-", 0, ("-", 1, 2)), "12 - (4 - 2)"),
        (("-", ("-", 0, 1), 2), "12 - 4 - 2"),
        (("+", 0, ("-", 1, 2)), "12 + 4 - 2"),
        (("*", ("+", 0, 1), 2), "(12 + 4) * 2"),
        (("+", 0, ("*", 1, 2)), "12 + 4 * 2"),
        (("/", 0, ("*", 1, 2)), "12 / (4 * 2)"),
        (("/", 0, ("/", 1, 2)), "12 / (4 / 2)"),
        (("*", 0, ("/", 1, 2)), "12 * 4 / 2"),
        (("-", ("*", 0, 1), ("+", 2, 2)), "12 * 4 - (2 + 2)"),
    ],
)
def test_parentheses_only_where_needed(tree, text):
    numbers = [12, 4, 2]
    assert _render(tree, numbers) == text
    steps: list[str] = []
    assert evaluate(text) == _steps(tree, numbers, steps)  # rendering keeps the value


def test_is_valid_solution():
    assert is_valid_solution([2, 3, 4], 5, "2*4-3")
    assert not is_valid_solution([2, 3, 4], 5, "2*4-3+0")  # extra number
    assert not is_valid_solution([2, 3, 4], 5, "4+1")
    assert not is_valid_solution([2, 3, 4], 5, "2**4-3")  # unsupported operator


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 100), min_size=3, max_size=4), st.randoms(use_true_random=False))
def test_every_reachable_target_has_a_valid_derivation(numbers, rnd):
    table = reachable(numbers)
    for target in rnd.sample(sorted(table), min(10, len(table))):
        sol = solve_countdown(numbers, target)
        assert sol is not None and is_valid_solution(numbers, target, sol.expression)
        _check_steps(sol.steps, target)
        assert len(sol.steps) == len(numbers) - 1


# --- generator --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ten_thousand():
    return generate_countdown(10_000, seed=1234)


def test_ten_thousand_are_verified_distinct_and_unseen(ten_thousand):
    test_keys = shipped_test_keys()
    assert len(test_keys) == 256
    keys = set()
    for ex in ten_thousand:
        numbers, target = ex.ground_truth
        assert len(numbers) == 3 and all(1 <= x <= 100 for x in numbers) and 1 <= target <= 100
        assert ex.question == f"Numbers: {numbers}\nTarget: {target}"
        expression = ex.solution.split("<answer>\n")[1].split("\n</answer>")[0]
        assert is_valid_solution(numbers, target, expression)
        keys.add(puzzle_key(numbers, target))
    assert len(keys) == 10_000 and not keys & test_keys


def test_worked_solutions_earn_full_reward(ten_thousand):
    for ex in ten_thousand[:300]:
        assert TASK.reward(ex.solution, ex).total == 1.0
        assert ex.solution.startswith("<reasoning>\n") and ex.solution.count("\n") <= 8


def test_targets_spread_over_the_range(ten_thousand):
    targets = Counter(ex.ground_truth[1] for ex in ten_thousand)
    assert len(targets) == 100  # every target 1..100 occurs
    assert max(targets.values()) < 2 * min(targets.values())  # uniform: ~100 each


def test_four_numbers():
    out = generate_countdown(300, seed=5, num_numbers=4)
    for ex in out:
        numbers, target = ex.ground_truth
        expression = ex.solution.split("<answer>\n")[1].split("\n</answer>")[0]
        assert len(numbers) == 4 and is_valid_solution(numbers, target, expression)


def test_deterministic_in_the_seed():
    a, b, c = (generate_countdown(300, seed=s) for s in (7, 7, 8))
    assert _serialised(a) == _serialised(b)
    assert _serialised(a) != _serialised(c)
    assert _serialised(generate_countdown(100, seed=7)) == _serialised(a[:100])  # prefix-stable


def test_does_not_touch_global_random_state():
    random.seed(0)
    expected = random.random()
    random.seed(0)
    generate_countdown(50, seed=3)
    assert random.random() == expected


def test_exclude():
    first = generate_countdown(200, seed=9)
    again = generate_countdown(200, seed=9, exclude=first)
    assert not {puzzle_key(*e.ground_truth) for e in first} & {puzzle_key(*e.ground_truth) for e in again}


@pytest.mark.parametrize("kwargs", [{"n": -1}, {"n": 1.5}, {"n": 3, "num_numbers": 2}, {"n": 3, "num_numbers": 5}])
def test_bad_parameters(kwargs):
    n = kwargs.pop("n")
    with pytest.raises(ConfigError):
        generate_countdown(n, seed=0, **kwargs)


def test_zero():
    assert generate_countdown(0, seed=0) == []


# --- number / target ranges (smaller puzzles for the tiny CPU benchmark) -----------------

def test_default_ranges_are_the_defaults():
    explicit = generate_countdown(200, seed=11, number_range=(1, 100), target_range=[1, 100])
    assert _serialised(explicit) == _serialised(generate_countdown(200, seed=11))


def test_ranges_are_respected_and_puzzles_verified():
    out = generate_countdown(400, seed=2, number_range=[1, 20], target_range=[10, 60], max_misses_per_target=200)
    assert len({puzzle_key(*e.ground_truth) for e in out}) == 400
    for ex in out:
        numbers, target = ex.ground_truth
        assert all(1 <= x <= 20 for x in numbers) and 10 <= target <= 60
        assert TASK.reward(ex.solution, ex).total == 1.0
    assert max(x for e in out for x in e.ground_truth[0]) == 20  # the range is used up to its end


def test_small_range_needs_a_target_redraw():
    # Numbers 1..5 make only a few puzzles per target in 1..40: without redraws the first
    # exhausted target is drawn forever; with them most of the pool is found.
    pool = {(tuple(sorted((a, b, c))), t) for a in range(1, 6) for b in range(1, 6) for c in range(1, 6)
            for t in range(1, 41) if solve_countdown([a, b, c], t) is not None}
    pool -= shipped_test_keys()
    with pytest.raises(ConfigError, match="max_misses_per_target"):
        generate_countdown(len(pool), seed=0, number_range=(1, 5), target_range=(1, 40))
    out = generate_countdown(len(pool) * 3 // 4, seed=0, number_range=(1, 5), target_range=(1, 40),
                             max_misses_per_target=50)
    assert {puzzle_key(*e.ground_truth) for e in out} <= pool


@pytest.mark.parametrize("kwargs", [
    {"number_range": (0, 10)}, {"number_range": (5, 4)}, {"number_range": (1,)}, {"number_range": (1.0, 9)},
    {"target_range": (1, 2, 3)}, {"target_range": None}, {"max_misses_per_target": 0},
    {"max_misses_per_target": True},
])
def test_bad_range_options(kwargs):
    with pytest.raises(ConfigError):
        generate_countdown(3, seed=0, **kwargs)


# --- expression-first targets ------------------------------------------------------------

def _expression_values_by_hand(numbers):
    """Every value of an expression over 3 numbers under the classic rules, by brute force over
    (pair, order, operation) choices: the values ``targets="expression"`` can draw."""
    def combine(x, y):
        out = {x + y, x * y}
        if x > y:
            out.add(x - y)
        if x % y == 0:
            out.add(x // y)
        return out

    values = set()
    for k in range(3):
        x, y = [numbers[m] for m in range(3) if m != k]
        for v in combine(x, y) | combine(y, x):
            values |= combine(v, numbers[k]) | combine(numbers[k], v)
    return values


def test_expression_targets_are_values_of_the_numbers_and_verified():
    out = generate_countdown(400, seed=4, number_range=[1, 20], targets="expression")
    assert len({puzzle_key(*e.ground_truth) for e in out}) == 400
    for ex in out:
        numbers, target = ex.ground_truth
        assert all(1 <= x <= 20 for x in numbers) and 1 <= target <= 100
        assert target in _expression_values_by_hand(numbers)
        assert TASK.reward(ex.solution, ex).total == 1.0
    assert not {puzzle_key(*e.ground_truth) for e in out} & shipped_test_keys()


def test_expression_targets_favour_the_sums_and_small_targets():
    # The reason the option exists: drawing the target from the numbers makes the
    # simple puzzles common (measured: 16-21% are "a + b + c" against ~8% with uniform targets).
    uniform = generate_countdown(1000, seed=6, number_range=[1, 20], max_misses_per_target=200)
    expression = generate_countdown(1000, seed=6, number_range=[1, 20], targets="expression")

    def share_of_sums(examples):
        return sum(sum(e.ground_truth[0]) == e.ground_truth[1] for e in examples) / len(examples)

    def mean_target(examples):
        return sum(e.ground_truth[1] for e in examples) / len(examples)

    assert share_of_sums(expression) > 1.5 * share_of_sums(uniform)
    assert mean_target(expression) < mean_target(uniform) - 10


def test_expression_targets_deterministic_and_with_the_other_options():
    a = generate_countdown(200, seed=3, number_range=[1, 20], targets="expression")
    assert _serialised(a) == _serialised(generate_countdown(200, seed=3, number_range=[1, 20], targets="expression"))
    assert _serialised(a) != _serialised(generate_countdown(200, seed=3, number_range=[1, 20]))
    four = generate_countdown(100, seed=3, num_numbers=4, number_range=[1, 20], target_range=[10, 50],
                              targets="expression")
    assert all(len(e.ground_truth[0]) == 4 and 10 <= e.ground_truth[1] <= 50 for e in four)
    searched = generate_countdown(50, seed=3, number_range=[1, 20], targets="expression", trace="search")
    assert all(TASK.reward(e.solution, e).total == 1.0 for e in searched)


def test_bad_targets_option_is_named():
    with pytest.raises(ConfigError, match="targets must be one of .*'random'"):
        generate_countdown(3, seed=0, targets="random")
    with pytest.raises(ConfigError, match="unknown option"):
        TASK.generate(3, seed=0, exclude=[], target_mode="expression")
    assert len(TASK.generate(3, seed=0, exclude=[], targets="expression", number_range=[1, 20])) == 3


# ----------------------------------------------------------------------------- the search trace


def _slots_by_hand(numbers, target, k):
    """One search line's values, from the definition (0: not a positive integer, or above 999)."""
    x, y = [numbers[m] for m in range(3) if m != k]
    z = numbers[k]
    hi, lo = max(x, y), min(x, y)
    pair = [x + y, hi - lo, x * y, hi // lo if hi % lo == 0 else 0]
    need = [target - z, target + z, z - target, target // z if target % z == 0 else 0, target * z,
            z // target if z % target == 0 else 0]
    return [v if 0 < v <= 999 else 0 for v in pair], [v if 0 < v <= 999 else 0 for v in need]


def test_search_trace_lines_and_the_solution_they_find():
    lines, tree = search_trace([14, 17, 4], 54)
    assert lines == ["17, 4: 21 13 68 0 | 14: 40 68 0 0 756 0",
                     "14, 4: 18 10 56 0 | 17: 37 71 0 0 918 0",
                     "14, 17: 31 3 238 0 | 4: 50 58 0 0 216 0"]
    assert _render(tree, [14, 17, 4]) == "17 * 4 - 14"  # 68 meets T + z = 68: v - z = T


def test_search_trace_finds_nothing_when_every_solution_passes_above_999():
    assert 55 in reachable([60, 75, 44])  # only as 75 * 44 / 60, through 3300
    assert search_trace([60, 75, 44], 55) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 20), min_size=3, max_size=3), st.integers(1, 100))
def test_search_trace_matches_a_plain_search(numbers, target):
    found = search_trace(numbers, target)
    solvable = target in reachable(numbers)  # numbers up to 20: every value fits a slot
    assert (found is not None) == solvable
    if found is None:
        return
    lines, tree = found
    first = None
    for k, line in enumerate(lines):
        pair, need = _slots_by_hand(numbers, target, k)
        left, right = line.split(" | ")
        assert [int(v) for v in left.split(": ")[1].split()] == pair
        assert [int(v) for v in right.split(": ")[1].split()] == need
        if first is None and set(pair) & set(need) - {0}:
            first = k
    assert first is not None
    expression = _render(tree, numbers)
    assert is_valid_solution(numbers, target, expression)
    assert first in (tree[1], tree[2])  # the number left out by the first line that meets joins last


def test_generator_with_the_search_trace():
    examples = generate_countdown(40, seed=2, number_range=(1, 20), max_misses_per_target=200, trace="search")
    plain = generate_countdown(40, seed=2, number_range=(1, 20), max_misses_per_target=200)
    assert [ex.question for ex in examples] == [ex.question for ex in plain]  # the trace changes nothing else
    for ex in examples:
        reasoning = ex.solution.split("<reasoning>\n")[1].split("\n</reasoning>")[0].splitlines()
        assert len(reasoning) == 5 and all(" | " in line for line in reasoning[:3])
        assert TASK.reward(ex.solution, ex).components["countdown"] == 1.0
    with pytest.raises(ConfigError, match="trace must be one of"):
        generate_countdown(2, seed=0, trace="lines")
    with pytest.raises(ConfigError, match="num_numbers 3"):
        generate_countdown(2, seed=0, num_numbers=4, trace="search")
    assert len(TASK.generate(2, seed=0, exclude=[], trace="search")) == 2
    # d1's number range: puzzles the slots cannot show are skipped, the rest verified as above
    wide = generate_countdown(300, seed=0, trace="search")
    assert len(wide) == 300 and all(TASK.reward(ex.solution, ex).components["countdown"] == 1.0 for ex in wide)
