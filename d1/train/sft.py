"""Masked SFT (d1): the stage that fine-tunes a model on worked solutions.

Data: the prepared train split of every task in ``cfg.tasks`` (examples with
a worked ``solution``), then of every SFT data set in ``cfg.sft_data`` (s1K,
d1's SFT data: :mod:`d1.data.s1k`, whose user turn is d1's SFT prompt). An
example becomes

* prompt = ``apply_chat_template(task.messages(ex), add_generation_prompt=True)``
  (the user turn and the assistant header: the exact prompt GRPO rollouts and
  evaluation condition on, :func:`d1.models.chat.prompt_text`; d1's SFT script
  used the template without the assistant header plus a newline as its prompt
  boundary);
* response = what the template puts after that prompt for the assistant turn
  ``ex.solution`` (the solution and the end-of-turn token), then EOS padding
  to ``max_length``; the padding counts as response and is learned (d1).
  ``pad_to: longest`` pads to the longest row of the optimiser step instead
  (deviation, for CPU runs mixing short and long tasks: a Countdown row padded
  to a Sudoku row's length is mostly padding).
* ``prefix_marker`` (extension, off by default): examples whose response
  contains the marker also get a copy whose prompt runs through the marker
  (:func:`prefix_cuts`, :func:`split_response`); ``prefix_pattern``: one copy per match of a regular
  expression; the copies follow the plain rows.

The objective and the training loop are :mod:`d1.train.masked_diffusion`'s.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

from d1.errors import ConfigError, DataError
from d1.models.chat import sft_texts
from d1.train.common import (
    StepCallback,
    count_parameters,
    load_base_model,
    prepare_trainable,
)
from d1.train.sft_config import SFTConfig
from d1.train.masked_diffusion import TokenRows, train_masked_diffusion
from d1.train.run import TrainingRun, save_final


# ----------------------------------------------------------------------------- data


def sft_rows(tokenizer: Any, data_dir: str, task_names: Sequence[str], *, max_length: int,
             max_examples: int | None = None, prefix_marker: str = "", prefix_fraction: float = 1.0,
             prefix_pattern: str = "", seed: int = 0, sft_data: Sequence[str] = ()) -> tuple[TokenRows, dict]:
    """Tokenised SFT rows of the tasks' prepared train splits, then of the SFT data sets ``sft_data``
    (``<data_dir>/<name>/train.jsonl``, :mod:`d1.data.s1k`), and counts of what was kept.
    ``max_examples`` caps each task and each data set.

    ``prefix_marker`` (extension, off when empty): a ``prefix_fraction`` of the
    examples whose response contains the marker (drawn with ``seed``) get one more
    row (:func:`split_response` at :func:`prefix_cuts`), after all the plain rows. ``prefix_pattern`` (a
    regular expression, instead of the marker): one such row for every match
    each kept with probability ``prefix_fraction``.
    """
    if prefix_marker and prefix_pattern:
        raise ConfigError("sft: set prefix_marker or prefix_pattern, not both")
    pattern = re.compile(prefix_pattern) if prefix_pattern else None
    prefixed = bool(prefix_marker or prefix_pattern)
    from d1.data.s1k import SFT_DATA_FORMATS
    from d1.prepare import read_split
    from d1.tasks import get_task

    prompts: list[list[int]] = []
    responses: list[list[int]] = []
    stats = {"examples": 0, "no_solution": 0, "prompt_too_long": 0, "truncated": 0}
    copies: list[tuple[list[int], list[int]]] = []
    if prefixed:
        stats["prefix_skipped"] = 0
    chooser = random.Random(seed)
    sources = [(name, get_task(name)) for name in task_names]
    for name in sft_data:
        if name not in SFT_DATA_FORMATS:
            raise ConfigError(f"sft.sft_data: unknown SFT data set {name!r}; known: {', '.join(SFT_DATA_FORMATS)}")
        sources.append((name, SFT_DATA_FORMATS[name]))
    for name, task in sources:
        examples = read_split(data_dir, name, "train")
        if max_examples is not None:
            examples = examples[:max_examples]
        kept_before = len(prompts)
        for ex in examples:
            stats["examples"] += 1
            if not ex.solution:
                stats["no_solution"] += 1
                continue
            p_text, r_text = sft_texts(tokenizer, task, ex)
            p_ids = tokenizer(p_text, add_special_tokens=False)["input_ids"]
            r_ids = tokenizer(r_text, add_special_tokens=False)["input_ids"]
            if len(p_ids) >= max_length:
                stats["prompt_too_long"] += 1
                continue
            if len(p_ids) + len(r_ids) > max_length:
                stats["truncated"] += 1
            prompts.append(p_ids)
            responses.append(r_ids)
            if prefixed:
                cuts = prefix_cuts(r_text, marker=prefix_marker, pattern=pattern)
                if not cuts:
                    stats["prefix_skipped"] += 1
                for cut in cuts:
                    copy = split_response(tokenizer, p_ids, r_text, cut)
                    if len(copy[0]) >= max_length:
                        stats["prefix_skipped"] += 1
                    elif chooser.random() < prefix_fraction:
                        copies.append(copy)
        if len(prompts) == kept_before:
            kind = "task" if name in task_names else "SFT data set"
            raise DataError(f"sft: {kind} {name!r} has no usable training example (worked solution, prompt shorter "
                            f"than max_length {max_length}) in {data_dir}")
    for p_ids, r_ids in copies:
        prompts.append(p_ids)
        responses.append(r_ids)
    if prefixed:
        stats["prefix_copies"] = len(copies)
    stats["rows"] = len(prompts)
    return TokenRows(prompts, responses), stats


def prefix_cuts(response: str, *, marker: str = "", pattern: re.Pattern | None = None) -> list[int]:
    """Character offsets in ``response`` where a prefix copy's never-masked part ends.

    ``marker``: right after its first occurrence. ``pattern``: right after every
    non-empty match (``re.finditer``), e.g. ``" = |\\d\\n(?=\\d)|<answer>\\n"`` cuts a
    Countdown solution after each ``a op b = ``, after the first reasoning line
    and before the answer. A cut with nothing after it is dropped.
    """
    if marker:
        found = response.find(marker)
        cuts = [] if found < 0 else [found + len(marker)]
    elif pattern is not None:
        cuts = sorted({m.end() for m in pattern.finditer(response) if m.end() > m.start()})
    else:
        cuts = []
    return [cut for cut in cuts if cut < len(response)]


def split_response(tokenizer: Any, prompt_ids: list[int], response: str, cut: int) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) with ``response[:cut]`` moved into the never-masked prompt.

    Each side is tokenised on its own, as prompt and response are. Why: d1's
    objective learns a token whose context is prompt an order of magnitude
    faster than one whose context is itself masked response
    (``research/fact_learning.py``); with marker ``" = "`` a Countdown worked
    solution's first intermediate result is learned with its operands as prompt
    (``docs/results.md``, the Countdown learning benchmark).
    """
    head = tokenizer(response[:cut], add_special_tokens=False)["input_ids"]
    tail = tokenizer(response[cut:], add_special_tokens=False)["input_ids"]
    return list(prompt_ids) + head, tail


# ----------------------------------------------------------------------------- the SFT stage


def _load_tokenizer(path: str, trust_remote_code: bool = False):
    from d1.models.loading import load_tokenizer

    return load_tokenizer(path, trust_remote_code=trust_remote_code)


def _token_ids(model: Any, tokenizer: Any):
    from d1.models.loading import token_ids

    return token_ids(model, tokenizer)


def run_sft(cfg: SFTConfig, *, resume: bool = False, callbacks: Sequence[StepCallback] = ()) -> dict:
    """Masked SFT stage: train, save the adapter (or the full model), merge if asked.

    Writes to ``cfg.out_dir``: ``model/`` (what the next stage loads: the merged
    model, or the adapter when ``merge_adapter`` is false, or the full model),
    ``adapter/`` (LoRA, when merged), ``checkpoints/step-N``, the dvclive folder
    and ``sft_config.json``. ``callbacks`` are called after every optimiser step
    with (step, metrics). Returns a summary dict.
    """
    run = TrainingRun(cfg, "sft", resume=resume)
    tokenizer = _load_tokenizer(cfg.model_path, cfg.trust_remote_code)
    model = load_base_model(cfg.model_path, cfg, run.device)
    ids = _token_ids(model, tokenizer)
    rows, data_stats = sft_rows(tokenizer, cfg.data_dir, cfg.tasks, max_length=cfg.max_length,
                                max_examples=cfg.max_examples, prefix_marker=cfg.prefix_marker,
                                prefix_fraction=cfg.prefix_fraction, prefix_pattern=cfg.prefix_pattern,
                                seed=cfg.seed, sft_data=cfg.sft_data)
    model = prepare_trainable(model, cfg)
    params = count_parameters(model)
    last = train_masked_diffusion(run, model, tokenizer, rows, mask_id=ids.mask_id, eos_id=ids.eos_id,
                                  max_length=cfg.max_length, mask_eps=cfg.mask_eps,
                                  pad_to_longest=cfg.pad_to == "longest", callbacks=callbacks)
    model_dir = save_final(run, tokenizer, base_path=cfg.model_path, merge=cfg.merge_adapter)
    return {"stage": "sft", "out_dir": cfg.out_dir, "model_dir": str(model_dir), "steps": run.total_steps,
            "resumed_from": run.resume_state.step if run.resume_state else None, "data": data_stats,
            "parameters": params, "last_metrics": last}


