"""Our own implementation of the LLaDA architecture (bidirectional masked-diffusion transformer).

LLaDA-8B-Instruct ships an OLMo-derived modelling file with its weights
(``modeling_llada.py``, loaded with ``trust_remote_code``). That file was
written for transformers 4.x, has no working gradient checkpointing hook and
mishandles padded batches (depending on the copy, the attention mask is
ignored or rotary positions do not follow the padding). This module is an
independent re-implementation with:

* LLaDA's config field names (:class:`LLaDAConfig`, ``model_type = "llada"``),
  so LLaDA's own ``config.json`` loads unchanged, and the defaults are the
  LLaDA-8B-Instruct values;
* LLaDA's parameter names (``model.transformer.wte``,
  ``model.transformer.blocks.{i}.{attn_norm,q_proj,k_proj,v_proj,attn_out,
  ff_norm,ff_proj,up_proj,ff_out}``, ``model.transformer.ln_f``,
  ``model.transformer.ff_out``), so the published checkpoint loads with no
  missing or unexpected keys;
* the same numerics as LLaDA's plain (no-cache) forward path, checked against
  a golden fixture produced by LLaDA's code (``tests/models/test_llada.py``);
* padding handled properly: ``attention_mask`` [B, L] (1 = token, 0 =
  padding) masks padding keys for every query, and rotary positions count the
  real tokens before each position, so a left-padded row gives the logits of
  the unpadded sequence on its real tokens;
* torch SDPA attention, gradient checkpointing, float32 logits.

Only the configuration LLaDA actually uses is implemented (``block_type
"llama"``, SiLU-gated MLP, RMSNorm, RoPE, no ALiBi, no QK-norm, no block
groups); a config asking for anything else is rejected with a ConfigError
naming the field, rather than silently computing something different.

The built-in tiny model (:func:`tiny_llada_config`) is this same class with a
small config, so the CPU default and LLaDA-8B-Instruct share every line.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import MaskedLMOutput

from d1.errors import ConfigError
from d1.models.kv_cache import LayerKVCache

# LLaDA-8B-Instruct's values, used as defaults so that ``LLaDAConfig()`` is that model.
LLADA_8B_MASK_ID = 126336
LLADA_8B_EOS_ID = 126081
LLADA_8B_VOCAB = 126464


class LLaDAConfig(PretrainedConfig):
    """LLaDA's configuration, with LLaDA's field names and LLaDA-8B-Instruct's values as defaults.

    Fields used by the model: d_model, n_heads, n_kv_heads (None = n_heads),
    multi_query_attention, n_layers, mlp_hidden_size (None = mlp_ratio *
    d_model), mlp_ratio, vocab_size, embedding_size (rows of the embedding and
    output matrices; None = vocab_size), max_sequence_length (informational:
    positions are computed on the fly, longer inputs work), rope_theta,
    rope_full_precision, rms_norm_eps, include_bias, include_qkv_bias,
    bias_for_layer_norm (None = include_bias), layer_norm_with_affine,
    weight_tying, scale_logits, input_emb_norm, attention_dropout,
    residual_dropout, embedding_dropout, init_fn ("mitchell" or "normal"),
    init_std, mask_token_id, eos_token_id, pad_token_id.

    Fields that only select a variant (activation_type, block_type,
    layer_norm_type, rope, alibi, attention_layer_norm, block_group_size) are
    validated by :class:`LLaDAModelLM`. Other keys of LLaDA's config.json
    (init_device, precision, flash_attention, use_cache, ...) are kept as
    attributes and written back on save. ``auto_map`` (pointing to LLaDA's
    remote code, which is not shipped with our checkpoints) is dropped.
    """

    model_type = "llada"

    def __init__(
        self,
        d_model: int = 4096,
        n_heads: int = 32,
        n_kv_heads: int | None = 32,
        multi_query_attention: bool | None = None,
        n_layers: int = 32,
        mlp_ratio: int = 4,
        mlp_hidden_size: int | None = 12288,
        activation_type: str = "silu",
        block_type: str = "llama",
        block_group_size: int = 1,
        alibi: bool = False,
        rope: bool = True,
        rope_full_precision: bool = True,
        rope_theta: float = 500000.0,
        attention_layer_norm: bool = False,
        layer_norm_type: str = "rms",
        layer_norm_with_affine: bool = True,
        rms_norm_eps: float = 1e-5,
        bias_for_layer_norm: bool | None = False,
        include_bias: bool = False,
        include_qkv_bias: bool | None = False,
        input_emb_norm: bool = False,
        scale_logits: bool = False,
        attention_dropout: float = 0.0,
        residual_dropout: float = 0.0,
        embedding_dropout: float = 0.0,
        max_sequence_length: int = 4096,
        vocab_size: int = LLADA_8B_VOCAB,
        embedding_size: int | None = LLADA_8B_VOCAB,
        weight_tying: bool = False,
        init_fn: str = "mitchell",
        init_std: float = 0.02,
        mask_token_id: int | None = LLADA_8B_MASK_ID,
        eos_token_id: int | None = LLADA_8B_EOS_ID,
        pad_token_id: int | None = LLADA_8B_EOS_ID,
        **kwargs: Any,
    ) -> None:
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.multi_query_attention = multi_query_attention
        self.n_layers = n_layers
        self.mlp_ratio = mlp_ratio
        self.mlp_hidden_size = mlp_hidden_size
        self.activation_type = activation_type
        self.block_type = block_type
        self.block_group_size = block_group_size
        self.alibi = alibi
        self.rope = rope
        self.rope_full_precision = rope_full_precision
        self.rope_theta = rope_theta
        self.attention_layer_norm = attention_layer_norm
        self.layer_norm_type = layer_norm_type
        self.layer_norm_with_affine = layer_norm_with_affine
        self.rms_norm_eps = rms_norm_eps
        self.bias_for_layer_norm = bias_for_layer_norm
        self.include_bias = include_bias
        self.include_qkv_bias = include_qkv_bias
        self.input_emb_norm = input_emb_norm
        self.scale_logits = scale_logits
        self.attention_dropout = attention_dropout
        self.residual_dropout = residual_dropout
        self.embedding_dropout = embedding_dropout
        self.max_sequence_length = max_sequence_length
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.weight_tying = weight_tying
        self.init_fn = init_fn
        self.init_std = init_std
        self.mask_token_id = mask_token_id
        # transformers 4.x's PretrainedConfig.__init__ (re)sets these two from its own kwargs.
        kwargs["eos_token_id"] = eos_token_id
        kwargs["pad_token_id"] = pad_token_id
        kwargs.pop("auto_map", None)
        # transformers 4.x ties input/output embeddings when this is true (its default);
        # LLaDA ties only when weight_tying is set, and then computes logits from wte itself.
        kwargs["tie_word_embeddings"] = False
        kwargs.setdefault("architectures", ["LLaDAModelLM"])
        super().__init__(**kwargs)

    # --- derived sizes ------------------------------------------------------------
    @property
    def effective_n_kv_heads(self) -> int:
        """Number of key/value heads (LLaDA's rule: n_kv_heads, else 1 for MQA, else n_heads)."""
        if self.n_kv_heads is not None:
            return self.n_kv_heads
        return 1 if self.multi_query_attention else self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_hidden_size(self) -> int:
        return self.mlp_hidden_size if self.mlp_hidden_size is not None else self.mlp_ratio * self.d_model

    @property
    def num_embeddings(self) -> int:
        return self.embedding_size or self.vocab_size

    # Standard names other libraries (peft, accelerate, vLLM-style tools) look for.
    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_attention_heads(self) -> int:
        return self.n_heads

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layers

    @property
    def num_key_value_heads(self) -> int:
        return self.effective_n_kv_heads


def tiny_llada_config(vocab_size: int, **overrides: Any) -> LLaDAConfig:
    """The built-in tiny model: LLaDA's architecture at CPU size (4 layers, width 128, 4 heads).

    vocab_size: the tokenizer's vocabulary size (embedding rows = vocab_size).
    overrides: any LLaDAConfig field. Without explicit ids, the last vocabulary
    id is the mask token and the one before it EOS/pad; pipelines should pass
    the tokenizer's ids (see :func:`tiny_llada_config_for_tokenizer`).
    Short contexts use rope_theta 10000 (LLaDA-8B: 500000).
    """
    if vocab_size < 3:
        raise ConfigError(f"tiny_llada_config: vocab_size must be at least 3, got {vocab_size}")
    d_model = overrides.get("d_model", 128)
    values: dict[str, Any] = dict(
        d_model=d_model,
        n_heads=4,
        n_kv_heads=None,
        n_layers=4,
        mlp_ratio=3,
        mlp_hidden_size=3 * d_model,  # LLaDA-8B: 12288 = 3 * 4096
        rope_theta=10000.0,
        max_sequence_length=1024,
        vocab_size=vocab_size,
        embedding_size=vocab_size,
        mask_token_id=vocab_size - 1,
        eos_token_id=vocab_size - 2,
        pad_token_id=vocab_size - 2,
    )
    values.update(overrides)
    return LLaDAConfig(**values)


def tiny_llada_config_for_tokenizer(tokenizer: Any, **overrides: Any) -> LLaDAConfig:
    """:func:`tiny_llada_config` sized for ``tokenizer``, with its mask, EOS and pad ids."""
    missing = [name for name in ("mask_token_id", "eos_token_id") if getattr(tokenizer, name, None) is None]
    if missing:
        raise ConfigError(f"tokenizer has no {' / '.join(missing)}: cannot build a masked-diffusion model for it")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    values = dict(mask_token_id=tokenizer.mask_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
    values.update(overrides)
    return tiny_llada_config(len(tokenizer), **values)


# ---------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------


def _check_supported(config: LLaDAConfig) -> None:
    """Reject LLaDA/OLMo variants this implementation does not compute (instead of computing them wrongly)."""
    expected = {
        "block_type": "llama",
        "activation_type": "silu",
        "layer_norm_type": "rms",
        "rope": True,
        "alibi": False,
        "attention_layer_norm": False,
        "block_group_size": 1,
    }
    for name, value in expected.items():
        got = getattr(config, name, value)
        if str(got) != str(value):
            raise ConfigError(f"LLaDA config: {name}={got!r} is not supported (only {value!r}, as LLaDA-8B uses)")
    if config.d_model % config.n_heads:
        raise ConfigError(f"LLaDA config: d_model={config.d_model} is not divisible by n_heads={config.n_heads}")
    if config.n_heads % config.effective_n_kv_heads:
        raise ConfigError(
            f"LLaDA config: n_heads={config.n_heads} is not a multiple of n_kv_heads={config.effective_n_kv_heads}"
        )
    if config.head_dim % 2:
        raise ConfigError(f"LLaDA config: head size {config.head_dim} must be even for rotary embeddings")
    if config.num_embeddings < config.vocab_size:
        raise ConfigError(
            f"LLaDA config: embedding_size={config.embedding_size} is smaller than vocab_size={config.vocab_size}"
        )
    if config.init_fn not in ("mitchell", "normal"):
        raise ConfigError(f"LLaDA config: init_fn={config.init_fn!r} is not supported ('mitchell' or 'normal')")


class RMSNorm(nn.Module):
    """LLaDA's RMSLayerNorm: normalise in float32, cast back, then scale (and shift if it has a bias)."""

    def __init__(self, size: int, eps: float, *, affine: bool, bias: bool) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size)) if affine else None
        self.bias = nn.Parameter(torch.zeros(size)) if affine and bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = x.float()
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
            h = h.to(dtype)
        if self.weight is None:
            return h
        h = self.weight * h
        return h + self.bias if self.bias is not None else h


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for rotary embeddings, in float32.

    positions: [B or 1, L] integer positions.
    Returns (cos, sin), each [B or 1, 1, L, head_dim] (the frequency vector is
    repeated over both halves, LLaDA's layout).
    """
    with torch.autocast(device_type=positions.device.type, enabled=False):
        # Same expression as LLaDA's RotaryEmbedding, so the tables are bit-identical.
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float) / head_dim))
        freqs = positions.float()[..., None] * inv_freq  # [B, L, head_dim/2]
        angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, L, head_dim]
        return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, L, D] by the angles in cos/sin [B or 1, 1, L, D]."""
    return x * cos + _rotate_half(x) * sin


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Rotary position of every slot: the number of real tokens before it.

    attention_mask: [B, L], 1 = token, 0 = padding. Returns LongTensor [B, L].
    Left padding thus gives the real tokens positions 0, 1, 2, ... as in the
    unpadded sequence (padding slots get the position of the next real token).
    """
    mask = attention_mask.long()
    return mask.cumsum(-1) - mask


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias [B, 1, 1, L]: 0 for real keys, the dtype's minimum for padding keys.

    A finite minimum (not -inf) keeps an all-padding row finite instead of NaN.
    """
    bias = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
    bias = bias.masked_fill(attention_mask == 0, torch.finfo(dtype).min)
    return bias[:, None, None, :]


class LLaDABlock(nn.Module):
    """LLaDA's ``LLaDALlamaBlock``: pre-norm bidirectional attention + SiLU-gated MLP.

    x = x + attn_out(SDPA(rope(q_proj h), rope(k_proj h), v_proj h)), h = attn_norm(x)
    x = x + ff_out(silu(ff_proj h) * up_proj h),                         h = ff_norm(x)
    (ff_proj is the gated branch, up_proj the linear one, as in LLaDA.)
    """

    def __init__(self, config: LLaDAConfig, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.n_heads = config.n_heads
        self.n_kv_heads = config.effective_n_kv_heads
        self.head_dim = config.head_dim
        self.rope_full_precision = config.rope_full_precision
        self.attention_dropout = config.attention_dropout
        d, kv, hidden = config.d_model, self.n_kv_heads * config.head_dim, config.ffn_hidden_size
        bias = bool(config.include_bias)
        qkv_bias = bias or bool(config.include_qkv_bias)
        norm_bias = config.include_bias if config.bias_for_layer_norm is None else config.bias_for_layer_norm
        norm = dict(eps=config.rms_norm_eps, affine=config.layer_norm_with_affine, bias=bool(norm_bias))
        self.attn_norm = RMSNorm(d, **norm)
        self.ff_norm = RMSNorm(d, **norm)
        self.q_proj = nn.Linear(d, d, bias=qkv_bias)
        self.k_proj = nn.Linear(d, kv, bias=qkv_bias)
        self.v_proj = nn.Linear(d, kv, bias=qkv_bias)
        self.attn_out = nn.Linear(d, d, bias=bias)
        self.ff_proj = nn.Linear(d, hidden, bias=bias)
        self.up_proj = nn.Linear(d, hidden, bias=bias)
        self.ff_out = nn.Linear(hidden, d, bias=bias)
        self.dropout = nn.Dropout(config.residual_dropout)

    def attention(
        self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_mask: torch.Tensor | None,
        kv_cache: LayerKVCache | None = None,
    ) -> torch.Tensor:
        B, L, _ = h.shape
        q = self.q_proj(h).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        dtype = q.dtype
        if self.rope_full_precision:
            with torch.autocast(device_type=h.device.type, enabled=False):
                q = apply_rotary(q.float(), cos, sin).to(dtype)
                k = apply_rotary(k.float(), cos, sin).to(dtype)
        else:
            q = apply_rotary(q, cos.to(dtype), sin.to(dtype))
            k = apply_rotary(k, cos.to(dtype), sin.to(dtype))
        if kv_cache is not None:  # queries of h attend to the whole cached sequence
            k, v = kv_cache.update(self.layer_id, k, v)
        if self.n_kv_heads != self.n_heads:
            repeat = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(repeat, dim=1)
            v = v.repeat_interleave(repeat, dim=1)
        # Built in q's dtype (which autocast may lower) so that the masking value stays finite.
        bias = None if key_mask is None else padding_bias(key_mask, q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attention_dropout if self.training else 0.0, is_causal=False
        )
        return self.attn_out(out.transpose(1, 2).reshape(B, L, self.n_heads * self.head_dim))

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_mask: torch.Tensor | None = None,
        kv_cache: LayerKVCache | None = None,
    ) -> torch.Tensor:
        """x: [B, L, d_model]; cos/sin: [B or 1, 1, L, head_dim]; key_mask: [B, L_keys] (0 = padding) or
        None. With a window pass of ``kv_cache`` (:mod:`d1.models.kv_cache`), L is the window and L_keys
        the whole sequence."""
        x = x + self.dropout(self.attention(self.attn_norm(x), cos, sin, key_mask, kv_cache))
        h = self.ff_norm(x)
        h = F.silu(self.ff_proj(h)) * self.up_proj(h)
        return x + self.dropout(self.ff_out(h))


class LLaDATransformer(nn.Module):
    """The module under ``model.``: ``transformer.{wte, blocks, ln_f, ff_out}`` as in LLaDA."""

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        self.config = config
        # transformers' gradient-checkpointing switch looks for this attribute.
        self.gradient_checkpointing = False
        norm_bias = config.include_bias if config.bias_for_layer_norm is None else config.bias_for_layer_norm
        modules: dict[str, nn.Module] = dict(
            wte=nn.Embedding(config.num_embeddings, config.d_model),
            emb_drop=nn.Dropout(config.embedding_dropout),
            blocks=nn.ModuleList(LLaDABlock(config, i) for i in range(config.n_layers)),
            ln_f=RMSNorm(
                config.d_model, eps=config.rms_norm_eps, affine=config.layer_norm_with_affine, bias=bool(norm_bias)
            ),
        )
        if not config.weight_tying:
            modules["ff_out"] = nn.Linear(config.d_model, config.num_embeddings, bias=bool(config.include_bias))
        self.transformer = nn.ModuleDict(modules)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        kv_cache: LayerKVCache | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        config = self.config
        x = self.transformer.wte(input_ids) if inputs_embeds is None else inputs_embeds
        B, L = x.shape[:2]
        window = None if kv_cache is None or kv_cache.start is None else (kv_cache.start, kv_cache.start + L)
        if window is not None:
            # the input is a window of the cached sequence: positions and the key mask span the sequence
            kv_cache.check_window(B, L)
            L = kv_cache.length
            if attention_mask is not None and attention_mask.shape[-1] != L:
                raise ValueError(f"LLaDA window pass: attention_mask covers {attention_mask.shape[-1]} "
                                 f"positions, the cache {L}")
        if config.input_emb_norm:
            x = x * (config.d_model**0.5)
        x = self.transformer.emb_drop(x)

        key_mask = None
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            key_mask = attention_mask.to(x.device)
            if position_ids is None:
                position_ids = positions_from_mask(attention_mask)
        if position_ids is None:
            position_ids = torch.arange(L, device=x.device)[None]
        if window is not None and position_ids.shape[-1] == L:
            position_ids = position_ids[:, window[0]:window[1]]
        cos, sin = rotary_cos_sin(position_ids.to(x.device), config.head_dim, config.rope_theta)

        hidden_states: list[torch.Tensor] = []
        for block in self.transformer.blocks:
            if output_hidden_states:
                hidden_states.append(x)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled() and kv_cache is None:
                x = self._gradient_checkpointing_func(block.__call__, x, cos, sin, key_mask)
            else:
                x = block(x, cos, sin, key_mask, kv_cache)
        x = self.transformer.ln_f(x)
        if output_hidden_states:
            hidden_states.append(x)
        if config.weight_tying:
            logits = F.linear(x, self.transformer.wte.weight)
        else:
            logits = self.transformer.ff_out(x)
        if config.scale_logits:
            logits = logits * (1 / math.sqrt(config.d_model))
        return logits.float(), (tuple(hidden_states) if output_hidden_states else None)


class LLaDAModelLM(PreTrainedModel):
    """LLaDA as a transformers model: ``model(input_ids, attention_mask=None).logits`` -> float32 [B, L, V].

    Registered with AutoConfig/AutoModel/AutoModelForMaskedLM/AutoModelForCausalLM
    (the last because LLaDA's own auto_map names it), so
    ``AutoModel.from_pretrained(folder)`` loads LLaDA-8B-Instruct or a saved
    tiny model without ``trust_remote_code``.
    """

    config_class = LLaDAConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    #: takes ``kv_cache=`` (block-wise approximate KV cache, :mod:`d1.models.kv_cache`)
    supports_kv_cache = True
    _no_split_modules = ["LLaDABlock"]
    _supports_sdpa = True

    def __init__(self, config: LLaDAConfig) -> None:
        _check_supported(config)
        super().__init__(config)
        self.model = LLaDATransformer(config)
        for block in self.model.transformer.blocks:
            # LLaDA's "mitchell" init scales the residual output projections by depth.
            block.attn_out._d1_depth = block.layer_id
            block.ff_out._d1_depth = block.layer_id
        self.post_init()

    # --- weights --------------------------------------------------------------------
    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialise one module (transformers calls this for freshly created / missing weights).

        init_fn "mitchell" (LLaDA's): truncated normal (+-3 std) with std 1/sqrt(fan_in), divided by
        sqrt(2 (layer + 1)) for each block's attn_out and ff_out; the embedding uses fan_in = d_model.
        init_fn "normal": normal with init_std. Norm weights 1, biases 0.
        """
        _init_module(module, self.config, generator=None)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.transformer.wte

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.transformer.wte = value

    def get_output_embeddings(self) -> nn.Module | None:
        # With weight tying the logits come from wte directly: nothing separate to return.
        return None if self.config.weight_tying else self.model.transformer.ff_out

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.model.transformer.ff_out = value

    # --- forward --------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        kv_cache: LayerKVCache | None = None,
    ) -> MaskedLMOutput | tuple:
        """input_ids [B, L] (or inputs_embeds [B, L, d_model]); attention_mask [B, L], 1 = token,
        0 = padding (any padding layout; positions then count real tokens); position_ids [B or 1, L]
        overrides the rotary positions. ``kv_cache``: a :class:`~d1.models.kv_cache.LayerKVCache` to fill
        (full pass) or to read and update (window pass: input_ids is the window, attention_mask and
        position_ids still span the whole sequence). Returns MaskedLMOutput with float32 logits [B, L, embedding_size]
        (and hidden_states: the input of every block plus the final normed state when asked)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("LLaDAModelLM.forward: pass exactly one of input_ids and inputs_embeds")
        logits, hidden = self.model(
            input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            output_hidden_states=bool(output_hidden_states),
            kv_cache=kv_cache,
        )
        if return_dict is False:
            return (logits,) if hidden is None else (logits, hidden)
        return MaskedLMOutput(logits=logits, hidden_states=hidden)


def _init_module(module: nn.Module, config: LLaDAConfig, generator: torch.Generator | None) -> None:
    init = nn.init  # looked up at call time: transformers may guard these against re-initialising loaded weights

    def trunc_normal(weight: torch.Tensor, std: float) -> None:
        init.trunc_normal_(weight, mean=0.0, std=std, a=-3 * std, b=3 * std, generator=generator)

    if isinstance(module, nn.Linear):
        if config.init_fn == "normal":
            init.normal_(module.weight, mean=0.0, std=config.init_std, generator=generator)
        else:
            std = 1.0 / math.sqrt(module.in_features)
            depth = getattr(module, "_d1_depth", None)
            if depth is not None:
                std /= math.sqrt(2 * (depth + 1))
            trunc_normal(module.weight, std)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        if config.init_fn == "normal":
            init.normal_(module.weight, mean=0.0, std=config.init_std, generator=generator)
        else:
            trunc_normal(module.weight, 1.0 / math.sqrt(config.d_model))
    elif isinstance(module, RMSNorm):
        if module.weight is not None:
            init.ones_(module.weight)
        if module.bias is not None:
            init.zeros_(module.bias)


@torch.no_grad()
def initialize_llada_weights(model: LLaDAModelLM, *, generator: torch.Generator) -> LLaDAModelLM:
    """Re-initialise every weight of ``model`` from ``generator`` (deterministic, no global RNG)."""
    for module in model.modules():
        _init_module(module, model.config, generator)
    return model


def _register() -> None:
    # exist_ok: importing this module twice (or alongside another registration) is harmless.
    AutoConfig.register("llada", LLaDAConfig, exist_ok=True)
    for auto in (AutoModel, AutoModelForMaskedLM, AutoModelForCausalLM):
        auto.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)


_register()
