"""Progress of long loops: a tqdm bar in a terminal, a few plain lines in a log.

Under ``dvc repro`` in a terminal a stage's stderr is the terminal and tqdm
draws its bar as usual. Under Prefect (or any pipe) every tqdm refresh would
become one log line, about ten a second; there :class:`LineProgress` writes a
line when the loop crosses a 5% mark (but not within ``min_interval`` seconds
of the previous line), every ``heartbeat`` seconds when the marks are far
apart, and once at the end.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO


def progress(iterable: Iterable | None = None, *, total: int | None = None, initial: int = 0, desc: str = "",
             unit: str = "it", disable: bool = False, leave: bool = True, stream: TextIO | None = None) -> Any:
    """A tqdm bar when ``stream`` (default stderr) is a terminal, else a :class:`LineProgress`.

    Both take ``update(n)``, ``set_postfix(**values)``, ``close()`` and iterate over ``iterable``.
    """
    stream = sys.stderr if stream is None else stream
    if _is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, disable=disable, leave=leave,
                    dynamic_ncols=True, file=stream)
    return LineProgress(iterable, total=total, initial=initial, desc=desc, unit=unit, disable=disable,
                        stream=stream)


def quiet_library_bars(stream: TextIO | None = None) -> bool:
    """In a log (``stream``, default stderr, not a terminal) turn off the Hugging Face libraries' own bars.

    transformers, datasets and huggingface_hub draw bars for saving, loading and
    mapping ("Writing model shards"), each a few log lines per call. Sets
    ``HF_HUB_DISABLE_PROGRESS_BARS=1`` unless the user set another value, and
    turns the bars off in those libraries if they are imported already.
    Returns whether it did.
    """
    stream = sys.stderr if stream is None else stream
    if _is_terminal(stream) or os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "1") != "1":
        return False  # a terminal, or the user's explicit choice
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    # Libraries imported already read the variable at import time: tell them directly.
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    return True


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real file
        return False


class LineProgress:
    """Progress as occasional lines: ``sft: 120/800 step (15%), 3.84 step/s, 2m57s left, loss=0.2610``."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, initial: int = 0,
                 desc: str = "", unit: str = "it", disable: bool = False, stream: TextIO | None = None,
                 every: float = 0.05, min_interval: float = 3.0, heartbeat: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable = iterable
        self.total = total
        self.n = self.start = initial
        self.desc, self.unit, self.disable = desc, unit, disable
        self.stream = sys.stderr if stream is None else stream
        self.every, self.min_interval, self.heartbeat = every, min_interval, heartbeat
        self.clock = clock
        self.postfix = ""
        self.started_at = self.last_at = clock()
        self.last_mark = self._mark(initial)
        self.last_n = initial
        self.closed = False
        self._write()

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LineProgress without an iterable is not iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        mark = self._mark(self.n)
        since = now - self.last_at
        if (mark > self.last_mark and since >= self.min_interval) or since >= self.heartbeat:
            self._write(now)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.n != self.last_n:
            self._write()

    def _mark(self, n: int) -> int:
        """How many ``every`` fractions of the total ``n`` has passed (0 without a total)."""
        if not self.total:
            return 0
        return int(n / self.total / self.every + 1e-9)

    def _write(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        self.last_at, self.last_n, self.last_mark = now, self.n, self._mark(self.n)
        if self.disable:
            return
        parts = [f"{self.n}/{self.total}" if self.total else str(self.n)]
        parts[0] += f" {self.unit}"
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        elapsed = now - self.started_at
        done = self.n - self.start
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            parts.append(f"{rate:.3g} {self.unit}/s")
            if self.total and self.n < self.total:
                parts.append(f"{_duration((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        prefix = f"{self.desc}: " if self.desc else ""
        print(prefix + ", ".join(parts), file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
