"""Named variants of the GRPO math: log-prob estimators and policy objectives.

A variant registers itself under a name with a decorator in the module that
defines it (``@register_estimator("blockwise")``, ``@register_objective("diffu_grpo")``);
the trainer looks a variant up once, by the name its config gives
(``grpo.estimator``, ``grpo.objective``), and never compares names itself.
This module holds only the registries (no implementation): importing
:mod:`d1.algo.estimators` / :mod:`d1.algo.objectives` registers the built-in ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from d1.errors import ConfigError

T = TypeVar("T")


class Registry:
    """Name -> implementation, filled by :meth:`register`; read like a mapping (``registry[name]``,
    ``name in registry``, ``list(registry)``). An unknown name is a ConfigError listing the known ones,
    in registration order."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering its function or class under ``name`` (a name is registered once)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names are non-empty strings, got {name!r}")

        def decorate(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self._items[name]!r})")
            self._items[name] = obj
            return obj

        return decorate

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests that register a toy variant)."""
        self._items.pop(name, None)

    def get(self, name: str) -> Any:
        """The implementation registered as ``name``; a ConfigError naming the known ones if there is none."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise ConfigError(f"unknown {self.kind} {name!r} (known: {', '.join(self._items)})") from None

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._items

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._items)})"


#: log-prob estimators: name -> a :class:`d1.algo.estimators.Estimator` subclass
ESTIMATORS = Registry("estimator")
#: policy objectives: name -> a function ``(inputs, hparams, *, agg, num_tokens) -> (loss, stats)``
#: (see :mod:`d1.algo.objectives`)
OBJECTIVES = Registry("objective")

register_estimator = ESTIMATORS.register
register_objective = OBJECTIVES.register
