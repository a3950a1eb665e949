"""Countdown puzzles: an exhaustive solver and a seeded generator of training data.

A puzzle is a list of numbers and a target; a solution is an arithmetic
expression with ``+ - * /`` that uses every number exactly once and equals the
target.

Solver. :func:`reachable` enumerates every value obtainable from the numbers by
dynamic programming over subsets: the values of a subset are all ``x op y``
with ``x`` from one part of a split of the subset and ``y`` from the other,
which covers every binary expression tree. By default it follows the classic
Countdown rules, so every intermediate value is a positive integer
(subtraction only ``a - b`` with ``a > b``, division only when exact); with
``integers_only=False`` any rational intermediate is allowed (division by zero
never). The first expression found for a value is kept, with ``+``, ``-``,
``*``, ``/`` tried in that order, so solutions prefer simple operations.

Generator. :func:`generate_countdown` draws a target uniformly from 1..100,
then ``num_numbers`` (3 or 4) numbers uniformly from 1..100 (both ranges are
options: ``target_range``, ``number_range``) until the numbers
reach the target under the classic rules (the target is kept meanwhile, so
targets stay uniform; picking among the reachable values of random numbers
instead would favour small targets 2-4x). Only when a target's puzzles run
out (small number ranges, large ``n``: e.g. only 31 triples from 1..20 make
97) must the target be given up, with the ``max_misses_per_target`` option;
such targets then end up rarer. These ranges match d1's data:
Jiayi-Pan/Countdown-Tasks-3to4 (training) and the cd3 test set, whose numbers
and targets all lie in 1..100, targets roughly uniform. Every puzzle is
therefore solvable with positive integer intermediates. Option
``targets="expression"`` instead draws the numbers first and takes the value of a
random expression over them as the target (expression-first puzzle sets; easier,
for the tiny CPU model). A puzzle's worked solution
(the SFT target) lists the steps and the expression, and is checked with
:mod:`d1.tasks.arith` before it is kept.
Puzzles are unique by (sorted numbers, target) and never equal a puzzle of the
shipped cd3 test set or of ``exclude``. Only an explicit ``random.Random(seed)``
is used: the same arguments give the same list.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, replace
from fractions import Fraction
from importlib import resources
from typing import Any, Iterable, Union

from d1.errors import ConfigError
from d1.tasks.arith import evaluate
from d1.tasks.base import Example

NUMBER_RANGE = (1, 100)
TARGET_RANGE = (1, 100)
SUPPORTED_SIZES = (3, 4)
TEST_SET = "countdown/cd3_test.jsonl"  # under d1/data/benchmarks

# An expression tree: a leaf is the index of a number, a node is (op, left, right).
Tree = Union[int, tuple]
Value = Union[int, Fraction]
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


@dataclass(frozen=True)
class CountdownSolution:
    """A solution: ``expression`` uses each number once; ``steps`` are ``"a op b = c"`` lines."""

    expression: str
    steps: tuple[str, ...]
    value: Value

    search: tuple[str, ...] = ()

    def worked_solution(self) -> str:
        """The SFT target in the d1 format (reasoning: the search lines if any, then the
        steps; then the bare expression)."""
        reasoning = "\n".join(self.search + self.steps)
        return "<reasoning>\n" + reasoning + "\n</reasoning>\n<answer>\n" + self.expression + "\n</answer>"


def _results(va: Value, ta: Tree, vb: Value, tb: Tree, integers_only: bool):
    """(value, tree) of every ``x op y`` with {x, y} = {a, b}, simplest operations first."""
    yield va + vb, ("+", ta, tb)
    if integers_only:
        if va > vb:
            yield va - vb, ("-", ta, tb)
        elif vb > va:
            yield vb - va, ("-", tb, ta)
        yield va * vb, ("*", ta, tb)
        if va % vb == 0:
            yield va // vb, ("/", ta, tb)
        if vb % va == 0:
            yield vb // va, ("/", tb, ta)
        return
    yield va - vb, ("-", ta, tb)
    yield vb - va, ("-", tb, ta)
    yield va * vb, ("*", ta, tb)
    if vb != 0:
        yield va / vb, ("/", ta, tb)
    if va != 0:
        yield vb / va, ("/", tb, ta)


def reachable(numbers: list[int], *, integers_only: bool = True) -> dict[Value, Tree]:
    """Every value reachable using each number exactly once -> one expression tree for it.

    With ``integers_only`` the numbers must be positive integers and every
    intermediate value is a positive integer; otherwise values are Fractions.
    """
    numbers = list(numbers)
    if not numbers:
        return {}
    if integers_only and not all(isinstance(x, int) and x >= 1 for x in numbers):
        raise ValueError("integers_only needs positive integer numbers")
    table: dict[int, dict[Value, Tree]] = {}
    for i, x in enumerate(numbers):
        table[1 << i] = {x if integers_only else Fraction(x): i}
    full = (1 << len(numbers)) - 1
    # Any proper submask is numerically smaller, so increasing order fills parts first.
    for mask in range(1, full + 1):
        if mask & (mask - 1) == 0:
            continue  # single number, done above
        out: dict[Value, Tree] = {}
        sub = (mask - 1) & mask
        while sub:
            other = mask ^ sub
            if sub < other:  # each unordered split once
                for va, ta in table[sub].items():
                    for vb, tb in table[other].items():
                        for value, tree in _results(va, ta, vb, tb, integers_only):
                            out.setdefault(value, tree)
            sub = (sub - 1) & mask
        table[mask] = out
    return table[full]


def _integer_values(numbers: list[int]) -> set[int]:
    """The values :func:`reachable` finds under the classic rules, without expression
    trees: a few times faster, for the generator's many rejected draws."""
    table = {1 << i: {x} for i, x in enumerate(numbers)}
    full = (1 << len(numbers)) - 1
    for mask in range(3, full + 1):
        if mask & (mask - 1) == 0:
            continue
        out: set[int] = set()
        sub = (mask - 1) & mask
        while sub:
            if sub < mask ^ sub:
                for a in table[sub]:
                    for b in table[mask ^ sub]:
                        out.update((a + b, a * b, abs(a - b)))  # a - b = 0 is dropped below
                        if a % b == 0:
                            out.add(a // b)
                        if b % a == 0:
                            out.add(b // a)
            sub = (sub - 1) & mask
        out.discard(0)
        table[mask] = out
    return table[full]


TRACES = ("steps", "search")
TARGET_MODES = ("uniform", "expression")


def _random_expression_value(numbers: list[int], rng: random.Random) -> int | None:
    """The value of a random expression over ``numbers`` (classic rules), or None when
    it breaks them: two values of the pool, picked at random, are combined with a
    random operation in a random order until one value is left (every tree shape)."""
    pool = list(numbers)
    while len(pool) > 1:
        i, j = rng.sample(range(len(pool)), 2)
        x, y = pool[i], pool[j]
        value = _pair_slot_values(x, y)["+-*/".index(rng.choice("+-*/"))]  # x - y, x / y in the drawn order
        if value is None:
            return None
        pool = [v for k, v in enumerate(pool) if k not in (i, j)] + [value]
    return pool[0]


# An empty slot: 0 is never a value here, and as a number it stays one token of its own
# (a "-" would merge with the spaces around it into tokens of varying length).
_NO_VALUE = "0"
_MAX_SHOWN = 999  # larger needed values never meet a pair of small numbers; 0 keeps one token a slot


def _pair_slot_values(x: int, y: int) -> list[int | None]:
    """``x + y``, ``x - y``, ``x * y``, ``x / y`` in that order (None: not a positive integer:
    ``x - y`` needs ``x > y``, ``x / y`` that ``y`` divides ``x``); callers pass the larger
    first unless the order itself is drawn."""
    return [x + y, x - y if x > y else None, x * y, x // y if x % y == 0 else None]


def _pair_slots(numbers: list[int], i: int, j: int) -> list[tuple[int | None, Tree]]:
    """:func:`_pair_slot_values` of numbers ``i`` and ``j`` (larger first), each with its tree."""
    hi, lo = (i, j) if numbers[i] >= numbers[j] else (j, i)
    trees = (("+", i, j), ("-", hi, lo), ("*", i, j), ("/", hi, lo))
    return list(zip(_pair_slot_values(numbers[hi], numbers[lo]), trees))


# How a needed value v meets z at the target, slot by slot (see _need_slot_values).
_NEED_WAYS = ("v+z", "v-z", "z-v", "v*z", "v/z", "z/v")


def _need_slot_values(target: int, z: int) -> list[int | None]:
    """Every v with ``v op z == target`` or ``z op v == target``, in :data:`_NEED_WAYS` order
    (None: not a positive integer)."""
    return [target - z if target > z else None, target + z, z - target if z > target else None,
            target // z if target % z == 0 else None, target * z, z // target if z % target == 0 else None]


def _slot_text(value: int | None) -> str:
    return _NO_VALUE if value is None or value > _MAX_SHOWN else str(value)


def search_trace(numbers: list[int], target: int) -> tuple[list[str], Tree] | None:
    """The ``"search"`` reasoning of a 3-number puzzle: one line per number ``z`` (in the
    puzzle's order) with the values the other two make and the values that would meet
    ``z`` at the target, ``"17, 4: 21 13 68 0 | 14: 40 68 0 0 756 0"`` (0: no such
    value; slots ``x+y x-y x*y x/y | T-z T+z z-T T/z T*z z/T``); returns those
    lines and the tree of the first meeting (lines in order, need slots in order, pair
    slots in order), or None when no pair meets at a value of at most 999 (the
    puzzle is unsolvable, or every solution passes through a larger value, which a
    slot cannot show).

    Every slot holds one number (or ``0``) at a fixed place, so spotting the value both
    sides of a line share is a lookup of equal tokens, which a tiny model learns in
    minutes, while picking the first step of a solution blind (the ``"steps"`` trace)
    is a search it has to do in one forward pass.
    """
    if len(numbers) != 3:
        raise ValueError("the search trace is defined for 3 numbers")
    lines: list[str] = []
    found: Tree | None = None
    for k in range(3):
        i, j = [m for m in range(3) if m != k]
        pair, need = _pair_slots(numbers, i, j), list(zip(_need_slot_values(target, numbers[k]), _NEED_WAYS))
        lines.append(f"{numbers[i]}, {numbers[j]}: " + " ".join(_slot_text(v) for v, _ in pair)
                     + f" | {numbers[k]}: " + " ".join(_slot_text(v) for v, _ in need))
        if found is not None:
            continue
        for v, how in need:
            tree = next((t for pv, t in pair if v is not None and pv == v and v <= _MAX_SHOWN), None)
            if tree is not None:
                found = {"v+z": ("+", tree, k), "v-z": ("-", tree, k), "z-v": ("-", k, tree),
                         "v*z": ("*", tree, k), "v/z": ("/", tree, k), "z/v": ("/", k, tree)}[how]
                break
    return None if found is None else (lines, found)


def _reaches(numbers: list[int], target: int) -> bool:
    """``target in reachable(numbers)``, answered faster: three numbers reach the target
    iff some pair's values meet the operands the third number needs to make it."""
    if len(numbers) != 3:
        return target in _integer_values(numbers)
    a, b, c = numbers
    for (x, y), z in (((a, b), c), ((a, c), b), ((b, c), a)):
        have = set(_pair_slot_values(max(x, y), min(x, y)))
        if any(v is not None and v in have for v in _need_slot_values(target, z)):
            return True
    return False


def _render(tree: Tree, numbers: list[int]) -> str:
    """Infix text with only the parentheses precedence and associativity require."""
    if isinstance(tree, int):
        return str(numbers[tree])
    op, left, right = tree
    left_s, right_s = _render(left, numbers), _render(right, numbers)
    if not isinstance(left, int) and _PRECEDENCE[left[0]] < _PRECEDENCE[op]:
        left_s = f"({left_s})"
    if not isinstance(right, int) and (
        _PRECEDENCE[right[0]] < _PRECEDENCE[op] or (_PRECEDENCE[right[0]] == _PRECEDENCE[op] and op in "-/")
    ):
        right_s = f"({right_s})"
    return f"{left_s} {op} {right_s}"


def _steps(tree: Tree, numbers: list[int], out: list[str]) -> Fraction:
    """Append the ``a op b = c`` lines of ``tree`` in evaluation order; return its value."""
    if isinstance(tree, int):
        return Fraction(numbers[tree])
    op, left, right = tree
    a, b = _steps(left, numbers, out), _steps(right, numbers, out)
    c = a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b
    out.append(f"{a} {op} {b} = {c}")
    return c


def _solution(tree: Tree, numbers: list[int]) -> CountdownSolution:
    steps: list[str] = []
    value = _steps(tree, numbers, steps)
    value = int(value) if value.denominator == 1 else value
    return CountdownSolution(_render(tree, numbers), tuple(steps), value)


def solve_countdown(numbers: list[int], target: int, *, integers_only: bool = True) -> CountdownSolution | None:
    """A solution using each number exactly once, or None if there is none (see module doc)."""
    table = reachable(numbers, integers_only=integers_only)
    tree = table.get(target if integers_only else Fraction(target))
    return None if tree is None else _solution(tree, list(numbers))


def is_valid_solution(numbers: list[int], target: int, expression: str) -> bool:
    """True when ``expression`` evaluates exactly to ``target`` and its numbers are
    exactly ``numbers`` (as a multiset). Independent of the solver (uses arith)."""
    used = [int(t) for t in re.findall(r"[0-9]+", expression)]
    if Counter(used) != Counter(numbers):
        return False
    try:
        return evaluate(expression) == target
    except ValueError:
        return False


def puzzle_key(numbers: Iterable[int], target: int) -> tuple:
    """Identity of a puzzle: the order of the numbers does not matter."""
    return (tuple(sorted(int(x) for x in numbers)), int(target))


def _example_key(example: Example) -> tuple:
    numbers, target = example.ground_truth
    return puzzle_key(numbers, target)


def shipped_test_keys() -> set[tuple]:
    """Keys of the d1 cd3 test puzzles shipped in d1/data/benchmarks."""
    path = resources.files("d1.data").joinpath("benchmarks", TEST_SET)
    keys = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            keys.add(puzzle_key((int(x) for x in row["input"].split(",")), int(row["output"])))
    return keys


def countdown_example(numbers: list[int], target: int, solution: str | None = None) -> Example:
    """An Example in the shape d1's eval files store (question and ``[[numbers], target]``)."""
    numbers = [int(x) for x in numbers]
    target = int(target)
    return Example(question=f"Numbers: {numbers}\nTarget: {target}", ground_truth=[numbers, target], solution=solution)


def _check_range(name: str, value: Any) -> tuple[int, int]:
    """``value`` as an inclusive ``(low, high)`` range of positive integers, else ConfigError."""
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(x, int) and not isinstance(x, bool) for x in value))
    if not ok or not 1 <= value[0] <= value[1]:
        raise ConfigError(f"countdown generator: {name} must be [low, high] with 1 <= low <= high, got {value!r}")
    return int(value[0]), int(value[1])


def generate_countdown(
    n: int,
    *,
    seed: int,
    num_numbers: int = 3,
    exclude: Iterable[Example] = (),
    number_range: tuple[int, int] = NUMBER_RANGE,
    target_range: tuple[int, int] = TARGET_RANGE,
    max_misses_per_target: int | None = None,
    trace: str = "steps",
    targets: str = "uniform",
) -> list[Example]:
    """``n`` distinct solvable puzzles with worked solutions (see the module doc).

    ``number_range`` / ``target_range``: inclusive ranges the numbers and the
    target are drawn from (default 1..100 each, d1's data; a smaller number
    range makes easier puzzles, e.g. for the tiny CPU benchmark).
    ``max_misses_per_target``: draw a new target after this many failed draws
    in a row (None: keep it until a puzzle turns up, so targets stay uniform).
    Needed with small number ranges, where some targets run out of puzzles;
    with the default ranges the longest streak of misses is a few hundred.
    ``trace``: the reasoning of the worked solution: ``"steps"`` (the ``a op b = c``
    lines of the solver's solution) or ``"search"`` (3 numbers only: the
    :func:`search_trace` lines, then the steps of the solution they find; puzzles
    whose every solution passes through a value above 999 are skipped).
    ``targets``: ``"uniform"`` (default: the target first, uniform over ``target_range``,
    as d1's data) or ``"expression"`` (the numbers first, then the value of a random
    expression over them, kept when it lies in ``target_range``: the way
    expression-first puzzle sets are built; small targets and the sums and products
    of the numbers come up far more often, so these puzzles are easier: see
    research/README.md). The worked solution is the solver's, as with uniform targets.
    Deterministic in (n, seed, num_numbers, exclude, ranges). Raises ConfigError
    for a bad parameter, or when no new puzzle turns up after many draws.
    """
    if not isinstance(n, int) or n < 0:
        raise ConfigError(f"countdown generator: n must be a non-negative integer, got {n!r}")
    if num_numbers not in SUPPORTED_SIZES:
        raise ConfigError(f"countdown generator: num_numbers must be one of {SUPPORTED_SIZES}, got {num_numbers!r}")
    number_range = _check_range("number_range", number_range)
    target_range = _check_range("target_range", target_range)
    if max_misses_per_target is not None and (
        not isinstance(max_misses_per_target, int) or isinstance(max_misses_per_target, bool)
        or max_misses_per_target < 1
    ):
        raise ConfigError(f"countdown generator: max_misses_per_target must be a positive integer or null, "
                          f"got {max_misses_per_target!r}")
    if trace not in TRACES:
        raise ConfigError(f"countdown generator: trace must be one of {TRACES}, got {trace!r}")
    if targets not in TARGET_MODES:
        raise ConfigError(f"countdown generator: targets must be one of {TARGET_MODES}, got {targets!r}")
    if trace == "search" and num_numbers != 3:
        raise ConfigError(f"countdown generator: the search trace needs num_numbers 3, got {num_numbers!r}")
    rng = random.Random(seed)
    seen = shipped_test_keys() | {_example_key(ex) for ex in exclude}
    out: list[Example] = []
    draws, max_draws = 0, 1000 + 100 * n
    give_up = max_misses_per_target or max_draws + 1  # None: never give a target up
    target, misses = None, 0
    while len(out) < n:
        draws += 1
        if draws > max_draws:
            hint = "" if max_misses_per_target else " (a small number range? set max_misses_per_target)"
            raise ConfigError(f"countdown generator: could not find {n} distinct puzzles{hint}")
        if targets == "expression":
            numbers = [rng.randint(*number_range) for _ in range(num_numbers)]
            target = _random_expression_value(numbers, rng)
            if target is None or not target_range[0] <= target <= target_range[1] or puzzle_key(numbers, target) in seen:
                continue
        else:
            if target is None or misses >= give_up:
                target, misses = rng.randint(*target_range), 0
            numbers = [rng.randint(*number_range) for _ in range(num_numbers)]
        if not _reaches(numbers, target) or puzzle_key(numbers, target) in seen:
            misses += 1
            continue
        if trace == "search":
            found = search_trace(numbers, target)
            if found is None:  # every solution passes through a value above 999 (numbers above 31)
                misses += 1
                continue
            solution = replace(_solution(found[1], numbers), search=tuple(found[0]))
        else:
            solution = _solution(reachable(numbers)[target], numbers)
        if not is_valid_solution(numbers, target, solution.expression):  # guards the solver itself
            raise AssertionError(f"solver produced a wrong solution for {numbers} -> {target}")
        seen.add(puzzle_key(numbers, target))
        out.append(countdown_example(numbers, target, solution.worked_solution()))
        target = None
    return out
