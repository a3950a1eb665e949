"""One training run: the accelerator, optimiser, scheduler, checkpoints and metrics a loop shares.

Single process, DDP (``infra/gpu/accelerate/8gpu.yaml``) and FSDP2
(``8gpu-fsdp.yaml``) run the same loops.

Sharded training (FSDP2: accelerate's FSDP version 2, ``torch.distributed.fsdp.fully_shard``;
the helpers are in :mod:`d1.train.common`). Under FSDP every process holds one shard (a DTensor) of each parameter, of its
gradient and of its optimiser moments; a forward pass all-gathers a wrapped
unit's parameters (one LLaDA block) and frees them again, backward
reduce-scatters the gradients. What the training loops do differently
(everything else, gradient accumulation and clipping included, goes through
accelerate as under DDP):

- saving (final model, checkpoints): the model and the optimiser state are
  gathered to full CPU tensors on the main process (:func:`full_model_state`,
  :func:`full_optimizer_state`; collectives, so every process calls them) and
  written as a DDP run writes them; the optimiser state is keyed by parameter
  name (``torch.distributed.checkpoint.state_dict``), so a checkpoint resumes
  only under FSDP (``trainer_state.json`` records the mode);
- resume: the saved weights go into the plain model before ``prepare`` shards
  it; the optimiser state is loaded on the main process and sharded to the
  others (:func:`load_full_optimizer_state`);
- generation and no-grad scoring (GRPO rollouts, old and reference log-probs):
  :meth:`TrainingRun.full_params` gathers every parameter once and keeps it
  gathered for the block, so the sampler's forward passes run without
  collectives (each rank may run a different number of them: threshold decoding
  stops a block when it is done, which would leave the others waiting in an
  all-gather); GRPO's training passes do gather, so there every process runs
  every estimator pass (:meth:`d1.train.grpo.DiffuGRPO.score_mask`);
- weight checks look at each process's shard and share the verdict;
- LoRA: FSDP2 shards each parameter on its own, so frozen base weights and
  trainable adapters share a unit (FSDP1 needed ``use_orig_params``);
- with bf16 mixed precision accelerate keeps fp32 master copies of the
  trainable weights (the final model is written in the dtype it was loaded in,
  checkpoints keep fp32 so a resume continues exactly).

Only FSDP2 (``fsdp_version: 2``) is supported: FSDP1 cannot run a forward pass
on gathered parameters (``summon_full_params`` forbids it), so its rollouts
would need an all-gather per block per sampler step on every rank in lockstep.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from d1.config import atomic_dir
from d1.errors import TrainingError
from d1.train.checkpoints import Checkpointer
from d1.train.common import (
    MODEL_DIR,
    StepCallback,
    build_accelerator,
    check_distributed_mode,
    fsdp_full_params,
    full_model_state,
    is_fsdp,
    local_tensor,
    build_optimizer,
    build_scheduler,
    derive_seed,
    is_peft,
    resolve_model_dtype,
    save_model_dir,
    scoped_rng,
    trainable_parameters,
    write_run_config,
)
from d1.train.metrics import MetricsLogger

log = logging.getLogger(__name__)

class TrainingRun:
    """The pieces every training loop shares, in the order a loop uses them.

    ``run = TrainingRun(cfg, "sft", resume=...)`` makes the Accelerator and finds
    the checkpoint to resume from (a fresh run deletes old checkpoints);
    ``run.setup(model, total_steps)`` builds optimiser and scheduler, prepares
    them with accelerate, restores the checkpoint and opens the metrics log, and
    returns the step to start from. Then per optimiser step: ``micro_step``
    contexts around each micro-batch, :meth:`optimizer_step` after its backward,
    :meth:`end_step` (log, callbacks, checkpoint). :meth:`finish` closes the log.
    """

    def __init__(self, cfg: Any, stage: str, *, resume: bool):
        self.cfg = cfg
        self.stage = stage
        self.accelerator = build_accelerator(cfg)
        check_distributed_mode(self.accelerator)
        #: FSDP2: every process holds a shard of each weight (see the module docstring)
        self.uses_fsdp = is_fsdp(self.accelerator)
        self.device = self.accelerator.device
        self.rank = self.accelerator.process_index
        self.num_processes = self.accelerator.num_processes
        self.checkpointer = Checkpointer(cfg, self.accelerator, stage)
        automatic = self.checkpointer.automatic
        self.resume_state = self.checkpointer.find() if (resume or automatic) else None
        where = self.checkpointer.root
        if self.resume_state is not None:
            self._say(f"{stage}: resuming from step {self.resume_state.step} ({self.resume_state.path})")
        elif automatic:
            self._say(f"{stage}: no checkpoint of this config and these inputs in {where}; starting from step 0")
        elif resume:
            self._say(f"{stage}: --resume, but no checkpoint in {where}; starting from step 0")
        if self.resume_state is None and not automatic:
            self.checkpointer.clear()  # a fresh run must not resume into an earlier run's checkpoints later
        self.model = self.optimizer = self.scheduler = self.logger = None
        self.total_steps = 0
        self.load_dtypes: dict[str, torch.dtype] = {}  # each weight's dtype before prepare
        self.grad_norm: float | None = None
        # the non-finite guard: this step's update skipped; skipped steps in all and in a row
        self.update_skipped = False
        self.nonfinite_loss = False
        self.skipped_steps = 0
        self.skipped_in_a_row = 0

    def _say(self, message: str) -> None:
        """One line on stderr (the stage's log) and in the Python log, from the main process."""
        if self.accelerator.is_main_process:
            log.info(message)
            print(message, file=sys.stderr, flush=True)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def setup(self, model: torch.nn.Module, total_steps: int) -> int:
        """Optimiser, scheduler, ``accelerator.prepare``, resume; returns the step to start from.

        A checkpoint's weights go into the plain model before ``prepare`` (which
        shards it under FSDP); optimiser, scheduler and RNG states after.
        """
        cfg = self.cfg
        self.total_steps = total_steps
        self.load_dtypes = {name: p.dtype for name, p in model.named_parameters()}
        if self.uses_fsdp and self.accelerator.mixed_precision != "no":
            # accelerate's FSDP2 prepare keeps fp32 master copies of the trainable weights; make them
            # here, so that a checkpoint's fp32 weights load without rounding.
            for p in model.parameters():
                if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
                    p.data = p.data.float()
        if self.resume_state is not None:
            self.checkpointer.restore_weights(self.resume_state, model)
        optimizer = build_optimizer(model, cfg)
        self.scheduler = build_scheduler(optimizer, cfg, total_steps)
        # The scheduler is stepped by hand once per optimiser step (accelerate's prepared scheduler
        # would step once per process).
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        start = 0
        if self.resume_state is not None:
            self.checkpointer.restore(self.resume_state, model=self.model, optimizer=self.optimizer,
                                      scheduler=self.scheduler)
            start = self.resume_state.step
            if self.is_main:  # the metrics up to the checkpoint (DVC deleted the logging folder with the outputs)
                self.checkpointer.restore_metrics(self.resume_state)
        self.logger = MetricsLogger(cfg, self.accelerator, resume_step=start if self.resume_state else None)
        write_run_config(cfg, self.accelerator)
        return start

    @property
    def unwrapped(self) -> torch.nn.Module:
        """The model without its DDP wrapper. Under FSDP2 the prepared model itself: its weights are
        shards and a forward pass gathers them (use :meth:`full_params` around generation)."""
        return self.accelerator.unwrap_model(self.model)

    def full_params(self) -> contextlib.AbstractContextManager:
        """Around no-grad forward passes whose number may differ between processes (generation): under
        FSDP every process gathers the full weights once (:func:`d1.train.common.fsdp_full_params`); otherwise
        nothing. Every process must enter it."""
        return fsdp_full_params(self.model) if self.uses_fsdp else contextlib.nullcontext()

    @contextlib.contextmanager
    def micro_step(self, step: int, micro: int) -> Iterator[None]:
        """Gradient accumulation (no DDP sync before the last micro-batch), autocast and seeded dropout.

        The dropout seed is a function of the micro-batch's place in the optimiser batch
        (``rank * grad_accum + micro``), so 2 processes x 1 micro-batch draw what 1 process x 2 does
        (the trailing 0 keeps a single process's seeds as they were when the rank was the key).
        """
        place = self.rank * self.cfg.grad_accum + micro
        seed = derive_seed(self.cfg.seed, self.stage, "dropout", step, place, 0)
        with self.accelerator.accumulate(self.model), scoped_rng(seed, self.device):
            with self.accelerator.autocast():
                yield

    def backward(self, loss: torch.Tensor) -> None:
        if not bool(torch.isfinite(loss.detach()).all()):
            self.nonfinite_loss = True
        self.accelerator.backward(loss)

    def optimizer_step(self) -> None:
        """Call inside :meth:`micro_step` after backward: clip + step on the last micro-batch only.

        The non-finite guard: when a micro-batch's loss or the step's gradient norm is not
        finite, the step makes no update (gradients dropped, scheduler not stepped) and
        :meth:`end_step` counts it.
        """
        acc = self.accelerator
        if acc.sync_gradients:
            max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
            norm = acc.clip_grad_norm_(trainable_parameters(self.model), max_norm)
            self.grad_norm = float(norm) if norm is not None else None
            nonfinite_norm = self.grad_norm is not None and not math.isfinite(self.grad_norm)
            self.update_skipped = self.nonfinite_loss or nonfinite_norm
            self.nonfinite_loss = False
            if self.update_skipped:
                self.optimizer.zero_grad(set_to_none=True)
                return
        self.optimizer.step()
        if acc.sync_gradients and not acc.optimizer_step_was_skipped:  # fp16 overflow skips the step
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def end_step(self, step: int, metrics: dict, *, tokenizer: Any, callbacks: Sequence[StepCallback] = (),
                 extra_state: dict | None = None, extra_files: Callable[[], dict] | None = None) -> None:
        """After optimiser step ``step`` (0-based) is done: log, call back, checkpoint at multiples of save_steps."""
        done = step + 1
        self._count_nonfinite(done, metrics)
        if done % self.cfg.logging_steps == 0 or done == self.total_steps:
            self.logger.log(done, metrics)
        for callback in callbacks:
            callback(done, metrics)
        if self.cfg.save_steps and (done % self.cfg.save_steps == 0 or done == self.total_steps):
            self.check_finite_weights(done)
            self.checkpointer.save(done, model=self.model, tokenizer=tokenizer, optimizer=self.optimizer,
                                   scheduler=self.scheduler, extra_state=extra_state,
                                   extra_files=extra_files() if extra_files else None)

    def _count_nonfinite(self, done: int, metrics: dict) -> None:
        """Count a skipped update in ``metrics``; stop the run after ``max_nonfinite_steps`` in a row."""
        if self.update_skipped:
            self.skipped_steps += 1
            self.skipped_in_a_row += 1
        else:
            self.skipped_in_a_row = 0
        self.update_skipped = False
        metrics["train/nonfinite_skipped"] = self.skipped_steps
        limit = self.cfg.max_nonfinite_steps
        if self.skipped_in_a_row >= limit:
            raise TrainingError(
                f"{self.stage}: step {done}: loss or gradient norm not finite for {limit} steps in a row "
                f"(lr {self.cfg.lr:g}; {self.cfg.SECTION}.max_nonfinite_steps={limit}); stopped, nothing saved "
                "from these weights")

    def check_finite_weights(self, done: int) -> None:
        """TrainingError when a trainable weight is not finite: nothing is ever saved from such weights.

        Under FSDP each process checks its shards and all raise when one finds a bad weight."""
        bad = next((name for name, param in self.unwrapped.named_parameters()
                    if param.requires_grad and not bool(torch.isfinite(local_tensor(param.detach())).all())),
                   None)
        if self.uses_fsdp and self.num_processes > 1:
            from accelerate.utils import gather_object

            bad = next((name for name in gather_object([bad]) if name is not None), None)
        if bad is not None:
            raise TrainingError(f"{self.stage}: step {done}: weight {bad} is not finite "
                                f"(lr {self.cfg.lr:g}); stopped, nothing saved from these weights")

    def final_state(self) -> dict[str, torch.Tensor] | None:
        """Under FSDP: the weights to save, gathered on the main process ({} elsewhere; a collective),
        the trainable ones only for a LoRA model, each in the dtype it was loaded in. Otherwise None
        (``save_pretrained`` reads the model itself)."""
        if not self.uses_fsdp:
            return None
        state = full_model_state(self.model, trainable_only=is_peft(self.unwrapped))
        return {k: v.to(self.load_dtypes[k]) if k in self.load_dtypes and v.is_floating_point() else v
                for k, v in state.items()}

    def finish(self) -> dict:
        self.accelerator.wait_for_everyone()
        last = dict(self.logger.last) if self.logger else {}
        if self.logger:
            self.logger.close()
        return last


def _save_dir(model: torch.nn.Module, tokenizer: Any, path: Path, state: dict | None) -> None:
    if state is None:
        save_model_dir(model, tokenizer, path)
    else:  # FSDP: the gathered weights (the model's own are shards)
        save_model_dir(model, tokenizer, path, state_dict=state)


def save_final(run: TrainingRun, tokenizer: Any, *, base_path: str, merge: bool) -> Path:
    """Write the trained model to ``<out_dir>/model`` (merged into its base when ``merge`` and LoRA)."""
    out = Path(run.cfg.out_dir)
    acc = run.accelerator
    model = run.unwrapped
    lora = is_peft(model)
    target = out / MODEL_DIR
    run.check_finite_weights(run.total_steps)
    state = run.final_state()  # every process: a collective under FSDP
    acc.wait_for_everyone()
    if acc.is_main_process:
        # Each folder is filled under a temporary name and renamed (atomic_dir): a run killed while
        # saving leaves no model folder a later stage or `dvc commit` could take as complete.
        if lora and merge:
            adapter_dir = out / "adapter"
            with atomic_dir(adapter_dir) as tmp:
                _save_dir(model, tokenizer, tmp, state)
            # Free the training copy first: merging reloads the base (8B on GPU).
            run.model = run.optimizer = None
            del model, state
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            from d1.models.lora import merge_adapter

            cfg = run.cfg
            with atomic_dir(target) as tmp:
                merge_adapter(base_path, str(adapter_dir), str(tmp),
                              dtype=resolve_model_dtype(cfg.model_dtype, run.device),
                              trust_remote_code=cfg.trust_remote_code)
                if tokenizer is not None and not (tmp / "tokenizer_config.json").exists():
                    tokenizer.save_pretrained(str(tmp))
        else:
            with atomic_dir(target) as tmp:
                _save_dir(model, tokenizer, tmp, state)
        # The stage succeeded: checkpoints kept under other fingerprints are stale.
        for path in run.checkpointer.remove_other_fingerprints():
            run._say(f"{run.stage}: removed the checkpoints of an earlier config or input ({path})")
    acc.wait_for_everyone()
    return target
