"""Policy objectives of GRPO for masked-diffusion LMs, registered by name (``OBJECTIVES``).

An objective is a pure function over tensors::

    @register_objective("name")
    @objective_traits(agg="token_mean", ...)          # optional: what the trainer must provide
    def objective(inputs: ObjectiveInputs, hparams, *, agg="token_mean", denominator=None)
            -> tuple[torch.Tensor, dict[str, float]]

``inputs`` holds the current policy's estimates (with grad), the old and
reference policies' (same estimator, same randomness), the advantages, each
row's group of advantages and the kept-token mask (shapes in
:class:`ObjectiveInputs`); ``hparams`` is the run's ``grpo`` config: each
objective reads the shared hyper-parameters it needs (``epsilon``, ``beta``)
and its own from ``hparams.objective_options()`` (an instance of its
``params`` dataclass, filled from ``grpo.objective_params``). The scalar loss
is what is back-propagated; objectives reduce their values with
:func:`agg_loss` (mode ``agg``, ``denominator``: the optimiser batch's count
under ``loss_normalization: batch``) so every objective normalises the same way.
The stats are floats over this micro-batch; the trainer logs each one's
kept-token-weighted mean over micro-batches and processes (``loss``,
``num_tokens``, ``ratio_min``, ``ratio_max`` excepted).

:func:`objective_traits` tells the trainer what an objective needs; an objective
without it gets the defaults of :class:`ObjectiveTraits` (d1's needs).

Adding an objective: a module here defining it under ``@register_objective``,
one import line below, and its test (docs/algorithms.md, "Adding an objective").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from d1.algo.objectives.agg import AGG_MODES, agg_loss
from d1.algo.objectives.traits import ObjectiveTraits, objective_traits, traits_of
from d1.algo.registry import OBJECTIVES, register_objective
from d1.errors import ConfigError


@dataclass(frozen=True)
class ObjectiveInputs:
    """What an objective sees for one micro-batch of B completions of T tokens.

    logp: [B, T] float (or [B, T, C] for an estimator with C output channels, e.g. ``spg_blocks``),
    the current policy's estimates (gradients flow through it); old_logp: same shape or None (mu = 1,
    or an objective without a ratio: the trainer computes none); ref_logp: same shape or None (no
    reference pass when ``beta == 0``); advantages: [B]; mask: [B, T] bool, the kept tokens (up to the
    first stop token); group_advantages: [B, G] or None, the advantages of each row's whole group of G
    completions (row i's own among them), for objectives that weigh a row against its group (wd1);
    the group may span micro-batches, so the trainer passes it whole."""

    logp: torch.Tensor
    old_logp: torch.Tensor | None
    ref_logp: torch.Tensor | None
    advantages: torch.Tensor
    mask: torch.Tensor
    group_advantages: torch.Tensor | None = None


def objective_params(name: str, values: dict, where: str) -> Any:
    """Objective ``name``'s params dataclass filled from ``values`` (unknown keys and bad types are
    ConfigErrors naming ``where.<key>``; its ``validate()`` runs), or None for an objective without
    params (then ``values`` must be empty)."""
    from d1.config import from_dict

    params = traits_of(OBJECTIVES.get(name)).params
    if params is None:
        if values:
            raise ConfigError(f"{where}: objective {name!r} takes no parameters, got {', '.join(sorted(values))}")
        return None
    return from_dict(params, values, where)


def group_rows(advantages: torch.Tensor, group_size: int) -> torch.Tensor:
    """advantages [N] in consecutive groups of ``group_size`` -> [N, G]: row i holds its group's."""
    if advantages.dim() != 1 or advantages.numel() % group_size:
        raise ConfigError(f"group_rows: {advantages.numel()} advantages do not split into groups of {group_size}")
    groups = advantages.view(-1, group_size)
    return groups.repeat_interleave(group_size, dim=0)


# the built-in objectives register themselves on import
from d1.algo.objectives import diffu_grpo, espo, spg, wd1  # noqa: E402,F401

__all__ = ["AGG_MODES", "OBJECTIVES", "ObjectiveInputs", "ObjectiveTraits", "agg_loss", "group_rows",
           "objective_params", "objective_traits", "register_objective", "traits_of"]
