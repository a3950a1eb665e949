"""SPG (Wang et al. 2025, arXiv 2510.09541): the sandwiched policy gradient (``spg``).

The log-likelihood ``log pi(o | q)`` of a masked diffusion LM is intractable; SPG replaces it in the
policy gradient ``-A_i log pi(o_i | q)`` by a bound chosen by the sign of the advantage, so that the
surrogate is a lower bound of the true objective on both sides:

- ``A_i > 0``: the evidence lower bound ``ELBO_i`` (maximised);
- ``A_i <= 0``: an evidence upper bound (minimised): the Rényi-type ``EUBO_i`` (variant ``eubo``), the
  mixture ``omega EUBO_i + (1 - omega) ELBO_i`` (``mix``, omega = ``mix_weight``), or ``ELBO_i`` itself
  (``elbo``, the ELBO-only ablation). A zero advantage contributes nothing whichever bound it takes.

The bounds are per token of the row (channels of the ``spg_blocks`` estimator,
:mod:`d1.algo.spg_estimator`): ``ELBO_i = sum_k c0_ik`` and ``EUBO_i = sum_k c1_ik / sum_k c2_ik``, each
``1 / L_i`` times the bound of the whole sequence. As the authors' ``compute_loss``, the row's loss is
weighted by its kept length L_i: every kept token of row i carries ``-A_i bound_i``, reduced with
:func:`agg_loss` (``token_mean``: ``sum_i L_i (-A_i bound_i) / sum_i L_i``, their loss exactly). No
ratio to the rollout policy, no clipping, no KL (``grpo.beta`` must be 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from d1.algo.objectives.agg import agg_loss
from d1.algo.objectives.traits import objective_traits
from d1.algo.registry import register_objective
from d1.errors import ConfigError

VARIANTS = ("mix", "eubo", "elbo")


@dataclass
class SPGParams:
    """SPG's own hyper-parameters (``grpo.objective_params``); defaults: the authors' mixture runs on
    GSM8K, MATH500 and Countdown (``spg/slurm_scripts/spg_mix/*_beta1.5_weight0.5.sbatch``).

    variant: the bound of the negative-advantage rows: ``mix`` (SPG w/ Mixture), ``eubo`` (SPG w/ EUBO),
    ``elbo`` (both sides the ELBO). eubo_beta: the Rényi order beta >= 1 of the EUBO (the authors: 1.5
    for GSM8K / MATH500 with either variant and Countdown with ``mix``, 2.0 for Countdown with ``eubo``,
    1.0 for Sudoku); the ``spg_blocks`` estimator reads it from here. mix_weight: omega of ``mix`` (0.5
    in every run of the authors)."""

    variant: str = "mix"
    eubo_beta: float = 1.5
    mix_weight: float = 0.5

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"spg: variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if not self.eubo_beta >= 1:
            raise ConfigError(f"spg: eubo_beta must be >= 1 (the EUBO is an upper bound for beta >= 1), "
                              f"got {self.eubo_beta}")
        if not 0.0 <= self.mix_weight <= 1.0:
            raise ConfigError(f"spg: mix_weight must be in [0, 1], got {self.mix_weight}")


def spg_bounds(channels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows' ELBO and EUBO per token [B] each from the ``spg_bounds`` channels [B, T, 3]."""
    elbo = channels[..., 0].sum(dim=1)
    eubo = channels[..., 1].sum(dim=1) / channels[..., 2].sum(dim=1).clamp(min=1)
    return elbo, eubo


def spg_loss(channels: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *, variant: str = "mix",
             mix_weight: float = 0.5, agg: str = "token_mean",
             denominator: float | torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """SPG's loss over a micro-batch (module docstring).

    channels: [B, T, 3] (``spg_blocks``); advantages: [B]; mask: [B, T] bool, the kept tokens.
    Per kept token of row i: ``-A_i bound_i``, ``bound_i = ELBO_i`` if ``A_i > 0``, else the variant's
    negative bound; reduced with :func:`agg_loss` (``agg``, ``denominator``).

    stats (floats over this micro-batch, rows weighted by their kept tokens): ``loss``, ``elbo``,
    ``eubo`` (per-token bounds), ``bound_gap`` (EUBO - ELBO), ``pos_frac`` (kept tokens of rows with
    A > 0), ``num_tokens``."""
    if variant not in VARIANTS:
        raise ConfigError(f"spg_loss: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if channels.dim() != 3 or channels.shape[2] != 3 or mask.shape != channels.shape[:2] \
            or advantages.shape != channels.shape[:1]:
        raise ConfigError(f"spg_loss: expected channels [B, T, 3], mask [B, T] and advantages [B]; got "
                          f"{tuple(channels.shape)}, {tuple(mask.shape)}, {tuple(advantages.shape)}")
    elbo, eubo = spg_bounds(channels)
    if variant == "eubo":
        negative = eubo
    elif variant == "mix":
        negative = mix_weight * eubo + (1 - mix_weight) * elbo
    else:
        negative = elbo
    adv = advantages.detach().to(channels.dtype)
    bound = torch.where(adv > 0, elbo, negative)
    per_token = (-adv * bound)[:, None].expand(mask.shape)
    loss = agg_loss(per_token, mask, agg, denominator=denominator)
    with torch.no_grad():
        lengths = mask.to(channels.dtype).sum(dim=1)
        n = lengths.sum().clamp(min=1)

        def weighted(values: torch.Tensor) -> float:
            return float((values * lengths).sum() / n)

        stats = {
            "loss": float(loss.detach()),
            "elbo": weighted(elbo),
            "eubo": weighted(eubo),
            "bound_gap": weighted(eubo - elbo),
            "pos_frac": weighted((adv > 0).to(channels.dtype)),
            "num_tokens": float(lengths.sum()),
        }
    return loss, stats


@register_objective("spg")
@objective_traits(agg="token_mean", uses_old_policy=False, uses_reference=False,
                  estimator_outputs=("spg_bounds",), params=SPGParams)
def spg(inputs: Any, hparams: Any, *, agg: str = "token_mean",
        denominator: float | torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """SPG's objective: :func:`spg_loss` with the variant and mix weight of ``hparams.objective_options()``
    (inputs: :class:`d1.algo.objectives.ObjectiveInputs`, ``logp`` the [B, T, 3] ``spg_bounds``; the
    EUBO's beta is applied by the estimator, which reads the same params)."""
    opts = hparams.objective_options()
    return spg_loss(inputs.logp, inputs.advantages, inputs.mask, variant=opts.variant, mix_weight=opts.mix_weight,
                    agg=agg, denominator=denominator)
