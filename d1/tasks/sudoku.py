"""4x4 Sudoku: fill the empty cells of a 16-character grid string (``0`` = empty).

Records (``example_from_record``): d1's CSV rows ``{"Puzzle", "Solution"}``
(strings; a number lost its leading zeros and is re-padded to 16), lower-case
``{"puzzle", "solution"}`` rows, or our serialised Examples (``question``,
``ground_truth``, ``solution`` = SFT text, ``meta.puzzle``).
``Example.question`` is what d1's eval files store
(``"Solve the following Sudoku puzzle: 4320004330100004\\n"``), ``ground_truth``
the 16-digit solution and ``meta["puzzle"]`` the puzzle.

Training reward (d1 ``reward_func.sudoku_reward_func``, range [0, 1]): the
answer is the last complete ``<answer>...</answer>`` block, stripped, keeping
only characters with ``str.isdigit()``; it is padded with ``0`` or truncated to
16 characters; the reward is the fraction of the puzzle's empty cells whose
character equals the solution's. No block, or no digit in it: 0.

Evaluation score (d1 ``eval/parse_and_get_acc.parse_sudoku_answers``): the
answer is the first of these that yields a non-blank string (d1's regex
cascade, each step's first match only):

1. after the first ``<answer>``, the first fenced block ```` ```digits/space``` ````;
2. from the first ``<answer>`` to the next ``<|eot_id|>``, ``<|endoftext|>`` or ``</answer>``;
3. after the first ``</answer>`` and its whitespace, up to the next ``<|eot_id|>``,
   ``<|endoftext|>`` or the end (a final newline excluded);
4. the first 16 digits followed by optional whitespace and ``</answer>``;
5. the first run of exactly 16 digits standing alone as a word.

Whitespace is removed, the string padded with ``0`` or truncated to 16, and
``Score(correct, total)`` counts the empty cells it gets right out of all empty
cells; pooled accuracy = sum(correct) / sum(total), as d1 reports it. The
steps are scans with the same result as d1's regexes, but linear-time (several
of those regexes are quadratic on adversarial text).
"""

from __future__ import annotations

import re
from itertools import islice
from typing import Any

from d1.errors import ConfigError, DataError
from d1.tasks.base import Example, Score, Task
from d1.tasks.formats import last_answer_block
from d1.tasks.registry import register_task
from d1.tasks.sudoku_gen import (
    N_CELLS,
    TEST_SET,
    example_puzzle,
    generate_sudoku,
    parse_grid,
    puzzle_from_question,
    sudoku_example,
)

# d1 data_utils.SUDOKU_SYSTEM_PROMPT == eval/sudoku.py SUDOKU_SYSTEM_PROMPT, verbatim.
SUDOKU_PROMPT = """
Please solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading left-to-right, top-to-bottom, where '0' represents empty cells.

Rules:
- Fill empty cells with digits 1-4
- Each row must contain digits 1-4 exactly once
- Each column must contain digits 1-4 exactly once
- Each 2x2 box must contain digits 1-4 exactly once

Important: Your solution must be a COMPLETE 16-character string with only the digits 1-4, representing your final solved grid.

Respond in this exact format:
<reasoning>
Your step-by-step solving process
</reasoning>
<answer>
[16-character solution string with no spaces or separators]
</answer>
"""

_STOPS = ("<|eot_id|>", "<|endoftext|>")
_FENCED = re.compile(r"```([\d\s]+)```")
_SPACE_RUN = re.compile(r"\s*")
_DIGITS_WORD = re.compile(r"\b(\d{16})\b")
_WHITESPACE = re.compile(r"\s")


def _first_found(text: str, needles: tuple[str, ...], start: int) -> int:
    hits = [i for i in (text.find(s, start) for s in needles) if i >= 0]
    return min(hits) if hits else -1


def _fenced_digits(text: str) -> str | None:
    r"""Step 1: ``<answer>.*?```\s*([\d\s]+)```"``. Searched as ``"```[\d\s]+```"``
    after the first ``<answer>``: the same first match and digits, without the
    quadratic backtracking of ``\s*`` against ``[\d\s]+``."""
    start = text.find("<answer>")
    if start < 0:
        return None
    m = _FENCED.search(text, start + len("<answer>"))
    return m.group(1) if m else None


def _answer_body(text: str) -> str | None:
    """Step 2: ``<answer>(.*?)(?:<|eot_id|>|<|endoftext|>|</answer>)``."""
    start = text.find("<answer>")
    if start < 0:
        return None
    start += len("<answer>")
    end = _first_found(text, _STOPS + ("</answer>",), start)
    return None if end < 0 else text[start:end]


def _after_answer(text: str) -> str | None:
    r"""Step 3: ``</answer>\s*(.*?)(?:<|eot_id|>|<|endoftext|>|$)``."""
    close = text.find("</answer>")
    if close < 0:
        return None
    start = _SPACE_RUN.match(text, close + len("</answer>")).end()
    end = _first_found(text, _STOPS, start)
    if end < 0:
        end = len(text)
    if text.endswith("\n") and start <= len(text) - 1 < end:  # "$" also matches before a final newline
        end = len(text) - 1
    return text[start:end]


def _digits_before_close(text: str) -> str | None:
    r"""Step 4: ``.*?(\d{16})\s*</answer>``: for the ``</answer>`` tags in order, the 16
    characters before the whitespace that precedes the tag, if all digits. (The
    regex itself tries ``\d{16}`` at every position of a long digit run.)"""
    start, close = 0, text.find("</answer>")
    while close >= 0:
        # The whitespace run cannot reach back past the previous tag, so strip only
        # the text since then (rstrip and \s agree on what whitespace is).
        end = start + len(text[start:close].rstrip())
        digits = text[end - 16 : end] if end >= 16 else ""
        if len(digits) == 16 and digits.isdecimal():
            return digits
        start = close + len("</answer>")
        close = text.find("</answer>", start)
    return None


def _digits_word(text: str) -> str | None:
    m = _DIGITS_WORD.search(text)
    return m.group(1) if m else None


_CASCADE = (_fenced_digits, _answer_body, _after_answer, _digits_before_close, _digits_word)


def d1_sudoku_answer(text: str) -> str:
    """The answer string d1's scorer extracts, whitespace removed ("" when none)."""
    for step in _CASCADE:
        found = step(text)
        if found is not None and found.strip():
            return _WHITESPACE.sub("", found)
    return ""


def _fit(answer: str) -> str:
    """Pad with "0" or truncate to 16 characters, as d1 does."""
    return answer[:N_CELLS].ljust(N_CELLS, "0")


def _correct_cells(answer: str, puzzle: str, solution: str) -> tuple[int, int]:
    empties = [i for i in range(N_CELLS) if puzzle[i] == "0"]
    if not answer:
        return 0, len(empties)
    answer = _fit(answer)
    return sum(answer[i] == solution[i] for i in empties), len(empties)


def _grid_field(record: dict, key: str) -> str:
    value = record[key]
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value).zfill(N_CELLS)  # a CSV read as numbers drops leading zeros
    if not isinstance(value, str):
        raise DataError(f"sudoku record field {key!r} is not a string: {value!r}")
    value = value.strip()
    try:
        parse_grid(value)
    except ValueError:
        raise DataError(f"sudoku record field {key!r} is not a 16-digit grid (0-4): {value!r}") from None
    return value


@register_task
class SudokuTask(Task):
    name = "sudoku"
    reward_range = (0.0, 1.0)
    builtin_data = {"test": TEST_SET}
    can_generate = True

    def example_from_record(self, record: dict) -> Example:
        """A d1 CSV row, a lower-case row or a serialised Example (see module doc)."""
        if "question" in record and "ground_truth" in record:
            ex = self.example_from_generation(record)
            meta = {**(record.get("meta") or {}), **ex.meta}
            return Example(ex.question, ex.ground_truth, record.get("solution"), meta)
        keys = ("Puzzle", "Solution") if "Puzzle" in record or "Solution" in record else ("puzzle", "solution")
        for key in keys:
            if key not in record:
                raise DataError(f"sudoku record lacks {key!r}")
        puzzle, solution = _grid_field(record, keys[0]), _grid_field(record, keys[1])
        if "0" in solution or any(p != "0" and p != s for p, s in zip(puzzle, solution)):
            raise DataError(f"sudoku record: solution {solution} does not complete puzzle {puzzle}")
        return sudoku_example(puzzle, solution)

    def example_from_generation(self, item: dict) -> Example:
        """d1 generations item; the puzzle is read from the question as d1 does (ValueError if absent)."""
        question = item["question"]
        puzzle = puzzle_from_question(question)
        truth = item["ground_truth"]
        truth = str(truth).zfill(N_CELLS) if isinstance(truth, int) else truth
        if puzzle is None or not isinstance(truth, str) or len(truth) != N_CELLS:
            raise ValueError("question holds no 16-digit puzzle or ground_truth is not a 16-character string")
        return Example(question=question, ground_truth=truth, meta={"puzzle": puzzle})

    def generate(self, n: int, *, seed: int, exclude: list[Example], **options: Any) -> list[Example]:
        """See :func:`d1.tasks.sudoku_gen.generate_sudoku` (options: ``empty_cells``, ``reasons``, ``trace``)."""
        unknown = sorted(set(options) - {"empty_cells", "reasons", "trace"})
        if unknown:
            raise ConfigError(f"sudoku generator: unknown option(s) {', '.join(unknown)}")
        return generate_sudoku(n, seed=seed, exclude=exclude, **options)

    def user_message(self, example: Example) -> str:
        """d1 training prompt (identical to its eval prompt): system prompt, blank line, question."""
        return SUDOKU_PROMPT + "\n\n" + example.question

    def reward_components(self, completion: str, example: Example) -> dict[str, float]:
        block = last_answer_block(completion)
        # d1 keeps the characters with str.isdigit(); only the first 16 can count.
        answer = "" if block is None else "".join(islice(filter(str.isdigit, block), N_CELLS))
        correct, total = _correct_cells(answer, _puzzle(example), example.ground_truth)
        return {"sudoku": correct / total if answer and total else 0.0}

    def score(self, completion: str, example: Example) -> Score:
        answer = d1_sudoku_answer(completion)
        correct, total = _correct_cells(answer, _puzzle(example), example.ground_truth)
        return Score(correct=correct, total=total, extracted=_fit(answer) if answer else "")


def _puzzle(example: Example) -> str:
    puzzle = example_puzzle(example)
    if puzzle is None:
        raise ValueError("sudoku example without a puzzle")
    return puzzle
