"""ESPO (Ou, Han, Xu, Xu, Xie, Ermon, Wu, Li 2025, arXiv 2512.03759): sequence-level PPO on ELBOs (``espo``).

Each completion is one action; its log-likelihood is replaced by a Monte Carlo ELBO
(the ``elbo`` estimator, :mod:`d1.algo.elbo_estimator`, whose per-token terms sum over the
kept tokens to ``ELBO(o_i)``). With ``L_i`` the kept length of completion i::

    rho_i   = exp((ELBO_theta(o_i) - ELBO_old(o_i)) / L_i)
    policy_i = -min(rho_i A_i, clip(rho_i, 1 - eps_low, 1 + eps_high) A_i)
    kl_i    = (ELBO_theta(o_i) - ELBO_ref(o_i))^2 / (2 L_i)          (k2 on the sequence ELBOs)
    loss    = mean_i (policy_i + beta kl_i)

Old, reference and current policy score the same draw (masks, rates) of the iteration.
The authors' code (``espo/espo_trainer.py``, ``compute_loss`` and ``compute_approx_kl``) uses the
generation length for L (every completion has it, padding included); here ``L_i`` is the
completion's kept length (tokens up to its first stop), the length of the sequence whose
ELBO is estimated. Their KL is ``sum_i (dELBO_i)^2 / 2 / (B L)``, i.e. the same per-sequence
``(dELBO)^2 / (2 L)`` averaged over sequences. ``eps_low`` is the shared ``grpo.epsilon``;
``eps_high`` is ``objective_params.epsilon_high`` (None: ``epsilon``, TRL's rule).
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
class ESPOParams:
    """ESPO's own hyper-parameters (``grpo.objective_params``); ``epsilon`` (lower clip) and ``beta``
    (KL weight) are the shared ``grpo`` fields.

    epsilon_high: the upper clip ``1 + epsilon_high`` (None: ``grpo.epsilon``, as TRL when
    ``epsilon_high`` is unset; ESPO's recipes never set it)."""

    epsilon_high: float | None = None

    def validate(self) -> None:
        if self.epsilon_high is not None and not self.epsilon_high >= 0:
            raise ConfigError(f"espo: epsilon_high must be >= 0, got {self.epsilon_high}")


def espo_loss(elbo_terms: torch.Tensor, old_terms: torch.Tensor | None, ref_terms: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, *, eps_low: float, eps_high: float | None = None,
              beta: float = 0.0, agg: str = "seq_mean",
              denominator: float | torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """ESPO's loss over a micro-batch (module docstring).

    elbo_terms, old_terms, ref_terms, mask: [B, T] (per-token ELBO terms; the sums over the kept tokens are
    the sequence ELBOs); advantages: [B]. ``old_terms=None``: the current ELBO detached (mu = 1: ratio 1,
    gradient ``-A_i / L_i`` times the ELBO's). ``ref_terms`` may be None only when ``beta == 0``.
    Per row the value ``policy_i + beta kl_i`` is reduced with :func:`agg_loss` on a [B, 1] column
    (``seq_mean``: mean over rows, or sum over ``denominator`` rows; ``sum``); ``token_mean`` is refused.

    stats: ``loss``, ``policy_loss`` and ``kl`` (means over rows; ``kl`` when ``ref_terms`` is given),
    ``ratio_mean``, ``ratio_min``, ``ratio_max``, ``clip_low_frac`` (rho < 1 - eps_low with A < 0),
    ``clip_high_frac`` (rho > 1 + eps_high with A > 0), ``clip_frac`` (fractions of rows),
    ``elbo_mean`` (mean over rows of the current ELBO per kept token), ``num_tokens``.
    """
    eps_high = eps_low if eps_high is None else eps_high
    if agg not in ("seq_mean", "sum"):
        raise ConfigError(f"espo: a sequence-level loss aggregates with seq_mean or sum, got {agg!r}")
    if not eps_low >= 0 or not eps_high >= 0:
        raise ConfigError(f"espo: clip ranges must be >= 0, got {eps_low}, {eps_high}")
    if not beta >= 0:
        raise ConfigError(f"espo: beta must be >= 0, got {beta}")
    if beta != 0 and ref_terms is None:
        raise ConfigError(f"espo: beta = {beta} needs the reference's ELBO terms")
    for name, tensor in {"old_terms": old_terms, "ref_terms": ref_terms, "mask": mask}.items():
        if tensor is not None and tensor.shape != elbo_terms.shape:
            raise ConfigError(f"espo: {name} has shape {tuple(tensor.shape)}, elbo_terms {tuple(elbo_terms.shape)}")
    if elbo_terms.dim() != 2 or advantages.shape != elbo_terms.shape[:1]:
        raise ConfigError(f"espo: expected elbo_terms [B, T] and advantages [B]; got {tuple(elbo_terms.shape)}, "
                          f"{tuple(advantages.shape)}")

    keep = mask.to(elbo_terms.dtype)
    length = keep.sum(dim=1).clamp(min=1)
    elbo = (elbo_terms * keep).sum(dim=1)
    old = elbo.detach() if old_terms is None else (old_terms.detach() * keep).sum(dim=1)
    adv = advantages.detach().to(elbo.dtype)

    ratio = torch.exp((elbo - old) / length)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    policy = -torch.min(ratio * adv, clipped * adv)
    per_row = policy
    kl = None
    if ref_terms is not None:
        ref = (ref_terms.detach() * keep).sum(dim=1)
        kl = (elbo - ref) ** 2 / (2 * length)
        if beta != 0:
            per_row = per_row + beta * kl
    column = torch.ones((elbo_terms.shape[0], 1), dtype=torch.bool, device=elbo_terms.device)
    loss = agg_loss(per_row[:, None], column, agg, denominator=denominator)

    with torch.no_grad():
        rows = max(elbo_terms.shape[0], 1)
        low = (ratio < 1 - eps_low) & (adv < 0)
        high = (ratio > 1 + eps_high) & (adv > 0)
        stats = {
            "loss": float(loss.detach()),
            "policy_loss": float(policy.sum() / rows),
            "ratio_mean": float(ratio.sum() / rows),
            "ratio_min": float(ratio.min()) if ratio.numel() else 1.0,
            "ratio_max": float(ratio.max()) if ratio.numel() else 1.0,
            "clip_low_frac": float(low.sum() / rows),
            "clip_high_frac": float(high.sum() / rows),
            "clip_frac": float((low | high).sum() / rows),
            "elbo_mean": float((elbo / length).sum() / rows),
            "num_tokens": float(keep.sum()),
        }
        if kl is not None:
            stats["kl"] = float(kl.sum() / rows)
    return loss, stats


@register_objective("espo")
@objective_traits(agg="seq_mean", uses_old_policy=True, uses_reference=True, estimator_outputs=("elbo",),
                  params=ESPOParams)
def espo(inputs: Any, hparams: Any, *, agg: str = "seq_mean",
         denominator: float | torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """ESPO: :func:`espo_loss` with ``eps_low = hparams.epsilon``, ``eps_high`` from
    ``objective_params.epsilon_high`` (None: ``epsilon``), ``beta = hparams.beta``
    (inputs: :class:`d1.algo.objectives.ObjectiveInputs` of the ``elbo`` estimator)."""
    params = options_or_default(hparams, ESPOParams)
    return espo_loss(inputs.logp, inputs.old_logp, inputs.ref_logp, inputs.advantages, inputs.mask,
                     eps_low=hparams.epsilon, eps_high=params.epsilon_high, beta=hparams.beta, agg=agg,
                     denominator=denominator)
