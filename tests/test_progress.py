"""Progress lines for logs (d1/progress.py): at 5% marks, never closer than min_interval, a heartbeat, a last line."""

from __future__ import annotations

import io
import os

from d1.progress import LineProgress, progress, quiet_library_bars


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_one_line_per_five_percent_when_steps_are_slow():
    clock, out = Clock(), io.StringIO()
    bar = LineProgress(total=100, desc="sft", unit="step", stream=out, clock=clock)
    for _ in range(100):
        clock.now += 4.0  # every step 4 s: every 5% mark is more than min_interval (3 s) after the last line
        bar.update(1)
    bar.close()
    text = lines(out)
    assert text[0] == "sft: 0/100 step (0%)"
    assert len(text) == 1 + 20  # the start and one line per 5%; the last mark is the end, no extra line
    assert text[1].startswith("sft: 5/100 step (5%), 0.25 step/s, ")
    assert text[-1] == "sft: 100/100 step (100%), 0.25 step/s"


def test_fast_steps_print_at_most_every_min_interval_and_the_end():
    clock, out = Clock(), io.StringIO()
    bar = LineProgress(total=1000, desc="grpo", unit="step", stream=out, clock=clock, min_interval=3.0)
    for _ in range(1000):
        clock.now += 1 / 64  # 15.6 s in all: 5% marks every 0.8 s, lines only every 3 s (192 steps)
        bar.update(1)
    bar.close()
    text = lines(out)
    assert [line.split()[1] for line in text] == ["0/1000", "192/1000", "384/1000", "576/1000", "768/1000",
                                                    "960/1000", "1000/1000"]


def test_heartbeat_when_marks_are_far_apart_and_postfix():
    clock, out = Clock(), io.StringIO()
    bar = LineProgress(total=10_000, desc="sft", unit="step", stream=out, clock=clock, heartbeat=60.0)
    bar.set_postfix(loss="0.2610")
    for _ in range(3):
        clock.now += 61.0
        bar.update(1)
    assert lines(out)[1:] == [
        "sft: 1/10000 step (0%), 0.0164 step/s, 169h25m left, loss=0.2610",
        "sft: 2/10000 step (0%), 0.0164 step/s, 169h24m left, loss=0.2610",
        "sft: 3/10000 step (0%), 0.0164 step/s, 169h23m left, loss=0.2610",
    ]


def test_resumed_bar_counts_rate_from_where_it_started_and_iterates():
    clock, out = Clock(), io.StringIO()
    bar = LineProgress(range(5), total=10, initial=5, desc="eval", unit="batch", stream=out, clock=clock)
    seen = []
    for item in bar:
        clock.now += 10.0
        seen.append(item)
    assert seen == list(range(5))
    text = lines(out)
    assert text[0] == "eval: 5/10 batch (50%)" and text[-1] == "eval: 10/10 batch (100%), 0.1 batch/s"


def test_disabled_writes_nothing_and_a_terminal_gets_tqdm():
    out = io.StringIO()
    bar = LineProgress(total=3, stream=out, disable=True)
    bar.update(3)
    bar.close()
    assert out.getvalue() == ""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    from tqdm.auto import tqdm

    assert isinstance(progress(total=3, stream=Terminal()), tqdm)
    assert isinstance(progress(total=3, stream=io.StringIO()), LineProgress)


def test_library_bars_are_turned_off_in_a_log_only(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    assert quiet_library_bars(Terminal()) is False and "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
    assert quiet_library_bars(io.StringIO()) is True and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # the user's choice stands
    assert quiet_library_bars(io.StringIO()) is False and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"
