"""Wilson intervals and paired gains (d1.stats)."""

from __future__ import annotations

import math

import pytest

from d1.stats import paired_gain, wilson_interval


def test_wilson_known_values():
    # 20/256 (the README's Countdown example): 5.1% - 11.8%
    lo, hi = wilson_interval(20, 256)
    assert (round(100 * lo, 1), round(100 * hi, 1)) == (5.1, 11.8)
    # the textbook case 0 of 10: [0, 0.2775]
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 0.0)
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(5, 3)


def test_paired_gain_unit_items():
    before = [0, 0, 1, 1, 0, 0, 1, 0] * 25
    after = [1, 0, 1, 1, 1, 0, 1, 0] * 25  # 2 of every 8 items improve, none get worse
    g = paired_gain(before, after, seed=0, resamples=2000)
    assert g["gain"] == pytest.approx(0.25)
    assert (g["before"], g["after"]) == (pytest.approx(3 / 8), pytest.approx(5 / 8))
    assert (g["improved"], g["worsened"], g["n"]) == (50, 0, 200)
    d = [a - b for a, b in zip(after, before)]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    assert g["normal_ci"] == pytest.approx([mean - 1.96 * sd / math.sqrt(200), mean + 1.96 * sd / math.sqrt(200)])
    lo, hi = g["bootstrap_ci"]
    assert lo < 0.25 < hi and lo > 0.15 and hi < 0.35
    # the bootstrap and the normal interval agree at this size
    assert lo == pytest.approx(g["normal_ci"][0], abs=0.02) and hi == pytest.approx(g["normal_ci"][1], abs=0.02)


def test_paired_gain_is_seeded():
    before = [0, 1, 0, 1, 1, 0, 0, 0, 1, 0]
    after = [1, 1, 0, 0, 1, 1, 0, 1, 1, 0]
    a = paired_gain(before, after, seed=3, resamples=500)
    assert paired_gain(before, after, seed=3, resamples=500) == a
    assert paired_gain(before, after, seed=4, resamples=500)["bootstrap_ci"] != a["bootstrap_ci"]


def test_paired_gain_with_totals_is_the_pooled_ratio():
    # Sudoku-like: right cells out of the empty cells of each puzzle
    before = [2, 5, 0, 7]
    after = [4, 5, 3, 8]
    totals = [8, 10, 6, 9]
    g = paired_gain(before, after, totals=totals, seed=0, resamples=1000)
    assert g["gain"] == pytest.approx((20 - 14) / 33)
    assert (g["before"], g["after"]) == (pytest.approx(14 / 33), pytest.approx(20 / 33))
    assert g["bootstrap_ci"][0] <= g["gain"] <= g["bootstrap_ci"][1]
    # unit totals give the same as no totals
    u = paired_gain([0, 1, 1], [1, 1, 0], totals=[1, 1, 1], seed=1, resamples=300)
    assert u == paired_gain([0, 1, 1], [1, 1, 0], seed=1, resamples=300)


def test_no_difference_gives_a_zero_interval():
    g = paired_gain([1, 0, 1], [1, 0, 1], seed=0, resamples=200)
    assert g["gain"] == 0 and g["bootstrap_ci"] == [0.0, 0.0] and g["normal_ci"] == [0.0, 0.0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(before=[], after=[]), "non-empty"),
    (dict(before=[1, 0], after=[1]), "equally long"),
    (dict(before=[1], after=[1], totals=[0]), "positive number per item"),
    (dict(before=[1, 0], after=[1, 1], totals=[1]), "one positive number per item"),
    (dict(before=[1], after=[1], resamples=0), "resamples must be positive"),
])
def test_bad_inputs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        paired_gain(seed=0, **kwargs)
