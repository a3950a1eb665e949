"""wd1 (Tang, Dolga, Yoon, Bogunovic 2025, arXiv 2507.08838): the ratio-free weighted log-likelihood (``wd1``).

Per group of G completions o_1..o_G of one prompt, with advantages A_1..A_G::

    w+_i = softmax_j(psi * A_j)_i,     w-_i = softmax_j(-psi * A_j)_i
    loss(group) = sum_i (neg_weight * w-_i - w+_i) * log pi(o_i | q)

``log pi(o_i | q)`` is the sum over the kept tokens of the estimator's per-token log-probs (d1's
one-step estimate in the paper's code). No old-policy ratio, no reference: only the current
policy is scored. The loss of a batch is the mean of its groups' losses, which is what the
authors' code computes (``wd1/trainers/rev_grpo_trainer.py``, ``compute_loss``: one micro-batch
= one group of 6, a plain sum over its rows; TRL averages the micro-batch losses over gradient
accumulation). Here a micro-batch may hold part of a group or several groups, so each row's
softmax is normalised over its whole group (``ObjectiveInputs.group_advantages`` [B, G]) and the
row's share of its group's loss, ``G * (neg_weight * w-_i - w+_i) * log pi(o_i | q)``, is
averaged over rows with :func:`agg_loss` mode ``seq_mean`` on a [B, 1] column: over a batch of
whole groups that mean equals the mean over groups of the code's per-group sum, whatever the
micro-batching (``loss_normalization: batch`` passes the batch's row count as ``denominator``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from d1.algo.objectives.agg import agg_loss
from d1.algo.objectives.traits import objective_traits, options_or_default
from d1.algo.registry import register_objective
from d1.errors import ConfigError


@dataclass
class WD1Params:
    """wd1's own hyper-parameters (``grpo.objective_params``).

    psi: the inverse temperature of the advantage softmax (the paper's psi; its code has none, i.e. 1).
    neg_weight: the weight of the negative-sample term sum_i w-_i log pi (1 in the paper's wd1 and
    code; 0 gives the positive-only variant, the code's ``wll_d1_pos_only`` trainer)."""

    psi: float = 1.0
    neg_weight: float = 1.0

    def validate(self) -> None:
        if not self.psi > 0:
            raise ConfigError(f"wd1: psi must be > 0, got {self.psi}")
        if not self.neg_weight >= 0:
            raise ConfigError(f"wd1: neg_weight must be >= 0, got {self.neg_weight}")


def group_weights(advantages: torch.Tensor, group_advantages: torch.Tensor,
                  psi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Row i's positive and negative weights [B]: ``exp(+-psi A_i) / sum_j exp(+-psi A_j)`` over its group
    (``group_advantages`` [B, G] holds row i's group, its own A_i among them), computed stably."""
    a = advantages.detach().to(torch.float64)[:, None]
    g = group_advantages.detach().to(torch.float64)
    pos = torch.exp(psi * a - torch.logsumexp(psi * g, dim=1, keepdim=True))[:, 0]
    neg = torch.exp(-psi * a - torch.logsumexp(-psi * g, dim=1, keepdim=True))[:, 0]
    return pos, neg


def wd1_loss(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, group_advantages: torch.Tensor, *,
             psi: float = 1.0, neg_weight: float = 1.0, agg: str = "seq_mean",
             denominator: float | torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """wd1's loss over a micro-batch (module docstring).

    logp, mask: [B, T] (per-token log-prob estimates with grad; kept tokens); advantages: [B];
    group_advantages: [B, G]. Per row: ``seq_logp_i = sum_k mask_ik logp_ik``, value
    ``G * (neg_weight * w-_i - w+_i) * seq_logp_i``; the loss is :func:`agg_loss` of the [B, 1]
    column of values (``seq_mean``: their mean over rows, or their sum over ``denominator`` rows;
    ``sum``: their sum). ``token_mean`` is refused: the loss is per sequence, a token count
    would rescale it by the mean length.

    stats: ``loss``, ``policy_loss`` (the loss of this micro-batch's rows, mean over rows),
    ``pos_loss`` / ``neg_loss`` (the two terms, same normalisation), ``weight_pos_mean``,
    ``weight_pos_max``, ``weight_neg_mean``, ``weight_neg_max`` (over rows), ``seq_logp``
    (mean over rows of log pi(o|q)), ``num_tokens``.
    """
    if agg not in ("seq_mean", "sum"):
        raise ConfigError(f"wd1: a sequence-level loss aggregates with seq_mean or sum, got {agg!r}")
    if logp.dim() != 2 or mask.shape != logp.shape or advantages.shape != logp.shape[:1]:
        raise ConfigError(f"wd1: expected logp and mask [B, T] and advantages [B]; got {tuple(logp.shape)}, "
                          f"{tuple(mask.shape)}, {tuple(advantages.shape)}")
    if group_advantages is None or group_advantages.dim() != 2 or group_advantages.shape[0] != logp.shape[0]:
        raise ConfigError("wd1: needs group_advantages [B, G] (each row's group of advantages)")
    if not psi > 0 or not neg_weight >= 0:
        raise ConfigError(f"wd1: psi must be > 0 and neg_weight >= 0, got {psi}, {neg_weight}")
    group = group_advantages.shape[1]
    keep = mask.to(logp.dtype)
    seq_logp = (logp * keep).sum(dim=1)
    pos, neg = group_weights(advantages, group_advantages, psi)
    pos, neg = pos.to(logp.dtype), neg.to(logp.dtype)
    coef = group * (neg_weight * neg - pos)
    column = torch.ones((logp.shape[0], 1), dtype=torch.bool, device=logp.device)
    loss = agg_loss((coef * seq_logp)[:, None], column, agg, denominator=denominator)

    with torch.no_grad():
        rows = max(logp.shape[0], 1)
        stats = {
            "loss": float(loss.detach()),
            "policy_loss": float((coef * seq_logp).sum() / rows),
            "pos_loss": float((-group * pos * seq_logp).sum() / rows),
            "neg_loss": float((group * neg_weight * neg * seq_logp).sum() / rows),
            "weight_pos_mean": float(pos.mean()) if pos.numel() else 0.0,
            "weight_pos_max": float(pos.max()) if pos.numel() else 0.0,
            "weight_neg_mean": float(neg.mean()) if neg.numel() else 0.0,
            "weight_neg_max": float(neg.max()) if neg.numel() else 0.0,
            "seq_logp": float(seq_logp.sum() / rows),
            "num_tokens": float(keep.sum()),
        }
    return loss, stats


@register_objective("wd1")
@objective_traits(agg="seq_mean", uses_old_policy=False, uses_reference=False, estimator_outputs=("token_logp",),
                  params=WD1Params)
def wd1(inputs: Any, hparams: Any, *, agg: str = "seq_mean",
        denominator: float | torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """wd1: :func:`wd1_loss` with ``psi`` / ``neg_weight`` from ``hparams.objective_options()``
    (inputs: :class:`d1.algo.objectives.ObjectiveInputs`; ``old_logp`` / ``ref_logp`` are ignored:
    the trainer computes none for it)."""
    params = options_or_default(hparams, WD1Params)
    return wd1_loss(inputs.logp, inputs.advantages, inputs.mask, inputs.group_advantages, psi=params.psi,
                    neg_weight=params.neg_weight, agg=agg, denominator=denominator)
