"""Task registry keyed by name. A new task is one module that calls ``register_task``."""

from __future__ import annotations

from typing import Callable

from d1.errors import UnknownTaskError
from d1.tasks.base import Task

_REGISTRY: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make ``cls`` available as ``get_task(cls.name)``."""
    name = getattr(cls, "name", None)
    if not name:
        raise ValueError(f"{cls.__qualname__} has no task name")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"task {name!r} is registered twice")
    _REGISTRY[name] = cls
    return cls


def available_tasks() -> list[str]:
    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    """A fresh instance of the task called ``name``; UnknownTaskError lists the known ones."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise UnknownTaskError(
            f"unknown task {name!r}; available: {', '.join(available_tasks())}"
        ) from None
    return cls()
