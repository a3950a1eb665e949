"""research/countdown_breakdown.py on a hand-built learning_countdown.py output folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from research.tests.loader import load_script


@pytest.fixture(scope="module")
def breakdown():
    return load_script("countdown_breakdown")


def _solution(expr: str) -> str:
    return f"<reasoning>\n...\n</reasoning>\n<answer>\n{expr}\n</answer>"


def _run_folder(root: Path, name: str, sft: list[tuple[str, int]], grpo: list[tuple[str, int]]) -> Path:
    out = root / name
    out.mkdir()
    puzzles = [("Numbers: [1, 2, 3]\nTarget: 6", "1 + 2 + 3"), ("Numbers: [4, 5, 2]\nTarget: 18", "4 * 5 - 2"),
               ("Numbers: [9, 3, 1]\nTarget: 5", "9 - 3 - 1"), ("Numbers: [2, 2, 7]\nTarget: 11", "2 + 2 + 7")]
    (out / "heldout.jsonl").write_text("".join(json.dumps({"question": q, "solution": _solution(e)}) + "\n"
                                                for q, e in puzzles))
    for stage, rows in (("sft", sft), ("grpo", grpo)):
        items = [{"question": q, "generations": _solution(text) + "<|eot_id|>" if text else "garbage", "correct": c}
                 for (q, _), (text, c) in zip(puzzles, rows)]
        (out / f"eval_{stage}_heldout.json").write_text(json.dumps({"generations": items}))
    (out / "results.json").write_text(json.dumps({"seed": 0, "grpo_seed": 7, "sft_from": None}))
    return out


def test_operator_set_is_sorted_and_distinct(breakdown):
    assert breakdown.operator_set("7 * 3 - 2") == "-*"
    assert breakdown.operator_set("(1 + 2) + 3") == "+"
    assert breakdown.operator_set("12 / 4 * 3") == "*/"
    assert breakdown.operator_set("42") == ""


def test_breakdown_splits_accuracy_by_solution_kind(breakdown, tmp_path, capsys):
    out = _run_folder(tmp_path, "run", sft=[("1 + 2 + 3", 1), ("4 * 5 * 2", 0), ("9 * 3 * 1", 0), ("", 0)],
                      grpo=[("1 + 2 + 3", 1), ("4 * 5 - 2", 1), ("9 - 3 - 1", 1), ("2 + 2 + 7", 1)])
    breakdown.main([str(out)])
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("| model | `+`"))
    assert header.split(" | ")[1:4] == ["`+` (2)", "`-*` (1)", "`-` (1)"]
    split = next(i for i, line in enumerate(lines) if line.startswith("operators per"))

    def table(part: list[str]) -> dict[str, list[str]]:
        return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")]
                                                   for line in part if line.startswith("| run "))}

    accuracy, operators = table(lines[:split]), table(lines[split:])
    # accuracy per kind (`+`, `-*`, `-`, all): sft solves one of the two `+` puzzles and nothing else
    assert accuracy["run sft"] == ["50.0", "0.0", "0.0", "25.0"]
    assert accuracy["run grpo (GRPO seed 7)"] == ["100.0", "100.0", "100.0", "100.0"]
    # operators per answer (+ - * /, no answer): sft wrote 2 `+` and 4 `*` in 4 answers, one answer missing
    assert operators["run sft"] == ["0.50", "0.00", "1.00", "0.00", "0.25"]
    assert operators["run grpo (GRPO seed 7)"] == ["1.00", "0.75", "0.25", "0.00", "0.00"]


def test_breakdown_refuses_folders_of_other_puzzles(breakdown, tmp_path):
    a = _run_folder(tmp_path, "a", sft=[("1 + 2 + 3", 1)] * 4, grpo=[("1 + 2 + 3", 1)] * 4)
    b = _run_folder(tmp_path, "b", sft=[("1 + 2 + 3", 1)] * 4, grpo=[("1 + 2 + 3", 1)] * 4)
    (b / "heldout.jsonl").write_text(json.dumps({"question": "other", "solution": _solution("1 + 1")}) + "\n")
    with pytest.raises(SystemExit, match="other held-out puzzles"):
        breakdown.main([str(a), str(b)])


def test_marginals_are_operator_shares_of_each_model(breakdown, tmp_path, capsys):
    from d1.tasks import get_task
    from tests.train.conftest import save_tiny_base, write_tiny_data

    data = write_tiny_data(tmp_path / "data")
    out = tmp_path / "run"
    out.mkdir()
    examples = get_task("countdown").generate(4, seed=3, exclude=[], num_numbers=3)
    (out / "heldout.jsonl").write_text("".join(json.dumps(ex.to_record()) + "\n" for ex in examples))
    for stage in ("sft", "grpo"):
        items = [{"question": ex.question, "generations": ex.solution, "correct": 1} for ex in examples]
        (out / f"eval_{stage}_heldout.json").write_text(json.dumps({"generations": items}))
        save_tiny_base(data, out / stage / "model")  # the same weights twice: the two rows must agree
    breakdown.main([str(out), "--marginals", "3", "--gen-length", "8"])
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("fully-masked operator marginals"))
    assert "first 3 puzzles" in lines[start]
    rows = [line for line in lines[start:] if line.startswith("| run ")]
    assert [r.split(" | ")[0] for r in rows] == ["| run sft", "| run grpo"]
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    assert cells[0][1:] == cells[1][1:]
    overall = [float(x) for x in cells[0][-3].split(" / ")]  # the `all` column: shares of + - * /
    assert len(overall) == 4 and abs(sum(overall) - 1) < 0.02 and all(0 <= x <= 1 for x in overall)
    # the greedy answers here are the reference solutions, so their spread is the reference's
    assert f"(reference solutions: {cells[0][-1]})" in lines[start]


@pytest.mark.parametrize("flags", [["--marginals", "-1"], ["--gen-length", "0"], ["--kinds", "0"]])
def test_breakdown_refuses_bad_counts_before_reading(breakdown, tmp_path, flags):
    with pytest.raises(SystemExit, match=f"^{flags[0]} must be >= .*, got {flags[1]}$"):
        breakdown.main([str(tmp_path / "missing"), *flags])
