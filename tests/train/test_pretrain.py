"""Tiny-model pre-training: corpus, packing, resume, and an output SFT can start from."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from d1.errors import DataError
from d1.models.loading import load_model, load_tokenizer, token_ids
from d1.train.pretrain_config import PretrainConfig
from d1.train.sft_config import SFTConfig
from d1.train.pretrain import pack_documents, pretrain_documents, run_pretrain
from d1.train.sft import run_sft


def pretrain_config(data, out, **overrides) -> PretrainConfig:
    values = dict(data_dir=str(data), tasks=["countdown", "sudoku"], out_dir=str(out), tokenizer_vocab_size=300,
                  d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64, max_sequence_length=128, seq_len=64,
                  batch_size=4, grad_accum=1, max_steps=4, warmup_steps=1, save_steps=0, device="cpu")
    values.update(overrides)
    cfg = PretrainConfig(**values)
    cfg.validate()
    return cfg


def test_pack_documents_joins_with_eos_in_a_seeded_order():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    rows = pack_documents(docs, eos_id=0, seq_len=4, generator=torch.Generator().manual_seed(0))
    again = pack_documents(docs, eos_id=0, seq_len=4, generator=torch.Generator().manual_seed(0))
    assert rows == again and all(len(r) == 4 for r in rows) and len(rows) == 3  # 12 tokens -> 3 rows
    flat = [t for r in rows for t in r]
    assert flat.count(0) == 3 and sorted(t for t in flat if t) == list(range(1, 10))


def test_documents_are_prompt_then_solution(tiny_data, tiny_base):
    plain = pretrain_documents(str(tiny_data), ["countdown"], document_format="plain")
    assert len(plain) == 48 and "\n\n<reasoning>" in plain[0] and plain[0].rstrip().endswith("</answer>")
    chat = pretrain_documents(str(tiny_data), ["countdown"], document_format="chat",
                              tokenizer=load_tokenizer(tiny_base))
    assert chat[0].startswith("<|startoftext|><|start_header_id|>user") and chat[0].endswith("<|eot_id|>")
    bare = pretrain_documents(str(tiny_data), ["countdown"], document_format="bare")
    assert bare[0].startswith("Numbers: [") and "Using only" not in bare[0]
    assert bare[0].split("\n\n", 1)[1] == plain[0].split("\n\n")[-1]  # the same solution, no instruction


class Killed(Exception):
    pass


def test_pretrain_resumes_exactly_and_feeds_sft(tiny_data, tmp_path):
    run_pretrain(pretrain_config(tiny_data, tmp_path / "straight", save_steps=2))

    def kill(step, metrics):
        if step == 3:
            raise Killed

    broken = pretrain_config(tiny_data, tmp_path / "broken", save_steps=2)
    with pytest.raises(Killed):
        run_pretrain(broken, callbacks=[kill])
    summary = run_pretrain(broken, resume=True)
    assert summary["resumed_from"] == 2 and summary["vocab_size"] <= 300
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "broken" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)

    # The output is a full model folder with its tokenizer and LLaDA-style special tokens.
    model_dir = tmp_path / "straight" / "model"
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    ids = token_ids(model, tokenizer)
    assert tokenizer.convert_ids_to_tokens(ids.mask_id) == "<|mdm_mask|>" and ids.eot_id is not None
    assert model.config.d_model == 32 and model.config.vocab_size == len(tokenizer)
    sft = SFTConfig(model_path=str(model_dir), data_dir=str(tiny_data), tasks=["countdown"],
                    out_dir=str(tmp_path / "sft"), max_length=512, batch_size=2, grad_accum=1, max_steps=1,
                    full_finetune=True, save_steps=0, device="cpu")
    sft.validate()
    assert run_sft(sft)["steps"] == 1


def test_extra_documents_from_text_and_jsonl_files(tmp_path):
    from d1.train.pretrain import extra_documents

    (tmp_path / "facts.txt").write_text("3 * 4 = 12\n\n17 - 9 = 8\n", encoding="utf-8")
    (tmp_path / "docs.jsonl").write_text('{"text": "a document"}\n{"text": "another"}\n', encoding="utf-8")
    assert extra_documents([str(tmp_path / "facts.txt"), str(tmp_path / "docs.jsonl")]) == [
        "3 * 4 = 12", "17 - 9 = 8", "a document", "another"]
    with pytest.raises(DataError, match="no such file"):
        extra_documents([str(tmp_path / "missing.txt")])
    (tmp_path / "bad.jsonl").write_text('{"question": "no text"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="record 0 has no string 'text' field"):
        extra_documents([str(tmp_path / "bad.jsonl")])
