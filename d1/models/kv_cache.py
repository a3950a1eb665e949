"""Per-layer key/value cache for block-wise approximate decoding (Fast-dLLM's prefix and dual cache).

A masked-diffusion model attends bidirectionally, so the keys and values of a
position change whenever any token changes: there is no exact cache. The
block-wise approximation (Fast-dLLM, arXiv:2505.22618) refreshes the cache with
one full forward pass at the start of each decoding block and, for the next
steps of that block, recomputes only a *window* of positions, whose queries
attend to fresh keys/values inside the window and cached ones outside it.

Protocol between the sampler and a model that supports it (``model.supports_kv_cache``):

1. ``cache = LayerKVCache()``; ``model(x, attention_mask=mask, kv_cache=cache)``
   with the whole sequence x [B, L]: a normal forward pass that also stores each
   layer's keys and values (after rotary embedding, before any grouped-query
   repetition), [B, n_kv_heads, L, head_dim].
2. ``cache.start = s``; ``model(x[:, s:s + W], attention_mask=mask, kv_cache=cache)``:
   the input is the window only, ``attention_mask`` still covers the whole
   sequence [B, L] (it gives the window its rotary positions and masks padding
   keys). Each layer writes the window's fresh keys/values into the cache in
   place and attends to the whole cached sequence; logits [B, W, V] come back.
3. ``cache.start = None`` before the next full pass (the refresh).

Writing the window in place is harmless: the window's keys/values are
recomputed at every step, and the next full pass overwrites everything.
"""

from __future__ import annotations

import torch


class LayerKVCache:
    """Keys and values of every layer of one sequence batch, refreshed by full passes.

    ``start``: None while a full pass fills the cache; the first position of the
    window while a window pass reads and updates it.
    """

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.start: int | None = None

    @property
    def length(self) -> int:
        """Cached sequence length (0 before the first full pass)."""
        return self.keys[0].shape[2] if self.keys else 0

    def check_window(self, batch: int, width: int) -> None:
        """Raise unless a window of ``width`` positions at ``start`` fits the cached batch."""
        if not self.keys:
            raise RuntimeError("LayerKVCache: a window pass needs a full pass first")
        end = self.start + width
        cached = self.keys[0]
        if end > cached.shape[2] or cached.shape[0] != batch:
            raise RuntimeError(
                f"LayerKVCache: window [{self.start}, {end}) of batch {batch} does not fit the cached "
                f"{cached.shape[2]} positions of batch {cached.shape[0]}"
            )

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (full pass) or splice in (window pass) one layer's keys/values [B, H, W, D].

        Returns the keys/values the layer's queries attend to: the whole sequence.
        """
        if self.start is None:
            if layer == 0:
                self.keys, self.values = [], []
            if layer != len(self.keys):
                raise RuntimeError(f"LayerKVCache: layer {layer} stored out of order (have {len(self.keys)})")
            self.keys.append(keys)
            self.values.append(values)
            return keys, values
        if layer >= len(self.keys):
            raise RuntimeError("LayerKVCache: a window pass needs a full pass first")
        self.check_window(keys.shape[0], keys.shape[2])
        end = self.start + keys.shape[2]
        cached_k, cached_v = self.keys[layer], self.values[layer]
        cached_k[:, :, self.start:end] = keys
        cached_v[:, :, self.start:end] = values
        return cached_k, cached_v
