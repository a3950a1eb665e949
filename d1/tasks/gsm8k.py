"""GSM8K: grade-school math word problems with a numeric answer.

Records: GSM8K jsonl rows ``{"question", "answer"}`` where ``answer`` is a
rationale with ``<<expr=value>>`` calculator annotations, ending ``#### N``.
``Example.ground_truth`` is N as a float (commas removed), the shape d1's
generations files store (e.g. ``18.0``).

Training reward (d1 ``reward_func.py``, total in [0, 4]):

==============  =====  =====================================================
component       max    rule
==============  =====  =====================================================
xmlcount        0.5    0.125 per format tag present exactly once, minus
                       0.001 per character after ``\\n</answer>`` on each of
                       the two answer-tag terms; each term floored at 0.
soft_format     0.5    ``<reasoning>…</reasoning>\\s*<answer>…</answer>`` at
                       the start; any content, newlines included.
strict_format   0.5    exactly ``<reasoning>\\n…\\n</reasoning>\\n<answer>\\n…
                       \\n</answer>`` (+ optional final newline), multi-line.
int             0.5    the ``<answer>`` text is a non-empty run of ASCII digits.
correctness     2.0    the ``<answer>`` text is a number equal to the truth.
==============  =====  =====================================================

Deliberate differences from the d1 code (defects there):

* soft/strict format: d1 used ``re.match`` without DOTALL, so ``.`` never
  crossed a newline and any multi-line reasoning failed both checks.
* strict format: the final newline is optional (decoding stops at EOS, so
  completions usually end right at ``</answer>``).
* xmlcount: d1 subtracted ``0.001 * len(text after "\\n</answer>\\n")`` for
  the opening tag; when that exact closing sequence is absent this is the
  *whole* completion, so a well-formed answer without a trailing newline could
  score far below zero. Here the penalty counts only what follows the
  closing tag (one separating newline excused) and each term is floored at 0,
  giving the documented range [0, 0.5].
* correctness: d1 compared strings, so "1080" vs the truth "1,080" or "72.0"
  vs "72" failed. Here the answer must be a plain number (optional sign,
  thousands commas, decimals) whose value equals the truth.
* int: ASCII digits only (``str.isdigit`` also accepts "²").

Evaluation score: the d1 protocol (``eval/parse_and_get_acc.py``): the first
``\\boxed{…}`` (content up to the first ``}`` on that line) holding a number
wins, its value being the whole content as a float or else its first number;
otherwise the last number of the first ``<answer>…</answer>`` block (or the
whole block as a float). Equal to the truth as floats -> correct. Non-finite
values (``inf``, ``nan``, 400-digit numbers) count as no number.
"""

from __future__ import annotations

import math
import re

from d1.errors import DataError
from d1.tasks.base import REASONING_FORMAT, Example, Score, Task
from d1.tasks.formats import extract_xml_answer, first_answer_block
from d1.tasks.registry import register_task

# d1 eval/gsm8k.py system prompt (the trailing space after "\boxed{}." is d1's).
GSM_EVAL_PROMPT = (
    "You are a math expert. You will be given a question to solve. Solve it step by step. "
    "Wrap the final answer in a \\boxed{}. \n"
    "Respond in the following format:\n"
    "<reasoning>\n"
    "Your reasoning here\n"
    "</reasoning>\n"
    "<answer>\n"
    "\\boxed{...}\n"
    "</answer>"
)

_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
# d1's number pattern; \d is Unicode-aware, as in d1. Linear: no nested repeats.
_LOOSE_NUMBER = re.compile(r"-?\d+\.?\d*")
# A whole answer that is a plain number: "72", "-3.5", "1,080", "+12".
_PLAIN_NUMBER = re.compile(r"[-+]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?")
_MAX_NUMBER_CHARS = 64  # longer "numbers" are never a GSM8K answer; skip the work


def _finite_float(text: str) -> float | None:
    """``float(text)`` when that succeeds and is finite, else None."""
    try:
        value = float(text)
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _truth_value(ground_truth) -> float | None:
    if isinstance(ground_truth, str):
        ground_truth = ground_truth.replace(",", "").strip()
    try:
        value = float(ground_truth)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def plain_number_value(text: str) -> float | None:
    """Value of ``text`` if it is exactly one plain number (see _PLAIN_NUMBER)."""
    text = text.strip()
    if len(text) > _MAX_NUMBER_CHARS or not _PLAIN_NUMBER.fullmatch(text):
        return None
    return _finite_float(text.replace(",", ""))


def boxed_same_line(text: str):
    """Yield what ``re.findall(r"\\\\boxed{(.*?)}", text)`` yields (content up to
    the first ``}``, not crossing a newline; matches do not overlap), in linear
    time: the next ``}`` and next newline are cached between attempts, so each
    character is scanned at most once per kind."""
    opener = "\\boxed{"
    end = len(text)
    pos, next_close, next_newline = 0, -1, -1
    while True:
        start = text.find(opener, pos)
        if start < 0:
            return
        body = start + len(opener)
        if next_close < body:
            next_close = text.find("}", body)
            if next_close < 0:
                return
        if next_newline < body:
            found = text.find("\n", body)
            next_newline = end if found < 0 else found
        if next_close < next_newline:
            yield text[body:next_close]
            pos = next_close + 1
        else:
            pos = start + 1


def _number_in(text: str, last: bool) -> float | None:
    """The whole text as a float, else its first (or last) d1-style number."""
    value = _finite_float(text)
    if value is not None:
        return value
    if last:
        match = None
        for match in _LOOSE_NUMBER.finditer(text):
            pass
    else:
        match = _LOOSE_NUMBER.search(text)
    return _finite_float(match.group()) if match else None


def eval_answer(completion: str) -> float | None:
    """The number the d1 GSM8K evaluation reads from a completion (module doc)."""
    for content in boxed_same_line(completion):
        content = content.strip()
        if not content or content.strip(".") == "":  # "", "...": template echoes
            continue
        value = _number_in(content, last=False)
        if value is not None:
            return value
    block = first_answer_block(completion)
    return _number_in(block, last=True) if block else None


# --- training-format checks -----------------------------------------------------


def _after_closing_answer(text: str) -> int | None:
    """Characters after the last ``\\n</answer>`` (a single newline right after
    it is part of the format); None when there is no such tag."""
    idx = text.rfind("\n</answer>")
    if idx < 0:
        return None
    tail = len(text) - idx - len("\n</answer>")
    return tail - 1 if text.startswith("\n", idx + len("\n</answer>")) else tail


def xml_count(text: str) -> float:
    """d1 ``count_xml`` with the penalty fixed (module doc); in [0, 0.5]."""
    trailing = _after_closing_answer(text) or 0
    penalised_tag = max(0.0, 0.125 - 0.001 * trailing)
    score = 0.0
    if text.count("<reasoning>\n") == 1:
        score += 0.125
    if text.count("\n</reasoning>\n") == 1:
        score += 0.125
    if text.count("\n<answer>\n") == 1:
        score += penalised_tag
    if text.count("\n</answer>") == 1:
        score += penalised_tag
    return score


def soft_format_ok(text: str) -> bool:
    """``re.match(r"<reasoning>.*?</reasoning>\\s*<answer>.*?</answer>", text, re.DOTALL)``
    in linear time: the earliest ``</reasoning>`` followed by optional
    whitespace and ``<answer>`` is the best split, then a ``</answer>`` must follow."""
    if not text.startswith("<reasoning>"):
        return False
    pos = len("<reasoning>")
    while True:
        close = text.find("</reasoning>", pos)
        if close < 0:
            return False
        i = close + len("</reasoning>")
        while i < len(text) and text[i].isspace():  # disjoint spans: linear overall
            i += 1
        if text.startswith("<answer>", i):
            return text.find("</answer>", i + len("<answer>")) >= 0
        pos = close + 1


def strict_format_ok(text: str) -> bool:
    """``<reasoning>\\n R \\n</reasoning>\\n<answer>\\n A \\n</answer>`` + optional
    ``\\n`` and nothing else; R and A may span lines (and be empty)."""
    body = text[:-1] if text.endswith("\n") else text
    head = "<reasoning>\n"
    middle = "\n</reasoning>\n<answer>\n"
    tail = "\n</answer>"
    if not (body.startswith(head) and body.endswith(tail)):
        return False
    split = body.find(middle, len(head))
    return split >= 0 and split + len(middle) <= len(body) - len(tail)


@register_task
class GSM8KTask(Task):
    name = "gsm8k"
    reward_range = (0.0, 4.0)
    builtin_data = {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"}

    def example_from_record(self, record: dict) -> Example:
        """GSM8K row -> Example; DataError if a field or the ``####`` line is missing."""
        for key in ("question", "answer"):
            if not isinstance(record.get(key), str):
                raise DataError(f"gsm8k record lacks a string {key!r}")
        rationale, sep, answer_text = record["answer"].rpartition("####")
        answer_text = answer_text.strip()
        truth = _truth_value(answer_text)
        if not sep or truth is None:
            raise DataError("gsm8k record's 'answer' does not end with '#### <number>'")
        reasoning = _CALCULATOR_NOTE.sub("", rationale).strip()
        # The SFT answer is the number without thousands commas, as the int
        # reward (digits only) and the correctness parser expect.
        answer = answer_text.replace(",", "")
        solution = f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>"
        return Example(
            question=record["question"],
            ground_truth=truth,
            solution=solution,
            meta={"answer_text": answer_text},
        )

    def user_message(self, example: Example) -> str:
        # d1 data_utils.get_gsm8k_questions
        return REASONING_FORMAT + "\n\n" + example.question

    def eval_user_message(self, example: Example) -> str:
        # d1 eval/gsm8k.py (zero-shot); d1 then opens the reply with "<reasoning>".
        return GSM_EVAL_PROMPT + "\n\n" + example.question

    def reward_components(self, completion: str, example: Example) -> dict[str, float]:
        answer = extract_xml_answer(completion)
        truth = _truth_value(example.ground_truth)
        value = plain_number_value(answer)
        correct = value is not None and truth is not None and value == truth
        return {
            "xmlcount": xml_count(completion),
            "soft_format": 0.5 if soft_format_ok(completion) else 0.0,
            "strict_format": 0.5 if strict_format_ok(completion) else 0.0,
            "int": 0.5 if answer.isascii() and answer.isdigit() else 0.0,
            "correctness": 2.0 if correct else 0.0,
        }

    def score(self, completion: str, example: Example) -> Score:
        value = eval_answer(completion)
        truth = _truth_value(example.ground_truth)
        correct = value is not None and truth is not None and value == truth
        return Score(correct=int(correct), total=1, extracted=value)
