"""GSM8K task: records, prompts, every reward component, the d1 eval protocol."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

import d1
from d1.errors import DataError
from d1.tasks import get_task
from d1.tasks.base import REASONING_FORMAT, Example
from d1.tasks.gsm8k import boxed_same_line, eval_answer, soft_format_ok, strict_format_ok, xml_count

TASK = get_task("gsm8k")
EX = Example(question="q", ground_truth=72.0)
PERFECT = "<reasoning>\nStep one.\nStep two.\n</reasoning>\n<answer>\n72\n</answer>\n"
DATA = Path(d1.__file__).parent / "data" / "benchmarks" / "gsm8k"


def comps(text, example=EX):
    return TASK.reward_components(text, example)


# --- records and prompts --------------------------------------------------------


def test_example_from_shipped_record():
    row = json.loads((DATA / "test.jsonl").open().readline())
    ex = TASK.example_from_record(row)
    assert ex.ground_truth == 18.0 and ex.meta == {"answer_text": "18"}
    assert ex.solution.startswith("<reasoning>\nJanet sells 16 - 3 - 4 = 9 duck eggs a day.")
    assert "<<" not in ex.solution and "####" not in ex.solution
    assert ex.solution.endswith("</reasoning>\n<answer>\n18\n</answer>")
    # the SFT target earns full reward
    assert TASK.reward(ex.solution, ex).total == 4.0


def test_example_with_thousands_comma():
    ex = TASK.example_from_record({"question": "q", "answer": "a <<2*540=1080>>1080\n#### 1,080"})
    assert ex.ground_truth == 1080.0 and ex.meta["answer_text"] == "1,080"
    assert ex.solution == "<reasoning>\na 1080\n</reasoning>\n<answer>\n1080\n</answer>"


@pytest.mark.parametrize(
    "record", [{"answer": "#### 1"}, {"question": "q"}, {"question": "q", "answer": "no marker"},
               {"question": "q", "answer": "#### many"}],
)
def test_bad_records(record):
    with pytest.raises(DataError):
        TASK.example_from_record(record)


def test_prompts():
    assert TASK.user_message(EX) == REASONING_FORMAT + "\n\nq"
    ev = TASK.eval_user_message(EX)
    assert ev.startswith("You are a math expert.") and ev.endswith("\\boxed{...}\n</answer>\n\nq")
    assert "Wrap the final answer in a \\boxed{}. \n" in ev


# --- training reward --------------------------------------------------------------


def test_full_marks():
    assert comps(PERFECT) == {"xmlcount": 0.5, "soft_format": 0.5, "strict_format": 0.5,
                              "int": 0.5, "correctness": 2.0}
    assert TASK.reward(PERFECT, EX).total == 4.0 == TASK.reward_range[1]


def test_no_trailing_newline_is_still_full_marks():
    # d1: strict failed and xmlcount lost 0.001 x the whole length (defect)
    assert TASK.reward(PERFECT.rstrip("\n"), EX).total == 4.0


def test_trailing_text_penalised_on_both_answer_tags():
    c = comps(PERFECT + "0123456789")
    assert c["xmlcount"] == pytest.approx(0.5 - 2 * 0.010)
    assert c["strict_format"] == 0.0 and c["soft_format"] == 0.5


def test_xmlcount_is_floored_at_zero_per_term():
    assert xml_count(PERFECT + "x" * 10_000) == pytest.approx(0.25)  # reasoning tags only


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<reasoning>\nr\n</reasoning>\n<answer>\n72\n</answer>", 0.5),
        ("r\n</reasoning>\n<answer>\n72\n</answer>", 0.375),  # no opening reasoning tag
        ("<reasoning>\nr\n<answer>\n72\n</answer>", 0.375),  # no closing reasoning tag
        ("<answer>\n72\n</answer>", 0.125),  # opening tags not on their own lines
        ("<reasoning>\nr\n</reasoning>\n<answer>\n72", 0.375),  # unclosed answer: no penalty
        ("<reasoning>\n<reasoning>\n</reasoning>\n<answer>\n7\n</answer>", 0.375),  # duplicate
        ("", 0.0),
    ],
)
def test_xmlcount(text, expected):
    assert xml_count(text) == pytest.approx(expected)


def test_multiline_soft_format_counts():
    # d1's re.match without DOTALL scored 0 here (defect)
    text = "<reasoning>\nline 1\nline 2\n</reasoning>\n\n<answer>\n72\n</answer>"
    assert soft_format_ok(text)
    assert strict_format_ok(text.replace("\n\n<answer>", "\n<answer>"))
    assert not re.match(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", text)


def test_single_line_soft_format_only():
    c = comps("<reasoning>think</reasoning> <answer>72</answer>")
    assert c == {"xmlcount": 0.0, "soft_format": 0.5, "strict_format": 0.0, "int": 0.5, "correctness": 2.0}


def test_soft_format_must_start_at_reasoning():
    assert not soft_format_ok(" <reasoning>r</reasoning><answer>1</answer>")
    assert not soft_format_ok("<reasoning>r</reasoning>x<answer>1</answer>")
    assert soft_format_ok("<reasoning>r</reasoning>x</reasoning>\t<answer>1</answer>")


@pytest.mark.parametrize(
    "answer, truth, int_r, correct",
    [
        ("72", 72.0, 0.5, 2.0),
        ("71", 72.0, 0.5, 0.0),
        ("72.0", 72.0, 0.0, 2.0),  # d1 string compare: 0
        ("1,080", 1080.0, 0.0, 2.0),
        ("1080", "1,080", 0.5, 2.0),  # d1 string compare against "1,080": 0
        ("-5", -5.0, 0.0, 2.0),
        ("72 dollars", 72.0, 0.0, 0.0),
        ("$72", 72.0, 0.0, 0.0),
        ("²", 2.0, 0.0, 0.0),  # str.isdigit() would accept it
        ("", 72.0, 0.0, 0.0),
        ("9" * 400, 72.0, 0.5, 0.0),
    ],
)
def test_int_and_correctness(answer, truth, int_r, correct):
    c = comps(f"<reasoning>\nr\n</reasoning>\n<answer>\n{answer}\n</answer>", Example("q", truth))
    assert (c["int"], c["correctness"]) == (int_r, correct)


def test_no_tags_reads_the_whole_text_as_d1():
    assert comps("72") == {"xmlcount": 0.0, "soft_format": 0.0, "strict_format": 0.0,
                           "int": 0.5, "correctness": 2.0}


def test_last_answer_block_is_graded():
    c = comps("<answer>\n5\n</answer> then <answer>\n72\n</answer>")
    assert c["correctness"] == 2.0


# --- evaluation score ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [
        ("<answer>\n\\boxed{18}<|eot_id|><|endoftext|>", 18.0),
        ("\\boxed{...} \\boxed{x} \\boxed{18} \\boxed{20}", 18.0),  # first box with a number
        ("\\boxed{\\$18.50 each}", 18.5),  # first number inside
        ("\\boxed{\\frac{1}{2}}", 1.0),  # content stops at the first "}" (d1)
        ("\\boxed{1\n8}<answer>\nso 3, then 18\n</answer>", 18.0),  # box may not span lines
        ("<answer>\nSo 3 then -18.\n</answer>", -18.0),  # last number of the answer block
        ("<answer>\n1e3\n</answer>", 1000.0),  # whole block as a float first
        ("<answer>1</answer><answer>2</answer>", 1.0),  # first block
        ("\\boxed{nan}<answer>7</answer>", 7.0),  # non-finite is no number
        ("\\boxed{1e999}", 1.0),  # inf -> first number inside
        ("no answer 18", None),
        ("<answer>\n\n</answer>", None),
    ],
)
def test_eval_answer(text, value):
    assert eval_answer(text) == value


def test_score():
    assert TASK.score("\\boxed{72}", EX).correct == 1
    assert TASK.score("\\boxed{72.0}", Example("q", "72")).correct == 1
    s = TASK.score("<answer>71</answer>", EX)
    assert (s.correct, s.total, s.extracted) == (0, 1, 71.0)
    assert TASK.score("nothing", EX).extracted is None


@given(st.lists(st.sampled_from(["\\boxed{", "}", "{", "\n", "a", "1", "\\boxed"]), max_size=30).map("".join))
def test_boxed_same_line_agrees_with_the_regex(text):
    assert list(boxed_same_line(text)) == re.findall(r"\\boxed{(.*?)}", text)


_TAGS = ["<reasoning>", "</reasoning>", "<answer>", "</answer>", "\n", " ", "x"]


@given(st.lists(st.sampled_from(_TAGS), max_size=14).map("".join))
def test_format_checks_agree_with_dotall_regexes(text):
    soft = re.match(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", text, re.DOTALL)
    strict = re.fullmatch(r"<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n?", text, re.DOTALL)
    assert soft_format_ok(text) == bool(soft)
    assert strict_format_ok(text) == bool(strict)


ADVERSARIAL = [
    "<answer>" * 12_500, "\\boxed{" * 14_000, "{" * 100_000, "9" * 100_000, "\\boxed{" + "9" * 99_990 + "}",
    "</reasoning> " * 7_500, "<reasoning>" + "</reasoning>\n" * 7_500, "\n</answer>" * 10_000,
    "\\boxed{\n" * 12_000, "<answer>" + "1." * 49_000 + "</answer>", "1e999 " * 16_000, "**" * 50_000,
    "<reasoning>\n" + "\n</reasoning>\n<answer>\n" * 4_000, "__import__('os')" * 6_000,
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_inputs_fast_and_in_range(text):
    t0 = time.thread_time()
    r = TASK.reward(text, EX)
    s = TASK.score(text, EX)
    assert time.thread_time() - t0 < 0.1  # both calls
    assert math.isfinite(r.total) and TASK.reward_range[0] <= r.total <= TASK.reward_range[1]
    assert s.correct in (0, 1) and s.total == 1
