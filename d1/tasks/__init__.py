"""Tasks: GSM8K, MATH500, Countdown, 4x4 Sudoku behind a registry keyed by name."""

from d1.tasks.base import Example, RewardBreakdown, Score, Task
from d1.tasks.registry import available_tasks, get_task, register_task

# Importing a task module registers it.
from d1.tasks import countdown, gsm8k, math500, sudoku  # noqa: E402,F401

__all__ = [
    "Example",
    "RewardBreakdown",
    "Score",
    "Task",
    "available_tasks",
    "get_task",
    "register_task",
]
