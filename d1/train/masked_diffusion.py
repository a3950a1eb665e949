"""The masked-diffusion training loop shared by tiny-model pre-training and masked SFT.

A row is ``prompt`` (never masked, empty in pre-training) + ``response``.
Objective (:mod:`d1.algo.masking`): per row ``t ~ U(eps, 1)``, each response
token masked with probability ``t``, loss = sum over masked tokens of CE / t
divided by the number of response tokens of the whole optimiser batch (all
micro-batches and processes). So 1 x 4 and 4 x 1 micro-batching give the same
gradient; d1 (HF Trainer) normalised each micro-batch by its own count and
averaged, which is the same thing when rows have a fixed length and no
prompt, and close otherwise.

The masks of a step are drawn for the whole optimiser batch (every process's
rows) at once from a generator seeded by (seed, step); each process takes its
rows and splits them into micro-batches, so neither the micro-batch size nor
the number of processes changes them: 2 processes x 1 micro-batch train as
1 process x 2 accumulated micro-batches do (tests/train/test_distributed.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from d1.algo.masking import count_response_tokens, forward_mask, masked_sft_loss, sample_mask_ratio, sft_collate
from d1.errors import DataError
from d1.train.common import (
    StepCallback,
    StepTimer,
    make_generator,
    positions_for_step,
    progress_bar,
    reduce_sum,
)
from d1.train.run import TrainingRun


@dataclass
class TokenRows:
    """Token ids of training rows: ``prompts[i]`` (never masked, may be empty) + ``responses[i]``."""

    prompts: list[list[int]]
    responses: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompts)


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
        length = max_length
        if pad_to_longest:
            length = min(max_length, max(len(rows.prompts[i]) + len(rows.responses[i]) for i in indices))
        # Every process collates and masks the whole optimiser batch, then keeps its rows. The generator
        # (CPU: device-independent) is keyed by the step; the trailing 0 (once the process index) keeps
        # a single process's masks as they were.
        batch = sft_collate([rows.prompts[i] for i in indices], [rows.responses[i] for i in indices],
                            eos_id=eos_id, max_length=length)
        generator = make_generator(cfg.seed, cfg.SECTION, "mask", step, 0)
        t_all = sample_mask_ratio(per_step, eps=mask_eps, generator=generator, device="cpu")
        noisy, is_masked = forward_mask(batch["input_ids"], ~batch["prompt_mask"], t_all, mask_id,
                                        generator=generator)
        num_response = float(count_response_tokens(batch["prompt_mask"]))  # of the whole optimiser batch
        mine = slice(run.rank * per_process, (run.rank + 1) * per_process)
        input_ids, noisy, is_masked, t = (x[mine].to(device)
                                          for x in (batch["input_ids"], noisy, is_masked, t_all))

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
            "train/mask_ratio": float(t_all.sum()) / per_step,
            "train/grad_norm": run.grad_norm,
            "train/lr": lr,
            "train/epoch": (step + 1) * per_step / len(rows),
            "train/truncated_rows": int(batch["truncated"].sum()),
            "perf/tokens_per_s": per_step * length / timer.elapsed(),
        }
        run.end_step(step, metrics, tokenizer=tokenizer, callbacks=callbacks)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['train/loss']:.4f}")
    bar.close()
    return run.finish() or metrics
