"""research/trace_check.py on hand-written completions."""

from __future__ import annotations

import json

import pytest

from research.tests.loader import load_script


@pytest.fixture(scope="module")
def check():
    return load_script("trace_check")


def _completion(lines: str, answer: str) -> str:
    return f"<reasoning>\n{lines}\n</reasoning>\n<answer>\n{answer}\n</answer><|eot_id|>"


@pytest.mark.parametrize("numbers, target, lines, kind", [
    ([11, 18, 2], 31, "11 + 18 = 29\n29 + 2 = 31", "valid trace"),
    ([20, 8, 20], 8, "20 / 8 = 2\n20 / 2 = 8", "first line wrong"),   # 20 / 8 is not 2
    ([12, 2, 5], 15, "12 - 2 = 10\n10 + 5 = 15", "valid trace"),
    ([11, 18, 2], 31, "11 + 18 = 29\n29 - 2 = 31", "first line right"),  # line 2 forces the target
    ([5, 13, 1], 19, "5 + 13 = 20\n20 - 1 = 19", "first line wrong"),
    ([5, 5, 1], 11, "5 + 5 = 10\n10 + 1 = 11", "valid trace"),          # a repeated number used twice
    ([5, 6, 1], 11, "5 + 5 = 10\n10 + 1 = 11", "first line wrong"),     # 5 used twice, given once
    ([2, 3, 4], 20, "2 + 3 = 5\n5 * 4 = 20\n20 + 0 = 20", "first line right"),  # 0 is not a number left
    ([2, 3, 4], 9, "2 + 3 = 5", "first line right"),                     # stops before the target
    ([2, 3, 4], 9, "I think 2 + 3 + 4", "first line wrong"),
])
def test_classify(check, numbers, target, lines, kind):
    assert check.classify(numbers, target, _completion(lines, "x")) == kind


def test_no_reasoning_block_is_first_line_wrong(check):
    assert check.classify([1, 2, 3], 6, "<answer>\n1 + 2 + 3\n</answer>") == "first line wrong"


def test_table_counts_kinds_and_solved(check, tmp_path, capsys):
    items = [
        {"ground_truth": [[11, 18, 2], 31], "generations": _completion("11 + 18 = 29\n29 + 2 = 31", "11 + 18 + 2"),
         "correct": 1},
        {"ground_truth": [[11, 18, 2], 31], "generations": _completion("11 + 18 = 29\n29 - 2 = 31", "11 + 18 - 2"),
         "correct": 0},
        {"ground_truth": [[5, 13, 1], 19], "generations": _completion("5 + 13 = 20\n20 - 1 = 19", "5 + 13 + 1"),
         "correct": 1},
    ]
    path = tmp_path / "eval_sft_heldout.json"
    path.write_text(json.dumps({"generations": items}))
    assert check.table(path, None) == {"valid trace": [1, 1], "first line right": [1, 0], "first line wrong": [1, 1]}
    assert check.table(path, 1) == {"valid trace": [1, 1], "first line right": [0, 0], "first line wrong": [0, 0]}
    check.main([str(path)])
    out = capsys.readouterr().out
    assert f"| {path} | 3 | 1 (1) | 1 (0) | 1 (1) | 2 (66.7%) |" in out
    with pytest.raises(SystemExit, match="no such file"):
        check.main([str(tmp_path / "missing.json")])
