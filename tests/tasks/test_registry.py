from __future__ import annotations

import pytest

from d1.errors import D1Error, UnknownTaskError
from d1.tasks import Task, available_tasks, get_task, register_task


def test_four_d1_tasks_registered():
    assert available_tasks() == ["countdown", "gsm8k", "math500", "sudoku"]
    for name in available_tasks():
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name
        lo, hi = task.reward_range
        assert lo <= 0.0 < hi


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(UnknownTaskError) as exc:
        get_task("chess")
    assert isinstance(exc.value, D1Error)
    assert str(exc.value) == "unknown task 'chess'; available: countdown, gsm8k, math500, sudoku"


def test_duplicate_name_rejected():
    cls = type(get_task("gsm8k"))
    clone = type("Clone", (cls,), {})
    with pytest.raises(ValueError, match="registered twice"):
        register_task(clone)
    assert register_task(cls) is cls  # re-registering the same class is harmless
