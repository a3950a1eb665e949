"""Masked SFT (d1), and the masked-diffusion training loop it shares with pre-training.

Data: the prepared train split of every task in ``cfg.tasks`` (examples with
a worked ``solution``). An example becomes

* prompt = ``apply_chat_template(task.messages(ex), add_generation_prompt=True)``
  (the user turn and the assistant header: the exact prompt GRPO rollouts and
  evaluation condition on; d1's SFT script used the template without the
  assistant header plus a newline as its prompt boundary);
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

Objective (:mod:`d1.algo.masking`): per row ``t ~ U(eps, 1)``, each response
token masked with probability ``t``, loss = sum over masked tokens of CE / t
divided by the number of response tokens of the whole optimiser batch (all
micro-batches and processes). So 1 x 4 and 4 x 1 micro-batching give the same
gradient; d1 (HF Trainer) normalised each micro-batch by its own count and
averaged, which is the same thing when rows have a fixed length and no
prompt, and close otherwise.

The masks of a step are drawn for the whole per-process batch at once from a
generator seeded by (seed, step, process), then split into micro-batches, so
the micro-batch size does not change them.
"""

from __future__ import annotations

import gc
import math
import random
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from d1.algo.masking import count_response_tokens, forward_mask, masked_sft_loss, sample_mask_ratio, sft_collate
from d1.errors import ConfigError, DataError
from d1.train.common import (
    MODEL_DIR,
    StepCallback,
    StepTimer,
    progress_bar,
    count_parameters,
    is_peft,
    load_base_model,
    make_generator,
    positions_for_step,
    prepare_trainable,
    reduce_sum,
    resolve_model_dtype,
    save_model_dir,
)
from d1.train.run import TrainingRun
from d1.train.configs import SFTConfig


# ----------------------------------------------------------------------------- data


def prompt_text(tokenizer: Any, task: Any, example: Any, *, for_eval: bool = False) -> str:
    """The chat-templated user turn with the assistant header (what the model conditions on)."""
    messages = task.messages(example, for_eval=for_eval)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def sft_texts(tokenizer: Any, task: Any, example: Any) -> tuple[str, str]:
    """(prompt, response) texts of one SFT example (see the module docstring)."""
    if not example.solution:
        raise DataError(f"{task.name}: example without a solution: {example.question[:60]!r}")
    prompt = prompt_text(tokenizer, task, example)
    conversation = task.messages(example) + [{"role": "assistant", "content": example.solution}]
    full = tokenizer.apply_chat_template(conversation, tokenize=False)
    if full.startswith(prompt):
        return prompt, full[len(prompt):]
    # A template whose prompt is not a prefix of the conversation: fall back to the bare solution.
    return prompt, example.solution


@dataclass
class TokenRows:
    """Token ids of training rows: ``prompts[i]`` (never masked, may be empty) + ``responses[i]``."""

    prompts: list[list[int]]
    responses: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompts)


def sft_rows(tokenizer: Any, data_dir: str, task_names: Sequence[str], *, max_length: int,
             max_examples: int | None = None, prefix_marker: str = "", prefix_fraction: float = 1.0,
             prefix_pattern: str = "", seed: int = 0) -> tuple[TokenRows, dict]:
    """Tokenised SFT rows of the tasks' prepared train splits, and counts of what was kept.

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
    from d1.prepare import read_split
    from d1.tasks import get_task

    prompts: list[list[int]] = []
    responses: list[list[int]] = []
    stats = {"examples": 0, "no_solution": 0, "prompt_too_long": 0, "truncated": 0}
    copies: list[tuple[list[int], list[int]]] = []
    if prefixed:
        stats["prefix_skipped"] = 0
    chooser = random.Random(seed)
    for name in task_names:
        task = get_task(name)
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
            raise DataError(f"sft: task {name!r} has no usable training example (worked solution, prompt shorter "
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
    (``benchmarks/fact_learning.py``); with marker ``" = "`` a Countdown worked
    solution's first intermediate result is learned with its operands as prompt
    (``benchmarks/README.md``, Sessions 9-10).
    """
    head = tokenizer(response[:cut], add_special_tokens=False)["input_ids"]
    tail = tokenizer(response[cut:], add_special_tokens=False)["input_ids"]
    return list(prompt_ids) + head, tail


# ----------------------------------------------------------------------------- the shared loop


def total_steps_for(cfg: Any, num_rows: int, num_processes: int) -> int:
    per_step = cfg.batch_size * cfg.grad_accum * num_processes
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * num_rows / per_step))


def train_masked_diffusion(
    run: TrainingRun,
    model: torch.nn.Module,
    tokenizer: Any,
    rows: TokenRows,
    *,
    mask_id: int,
    eos_id: int,
    max_length: int,
    mask_eps: float,
    pad_to_longest: bool = False,
    callbacks: Sequence[StepCallback] = (),
) -> dict:
    """The masked-diffusion training loop (SFT; pre-training with empty prompts). Returns the last metrics.

    ``pad_to_longest``: rows of a step are EOS-padded to the longest row of the
    whole optimiser step (all micro-batches and processes, so micro-batching does
    not change it), capped at ``max_length``, instead of to ``max_length`` (d1).
    """
    cfg = run.cfg
    if len(rows) == 0:
        raise DataError(f"{cfg.SECTION}: no training rows")
    per_process = cfg.batch_size * cfg.grad_accum
    per_step = per_process * run.num_processes
    total = total_steps_for(cfg, len(rows), run.num_processes)
    start = run.setup(model, total)
    model = run.model
    model.train()
    device = run.device
    scale = cfg.grad_accum * run.num_processes  # undo accelerate's 1/grad_accum and DDP's 1/num_processes
    bar = progress_bar(run.accelerator, total=total, initial=start, desc=cfg.SECTION)
    metrics: dict = {}
    for step in range(start, total):
        timer = StepTimer()
        indices = positions_for_step(step, per_step, len(rows), cfg.seed)
        mine = indices[run.rank * per_process:(run.rank + 1) * per_process]
        length = max_length
        if pad_to_longest:
            length = min(max_length, max(len(rows.prompts[i]) + len(rows.responses[i]) for i in indices))
        batch = sft_collate([rows.prompts[i] for i in mine], [rows.responses[i] for i in mine],
                            eos_id=eos_id, max_length=length)
        input_ids, prompt_mask = batch["input_ids"], batch["prompt_mask"]
        generator = make_generator(cfg.seed, cfg.SECTION, "mask", step, run.rank)  # CPU: device-independent
        t = sample_mask_ratio(per_process, eps=mask_eps, generator=generator, device="cpu")
        noisy, is_masked = forward_mask(input_ids, ~prompt_mask, t, mask_id, generator=generator)
        input_ids, noisy, is_masked, t = (x.to(device) for x in (input_ids, noisy, is_masked, t))
        num_response = reduce_sum(run.accelerator, count_response_tokens(prompt_mask), device)

        loss_sum, ce_sum, masked = 0.0, 0.0, 0
        for micro in range(cfg.grad_accum):
            rows_slice = slice(micro * cfg.batch_size, (micro + 1) * cfg.batch_size)
            with run.micro_step(step, micro):
                logits = model(noisy[rows_slice]).logits
                loss = masked_sft_loss(logits, input_ids[rows_slice], is_masked[rows_slice], t[rows_slice],
                                       num_response)
                run.backward(loss * scale)
                lr = run.lr
                run.optimizer_step()
            loss_sum += float(loss.detach())
            with torch.no_grad():
                sel = is_masked[rows_slice]
                if sel.any():
                    ce_sum += float(torch.nn.functional.cross_entropy(
                        logits.detach()[sel].float(), input_ids[rows_slice][sel], reduction="sum"))
                masked += int(sel.sum())
        acc = run.accelerator
        total_masked = reduce_sum(acc, masked, device)
        metrics = {
            "train/loss": reduce_sum(acc, loss_sum, device),
            # d1's "unscaled_loss": mean cross-entropy over masked tokens, without the 1/t weight
            "train/unscaled_loss": reduce_sum(acc, ce_sum, device) / max(total_masked, 1.0),
            "train/mask_ratio": reduce_sum(acc, float(t.sum()), device) / per_step,
            "train/grad_norm": run.grad_norm,
            "train/lr": lr,
            "train/epoch": (step + 1) * per_step / len(rows),
            "train/truncated_rows": reduce_sum(acc, int(batch["truncated"].sum()), device),
            "perf/tokens_per_s": per_step * length / timer.elapsed(),
        }
        run.end_step(step, metrics, tokenizer=tokenizer, callbacks=callbacks)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['train/loss']:.4f}")
    bar.close()
    return run.finish() or metrics


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
                                seed=cfg.seed)
    model = prepare_trainable(model, cfg)
    params = count_parameters(model)
    last = train_masked_diffusion(run, model, tokenizer, rows, mask_id=ids.mask_id, eos_id=ids.eos_id,
                                  max_length=cfg.max_length, mask_eps=cfg.mask_eps,
                                  pad_to_longest=cfg.pad_to == "longest", callbacks=callbacks)
    model_dir = save_final(run, tokenizer, base_path=cfg.model_path, merge=cfg.merge_adapter)
    return {"stage": "sft", "out_dir": cfg.out_dir, "model_dir": str(model_dir), "steps": run.total_steps,
            "resumed_from": run.resume_state.step if run.resume_state else None, "data": data_stats,
            "parameters": params, "last_metrics": last}


def save_final(run: TrainingRun, tokenizer: Any, *, base_path: str, merge: bool) -> Path:
    """Write the trained model to ``<out_dir>/model`` (merged into its base when ``merge`` and LoRA)."""
    out = Path(run.cfg.out_dir)
    acc = run.accelerator
    model = run.unwrapped
    lora = is_peft(model)
    target = out / MODEL_DIR
    acc.wait_for_everyone()
    if acc.is_main_process:
        if lora and merge:
            adapter_dir = save_model_dir(model, tokenizer, out / "adapter")
            # Free the training copy first: merging reloads the base (8B on GPU).
            run.model = run.optimizer = None
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            from d1.models.lora import merge_adapter

            shutil.rmtree(target, ignore_errors=True)
            cfg = run.cfg
            merge_adapter(base_path, str(adapter_dir), str(target),
                          dtype=resolve_model_dtype(cfg.model_dtype, run.device),
                          trust_remote_code=cfg.trust_remote_code)
            if tokenizer is not None and not (target / "tokenizer_config.json").exists():
                tokenizer.save_pretrained(str(target))
        else:
            shutil.rmtree(target, ignore_errors=True)
            save_model_dir(model, tokenizer, target)
    acc.wait_for_everyone()
    return target
