"""The tiny model's tokenizer: special tokens, chat template, byte-level round trip, determinism."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import AutoTokenizer

from d1.data.io import write_jsonl
from d1.errors import ConfigError, DataError
from d1.models.llada import LLaDAModelLM, tiny_llada_config_for_tokenizer
from d1.models.tokenizer import SPECIAL_TOKENS, build_tokenizer, task_corpus, train_tokenizer
from d1.tasks import get_task
from tests.models.conftest import INSTRUCTION, small_corpus


def test_special_tokens_have_llada_names_and_fixed_ids(tiny_tokenizer):
    tok = tiny_tokenizer
    assert [tok.convert_ids_to_tokens(i) for i in range(6)] == list(SPECIAL_TOKENS)
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.mask_token) == (
        "<|startoftext|>", "<|endoftext|>", "<|endoftext|>", "<|mdm_mask|>"
    )
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.mask_token_id) == (0, 1, 1, 5)
    # special tokens are never split, wherever they appear
    ids = tok("a<|mdm_mask|><|mdm_mask|>b<|eot_id|>", add_special_tokens=False)["input_ids"]
    assert ids.count(5) == 2 and ids.count(2) == 1


def test_chat_template_is_llada_style(tiny_tokenizer):
    messages = [{"role": "user", "content": "  What is 2+3?\n"}]
    prompt = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+3?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    without = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert without == "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+3?<|eot_id|>"
    ids = tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids[0] == tiny_tokenizer.bos_token_id
    assert ids.count(tiny_tokenizer.convert_tokens_to_ids("<|start_header_id|>")) == 2
    assert ids.count(tiny_tokenizer.convert_tokens_to_ids("<|end_header_id|>")) == 2
    assert ids.count(tiny_tokenizer.convert_tokens_to_ids("<|eot_id|>")) == 1


@pytest.mark.parametrize("text", ["plain words", "ünïcödé ✓ 😀 \t\n", "12345 * 678 = ?", "<answer>\n(3 + 4) * 2\n</answer>"])
def test_any_text_round_trips(tiny_tokenizer, text):
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(ids) == text


def test_digits_are_single_tokens(tiny_tokenizer):
    tokens = tiny_tokenizer.convert_ids_to_tokens(tiny_tokenizer("x 2024 y", add_special_tokens=False)["input_ids"])
    digits = [t for t in tokens if any(c.isdigit() for c in t)]
    assert digits == ["2", "0", "2", "4"]


def test_long_instruction_compresses(tiny_tokenizer):
    text = INSTRUCTION.format(nums=[12, 30], target=42)
    n = len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"])
    assert n < len(text) / 3


def test_merges_across_words_compress_recurring_text_further(tiny_tokenizer):
    phrases = train_tokenizer(small_corpus(), vocab_size=512, split_words=False)
    text = INSTRUCTION.format(nums=[12, 30], target=42)
    words = tiny_tokenizer.tokenize(text)
    spanning = phrases.tokenize(text)
    assert len(spanning) < len(words)
    assert any("Ġ" in t[1:-1] for t in spanning)  # some token holds a space inside: it spans words
    assert not any("Ġ" in t[1:-1] for t in words)
    assert phrases.decode(phrases(text, add_special_tokens=False)["input_ids"]) == text
    assert [t for t in spanning if any(c.isdigit() for c in t)] == ["1", "2", "3", "0", "4", "2"]


def test_number_digits_make_whole_number_tokens_but_keep_long_runs_digitwise():
    corpus = small_corpus() + [f"{a} * {b} = {a * b}" for a in range(1, 30) for b in range(1, 30)] * 2
    corpus += ["Solve: 3020000003120204 -> 3421214343121234"] * 20
    tok = train_tokenizer(corpus, vocab_size=1024, number_digits=3)
    assert tok.tokenize("7 * 13 = 91") == ["7", "Ġ*", "Ġ", "13", "Ġ=", "Ġ", "91"]
    # A run longer than 3 digits (a Sudoku grid) stays one token per digit, however frequent.
    assert [t for t in tok.tokenize("3020000003120204") if t != "Ġ"] == list("3020000003120204")
    single = train_tokenizer(corpus, vocab_size=1024)  # the default: one digit per token
    assert [t for t in single.tokenize("7 * 13 = 91") if t.isdigit()] == ["7", "1", "3", "9", "1"]
    with pytest.raises(ConfigError, match="number_digits=0"):
        train_tokenizer(corpus, vocab_size=1024, number_digits=0)


def test_training_is_deterministic():
    a = train_tokenizer(small_corpus(), vocab_size=512)
    b = train_tokenizer(small_corpus(), vocab_size=512)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    c = train_tokenizer(small_corpus() + ["zebra quagga " * 50], vocab_size=512)
    assert a.backend_tokenizer.to_str() != c.backend_tokenizer.to_str()


def test_saved_tokenizer_loads_with_auto_tokenizer(tmp_path):
    tok = build_tokenizer(small_corpus(), tmp_path / "tok", vocab_size=300)
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    text = small_corpus(2)[1]
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.mask_token_id == tok.mask_token_id and loaded.eos_token_id == tok.eos_token_id
    msgs = [{"role": "user", "content": "hi"}]
    assert loaded.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == tok.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True
    )
    assert loaded.padding_side == "left"


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="vocab_size"):
        train_tokenizer(small_corpus(), vocab_size=100)
    with pytest.raises(ConfigError, match="empty"):
        train_tokenizer([], vocab_size=300)


def test_tiny_model_and_tokenizer_build_fast():
    start = time.perf_counter()
    tok = train_tokenizer(small_corpus(), vocab_size=300)
    model = LLaDAModelLM(tiny_llada_config_for_tokenizer(tok, n_layers=2, d_model=64))
    ids = tok.apply_chat_template([{"role": "user", "content": "2 + 3"}], add_generation_prompt=True, tokenize=False)
    x = torch.tensor([tok(ids, add_special_tokens=False)["input_ids"] + [tok.mask_token_id] * 4])
    with torch.no_grad():
        logits = model(x).logits
    assert logits.shape == (1, x.shape[1], len(tok))
    assert model.config.mask_token_id == tok.mask_token_id == 5
    assert time.perf_counter() - start < 5.0  # typically well under 1 s


def test_task_corpus_reads_prompts_and_solutions(tmp_path):
    task = get_task("countdown")
    examples = task.generate(4, seed=0, exclude=[])
    write_jsonl(tmp_path / "countdown" / "train.jsonl", (ex.to_record() for ex in examples))
    texts = task_corpus(tmp_path, ["countdown"])
    for ex in examples:
        assert task.user_message(ex) in texts and ex.solution in texts
        assert task.eval_user_message(ex) in texts
    assert len(texts) == len(set(texts))
    assert len(task_corpus(tmp_path, ["countdown"], limit_per_task=1)) < len(texts)
    with pytest.raises(DataError):
        task_corpus(tmp_path, ["sudoku"])
