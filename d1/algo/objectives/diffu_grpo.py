"""d1's objective: the PPO-clipped policy loss + ``beta`` x k3 KL (``diffu_grpo``), and :func:`diffu_grpo_loss`."""

from __future__ import annotations

from typing import Any

import torch

from d1.algo.objectives.agg import agg_loss
from d1.algo.objectives.traits import objective_traits
from d1.algo.registry import register_objective
from d1.errors import ConfigError


def diffu_grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps: float,
    beta: float,
    num_tokens: float | torch.Tensor | None = None,
    agg: str = "token_mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clipped policy loss + ``beta`` * k3 KL, averaged over kept tokens.

    logp, old_logp, ref_logp, mask: [B, T]; advantages: [B]. Per token:
    ``ratio = exp(logp - old_logp)``,
    ``loss_k = -min(ratio A, clip(ratio, 1 - eps, 1 + eps) A) + beta KL_k``,
    ``KL_k = exp(ref - logp) - (ref - logp) - 1`` (k3, >= 0).
    Loss = sum over kept tokens (``mask``) / ``num_tokens``, where ``num_tokens``
    defaults to the kept-token count of this micro-batch (d1/TRL of that time: a
    global token mean over the micro-batch, not a mean of per-sequence means).
    When accumulating gradients pass the kept-token count of the whole optimiser
    batch and sum the micro-batch losses: then 1 x 4 and 4 x 1 micro-batching
    give the same gradient (d1 averaged per-micro-batch means instead).
    ``agg`` (default ``token_mean``, the above) is the :func:`~d1.algo.objectives.agg_loss`
    mode; ``num_tokens`` is its ``denominator``.

    ``old_logp=None`` means ``logp.detach()`` (mu = 1: ratio 1, gradient ``-A``);
    ``ref_logp`` may be None when ``beta == 0`` (the reference crashed with mu = 1
    and beta != 0; here the two are independent). ``old_logp`` and ``ref_logp``
    are detached: gradients flow only through ``logp``.

    stats (floats, over kept tokens of this micro-batch): ``loss``,
    ``policy_loss``, ``kl`` (only when ``ref_logp`` is given), ``ratio_mean``,
    ``ratio_min``, ``ratio_max``, ``clip_frac`` (tokens whose gradient the clip
    removes: ``clip_low_frac`` = ratio < 1 - eps with A < 0, ``clip_high_frac`` =
    ratio > 1 + eps with A > 0, as newer TRL reports), ``num_tokens``.
    """
    if not eps > 0:
        raise ConfigError(f"diffu_grpo_loss: eps must be > 0, got {eps!r}")
    if not beta >= 0:
        raise ConfigError(f"diffu_grpo_loss: beta must be >= 0, got {beta!r}")
    if beta != 0 and ref_logp is None:
        raise ConfigError(f"diffu_grpo_loss: beta = {beta} needs ref_logp")
    shapes = {"old_logp": old_logp, "ref_logp": ref_logp, "mask": mask}
    for name, tensor in shapes.items():
        if tensor is not None and tensor.shape != logp.shape:
            raise ConfigError(f"diffu_grpo_loss: {name} has shape {tuple(tensor.shape)}, logp {tuple(logp.shape)}")
    if logp.dim() != 2 or advantages.shape != logp.shape[:1]:
        raise ConfigError(
            f"diffu_grpo_loss: expected logp [B, T] and advantages [B]; got {tuple(logp.shape)}, "
            f"{tuple(advantages.shape)}"
        )

    old_logp = logp.detach() if old_logp is None else old_logp.detach()
    keep = mask.to(logp.dtype)
    count = keep.sum()
    adv = advantages.detach().to(logp.dtype)[:, None]

    ratio = torch.exp(logp - old_logp)
    clipped_ratio = torch.clamp(ratio, 1 - eps, 1 + eps)
    policy_term = -torch.min(ratio * adv, clipped_ratio * adv)
    per_token = policy_term
    kl = None
    if ref_logp is not None:
        log_ratio_ref = ref_logp.detach() - logp
        kl = torch.exp(log_ratio_ref) - log_ratio_ref - 1
        if beta != 0:
            per_token = per_token + beta * kl
    loss = agg_loss(per_token, mask, agg, denominator=num_tokens)

    with torch.no_grad():
        n = count.clamp(min=1)
        kept = keep.bool()

        def kept_mean(values: torch.Tensor) -> float:
            return float((values * keep).sum() / n)

        low = (ratio < 1 - eps) & (adv < 0) & kept
        high = (ratio > 1 + eps) & (adv > 0) & kept
        stats = {
            "loss": float(loss.detach()),
            "policy_loss": kept_mean(policy_term),
            "ratio_mean": kept_mean(ratio),
            "ratio_min": float(ratio[kept].min()) if kept.any() else 1.0,
            "ratio_max": float(ratio[kept].max()) if kept.any() else 1.0,
            "clip_low_frac": float(low.sum() / n),
            "clip_high_frac": float(high.sum() / n),
            "clip_frac": float((low | high).sum() / n),
            "num_tokens": float(count),
        }
        if kl is not None:
            stats["kl"] = kept_mean(kl)
    return loss, stats


@register_objective("diffu_grpo")
@objective_traits(agg="token_mean", uses_old_policy=True, uses_reference=True, estimator_outputs=("token_logp",))
def diffu_grpo(inputs: Any, hparams: Any, *, agg: str = "token_mean",
               denominator: float | torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """d1's diffu-GRPO objective: :func:`diffu_grpo_loss` with ``eps = hparams.epsilon``,
    ``beta = hparams.beta`` (inputs: :class:`d1.algo.objectives.ObjectiveInputs`)."""
    return diffu_grpo_loss(inputs.logp, inputs.old_logp, inputs.ref_logp, inputs.advantages, inputs.mask,
                           eps=hparams.epsilon, beta=hparams.beta, num_tokens=denominator, agg=agg)
