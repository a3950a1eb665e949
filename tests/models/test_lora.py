"""LoRA through peft: checked target modules, only adapters train, merge == base + adapter."""

from __future__ import annotations

import pytest
import torch

from d1.errors import ConfigError
from d1.models.llada import LLaDAModelLM
from d1.models.loading import load_model, load_tokenizer
from d1.models.lora import LLADA_LORA_TARGETS, apply_lora, linear_module_names, merge_adapter
from tests.models.conftest import make_tiny_model

D1_REFERENCE_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _lora(model, targets=LLADA_LORA_TARGETS, **kw):
    return apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules=targets, **kw)


def test_linear_module_names_are_llada_names():
    assert linear_module_names(make_tiny_model()) == sorted(LLADA_LORA_TARGETS)


def test_unknown_target_module_is_an_error_listing_the_real_names():
    with pytest.raises(ConfigError) as err:
        _lora(make_tiny_model(), D1_REFERENCE_TARGETS)
    message = str(err.value)
    for missing in ("o_proj", "gate_proj", "down_proj"):
        assert repr(missing) in message
    assert "'q_proj'" not in message.split("not found")[0]  # existing names are not reported missing
    assert "attn_out" in message and "ff_proj" in message  # the names the model does have


def test_only_adapter_parameters_train():
    peft_model = _lora(make_tiny_model())
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    adapted = {n.rsplit(".lora_", 1)[0] for n in trainable}
    assert any(n.endswith("blocks.0.ff_out") for n in adapted)
    assert not any(n.endswith("transformer.ff_out") for n in adapted)  # the output layer is left alone

    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randint(0, 60, (2, 8), generator=torch.Generator().manual_seed(0))
    peft_model.train()
    peft_model(x).logits.logsumexp(-1).mean().backward()
    optimizer.step()
    changed = {n for n, p in peft_model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert any("lora_B" in n for n in changed)


def test_output_layer_can_be_included_explicitly():
    peft_model = _lora(make_tiny_model(), ["ff_out"], include_output_layer=True)
    adapted = {n.rsplit(".lora_", 1)[0] for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any(n.endswith("transformer.ff_out") for n in adapted)


def test_bad_lora_settings():
    with pytest.raises(ConfigError, match="empty"):
        _lora(make_tiny_model(), [])
    with pytest.raises(ConfigError, match="lora.r"):
        apply_lora(make_tiny_model(), r=0, alpha=1, dropout=0.0, target_modules=["q_proj"])


def test_merged_model_equals_base_plus_adapter(tmp_path, tiny_tokenizer):
    vocab = len(tiny_tokenizer)
    base = make_tiny_model(vocab_size=vocab, mask_token_id=5, eos_token_id=1, pad_token_id=1)
    base.save_pretrained(tmp_path / "base")
    peft_model = _lora(base)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))  # a trained-looking adapter
    peft_model.save_pretrained(tmp_path / "adapter")
    tiny_tokenizer.save_pretrained(tmp_path / "adapter")

    out = merge_adapter(tmp_path / "base", tmp_path / "adapter", tmp_path / "merged")
    merged = load_model(out).eval()
    assert type(merged) is LLaDAModelLM
    assert not any("lora" in k for k in merged.state_dict())
    x = torch.randint(0, vocab, (2, 10), generator=g)
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(x).logits
        assert (merged(x).logits - expected).abs().max().item() < 1e-5
        with peft_model.disable_adapter():
            assert (peft_model(x).logits - expected).abs().max().item() > 1e-3  # the adapter mattered
    assert load_tokenizer(out).mask_token_id == tiny_tokenizer.mask_token_id


def test_merge_needs_an_adapter_folder(tmp_path):
    with pytest.raises(ConfigError, match="adapter_config.json"):
        merge_adapter(tmp_path, tmp_path, tmp_path / "out")
