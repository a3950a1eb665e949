"""Property tests over every task: reward and score never raise, stay finite and in
range, and are fast, for any model output up to 100 kB (adversarial included)."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from d1.prepare import _load_split
from d1.tasks import available_tasks, get_task

MAX_CHARS = 100_000
TIME_LIMIT_S = 0.050  # per call, CPU time of this thread (robust to a busy machine)

FRAGMENTS = [
    "<reasoning>", "</reasoning>", "<answer>", "</answer>", "\n", " ", "\\boxed{", "}", "{", "\\frac{1}{2}",
    "(", ")", "**", "*", "/", "+", "-", "=", "0", "7", "9" * 400, "1e999", "-1e-999", "9**9**9", "2**99999",
    "__import__('os').system('true')", "1/0", "()" * 50, "((((((((((", "))))))))))", ".", ",", "nan", "inf",
    "\\div", "\\times", "\\cdot", "\\sqrt{", "\\dfrac", "#### 12", "<|eot_id|>", "<|endoftext|>", "```",
    "1234123412341234", "Numbers: [1, 2, 3]", "é", "\u202e", "\x00", "😀", "٣",
]

fragment_soup = st.lists(st.sampled_from(FRAGMENTS), max_size=60).map("".join)


@st.composite
def model_outputs(draw) -> str:
    """Arbitrary unicode, tag/number soup, and soup repeated up to ~100 kB."""
    kind = draw(st.sampled_from(["text", "soup", "repeat", "deep"]))
    if kind == "text":
        return draw(st.text(max_size=2000))
    if kind == "soup":
        return draw(fragment_soup)
    if kind == "deep":
        depth = draw(st.integers(1, MAX_CHARS // 2 - 20))
        inner = draw(st.sampled_from(["1", "1+2", "2**99999", "1/0", "__import__('os')"]))
        body = "(" * depth + inner + ")" * depth
        return ("<answer>" + body + "</answer>")[:MAX_CHARS]
    piece = draw(fragment_soup) or "<answer>"
    reps = MAX_CHARS // max(len(piece), 1)
    return (piece * reps)[:MAX_CHARS]


def _examples():
    out = {}
    for name in available_tasks():
        task = get_task(name)
        out[name] = _load_split(task, "builtin", "test", 3)
    return out


EXAMPLES = _examples()


def _check_fast(fn, *args):
    t0 = time.thread_time()
    value = fn(*args)
    elapsed = time.thread_time() - t0
    assert elapsed < TIME_LIMIT_S, f"{fn.__qualname__} took {elapsed * 1000:.1f} ms"
    return value


@pytest.mark.parametrize("name", available_tasks())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(text=model_outputs(), which=st.integers(0, 2))
def test_reward_and_score_total(name, text, which):
    task = get_task(name)
    example = EXAMPLES[name][which]
    lo, hi = task.reward_range
    r = _check_fast(task.reward, text, example)
    assert math.isfinite(r.total) and lo <= r.total <= hi, (r, text[:200])
    assert r.total == pytest.approx(sum(r.components.values()))
    assert all(math.isfinite(v) for v in r.components.values())
    s = _check_fast(task.score, text, example)
    assert isinstance(s.correct, int) and isinstance(s.total, int)
    assert 0 <= s.correct <= s.total and s.total >= 1


@pytest.mark.parametrize("name", available_tasks())
def test_worst_cases_explicitly(name):
    """Hand-picked worst cases at the full 100 kB, beyond what hypothesis happens to draw."""
    task = get_task(name)
    example = EXAMPLES[name][0]
    lo, hi = task.reward_range
    worst = [
        "<answer>" + "(" * 49_000 + "1" + ")" * 49_000 + "</answer>",
        "<answer>" + "9" * 99_000 + "</answer>",
        "<answer>" + "9**" * 33_000 + "9</answer>",
        "<answer>" * 12_000,
        "\\boxed{" * 14_000,
        "<answer>" + "1/" * 49_000 + "0</answer>",
        "<answer>" + "+".join(["1"] * 49_000) + "</answer>",
        "<answer>__import__('os').system('echo pwned')</answer>" * 1500,
        "<reasoning>\n" + "x" * 99_000 + "\n</reasoning>\n<answer>\n\\boxed{" + "1" * 500 + "}\n</answer>\n",
        ("\\boxed{" + "9" * 5000 + "}") * 19,
    ]
    for text in worst:
        assert len(text) <= 110_000
        r = _check_fast(task.reward, text, example)
        assert math.isfinite(r.total) and lo <= r.total <= hi
        s = _check_fast(task.score, text, example)
        assert 0 <= s.correct <= s.total
