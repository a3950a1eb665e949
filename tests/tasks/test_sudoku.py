"""Sudoku task: records, prompts, the d1 training reward and the d1 cell-level protocol.

Expected values of the reward/score tables were checked against d1's own
``reward_func.sudoku_reward_func`` and ``parse_and_get_acc.parse_sudoku_answers``.
"""

from __future__ import annotations

import json
import time

import pytest

from d1.errors import DataError
from d1.scoring import score_files
from d1.tasks import get_task
from d1.tasks.sudoku import SUDOKU_PROMPT, d1_sudoku_answer

TASK = get_task("sudoku")
PUZZLE, SOLUTION = "3102200002100320", "3142243142131324"  # first row of the test set; 8 empty cells
EX = TASK.example_from_generation(
    {"question": f"Solve the following Sudoku puzzle: {PUZZLE}\n", "ground_truth": SOLUTION}
)


# --- records ----------------------------------------------------------------------------

def test_csv_rows_keep_leading_zeros():
    ex = TASK.example_from_record({"Puzzle": "0140432014020000", "Solution": "2143432114323214"})
    assert ex.question == "Solve the following Sudoku puzzle: 0140432014020000\n"
    assert ex.ground_truth == "2143432114323214" and ex.meta == {"puzzle": "0140432014020000"}
    # a CSV read as numbers lost the zero: re-padded
    assert TASK.example_from_record({"Puzzle": 140432014020000, "Solution": 2143432114323214}) == ex
    assert TASK.example_from_record({"puzzle": "0140432014020000", "solution": "2143432114323214"}) == ex


def test_serialised_example_round_trip():
    ex = TASK.generate(1, seed=0, exclude=[])[0]
    again = TASK.example_from_record(json.loads(json.dumps(ex.to_record())))
    assert again == ex and again.solution.startswith("<reasoning>")


@pytest.mark.parametrize(
    "record",
    [
        {"Puzzle": "0140432014020000"},
        {"Puzzle": "014043201402000", "Solution": "2143432114323214"},  # 15 chars
        {"Puzzle": "0140432014020005", "Solution": "2143432114323214"},  # digit 5
        {"Puzzle": "0140432014020000", "Solution": "2143432114323210"},  # incomplete solution
        {"Puzzle": "1140432014020000", "Solution": "2143432114323214"},  # clue disagrees
        {"Puzzle": ["x"], "Solution": "2143432114323214"},
        {},
    ],
)
def test_bad_records(record):
    with pytest.raises(DataError):
        TASK.example_from_record(record)


def test_example_from_generation():
    assert EX.meta == {"puzzle": PUZZLE} and EX.ground_truth == SOLUTION
    with pytest.raises(ValueError):
        TASK.example_from_generation({"question": "no puzzle", "ground_truth": SOLUTION})


def test_prompt_is_d1s():
    msg = TASK.user_message(EX)
    assert msg == SUDOKU_PROMPT + "\n\nSolve the following Sudoku puzzle: 3102200002100320\n"
    assert msg == TASK.eval_user_message(EX)  # d1 trains and evaluates with the same prompt
    assert "Important: Your solution must be a COMPLETE 16-character string" in msg


# --- reward and score -------------------------------------------------------------------

@pytest.mark.parametrize(
    "completion, correct, extracted, reward",
    [
        ("<answer>\n3142243142131324\n</answer>", 8, "3142243142131324", 1.0),
        ("<answer>\n```\n3142\n2431\n4213\n1324\n```\n</answer>", 8, "3142243142131324", 1.0),  # step 1
        ("<answer>3142 2431 4213 1324</answer>", 8, "3142243142131324", 1.0),  # step 2
        # step 2 keeps letters (they shift the digits); the reward keeps only digits
        ("<answer>Solution: 3142243142131324</answer>", 0, "Solution:3142243", 1.0),
        ("<answer> </answer>\n3142243142131324<|eot_id|>", 8, "3142243142131324", 0.0),  # step 3
        ("The grid is 3142243142131324 \n</answer>", 8, "3142243142131324", 0.0),  # step 4
        ("Final: 3142243142131324.", 8, "3142243142131324", 0.0),  # step 5
        ("Final: 31422431421313241.", 0, "", 0.0),  # 17 digits are not a 16-digit word
        ("<answer>31</answer>", 0, "3100000000000000", 0.0),  # padded with zeros
        ("<answer>3142243142</answer>", 5, "3142243142000000", 0.625),
        ("<answer>3102200002100320</answer>", 0, "3102200002100320", 0.0),  # the puzzle itself
        ("<answer>\n3142243142131324\n</answer><answer>0000</answer>", 8, "3142243142131324", 0.0),
        ("no answer at all", 0, "", 0.0),
        ("", 0, "", 0.0),
    ],
)
def test_reward_and_score(completion, correct, extracted, reward):
    s = TASK.score(completion, EX)
    assert (s.correct, s.total, s.extracted) == (correct, 8, extracted)
    r = TASK.reward(completion, EX)
    assert r.total == pytest.approx(reward) and r.components == {"sudoku": pytest.approx(reward)}


def test_cascade_helper():
    # a blank fenced block fails step 1 (no retry at a later fence); step 2 then wins
    assert d1_sudoku_answer("<answer>```  ```</answer> 1234123412341234") == "``````"
    assert d1_sudoku_answer("</answer>\n\n x \n") == "x"


# --- robustness -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text",
    [
        "<answer>" + "```" * 33_000,
        "<answer>```" + " " * 99_000,
        "<answer>" + ("```" + "1 " * 100) * 400,
        "1" * 100_000,
        "1" * 99_000 + "</answer>",
        "</answer>" + " " * 99_900,
        "<answer>" * 12_000,
        "</answer>" * 11_000,
        (" " * 1000 + "1" * 16 + " " * 1000 + "x") * 45,
        "<answer>" + "²" * 99_000 + "</answer>",
    ],
)
def test_adversarial_outputs_are_fast_and_bounded(text):
    t0 = time.thread_time()
    r, s = TASK.reward(text, EX), TASK.score(text, EX)
    assert time.thread_time() - t0 < 0.1
    assert 0.0 <= r.total <= 1.0 and 0 <= s.correct <= s.total == 8


# --- the published baseline -------------------------------------------------------------

@pytest.mark.parametrize("gen_length, accuracy", [(128, 11.72), (256, 6.69), (512, 5.47)])
def test_reproduces_d1_baseline(reference_dir, gen_length, accuracy):
    files = sorted(reference_dir.glob(f"sudoku_instruct_{gen_length}_*_generations.json"))
    result = score_files("sudoku", files)
    assert result["n"] == 256 and result["total"] == 2048
    assert result["accuracy"] == pytest.approx(accuracy, abs=0.01)
