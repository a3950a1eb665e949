"""Countdown task: records, prompts, the d1 training reward and the d1 evaluation protocol.

Expected values of the reward/score tables were checked against d1's own
``reward_func.compute_score`` and ``parse_and_get_acc.parse_countdown_answers``.
"""

from __future__ import annotations

import json
import time
from importlib import resources

import pytest

from d1.errors import ConfigError, DataError
from d1.scoring import score_files
from d1.tasks import get_task
from d1.tasks.base import REASONING_FORMAT, Example
from d1.tasks.countdown import CTD_EVAL_PROMPT, d1_equation, strip_equals, uses_each_number_once

TASK = get_task("countdown")
EX = TASK.example_from_generation({"question": "Numbers: [49, 55, 53]\nTarget: 51", "ground_truth": [[49, 55, 53], 51]})


def _ex(numbers, target):
    return TASK.example_from_generation({"question": "", "ground_truth": [numbers, target]})


# --- records ----------------------------------------------------------------------------

def test_test_set_rows():
    path = resources.files("d1.data").joinpath("benchmarks", TASK.builtin_data["test"])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    examples = [TASK.example_from_record(r) for r in rows]
    assert len(examples) == 256
    first = examples[0]  # {"input": "30,100,93", "output": "23"}
    assert first.question == "Numbers: [30, 100, 93]\nTarget: 23"
    assert first.ground_truth == [[30, 100, 93], 23]


def test_generated_hub_and_serialised_rows():
    gen = TASK.example_from_record({"numbers": [2, 3, 4], "target": 5, "solution": "S"})
    assert gen.ground_truth == [[2, 3, 4], 5] and gen.solution == "S"
    assert gen.question == "Numbers: [2, 3, 4]\nTarget: 5"
    hub = TASK.example_from_record({"nums": [2, 3, 4], "target": 5})  # Jiayi-Pan/Countdown-Tasks-3to4
    assert hub.ground_truth == [[2, 3, 4], 5] and hub.solution is None
    again = TASK.example_from_record(json.loads(json.dumps(gen.to_record())))
    assert again == gen


@pytest.mark.parametrize(
    "record",
    [{"input": "1,2,3"}, {"input": "1,x,3", "output": "4"}, {"numbers": [1, 2]}, {"foo": 1}, {"nums": 5, "target": 1}],
)
def test_bad_records(record):
    with pytest.raises(DataError):
        TASK.example_from_record(record)


def test_example_from_generation_falls_back_to_the_question():
    ex = TASK.example_from_generation({"question": "Numbers: [49, 55, 53]\nTarget: 51", "ground_truth": None})
    assert ex.ground_truth == [[49, 55, 53], 51]
    with pytest.raises(ValueError):
        TASK.example_from_generation({"question": "what?", "ground_truth": "x"})


# --- prompts ----------------------------------------------------------------------------

def test_prompts_are_d1s():
    train = TASK.user_message(EX)
    assert train.startswith(REASONING_FORMAT + "\nUsing only the numbers [49, 55, 53], create an arithmetic")
    assert "evaluates to exactly 51. You must use all numbers" in train
    assert train.endswith("a valid answer is: <answer>\n2*4-3\n</answer>")
    ev = TASK.eval_user_message(EX)
    assert ev == CTD_EVAL_PROMPT + "\n\nNumbers: [49, 55, 53]\nTarget: 51"
    assert "For example: \\boxed{a + b * c}Respond in the following format:\n<reasoning>" in ev


# --- reward (training) ------------------------------------------------------------------

@pytest.mark.parametrize(
    "completion, numbers, target, reward",
    [
        ("<answer>55 - 53 + 49</answer>", [49, 55, 53], 51, 1.0),
        ("<reasoning>x</reasoning>\n<answer>\n(55 - 53) + 49\n</answer>", [49, 55, 53], 51, 1.0),
        ("<answer>x</answer><answer>55-53+49</answer>", [49, 55, 53], 51, 1.0),  # last block
        ("<answer>55 + 53 + 49</answer>", [49, 55, 53], 51, 0.1),  # wrong value
        ("<answer>55 - 53 + 49 = 51</answer>", [49, 55, 53], 51, 0.1),  # 51 is an extra number
        ("<answer>\\boxed{55 - 53 + 49}</answer>", [49, 55, 53], 51, 0.1),  # not plain arithmetic
        ("<answer>55 - 53</answer>", [49, 55, 53], 51, 0.1),  # a number unused
        ("<answer>4 / (2 - 2)</answer>", [2, 2, 4], 4, 0.1),  # division by zero
        ("<answer>2**3**5</answer>", [2, 3, 5], 4, 0.1),  # ** is not an operator
        ("55 - 53 + 49", [49, 55, 53], 51, 0.0),  # no answer block
        ("<answer>55 - 53 + 49", [49, 55, 53], 51, 0.0),  # unclosed
        ("", [49, 55, 53], 51, 0.0),
    ],
)
def test_reward(completion, numbers, target, reward):
    r = TASK.reward(completion, _ex(numbers, target))
    assert r.total == pytest.approx(reward) and r.components == {"countdown": pytest.approx(reward)}


# --- score (evaluation protocol) --------------------------------------------------------

@pytest.mark.parametrize(
    "completion, numbers, target, correct, extracted",
    [
        ("<answer>\n\\boxed{55 - 53 + 49}\n</answer>", [49, 55, 53], 51, 1, "55 - 53 + 49"),
        # Without \boxed d1 takes the whole text: plain answer tags fail the evaluation...
        ("<answer>55 - 53 + 49</answer>", [49, 55, 53], 51, 0, "<answer>55 - 53 + 49</answer>"),
        # ...but "expr = N" anywhere is cut down to expr.
        ("So 55 - 53 + 49 = 51.", [49, 55, 53], 51, 1, "55 - 53 + 49"),
        ("\\boxed{55 - 53 + 49 = 51}", [49, 55, 53], 51, 1, "55 - 53 + 49"),
        ("\\boxed{3 \\times 4 \\times 5}", [3, 4, 5], 60, 1, "3 * 4 * 5"),
        ("\\boxed{55 \\div 55 + 49}", [49, 55, 55], 50, 1, "55 / 55 + 49"),
        ("\\boxed{8/(3-8/3)}", [8, 3, 8, 3], 24, 1, "8/(3-8/3)"),
        # an unclosed \boxed falls back to the first answer block
        ("<answer>55 - 53 + 49</answer> \\boxed{", [49, 55, 53], 51, 1, "55 - 53 + 49"),
        # "\boxed " (space form) anywhere wins: text after the last one up to "$"
        ("\\boxed{1} then \\boxed 55 - 53 + 49$ done", [49, 55, 53], 51, 1, "55 - 53 + 49"),
        ("\\fbox{55-53+49}", [49, 55, 53], 51, 0, "\\fbox{55-53+49}"),  # kept with its wrapper
        ("\\boxed{55 - 53}", [49, 55, 53], 51, 0, "55 - 53"),
        ("\\boxed{55 - 53 + 49} \\boxed{49 + 55 + 53}", [49, 55, 53], 51, 0, "49 + 55 + 53"),
        ("", [49, 55, 53], 51, 0, ""),
    ],
)
def test_score(completion, numbers, target, correct, extracted):
    s = TASK.score(completion, _ex(numbers, target))
    assert (s.correct, s.total, s.extracted) == (correct, 1, extracted)


def test_helpers():
    assert d1_equation("a \\boxed{x{y}z} b") == "x{y}z"
    assert d1_equation("\\boxed}{1}") == "\\boxed}{1}"  # depth -1, 0 (on "{"), -1: never closes -> whole text
    assert d1_equation("<answer>7</answer>\\boxed}{1}") == "7"
    assert strip_equals("a 1 + 2 = 3 and 4 = 4") == "1 + 2"
    assert strip_equals("x==1") == "x==1"
    assert uses_each_number_once("1 + 2 + 3", [3, 2, 1])
    assert not uses_each_number_once("1 + 2", [1, 2, 3])
    assert not uses_each_number_once("1 + 2 + 3 + 3", [1, 2, 3])
    assert not uses_each_number_once("0" * 5000 + "1 + 2 + 3", [1, 2, 3])  # int() of >4300 digits fails in d1


# --- robustness -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text",
    [
        "\\boxed" + "{" * 99_990,
        "\\boxed{" + "(" * 49_000 + "49+55-53" + ")" * 49_000 + "}",
        "<answer>" + "-" * 99_000 + "49+55+53</answer>",
        "\\boxed " + "9" * 100_000,
        "1=" * 50_000,
        "1" * 99_990 + "=5",
        "49 " * 33_000,
        "}{" * 50_000,
        "<answer>" + "9**" * 33_000 + "9</answer>",
    ],
)
def test_adversarial_outputs_are_fast_and_bounded(text):
    t0 = time.thread_time()
    r, s = TASK.reward(text, EX), TASK.score(text, EX)
    assert time.thread_time() - t0 < 0.1
    assert r.total in (0.0, 0.1) and s.correct == 0 and s.total == 1


# --- generation hook and the published baseline -----------------------------------------

def test_generate_hook():
    out = TASK.generate(5, seed=1, exclude=[], num_numbers=4)
    assert len(out) == 5 and all(len(e.ground_truth[0]) == 4 for e in out)
    assert all(TASK.reward(e.solution, e).total == 1.0 for e in out)
    with pytest.raises(ConfigError):
        TASK.generate(5, seed=1, exclude=[], size=3)
    small = TASK.generate(5, seed=1, exclude=[], number_range=[1, 9], target_range=[1, 20], max_misses_per_target=100)
    assert all(max(e.ground_truth[0]) <= 9 and e.ground_truth[1] <= 20 for e in small)


@pytest.mark.parametrize("gen_length, accuracy", [(128, 20.70), (256, 19.53), (512, 16.02)])
def test_reproduces_d1_baseline(reference_dir, gen_length, accuracy):
    files = sorted(reference_dir.glob(f"countdown_instruct_{gen_length}_*_generations.json"))
    result = score_files("countdown", files)
    assert result["n"] == 256 and result["accuracy"] == pytest.approx(accuracy, abs=0.01)
