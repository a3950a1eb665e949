"""Adapter for masked-diffusion LMs trained with shifted logits (Dream-7B).

Dream was initialised from an autoregressive model and kept its output
convention: the logit row at position i predicts the token at position i+1.
Everything in d1 (sampler, SFT loss, log-prob estimator) expects LLaDA's
convention, where row i predicts the token at position i. The adapter moves
every row one step right: ``out[:, i] = logits[:, i - 1]`` for i >= 1, and row 0
(always a prompt position in practice) repeats row 0, as Dream's own sampler
does (``torch.cat([logits[:, :1], logits[:, :-1]], 1)``).

With a padded batch it also builds what Dream's forward expects: a boolean
[B, 1, L, L] mask allowing attention between real tokens only (plus each
padding slot to itself), and position ids counting the real tokens before each
position (as Dream's generation utilities do).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import MaskedLMOutput


def shift_logits_right(logits: torch.Tensor) -> torch.Tensor:
    """[B, L, V] -> [B, L, V] with row i taken from row i-1 (row 0 kept)."""
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


class ShiftedLogitsModel(nn.Module):
    """Wrap a model whose logit for position i comes out at i-1 so that logit i is for position i.

    ``inner`` is called as ``inner(input_ids, attention_mask=..., position_ids=...)`` and must
    return an object with ``.logits`` (or a logits tensor). The wrapper returns MaskedLMOutput
    with float32 logits. Attributes it does not have (config, device, save_pretrained,
    gradient_checkpointing_enable, ...) are looked up on ``inner``.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "inner":
                raise
            return getattr(self.inner, name)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> MaskedLMOutput:
        """input_ids [B, L]; attention_mask [B, L] (1 = token, 0 = padding) or None."""
        kwargs: dict[str, Any] = {}
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            real = attention_mask.bool()
            positions = real.long().cumsum(-1) - 1
            kwargs["position_ids"] = positions.clamp(min=0)
            allowed = real[:, None, None, :] & real[:, None, :, None]
            # Padding queries attend to themselves: an all-False row would make SDPA return NaN,
            # which would then leak through the (zero-weighted) padding values into real rows.
            allowed |= torch.eye(real.shape[1], dtype=torch.bool, device=real.device)
            kwargs["attention_mask"] = allowed
        out = self.inner(input_ids, **kwargs)
        logits = out.logits if hasattr(out, "logits") else out
        return MaskedLMOutput(logits=shift_logits_right(logits).float())
