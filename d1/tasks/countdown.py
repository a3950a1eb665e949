"""Countdown: combine the given numbers with ``+ - * /`` to reach a target.

Records (``example_from_record``):

* the d1 cd3 test set: ``{"input": "30,100,93", "output": "23"}``;
* generated or Hub training rows: ``{"numbers" (or "nums"): [...], "target": N}``
  with an optional ``"solution"`` (the SFT target);
* our own serialised Examples: ``{"question", "ground_truth", ...}``.

``Example.question`` is what d1's eval files store (``"Numbers: [49, 55, 53]\\nTarget: 51"``)
and ``ground_truth`` is ``[[numbers], target]``.

Training reward (d1 ``reward_func.compute_score``, range [0, 1]): the equation
is the last ``<answer>...</answer>`` block, stripped. No block: 0. A block whose
numbers (every digit run) are not exactly the given numbers, or that does not
evaluate, or misses the target by 1e-5 or more: 0.1. Otherwise 1.0.

Evaluation score (d1 ``eval/parse_and_get_acc.parse_countdown_answers``), kept
quirk for quirk because it produced the published baseline numbers:

1. The equation is taken as d1's ``remove_boxed(last_boxed_only_string(text))``
   behaves: if ``"\\boxed "`` (with a space) occurs, the text after its last
   occurrence up to the first ``$``; else the last ``\\boxed{...}`` (or, if
   there is no ``\\boxed``, the last ``\\fbox{...}``, kept with its wrapper) with
   balanced braces; if that never closes, the first ``<answer>`` block, else
   the whole text. With neither ``\\boxed`` nor ``\\fbox`` it is the whole text.
2. ``\\div`` -> ``/``, ``\\times`` and ``\\cdot`` -> ``*``.
3. If some run of ``[0-9+-*/() ]`` is followed by ``=`` and a digit, dot or
   space, the equation becomes the first such run (strips ``"= 51"``).
4. Correct iff its digit runs are exactly the given numbers (as a multiset)
   and its value is within 1e-5 of the target.

Deliberate difference from d1 (a defect there): d1 computes the value with
Python ``eval`` (reward and score). Here :mod:`d1.tasks.arith` parses and
evaluates it exactly (``+ - * /``, parentheses, unary signs, decimals), bounded
in size and time. Consequences, none of which occurs in the published baseline
generations (every item scores as d1 scored it): ``**`` and ``//`` are not
operators; integers with leading zeros (``049``) and line breaks between
tokens are accepted where ``eval`` raised SyntaxError; values are exact
fractions, not floats. Every step is linear-time: d1's regexes (quadratic on
some inputs) were replaced by scans with the same result.
"""

from __future__ import annotations

import re
from fractions import Fraction
from itertools import accumulate
from typing import Any

from d1.errors import ConfigError, DataError
from d1.tasks.arith import latex_operators_to_ascii, safe_evaluate
from d1.tasks.base import REASONING_FORMAT, Example, Score, Task
from d1.tasks.countdown_gen import TEST_SET, countdown_example, generate_countdown
from d1.tasks.formats import first_answer_block, last_answer_block
from d1.tasks.registry import register_task

# d1 eval/countdown.py system prompt, verbatim (note the missing space before "Respond").
CTD_EVAL_PROMPT = (
    "Using only the provided numbers, create an arithmetic expression that evaluates to exactly the "
    "provided target number. You may use the operations +, -, *, and / as needed, but each number must "
    "be used exactly once. Think step-by-step. After reasoning, provide only your final expression inside "
    "\\boxed{} tags without including an equals sign or the target number. For example: \\boxed{a + b * c}"
    "Respond in the following format:\n<reasoning>\nYour reasoning here\n</reasoning>\n<answer>\n"
    "\\boxed{...}\n</answer>"
)

TOLERANCE = Fraction(1, 10**5)  # d1: abs(result - target) < 1e-5
FORMAT_SCORE, FULL_SCORE = 0.1, 1.0
# CPython refuses int() of more than 4300 digits; d1's validate_equation then returns False.
_INT_MAX_DIGITS = 4300
_DIGIT_RUN = re.compile(r"\d+")  # Unicode digits, as d1's regex
_EQ_SIGN = re.compile(r"(?<=[0-9+\-*/() ])=[0-9. ]")
_EQ_RUN = re.compile(r"[0-9+\-*/() ]*")
_NON_BRACE = re.compile(r"[^{}]+")
_BRACE_STEP = {"{": 1, "}": -1}
_QUESTION_NUMBERS = re.compile(r"Numbers: \[([\d, ]+)\]", re.IGNORECASE)
_QUESTION_TARGET = re.compile(r"Target: (\d+)", re.IGNORECASE)


def training_prompt(numbers: list[int], target: int) -> str:
    """d1 ``data_utils.get_countdown_questions`` user message."""
    return (
        f"{REASONING_FORMAT}\nUsing only the numbers {list(numbers)}, create an arithmetic expression that "
        f"evaluates to exactly {target}. You must use all numbers from the list, and each number must be used "
        "exactly once. You may use the operations +, -, *, and / as needed. After reasoning, provide only your "
        "final expression inside <answer></answer> tags without including an equals sign or the target number. "
        "For example, if the numbers are [2, 3, 4] and the target is 5, a valid answer is: <answer>\n2*4-3\n</answer>"
    )


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the first ``}`` after ``start`` that brings the brace depth (counted
    from 0 at ``start``, as d1 does) from 1 back to 0; None if there is none.

    Before the depth first reaches 1 no ``}`` can take it from 1 to 0; after that,
    the first return to 0 is such a ``}``. Both are found on the running depth with
    C-level list searches, so 100 kB of braces stays fast.
    """
    braces = _NON_BRACE.sub("", text[start:])
    depth = list(accumulate(map(_BRACE_STEP.__getitem__, braces)))
    try:
        close = depth.index(0, depth.index(1) + 1)
    except ValueError:
        return None
    # Up to that brace there are as many "{" as "}": it is the ((close + 1) // 2)-th "}".
    rest = text[start:].split("}", (close + 1) // 2)[-1]
    return len(text) - len(rest) - 1


def d1_equation(text: str) -> str:
    """Step 1 of the score (see module doc): what d1's boxed helpers return."""
    _, sep, tail = text.rpartition("\\boxed ")
    if sep:
        return tail.split("$", 1)[0]
    idx = text.rfind("\\boxed")
    if idx < 0:
        idx = text.rfind("\\fbox")
        if idx < 0:
            return text
    end = _closing_brace(text, idx)
    if end is None:  # d1: remove_boxed(None) raises, caught -> answer tags
        block = first_answer_block(text)
        return text if block is None else block
    boxed = text[idx : end + 1]
    return boxed[len("\\boxed{") : -1] if boxed.startswith("\\boxed{") else boxed


def strip_equals(equation: str) -> str:
    """Step 3: the first ``[0-9+-*/() ]`` run followed by ``=`` and ``[0-9. ]``, stripped
    (d1's ``re.search(r"([0-9+\\-*/() ]+)=[0-9. ]+")``), else ``equation`` unchanged."""
    m = _EQ_SIGN.search(equation)
    if m is None:
        return equation
    end = m.start()
    length = _EQ_RUN.match(equation[:end][::-1]).end()  # the run ending at "=", read backwards
    return equation[end - length : end].strip()


def uses_each_number_once(equation: str, numbers: list[int]) -> bool:
    """d1's ``validate_equation``: the digit runs of ``equation`` are exactly ``numbers``."""
    found = []
    for m in _DIGIT_RUN.finditer(equation):
        if len(found) == len(numbers) or len(m.group()) > _INT_MAX_DIGITS:
            return False
        found.append(int(m.group()))
    return sorted(found) == sorted(numbers)


def hits_target(equation: str, target: int) -> bool:
    value = safe_evaluate(equation)
    return value is not None and abs(value - target) < TOLERANCE


def _as_int(value: Any, what: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise DataError(f"countdown record: {what} is not an integer: {value!r}") from None


def _puzzle(example: Example) -> tuple[list[int], int]:
    numbers, target = example.ground_truth
    return list(numbers), target


@register_task
class CountdownTask(Task):
    name = "countdown"
    reward_range = (0.0, 1.0)
    builtin_data = {"test": TEST_SET}
    can_generate = True

    def example_from_record(self, record: dict) -> Example:
        """A test-set row, a generated/Hub row or a serialised Example (see module doc)."""
        if "input" in record or "output" in record:
            for key in ("input", "output"):
                if key not in record:
                    raise DataError(f"countdown record lacks {key!r}")
            numbers = [_as_int(x, "input") for x in str(record["input"]).split(",")]
            return countdown_example(numbers, _as_int(record["output"], "output"))
        if "question" in record and "ground_truth" in record:
            ex = self.example_from_generation(record)
            return Example(ex.question, ex.ground_truth, record.get("solution"), dict(record.get("meta") or {}))
        numbers = record.get("numbers", record.get("nums"))
        if not isinstance(numbers, (list, tuple)) or "target" not in record:
            raise DataError("countdown record lacks 'input'/'output', 'numbers'/'target' or 'question'/'ground_truth'")
        numbers = [_as_int(x, "numbers") for x in numbers]
        return countdown_example(numbers, _as_int(record["target"], "target"), record.get("solution"))

    def example_from_generation(self, item: dict) -> Example:
        """d1 generations item; the puzzle comes from ``ground_truth`` ([[numbers], target])
        or, as d1 falls back, from the question text. ValueError if neither has it."""
        question = item["question"]
        truth = item.get("ground_truth")
        if isinstance(truth, (list, tuple)) and len(truth) == 2 and isinstance(truth[0], (list, tuple)):
            numbers, target = [int(x) for x in truth[0]], int(truth[1])
        else:
            nm, tm = _QUESTION_NUMBERS.search(question), _QUESTION_TARGET.search(question)
            if nm is None or tm is None:
                raise ValueError("no [[numbers], target] ground truth and no 'Numbers:/Target:' in the question")
            numbers, target = [int(x) for x in nm.group(1).split(",")], int(tm.group(1))
        return Example(question=question, ground_truth=[numbers, target])

    def generate(self, n: int, *, seed: int, exclude: list[Example], **options: Any) -> list[Example]:
        """See :func:`d1.tasks.countdown_gen.generate_countdown` (options: ``num_numbers``,
        ``number_range``, ``target_range``, ``max_misses_per_target``, ``trace``, ``targets``)."""
        unknown = sorted(set(options) - {"num_numbers", "number_range", "target_range", "max_misses_per_target",
                                         "trace", "targets"})
        if unknown:
            raise ConfigError(f"countdown generator: unknown option(s) {', '.join(unknown)}")
        return generate_countdown(n, seed=seed, exclude=exclude, **options)

    def user_message(self, example: Example) -> str:
        return training_prompt(*_puzzle(example))

    def eval_user_message(self, example: Example) -> str:
        """d1 eval: system prompt, blank line, question (the eval adds "<reasoning>" after the chat template)."""
        return CTD_EVAL_PROMPT + "\n\n" + example.question

    def reward_components(self, completion: str, example: Example) -> dict[str, float]:
        numbers, target = _puzzle(example)
        equation = last_answer_block(completion)
        if equation is None:
            value = 0.0
        elif uses_each_number_once(equation, numbers) and hits_target(equation, target):
            value = FULL_SCORE
        else:
            value = FORMAT_SCORE
        return {"countdown": value}

    def score(self, completion: str, example: Example) -> Score:
        numbers, target = _puzzle(example)
        equation = strip_equals(latex_operators_to_ascii(d1_equation(completion)))
        correct = uses_each_number_once(equation, numbers) and hits_target(equation, target)
        return Score(correct=int(correct), total=1, extracted=equation)

    def score_training_format(self, completion: str, example: Example) -> Score:
        """The equation of the last ``<answer>`` block (d1's score reads a ``\\boxed{}``,
        else the whole text, whose first ``a op b = c`` reasoning line it would take)."""
        numbers, target = _puzzle(example)
        equation = last_answer_block(completion) or ""
        correct = bool(equation) and uses_each_number_once(equation, numbers) and hits_target(equation, target)
        return Score(correct=int(correct), total=1, extracted=equation)
