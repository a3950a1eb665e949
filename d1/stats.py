"""Small-sample statistics for accuracy tables: Wilson intervals and paired gains.

``wilson_interval`` is the 95% score interval of one accuracy (better than the
normal interval near 0 or 1 and for the few hundred items of a test set).
``paired_gain`` compares two models on the *same* test items: the per-item
differences carry the pairing, so the interval is much narrower than one built
from two independent accuracies. Items may have a denominator each (``totals``:
Sudoku scores the empty cells of a puzzle); the gain is then the difference of
the pooled ratios ``sum(correct) / sum(total)``, the same number as the
accuracy columns of the table.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

#: resamples drawn per batch in the bootstrap (bounds memory to CHUNK * n indices)
CHUNK = 1000


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of the proportion ``successes / n`` (``(0, 0)`` when n is 0)."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_gain(
    before: Sequence[float], after: Sequence[float], *, seed: int, resamples: int = 10_000,
    totals: Sequence[float] | None = None, z: float = 1.96,
) -> dict:
    """Gain ``after - before`` on the same items, with two 95% intervals.

    ``before[i]``/``after[i]``: the score of item i under each model (1/0 for right/wrong, or
    the number of right cells out of ``totals[i]``; totals default to 1 per item). The gain is
    ``(sum(after) - sum(before)) / sum(totals)``.

    ``normal_ci``: gain +- z * standard error (delta method for the ratio; with unit totals,
    sd(d) / sqrt(n) of the per-item differences d). ``bootstrap_ci``: percentile interval of
    the gain over ``resamples`` paired resamples (items drawn with replacement, both scores of
    an item together), drawn with a ``torch.Generator`` seeded with ``seed``.
    Also returned: ``before`` and ``after`` (pooled rates), ``improved``/``worsened`` (items
    whose score went up/down) and ``n``.
    """
    n = len(before)
    if n == 0 or len(after) != n:
        raise ValueError(f"paired_gain needs two equally long, non-empty score lists, "
                         f"got {len(before)} and {len(after)}")
    if resamples < 1:
        raise ValueError(f"paired_gain: resamples must be positive, got {resamples}")
    b = torch.tensor([float(x) for x in before], dtype=torch.float64)
    a = torch.tensor([float(x) for x in after], dtype=torch.float64)
    t = torch.tensor([1.0] * n if totals is None else [float(x) for x in totals], dtype=torch.float64)
    if t.numel() != n or bool((t <= 0).any()):
        raise ValueError("paired_gain: totals must be one positive number per item")
    d = a - b
    t_sum = float(t.sum())
    gain = float(d.sum()) / t_sum
    # Delta method: the ratio's residuals d_i - gain * t_i, scaled by the mean total.
    resid = d - gain * t
    sd = float(resid.std(unbiased=True)) if n > 1 else 0.0
    half = z * sd / math.sqrt(n) / (t_sum / n)
    g = torch.Generator().manual_seed(seed)
    gains = []
    for start in range(0, resamples, CHUNK):
        idx = torch.randint(0, n, (min(CHUNK, resamples - start), n), generator=g)
        gains.append(d[idx].sum(dim=1) / t[idx].sum(dim=1))
    sorted_gains = torch.cat(gains).sort().values
    lo_i = int(0.025 * resamples)
    hi_i = max(lo_i, int(0.975 * resamples) - 1)
    return {
        "gain": gain,
        "normal_ci": [gain - half, gain + half],
        "bootstrap_ci": [float(sorted_gains[lo_i]), float(sorted_gains[hi_i])],
        "before": float(b.sum()) / t_sum,
        "after": float(a.sum()) / t_sum,
        "improved": int((d > 0).sum()),
        "worsened": int((d < 0).sum()),
        "n": n,
    }
