"""Our LLaDA implementation: golden logits from LLaDA's own code, key layout, padding, checkpointing."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from d1.errors import ConfigError
from d1.models.llada import (
    LLaDABlock,
    LLaDAConfig,
    LLaDAModelLM,
    initialize_llada_weights,
    positions_from_mask,
    rotary_cos_sin,
    tiny_llada_config,
)
from tests.models.conftest import make_tiny_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOLDEN = ["llada_golden", "llada_golden_gqa"]  # MHA untied; GQA + tied + biases + scaled logits/embeddings
TOLERANCE = 1e-4  # float32; the observed difference is 0 (unpadded) and ~1e-6 (padded)


def _golden(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    return meta, load_file(str(FIXTURES / f"{name}.safetensors"))


def _state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


@pytest.mark.parametrize("name", GOLDEN)
def test_reproduces_llada_reference_logits(name):
    meta, tensors = _golden(name)
    model = LLaDAModelLM(LLaDAConfig(**meta["config"])).eval()
    result = model.load_state_dict(_state_dict(tensors), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    with torch.no_grad():
        logits = model(tensors["golden.input_ids"]).logits
    assert logits.dtype == torch.float32
    assert logits.shape == tensors["golden.logits"].shape
    assert (logits - tensors["golden.logits"]).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("name", GOLDEN)
def test_reproduces_llada_reference_on_left_padded_batch(name):
    # LLaDA's code (padding-fixed copy) masks padding keys but keeps positions 0..L-1; ours
    # counts real tokens. RoPE is relative, so the real tokens' logits agree.
    meta, tensors = _golden(name)
    model = LLaDAModelLM(LLaDAConfig(**meta["config"])).eval()
    model.load_state_dict(_state_dict(tensors), strict=True)
    mask = tensors["golden.padded_attention_mask"]
    assert (mask == 0).any()
    with torch.no_grad():
        logits = model(tensors["golden.padded_input_ids"], attention_mask=mask).logits
    diff = (logits - tensors["golden.padded_logits"]).abs()[mask.bool()]
    assert diff.max().item() <= TOLERANCE


def _folder_with(tmp_path: Path, config: dict, state: dict[str, torch.Tensor]) -> Path:
    folder = tmp_path / "llada"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_from_pretrained_folder_with_llada_auto_map_uses_our_class_offline(tmp_path):
    meta, tensors = _golden("llada_golden")
    assert "auto_map" in meta["config"]  # LLaDA's config.json points to its remote code ...
    folder = _folder_with(tmp_path, meta["config"], _state_dict(tensors))
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    model = AutoModel.from_pretrained(folder)  # ... and no trust_remote_code is given
    assert type(model) is LLaDAModelLM
    with torch.no_grad():
        logits = model(tensors["golden.input_ids"]).logits
    assert (logits - tensors["golden.logits"]).abs().max().item() <= TOLERANCE


def test_save_and_reload_round_trip(tmp_path):
    model = make_tiny_model()
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["model_type"] == "llada" and "auto_map" not in saved
    assert saved["mask_token_id"] == model.config.mask_token_id
    reloaded = AutoModel.from_pretrained(tmp_path / "saved").eval()
    x = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x).logits, reloaded(x).logits)


def test_llada_8b_parameter_names_and_count():
    # LLaDA-8B-Instruct's model.safetensors.index.json: these 291 names, 16031162368 bytes in bf16.
    with torch.device("meta"):
        model = LLaDAModelLM(LLaDAConfig())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    per_block = ["attn_norm", "attn_out", "ff_norm", "ff_out", "ff_proj", "k_proj", "q_proj", "up_proj", "v_proj"]
    expected = {f"model.transformer.blocks.{i}.{n}.weight" for i in range(32) for n in per_block}
    expected |= {"model.transformer.wte.weight", "model.transformer.ln_f.weight", "model.transformer.ff_out.weight"}
    assert set(shapes) == expected
    assert shapes["model.transformer.blocks.0.ff_proj.weight"] == (12288, 4096)
    assert shapes["model.transformer.blocks.0.ff_out.weight"] == (4096, 12288)
    assert shapes["model.transformer.ff_out.weight"] == (126464, 4096)
    assert 2 * sum(math.prod(s) for s in shapes.values()) == 16031162368


def _tiny_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(0, 60, (n,), generator=g) for n in (9, 5, 7)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), 62)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return rows, ids, mask


def test_left_padded_batch_equals_one_by_one():
    model = make_tiny_model()
    rows, ids, mask = _tiny_batch()
    with torch.no_grad():
        batched = model(ids, attention_mask=mask).logits
        for i, row in enumerate(rows):
            alone = model(row[None]).logits[0]
            assert (batched[i, ids.shape[1] - len(row):] - alone).abs().max().item() < 1e-5


def test_padding_content_does_not_matter():
    model = make_tiny_model()
    _, ids, mask = _tiny_batch()
    other = ids.clone()
    other[mask == 0] = 3
    with torch.no_grad():
        a = model(ids, attention_mask=mask).logits
        b = model(other, attention_mask=mask).logits
    assert (a - b).abs()[mask.bool()].max().item() < 1e-5
    assert (a - b).abs()[~mask.bool()].max().item() > 0  # padding queries do see their own token


def test_attention_is_bidirectional():
    model = make_tiny_model()
    x = torch.randint(0, 60, (1, 8), generator=torch.Generator().manual_seed(2))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % 60
    with torch.no_grad():
        diff = (model(x).logits - model(y).logits)[0, 0].abs().max().item()
    assert diff > 1e-4  # the first position sees a change at the last one


def test_all_ones_mask_equals_no_mask():
    model = make_tiny_model()
    x = torch.randint(0, 60, (2, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x, attention_mask=torch.ones_like(x)).logits)


def test_positions_from_mask_counts_real_tokens_before():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 0, 1, 0, 1]])
    expected = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 1, 1, 2, 2]])
    assert torch.equal(positions_from_mask(mask), expected)
    loop = torch.tensor([[int(sum(row[:j])) for j in range(len(row))] for row in mask.tolist()])
    assert torch.equal(positions_from_mask(mask), loop)


def test_rotary_tables_match_plain_formula():
    positions = torch.tensor([[0, 3, 7]])
    cos, sin = rotary_cos_sin(positions, head_dim=8, theta=10000.0)
    assert cos.shape == (1, 1, 3, 8)
    for j, p in enumerate([0, 3, 7]):
        for i in range(8):
            angle = p * 10000.0 ** (-(2 * (i % 4)) / 8)
            assert cos[0, 0, j, i].item() == pytest.approx(math.cos(angle), abs=1e-6)
            assert sin[0, 0, j, i].item() == pytest.approx(math.sin(angle), abs=1e-6)


def test_gradient_checkpointing_gives_same_gradients_and_recomputes(monkeypatch):
    model = make_tiny_model().train()
    x = torch.randint(0, 60, (2, 8), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(x)
    mask[1, :3] = 0
    calls = []
    block_forward = LLaDABlock.forward

    def counting_forward(self, *args, **kwargs):
        calls.append(self.layer_id)
        return block_forward(self, *args, **kwargs)

    monkeypatch.setattr(LLaDABlock, "forward", counting_forward)

    def grads_and_calls():
        calls.clear()
        model.zero_grad()
        model(x, attention_mask=mask).logits.square().mean().backward()
        return [p.grad.clone() for p in model.parameters()], len(calls)

    plain, plain_calls = grads_and_calls()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renamed it activation_checkpointing_enable
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.model.gradient_checkpointing
    checkpointed, checkpointed_calls = grads_and_calls()
    assert plain_calls == 2 and checkpointed_calls == 4  # each block runs again in backward
    for a, b in zip(plain, checkpointed):
        assert torch.allclose(a, b, atol=1e-6)


def test_bfloat16_model_gives_float32_logits_close_to_float32():
    model = make_tiny_model()
    x = torch.randint(0, 60, (2, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x).logits
        low = model.to(torch.bfloat16)(x).logits
    assert low.dtype == torch.float32
    assert (low - ref).abs().max().item() < 0.05 * ref.abs().max().item()


def test_seeded_initialisation_is_deterministic():
    a, b, c = make_tiny_model(seed=7), make_tiny_model(seed=7), make_tiny_model(seed=8)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.model.transformer.wte.weight, c.model.transformer.wte.weight)
    # mitchell init: residual outputs are scaled down with depth
    blocks = a.model.transformer.blocks
    assert blocks[1].attn_out.weight.std() < blocks[0].attn_out.weight.std()


def test_tiny_config_defaults_and_ids():
    cfg = tiny_llada_config(100)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.vocab_size) == (4, 128, 4, 100)
    assert (cfg.mask_token_id, cfg.eos_token_id, cfg.pad_token_id) == (99, 98, 98)
    model = LLaDAModelLM(tiny_llada_config(100, mask_token_id=5, eos_token_id=1, pad_token_id=1))
    assert model.config.mask_token_id == 5
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 5]])).logits.shape == (1, 3, 100)


@pytest.mark.parametrize(
    "field, value", [("block_type", "sequential"), ("activation_type", "swiglu"), ("alibi", True), ("rope", False)]
)
def test_unsupported_variants_are_rejected(field, value):
    with pytest.raises(ConfigError, match=field):
        LLaDAModelLM(tiny_llada_config(32, d_model=16, n_layers=1, **{field: value}))


def test_seeded_init_uses_no_global_rng():
    state = torch.random.get_rng_state()
    model = LLaDAModelLM(tiny_llada_config(32, d_model=16, n_layers=1))
    torch.random.set_rng_state(state)
    initialize_llada_weights(model, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_padding_stays_finite_in_low_precision_even_for_an_all_padding_row(dtype):
    model = make_tiny_model().to(dtype)
    _, ids, mask = _tiny_batch()
    mask[2] = 0  # a row that is padding only
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    assert torch.isfinite(logits).all()


def test_autocast_with_padding_is_finite():
    model = make_tiny_model()
    _, ids, mask = _tiny_batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids, attention_mask=mask).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
