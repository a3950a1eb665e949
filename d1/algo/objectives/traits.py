"""What an objective needs from the trainer (:class:`ObjectiveTraits`), declared with :func:`objective_traits`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from d1.algo.objectives.agg import AGG_MODES

F = TypeVar("F", bound=Callable)


@dataclass(frozen=True)
class ObjectiveTraits:
    """What the trainer must do for an objective.

    agg: its :func:`agg_loss` mode (``token_mean``: the optimiser batch's kept tokens are the
    ``batch`` denominator; ``seq_mean``: its rows; ``sum``: none); uses_old_policy: score the
    rollout policy once per iteration when mu > 1 (False: a ratio-free objective, old_logp is None);
    uses_reference: it has a KL term weighted by ``grpo.beta`` (False: ``beta`` must be 0);
    estimator_outputs: the estimator outputs it reads (``Estimator.output``: ``token_logp``,
    ``elbo``, ``spg_bounds``); params: the dataclass of its own hyper-parameters
    (``grpo.objective_params``; its defaults are the paper's), or None."""

    agg: str = "token_mean"
    uses_old_policy: bool = True
    uses_reference: bool = True
    estimator_outputs: tuple[str, ...] = ("token_logp",)
    params: type | None = None


def objective_traits(**traits: Any) -> Callable[[F], F]:
    """Decorator recording an objective's :class:`ObjectiveTraits` (keyword arguments: its fields)."""
    value = ObjectiveTraits(**traits)
    if value.agg not in AGG_MODES:
        raise ValueError(f"objective_traits: agg {value.agg!r} is not one of {', '.join(AGG_MODES)}")
    if value.params is not None and not dataclasses.is_dataclass(value.params):
        raise ValueError(f"objective_traits: params must be a dataclass, got {value.params!r}")

    def decorate(fn: F) -> F:
        fn.traits = value  # type: ignore[attr-defined]
        return fn

    return decorate


def traits_of(objective: Any) -> ObjectiveTraits:
    """The :class:`ObjectiveTraits` an objective declared (the defaults when it declared none)."""
    return getattr(objective, "traits", None) or ObjectiveTraits()


def options_or_default(hparams: Any, params: type) -> Any:
    """The objective's own hyper-parameters from a ``grpo`` config (``hparams.objective_options()``), or
    ``params()`` (the paper's defaults) for hparams without them (a plain namespace in a test)."""
    getter = getattr(hparams, "objective_options", None)
    options = getter() if callable(getter) else None
    return options if options is not None else params()
