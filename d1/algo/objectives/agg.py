"""The one aggregation of per-token loss values into a scalar loss, shared by every objective."""

from __future__ import annotations

import torch

from d1.errors import ConfigError

#: ``token_mean``: kept-token mean (d1/TRL); ``seq_mean``: mean over rows of each row's kept-token mean;
#: ``sum``: kept-token sum.
AGG_MODES = ("token_mean", "seq_mean", "sum")


def agg_loss(values: torch.Tensor, mask: torch.Tensor, mode: str, *,
             denominator: float | torch.Tensor | None = None) -> torch.Tensor:
    """Aggregate per-token values [B, T] over the kept tokens (mask [B, T], bool or 0/1) -> a scalar.

    - ``token_mean``: ``sum(values * mask) / sum(mask)`` (a count of 0 counts as 1), the
      loss of d1/TRL's GRPO: every kept token of the batch weighs the same;
    - ``seq_mean``: the mean over the B rows of each row's kept-token mean (a row with no kept
      token contributes 0 and still counts), so every sequence weighs the same;
    - ``sum``: ``sum(values * mask)``.

    ``denominator`` replaces the mode's count (``token_mean``: the kept tokens; ``seq_mean``:
    the rows): pass the optimiser batch's count and sum the micro-batch losses, and
    accumulating micro-batches gives the loss of the whole batch (``token_mean`` with the
    batch's kept-token count is the ``batch`` normalisation of :class:`d1.train.grpo_config.GRPOConfig`;
    plain ``token_mean`` per micro-batch, averaged over micro-batches, is its ``d1``).
    """
    if mode not in AGG_MODES:
        raise ConfigError(f"agg_loss: unknown mode {mode!r} (known: {', '.join(AGG_MODES)})")
    if values.dim() != 2 or mask.shape != values.shape:
        raise ConfigError(f"agg_loss: values {tuple(values.shape)} and mask {tuple(mask.shape)} must both be [B, T]")
    keep = mask.to(values.dtype)
    if mode == "sum":
        if denominator is not None:
            raise ConfigError("agg_loss: mode 'sum' takes no denominator")
        return (values * keep).sum()
    if mode == "token_mean":
        return (values * keep).sum() / (keep.sum().clamp(min=1) if denominator is None else denominator)
    per_row = (values * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)
    return per_row.sum() / (max(values.shape[0], 1) if denominator is None else denominator)
