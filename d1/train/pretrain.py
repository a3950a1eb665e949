"""Pre-training the built-in tiny LLaDA from scratch (tiny profile only).

Corpus (documented choice): the prepared *train* split of every task in
``cfg.tasks`` (by default Countdown, Sudoku, GSM8K), one document per example
with a worked solution:

* ``document_format: plain``: the task's training user turn (the d1 prompt,
  with its format instructions), a blank line, then the worked solution
  (``<reasoning>...</reasoning>\\n<answer>...</answer>``);
* ``document_format: chat``: the same as a chat-templated conversation (user
  turn, assistant header, solution, end of turn);
* ``document_format: bare``: the question alone (e.g. ``Numbers: [3, 5, 2]``,
  ``Target: 16``), a blank line, the worked solution: no instruction text.

``plain`` teaches the tasks' language without the chat protocol, which SFT
then adds (prompt conditioning, end of turn, EOS padding); ``chat`` makes
pre-training nearly the SFT data with every token maskable; ``bare`` spends
the whole pre-training budget on the task content (the constant d1
instruction is most of a Countdown prompt: ~3x more examples per second), and
SFT then teaches the instruction and the chat protocol. No test split
is read. ``extra_documents`` adds documents from files (e.g. arithmetic facts:
the Countdown learning benchmark adds the equations its worked solutions use).

Order of work: train the tokenizer on the corpus (:mod:`d1.models.tokenizer`,
``tokenizer_vocab_size``), build the tiny model for it (mask/EOS/pad ids from
the tokenizer) with weights drawn from a seeded generator, pack the documents
(each followed by EOS, in a seeded order) into ``seq_len``-token rows, and
train with the masked-diffusion objective of :mod:`d1.algo.masking` with every
token maskable (LLaDA pre-training: ``t ~ U(eps, 1)``, CE / t over masked
tokens, divided by the number of tokens). The result, ``<out_dir>/model``, is a
full model folder with its tokenizer: the SFT base of the tiny profile.

On resume the tokenizer is read from the checkpoint (not re-trained).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from d1.errors import DataError
from d1.train.common import MODEL_DIR, StepCallback, count_parameters, make_generator, prepare_trainable
from d1.train.masked_diffusion import TokenRows, train_masked_diffusion
from d1.train.run import TrainingRun, save_final
from d1.train.pretrain_config import PretrainConfig


def pretrain_documents(data_dir: str, task_names: Sequence[str], *, document_format: str,
                       max_examples: int | None = None, tokenizer: Any = None) -> list[str]:
    """The pre-training documents (see the module docstring); ``chat`` needs the tokenizer."""
    from d1.prepare import read_split
    from d1.tasks import get_task

    docs: list[str] = []
    for name in task_names:
        task = get_task(name)
        examples = read_split(data_dir, name, "train")
        if max_examples is not None:
            examples = examples[:max_examples]
        before = len(docs)
        for ex in examples:
            if not ex.solution:
                continue
            if document_format == "chat":
                conversation = task.messages(ex) + [{"role": "assistant", "content": ex.solution}]
                docs.append(tokenizer.apply_chat_template(conversation, tokenize=False))
            elif document_format == "bare":
                docs.append(f"{ex.question}\n\n{ex.solution}")
            else:
                docs.append(f"{task.user_message(ex)}\n\n{ex.solution}")
        if len(docs) == before:
            raise DataError(f"pretrain: task {name!r} has no example with a worked solution in {data_dir}")
    return docs


def extra_documents(paths: Sequence[str]) -> list[str]:
    """Documents from ``extra_documents`` files: each non-empty line of a ``.txt``
    file, or the ``text`` field of each record of a jsonl/json/csv/parquet file."""
    from d1.data.io import read_records

    docs: list[str] = []
    for path in paths:
        if str(path).endswith(".txt"):
            file = Path(path)
            if not file.is_file():
                raise DataError(f"pretrain.extra_documents: no such file {path!r}")
            found = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            found = []
            for i, record in enumerate(read_records(path)):
                text = record.get("text")
                if not isinstance(text, str):
                    raise DataError(f"pretrain.extra_documents: {path} record {i} has no string 'text' field")
                found.append(text)
        if not found:
            raise DataError(f"pretrain.extra_documents: {path} holds no document")
        docs.extend(found)
    return docs


def pack_documents(token_lists: Sequence[Sequence[int]], *, eos_id: int, seq_len: int,
                   generator: torch.Generator) -> list[list[int]]:
    """Documents (each followed by EOS) concatenated in a random order and cut into ``seq_len`` rows.

    The last partial row is dropped. Deterministic in ``generator``.
    """
    order = torch.randperm(len(token_lists), generator=generator).tolist()
    stream: list[int] = []
    for i in order:
        stream.extend(token_lists[i])
        stream.append(eos_id)
    rows = [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]
    if not rows:
        raise DataError(f"pretrain: the corpus has {len(stream)} tokens, fewer than one row of {seq_len}")
    return rows


def build_tiny_model(cfg: PretrainConfig, tokenizer: Any):
    """The tiny LLaDA sized for ``tokenizer``, weights from a generator seeded by ``cfg.seed``."""
    from d1.models.llada import LLaDAModelLM, initialize_llada_weights, tiny_llada_config_for_tokenizer

    config = tiny_llada_config_for_tokenizer(
        tokenizer, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
        mlp_hidden_size=cfg.mlp_hidden_size, max_sequence_length=cfg.max_sequence_length,
    )
    model = LLaDAModelLM(config)
    initialize_llada_weights(model, generator=make_generator(cfg.seed, "pretrain", "init"))
    return model


def run_pretrain(cfg: PretrainConfig, *, resume: bool = False, callbacks: Sequence[StepCallback] = ()) -> dict:
    """Train the tokenizer, then pre-train the tiny model; write ``<out_dir>/model``. Returns a summary."""
    from d1.models.loading import load_tokenizer, token_ids
    from d1.models.tokenizer import task_corpus, train_tokenizer

    extra = extra_documents(cfg.extra_documents)
    run = TrainingRun(cfg, "pretrain", resume=resume)
    if run.resume_state is not None:
        tokenizer = load_tokenizer(run.resume_state.path / MODEL_DIR)
    else:
        # The tokenizer sees the train splits' prompts (training and evaluation wording) and solutions.
        texts = task_corpus(cfg.data_dir, cfg.tasks, limit_per_task=cfg.max_examples) + extra
        tokenizer = train_tokenizer(texts, vocab_size=cfg.tokenizer_vocab_size,
                                    min_frequency=cfg.tokenizer_min_frequency,
                                    split_words=cfg.tokenizer_split_words,
                                    number_digits=cfg.tokenizer_number_digits)
    docs = pretrain_documents(cfg.data_dir, cfg.tasks, document_format=cfg.document_format,
                              max_examples=cfg.max_examples, tokenizer=tokenizer) + extra
    model = build_tiny_model(cfg, tokenizer).to(run.device)
    ids = token_ids(model, tokenizer)
    encoded = tokenizer(docs, add_special_tokens=False)["input_ids"]
    rows = pack_documents(encoded, eos_id=ids.eos_id, seq_len=cfg.seq_len,
                          generator=make_generator(cfg.seed, "pretrain", "pack"))
    model = prepare_trainable(model, cfg)
    last = train_masked_diffusion(run, model, tokenizer, TokenRows([[] for _ in rows], rows),
                                  mask_id=ids.mask_id, eos_id=ids.eos_id, max_length=cfg.seq_len,
                                  mask_eps=cfg.mask_eps, callbacks=callbacks)
    model_dir = save_final(run, tokenizer, base_path="", merge=False)
    return {"stage": "pretrain", "out_dir": cfg.out_dir, "model_dir": str(Path(model_dir)),
            "steps": run.total_steps, "resumed_from": run.resume_state.step if run.resume_state else None,
            "documents": len(docs), "rows": len(rows), "vocab_size": len(tokenizer),
            "parameters": count_parameters(run.unwrapped), "last_metrics": last}
