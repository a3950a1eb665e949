"""MATH500 task: records, prompts, reward components, the d1 eval protocol."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

import d1
from d1.errors import DataError
from d1.tasks import get_task
from d1.tasks.base import REASONING_FORMAT, Example
from d1.tasks.math500 import eval_answer, format_reward

TASK = get_task("math500")
EX = Example(question="q", ground_truth="\\frac12")
DATA = Path(d1.__file__).parent / "data" / "benchmarks" / "math500" / "test.jsonl"
TAGGED_BOX = "<reasoning>\nhalf\n</reasoning>\n<answer>\n\\boxed{\\dfrac{1}{2}}\n</answer>"


def comps(text, example=EX):
    return TASK.reward_components(text, example)


def test_example_from_shipped_record():
    row = json.loads(DATA.open().readline())
    ex = TASK.example_from_record(row)
    assert ex.question == row["problem"] and ex.ground_truth == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert ex.solution.startswith("<reasoning>\nWe have that $r = ")
    assert ex.solution.endswith("</reasoning>\n<answer>\n\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}\n</answer>")
    assert ex.meta["unique_id"] == "test/precalculus/807.json"
    assert TASK.reward(ex.solution, ex).total == 3.0  # the SFT target earns full reward


def test_answer_taken_from_solution_when_absent():
    ex = TASK.example_from_record({"problem": "p", "solution": "so $\\boxed{\\frac{1}{3}}$."})
    assert ex.ground_truth == "\\frac{1}{3}"
    with pytest.raises(DataError):
        TASK.example_from_record({"problem": "p", "solution": "no box"})
    with pytest.raises(DataError):
        TASK.example_from_record({"solution": "\\boxed{1}"})


def test_prompts():
    assert TASK.user_message(EX) == (
        REASONING_FORMAT + "\n\nYou are a math expert. You will be given a question to solve. "
        "Solve it step by step. Wrap the final answer in a \\boxed{}. \n\nq"
    )
    ev = TASK.eval_user_message(EX)
    assert ev.startswith("You are a math expert.") and ev.endswith('\\boxed{...}\n</answer>" \n\n\nq')


# --- training reward ------------------------------------------------------------------------


def test_full_marks():
    assert comps(TAGGED_BOX) == {"correctness": 2.0, "format": 1.0}
    assert TASK.reward(TAGGED_BOX, EX).total == 3.0 == TASK.reward_range[1]


def test_boxed_bonus_fires():
    # d1 tested "\boxed" (a backspace) so this was always 0.5 x (1 + 0.5) = 0.75
    assert format_reward("<answer>\\boxed{1}</answer>") == 1.0


@pytest.mark.parametrize(
    "text, fmt, correct",
    [
        ("<answer>\n1/2\n</answer>", 0.75, 0.0),  # tags, no box: right value but no box
        ("so \\boxed{0.5}", 0.5, 2.0),  # box, no tags
        ("the answer is one half", 0.25, 0.0),  # neither
        ("<answer>\n\\boxed{1/2}", 0.5, 2.0),  # unclosed block: no tags credit
        ("\\boxed{2} <answer>\n3\n</answer>", 0.75, 0.0),  # box outside the block
        ("<answer>\\boxed{3}</answer> \\boxed{\\frac{1}{2}}", 1.0, 2.0),  # last box anywhere is graded
        ("<answer>\\boxed{\\frac{1}{2}</answer>", 1.0, 0.0),  # unbalanced braces: no box content
        ("<answer>\\boxed{\\frac{1}{3}}</answer>", 1.0, 0.0),
    ],
)
def test_components(text, fmt, correct):
    assert comps(text) == {"correctness": correct, "format": fmt}


def test_reward_minimum():
    assert TASK.reward("", EX).total == 0.25  # format floor: 0.5 x (0 + 0.5)
    assert TASK.reward_range == (0.0, 3.0)


# --- evaluation score --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, answer",
    [
        ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # last box
        ("\\fbox{7}", "7"),
        ("\\boxed{\\frac{1}{2}<answer> 3 </answer>", "3"),  # unclosed box: answer block
        ("\\boxed{ } <answer> 3 </answer>", "3"),  # empty box: answer block
        ("<answer>\n\\frac{1}{4}\n</answer>", None),  # no box at all: no answer (published protocol)
        ("nothing", None),
    ],
)
def test_eval_answer(text, answer):
    assert eval_answer(text) == answer


def test_score():
    s = TASK.score("<reasoning>\nr\n</reasoning>\n<answer>\n\\boxed{0.5}\n</answer><|eot_id|>", EX)
    assert (s.correct, s.total, s.extracted) == (1, 1, "0.5")
    assert TASK.score("\\boxed{3}", EX).correct == 0
    assert TASK.score("\\boxed{5}", Example("q", 5)).correct == 0  # non-string truth: never equal
    ex = TASK.example_from_generation({"question": "q", "generations": "", "ground_truth": "6"})
    assert ex.ground_truth == "6" and TASK.score("\\boxed{6}", ex).correct == 1


ADVERSARIAL = [
    "\\boxed{" * 14_000, "{" * 100_000, "\\boxed{" + "{" * 49_000 + "}" * 49_000 + "}", "\\fbox{" * 16_000,
    "<answer>" * 12_500, "\\boxed " * 14_000, "\\boxed{" + "\\frac" * 19_000 + "}", "\\sqrt" * 20_000,
    "\\boxed{" + "/" * 99_000 + "}", "\\boxed{" + "=" * 99_000 + "}", "\\text{ " * 14_000,
    "<answer>\\boxed{" + "\\text{ " * 13_000 + "}</answer>",
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_inputs_fast_and_in_range(text):
    t0 = time.thread_time()
    r = TASK.reward(text, EX)
    s = TASK.score(text, EX)
    assert time.thread_time() - t0 < 0.1  # both calls
    assert math.isfinite(r.total) and TASK.reward_range[0] <= r.total <= TASK.reward_range[1]
    assert s.correct in (0, 1) and s.total == 1
