"""Where the sampler's block logits come from: a full pass per step, or block-wise cached passes.

Registered by name (``CACHE_MODES``) and looked up once per :func:`d1.generation.generate` call:

- ``none``: one forward pass over the whole sequence per step (LLaDA's sampler).
- ``dual``: at the start of each block a full pass returns the block's logits
  and refreshes every layer's keys/values; the block's later steps recompute
  only the block, attending to cached keys/values of the prefix *and* the
  suffix (Fast-dLLM's DualCache).
- ``prefix``: as ``dual``, but the later steps recompute the block and everything
  after it; only the prefix is cached (Fast-dLLM's PrefixCache).

The first step of every block is therefore exact; later steps are the
Fast-dLLM approximation (stale keys/values outside the recomputed window). The
cached modes need a model with ``supports_kv_cache`` (the protocol of
:mod:`d1.models.kv_cache`; d1's LLaDA class has it, also under a peft LoRA
wrapper).
"""

from __future__ import annotations

from typing import Any

import torch

from d1.errors import ConfigError
from d1.models.kv_cache import LayerKVCache


def as_logits(output: Any) -> torch.Tensor:
    """The logits of a model call: ``output.logits`` or the tensor itself."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise ConfigError(
        f"the model returned {type(output).__name__}; expected a tensor of logits or an object with .logits"
    )


def _checked_logits(output: Any, batch: int, length: int, what: str) -> torch.Tensor:
    logits = as_logits(output)
    if logits.dim() != 3 or tuple(logits.shape[:2]) != (batch, length):
        raise ConfigError(
            f"generate: the model returned logits of shape {tuple(logits.shape)} for {what} {(batch, length)}; "
            "expected [batch, length, vocab]"
        )
    return logits


class FullPasses:
    """``cache="none"``: each step is one forward pass over the whole sequence."""

    needs_model_support = False

    def __init__(self, model: Any, attention_mask: torch.Tensor | None) -> None:
        self.model = model
        self.attention_mask = attention_mask

    def _call(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        if self.attention_mask is None:
            return self.model(input_ids, **kwargs)
        return self.model(input_ids, attention_mask=self.attention_mask, **kwargs)

    def block_logits(self, x: torch.Tensor, start: int, end: int, refresh: bool) -> torch.Tensor:
        """Logits [B, end - start, V] of the block of x [B, L]; ``refresh``: first step of the block."""
        logits = _checked_logits(self._call(x), x.shape[0], x.shape[1], "input")
        return logits[:, start:end].contiguous()  # a copy: the full [B, L, V] logits can be freed


class DualCache(FullPasses):
    """``cache="dual"``: the block's later steps recompute the block only."""

    needs_model_support = True
    window_reaches_end = False

    def __init__(self, model: Any, attention_mask: torch.Tensor | None) -> None:
        super().__init__(model, attention_mask)
        self.cache = LayerKVCache()

    def block_logits(self, x: torch.Tensor, start: int, end: int, refresh: bool) -> torch.Tensor:
        if refresh or self.cache.length != x.shape[1]:
            self.cache.start = None
            logits = _checked_logits(self._call(x, kv_cache=self.cache), x.shape[0], x.shape[1], "input")
            return logits[:, start:end].contiguous()
        window_end = x.shape[1] if self.window_reaches_end else end
        self.cache.start = start
        try:
            output = self._call(x[:, start:window_end], kv_cache=self.cache)
        finally:
            self.cache.start = None
        logits = _checked_logits(output, x.shape[0], window_end - start, "a cached window")
        return logits[:, : end - start].contiguous()


class PrefixCache(DualCache):
    """``cache="prefix"``: the block's later steps recompute the block and everything after it."""

    window_reaches_end = True


CACHE_MODES: dict[str, type[FullPasses]] = {"none": FullPasses, "prefix": PrefixCache, "dual": DualCache}


def cache_mode(name: Any, model: Any) -> type[FullPasses]:
    """The class behind cache mode ``name`` for ``model``; ConfigError for an unknown name or a model
    that cannot take a cache (naming its class)."""
    mode = CACHE_MODES.get(name) if isinstance(name, str) else None
    if mode is None:
        raise ConfigError(f"generate: unknown cache {name!r}; expected one of {tuple(CACHE_MODES)}")
    if mode.needs_model_support and not getattr(model, "supports_kv_cache", False):
        raise ConfigError(
            f"generate: cache={name!r} needs a model that takes kv_cache= (d1's LLaDA does); "
            f"{type(model).__name__} does not: use cache='none'"
        )
    return mode
