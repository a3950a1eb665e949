"""research/fact_learning.py: the fact set, the row layout and the argument checks."""

from __future__ import annotations

import pytest

from research.tests.loader import load_script


@pytest.fixture(scope="module")
def facts_module():
    return load_script("fact_learning")


def test_first_line_facts_are_every_positive_integer_result(facts_module):
    facts = facts_module.first_line_facts(1, 3)
    # 9 ordered pairs: 9 sums, 9 products, 3 positive differences, 5 exact quotients (a/1 x3, 2/2, 3/3)
    assert len(facts) == 9 + 9 + 3 + 5
    assert ("3 - 1 = ", "2") in facts and ("1 - 3 = ", "-2") not in facts
    assert ("2 / 3 = ", "0") not in facts and ("3 / 3 = ", "1") in facts
    for lhs, c in facts:
        a, op, b, _ = lhs.split()
        assert eval(f"{a} {op} {b}") == int(c)  # noqa: S307 - digits and one operator
    assert len(facts_module.first_line_facts()) == 1056


def test_rows_put_the_result_right_after_the_prompt(facts_module):
    tokenizer, rows, result_at, prompt_mask = facts_module.build(seed=0)
    assert rows.shape[0] == 1056
    for i in (0, 17, 1055):
        end = int(result_at[i])
        assert prompt_mask[i, :end].all() and not prompt_mask[i, end:].any()
        lhs = tokenizer.decode(rows[i, :end].tolist())
        a, op, b, _ = lhs.split()
        assert int(tokenizer.decode([int(rows[i, end])])) == eval(f"{a} {op} {b}")  # noqa: S307
        assert (rows[i, end + 1:] == tokenizer.eos_token_id).all()


def test_a_short_run_reports_every_scheme(facts_module, monkeypatch):
    monkeypatch.setattr(facts_module, "SIZES", dict(d_model=16, n_layers=1, n_heads=2, mlp_hidden_size=32,
                                                     max_sequence_length=16))
    curves = facts_module.main(["--steps", "2", "--every", "1"])
    assert set(curves) == set(facts_module.SCHEMES)
    for curve in curves.values():
        assert [step for step, *_ in curve] == [1, 2]
        assert all(0.0 <= acc <= 1.0 for _, _, tr, te in curve for acc in (tr, te))


@pytest.mark.parametrize("args, message", [
    (["--schemes", "bogus"], "unknown"),
    (["--steps", "0"], "--steps and --every must be >= 1"),
])
def test_bad_arguments_are_refused(facts_module, args, message):
    with pytest.raises(SystemExit, match=message):
        facts_module.main(args)
