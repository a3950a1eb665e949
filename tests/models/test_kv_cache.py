"""LLaDA's block-wise KV cache: a window pass against a plain per-layer recomputation of the approximation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from d1.models.kv_cache import LayerKVCache
from d1.models.llada import apply_rotary, positions_from_mask, rotary_cos_sin
from tests.models.conftest import make_tiny_model


def _plain_window_logits(model, x_old, x_new, start, end, mask=None):
    """The dual/prefix approximation written out: every layer's keys/values outside [start, end) come from
    the hidden states of the full pass over ``x_old``; inside the window they are computed from ``x_new``."""
    cfg = model.config
    with torch.no_grad():
        old_hidden = model(x_old, attention_mask=mask, output_hidden_states=True).hidden_states
        L = x_old.shape[1]
        positions = positions_from_mask(mask) if mask is not None else torch.arange(L)[None]
        cos, sin = rotary_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
        h = model.model.transformer.wte(x_new[:, start:end])
        B = h.shape[0]
        for layer, block in enumerate(model.model.transformer.blocks):
            def heads(linear, states):
                return linear(states).view(B, states.shape[1], -1, cfg.head_dim).transpose(1, 2)

            normed_old = block.attn_norm(old_hidden[layer])
            normed = block.attn_norm(h)
            k = heads(block.k_proj, normed_old).clone()
            v = heads(block.v_proj, normed_old).clone()
            k[:, :, start:end] = heads(block.k_proj, normed)
            v[:, :, start:end] = heads(block.v_proj, normed)
            q = apply_rotary(heads(block.q_proj, normed), cos[..., start:end, :], sin[..., start:end, :])
            k = apply_rotary(k, cos, sin)
            bias = None
            if mask is not None:
                bias = torch.zeros(mask.shape, dtype=q.dtype).masked_fill(mask == 0, torch.finfo(q.dtype).min)
                bias = bias[:, None, None, :]
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            h = h + block.attn_out(att.transpose(1, 2).reshape(B, end - start, -1))
            g = block.ff_norm(h)
            h = h + block.ff_out(F.silu(block.ff_proj(g)) * block.up_proj(g))
        return model.model.transformer.ff_out(model.model.transformer.ln_f(h)).float()


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("window", [(6, 10), (6, 14)])  # dual (block only), prefix (block to the end)
def test_window_pass_matches_plain_recomputation(padded, window):
    model = make_tiny_model(vocab_size=40, seed=3, n_layers=3).double()
    g = torch.Generator().manual_seed(0)
    x_old = torch.randint(0, 38, (2, 14), generator=g)
    mask = None
    if padded:
        mask = torch.ones(2, 14, dtype=torch.long)
        mask[1, :3] = 0
    start, end = window
    x_new = x_old.clone()
    x_new[:, start:end] = torch.randint(0, 38, (2, end - start), generator=g)
    cache = LayerKVCache()
    with torch.no_grad():
        full = model(x_old, attention_mask=mask, kv_cache=cache).logits
        assert cache.length == 14 and len(cache.keys) == 3
        # the full pass that fills the cache is an ordinary forward pass
        assert torch.allclose(full, model(x_old, attention_mask=mask).logits, atol=1e-10)
        cache.start = start
        windowed = model(x_new[:, start:end], attention_mask=mask, kv_cache=cache).logits
    assert windowed.shape == (2, end - start, 40)
    expected = _plain_window_logits(model, x_old, x_new, start, end, mask)
    assert torch.allclose(windowed, expected, atol=1e-5)  # logits come back in float32
    # the approximation is not the exact pass over x_new (stale keys/values outside the window)
    with torch.no_grad():
        exact = model(x_new, attention_mask=mask).logits[:, start:end]
    assert (windowed - exact).abs().max() > 1e-3


def test_window_pass_on_unchanged_tokens_is_exact():
    model = make_tiny_model(vocab_size=40, seed=4).double()
    x = torch.randint(0, 38, (3, 12), generator=torch.Generator().manual_seed(1))
    cache = LayerKVCache()
    with torch.no_grad():
        full = model(x, kv_cache=cache).logits
        cache.start = 4
        windowed = model(x[:, 4:8], kv_cache=cache).logits
    assert torch.allclose(windowed, full[:, 4:8], atol=1e-5)


def test_one_layer_window_is_exact_after_changes():
    """With one layer the keys/values outside the window depend only on their own tokens: no approximation."""
    model = make_tiny_model(vocab_size=40, seed=5, n_layers=1).double()
    g = torch.Generator().manual_seed(2)
    x_old = torch.randint(0, 38, (2, 12), generator=g)
    x_new = x_old.clone()
    x_new[:, 4:8] = torch.randint(0, 38, (2, 4), generator=g)
    cache = LayerKVCache()
    with torch.no_grad():
        model(x_old, kv_cache=cache)
        cache.start = 4
        windowed = model(x_new[:, 4:8], kv_cache=cache).logits
        exact = model(x_new).logits[:, 4:8]
    assert torch.allclose(windowed, exact, atol=1e-5)


def test_cache_misuse_is_an_error():
    model = make_tiny_model(vocab_size=40)
    cache = LayerKVCache()
    cache.start = 2
    with torch.no_grad(), pytest.raises(RuntimeError, match="needs a full pass first"):
        model(torch.zeros(1, 4, dtype=torch.long), kv_cache=cache)
    cache.start = None
    with torch.no_grad():
        model(torch.zeros(1, 6, dtype=torch.long), kv_cache=cache)
        cache.start = 4
        with pytest.raises(RuntimeError, match=r"window \[4, 8\) of batch 1 does not fit the cached 6"):
            model(torch.zeros(1, 4, dtype=torch.long), kv_cache=cache)
        with pytest.raises(ValueError, match="attention_mask covers 5 positions, the cache 6"):
            model(torch.zeros(1, 2, dtype=torch.long), attention_mask=torch.ones(1, 5), kv_cache=cache)
