"""Policy objectives of GRPO for masked-diffusion LMs, registered by name (``OBJECTIVES``).

An objective is a pure function over tensors::

    @register_objective("name")
    def objective(inputs: ObjectiveInputs, hparams, *, agg="token_mean", denominator=None)
            -> tuple[torch.Tensor, dict[str, float]]

``inputs`` holds the per-token log-probs of the current policy (with grad), of the
old and reference policies, the advantages and the kept-token mask (shapes in
:class:`ObjectiveInputs`); ``hparams`` is the run's ``grpo`` config (each
objective reads the hyper-parameters it needs, e.g. ``epsilon``, ``beta``).
The scalar loss is what is back-propagated; per-token objectives reduce their
per-token values with :func:`agg_loss` (``agg``, ``denominator``) so every
objective normalises the same way. The stats are floats over this
micro-batch's kept tokens; the trainer logs each one's kept-token-weighted
mean over micro-batches and processes (``loss``, ``num_tokens``, ``ratio_min``,
``ratio_max`` excepted).

Adding an objective: a module here defining it under ``@register_objective``,
one import line below, and its test.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from d1.algo.objectives.agg import AGG_MODES, agg_loss
from d1.algo.registry import OBJECTIVES, register_objective


@dataclass(frozen=True)
class ObjectiveInputs:
    """What an objective sees for one micro-batch of B completions of T tokens.

    logp: [B, T] float, the current policy's per-token log-probs (gradients flow through it);
    old_logp: [B, T] or None (mu = 1: the current policy detached); ref_logp: [B, T] or None
    (no reference pass when ``beta == 0``); advantages: [B]; mask: [B, T] bool, the kept tokens
    (up to the first stop token)."""

    logp: torch.Tensor
    old_logp: torch.Tensor | None
    ref_logp: torch.Tensor | None
    advantages: torch.Tensor
    mask: torch.Tensor


# the built-in objectives register themselves on import
from d1.algo.objectives import diffu_grpo  # noqa: E402,F401

__all__ = ["AGG_MODES", "OBJECTIVES", "ObjectiveInputs", "agg_loss", "register_objective"]
