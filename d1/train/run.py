"""One training run: the accelerator, optimiser, scheduler, checkpoints and metrics a loop shares."""

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
        cfg = self.cfg
        self.total_steps = total_steps
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
        return self.accelerator.unwrap_model(self.model)

    @contextlib.contextmanager
    def micro_step(self, step: int, micro: int) -> Iterator[None]:
        """Gradient accumulation (no DDP sync before the last micro-batch), autocast and seeded dropout."""
        seed = derive_seed(self.cfg.seed, self.stage, "dropout", step, micro, self.rank)
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
        """TrainingError when a trainable weight is not finite: nothing is ever saved from such weights."""
        for name, param in self.unwrapped.named_parameters():
            if param.requires_grad and not bool(torch.isfinite(param.detach()).all()):
                raise TrainingError(f"{self.stage}: step {done}: weight {name} is not finite "
                                    f"(lr {self.cfg.lr:g}); stopped, nothing saved from these weights")

    def finish(self) -> dict:
        self.accelerator.wait_for_everyone()
        last = dict(self.logger.last) if self.logger else {}
        if self.logger:
            self.logger.close()
        return last


def save_final(run: TrainingRun, tokenizer: Any, *, base_path: str, merge: bool) -> Path:
    """Write the trained model to ``<out_dir>/model`` (merged into its base when ``merge`` and LoRA)."""
    out = Path(run.cfg.out_dir)
    acc = run.accelerator
    model = run.unwrapped
    lora = is_peft(model)
    target = out / MODEL_DIR
    run.check_finite_weights(run.total_steps)
    acc.wait_for_everyone()
    if acc.is_main_process:
        # Each folder is filled under a temporary name and renamed (atomic_dir): a run killed while
        # saving leaves no model folder a later stage or `dvc commit` could take as complete.
        if lora and merge:
            adapter_dir = out / "adapter"
            with atomic_dir(adapter_dir) as tmp:
                save_model_dir(model, tokenizer, tmp)
            # Free the training copy first: merging reloads the base (8B on GPU).
            run.model = run.optimizer = None
            del model
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
                save_model_dir(model, tokenizer, tmp)
        # The stage succeeded: checkpoints kept under other fingerprints are stale.
        for path in run.checkpointer.remove_other_fingerprints():
            run._say(f"{run.stage}: removed the checkpoints of an earlier config or input ({path})")
    acc.wait_for_everyone()
    return target
