"""The scorer reproduces the d1 paper's LLaDA-8B-Instruct baseline row from its published generations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from d1.errors import DataError
from d1.scoring import load_generations, markdown_table, score_directory, score_files, setting_of

# reference/README.md (and ../shared/reference/README.md): correct / all items over every shard, percent.
PAPER_BASELINE = {
    ("gsm8k", 128): 69.29, ("gsm8k", 256): 76.37, ("gsm8k", 512): 78.14,
    ("math500", 128): 26.00, ("math500", 256): 32.40, ("math500", 512): 36.20,
    ("countdown", 128): 20.70, ("countdown", 256): 19.53, ("countdown", 512): 16.02,
    ("sudoku", 128): 11.72, ("sudoku", 256): 6.69, ("sudoku", 512): 5.47,
}


@pytest.fixture(scope="module")
def reference_results(request) -> dict:
    from tests.conftest import REFERENCE_DIR

    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"published generations not found at {REFERENCE_DIR}")
    return {(r["task"], r["gen_length"]): r for r in score_directory(REFERENCE_DIR)}


@pytest.mark.parametrize("setting", sorted(PAPER_BASELINE), ids=lambda s: f"{s[0]}-{s[1]}")
def test_reproduces_paper_baseline(reference_results, setting):
    result = reference_results[setting]
    assert result["accuracy"] == pytest.approx(PAPER_BASELINE[setting], abs=0.01), result


def test_every_setting_scored(reference_results):
    assert set(reference_results) == set(PAPER_BASELINE)


def test_shared_reference_matches_shipped_copy(reference_dir, repo_root):
    """The project ships its own copy; where ../shared is present it must be the same data."""
    shared = repo_root.parent / "shared" / "reference" / "llada-8b-instruct-generations"
    if not shared.is_dir():
        pytest.skip("no ../shared/reference beside the checkout")
    ours = sorted(p.name for p in reference_dir.glob("*.json"))
    assert ours == sorted(p.name for p in shared.glob("*.json"))
    for name in ours:
        assert (reference_dir / name).read_bytes() == (shared / name).read_bytes(), name


def test_sudoku_denominator_is_empty_cells(reference_results):
    r = reference_results[("sudoku", 128)]
    assert r["total"] > r["n"] * 4  # cell-level: several empty cells per puzzle
    assert r["accuracy"] == pytest.approx(100 * r["correct"] / r["total"])


def _write(tmp_path: Path, name: str, items) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps({"generations": items}))
    return p


def test_files_are_pooled_not_averaged(tmp_path):
    item_ok = {"question": "Numbers: [1, 2, 3]\nTarget: 6", "generations": "<answer>\\boxed{1+2+3}</answer>", "ground_truth": [[1, 2, 3], 6]}
    item_bad = dict(item_ok, generations="<answer>\\boxed{1+2}</answer>")
    a = _write(tmp_path, "a.json", [item_ok])
    b = _write(tmp_path, "b.json", [item_bad, item_bad, item_bad])
    r = score_files("countdown", [a, b])
    assert (r["n"], r["correct"], r["total"]) == (4, 1, 4)
    assert r["accuracy"] == pytest.approx(25.0)  # averaging per file would give 50


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "'generations' list"),
        (json.dumps({"generations": [{"question": "q"}]}), "generations[0] lacks generations, ground_truth"),
        (json.dumps({"generations": [{"question": "q", "generations": 3, "ground_truth": 1}]}), "not a string"),
    ],
)
def test_malformed_files_name_the_problem(tmp_path, content, message):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(DataError, match="bad.json") as exc:
        load_generations(p)
    assert message in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        score_files("gsm8k", [tmp_path / "nope.json"])


def test_setting_of_and_table():
    assert setting_of(Path("gsm8k_instruct_256_128_7_generations.json")) == ("gsm8k", 256)
    assert setting_of(Path("notes.json")) is None
    table = markdown_table([
        {"task": "gsm8k", "gen_length": 128, "accuracy": 69.2876},
        {"task": "gsm8k", "gen_length": 256, "accuracy": 76.0},
    ])
    assert table.splitlines()[0] == "| task | 128 | 256 |"
    assert "| gsm8k | 69.29 | 76.00 |" in table
