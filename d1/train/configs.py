"""What the training-stage configs share: fields, allowed values and checks.

The stage configs are one module each, so a stage depends only on its own:
:mod:`d1.train.pretrain_config` (``pretrain``), :mod:`d1.train.sft_config`
(``sft``), :mod:`d1.train.grpo_config` (``grpo``).

One dataclass per stage (loaded with ``d1.config.load_config``; unknown keys and
wrong types are rejected there, ``validate()`` names any bad value). The
defaults of ``SFTConfig`` and ``GRPOConfig`` are the d1 paper's settings on
LLaDA-8B-Instruct (d1's ``SFT/sft_train.py`` and
``diffu-grpo/slurm_scripts/train.yaml``; tabled in ``docs/algorithms.md``);
``params.yaml`` sets the tiny CPU profile. ``PretrainConfig`` exists for the tiny profile only.

Batch sizes are per process (device): the optimiser batch is
``batch_size * grad_accum * num_processes`` examples (SFT, pretrain) or
completions (GRPO), as in HF Trainer / TRL. ``max_steps`` counts optimiser
steps; when it is null the length comes from ``epochs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from d1.errors import ConfigError

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
MODEL_DTYPES = ("auto", "float32", "bfloat16", "float16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
DEVICES = ("auto", "cpu", "cuda")

LLADA_INSTRUCT = "GSAI-ML/LLaDA-8B-Instruct"


def fail_at(where: str, message: str) -> None:
    raise ConfigError(f"{where}: {message}")


@dataclass
class TrainConfigBase:
    """Fields shared by every training stage (see the subclasses for their defaults)."""

    SECTION: ClassVar[str] = ""

    # --- what to train on, where to write ---------------------------------------
    model_path: str = LLADA_INSTRUCT  # Hub id or local folder (full model)
    trust_remote_code: bool = False  # allow non-LLaDA models (Dream, ...) to run their own code
    data_dir: str = "data"  # the output of `d1 prepare`
    tasks: list[str] = field(default_factory=lambda: ["gsm8k"])  # train splits read with read_split
    max_examples: int | None = None  # first N train examples per task (None: all)
    out_dir: str = "outputs/train"
    logging_dir: str | None = None  # dvclive folder; None: <out_dir>/dvclive
    seed: int = 42

    # --- optimiser and schedule ------------------------------------------------
    lr: float = 1e-5
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0  # 0 disables clipping (the norm is still logged)
    # a step whose loss or gradient norm is not finite makes no update; this many in a row stop the run
    max_nonfinite_steps: int = 3
    lr_scheduler: str = "linear"
    warmup_steps: int = 0  # used when > 0, else ceil(warmup_ratio * total steps)
    warmup_ratio: float = 0.0

    # --- batch and length --------------------------------------------------------
    batch_size: int = 1  # per process micro-batch
    grad_accum: int = 4  # micro-batches per optimiser step
    epochs: float = 1.0
    max_steps: int | None = None  # optimiser steps; None: from epochs

    # --- checkpoints and logging ------------------------------------------------
    # "" : checkpoints in <out_dir>/checkpoints, resumed with --resume only. A folder: checkpoints in
    # <checkpoint_root>/<out_dir>/<fingerprint of config and inputs>, outside the stage's outputs (DVC
    # deletes those before it runs a stage), and a run with the same fingerprint resumes by itself.
    checkpoint_root: str = ""
    keep_old_checkpoints: bool = False  # keep other fingerprints' checkpoints after a run succeeds
    # a folder or s3://bucket/prefix each checkpoint is copied to (needs checkpoint_root): a run on a
    # fresh machine resumes from it
    checkpoint_store: str = ""
    save_steps: int = 100  # a checkpoint every N optimiser steps (0: none but the final model)
    save_total_limit: int | None = 3  # keep the last K checkpoints (None: all)
    logging_steps: int = 1  # dvclive step every N optimiser steps

    # --- precision and memory ----------------------------------------------------
    mixed_precision: str = "auto"  # auto: bf16 on a CUDA device that supports it, else no
    model_dtype: str = "auto"  # base weights: auto = bfloat16 on CUDA, float32 on CPU
    gradient_checkpointing: bool = False
    device: str = "auto"  # auto: what accelerate picks (CUDA if present); cpu forces the CPU

    # --- parameter-efficient fine-tuning ----------------------------------------
    full_finetune: bool = False  # True: train every weight, reference = frozen copy
    lora_r: int = 128
    lora_alpha: float = 256.0
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])

    def validate(self) -> None:
        s = self.SECTION
        from d1.tasks import available_tasks

        if not self.tasks and not self.other_data():
            fail_at(f"{s}.tasks", "no task given")
        for name in self.tasks:
            if name not in available_tasks():
                fail_at(f"{s}.tasks", f"unknown task {name!r}; available: {', '.join(available_tasks())}")
        if len(set(self.tasks)) != len(self.tasks):
            fail_at(f"{s}.tasks", f"a task is listed twice: {self.tasks}")
        if not self.model_path:
            fail_at(f"{s}.model_path", "empty")
        if not self.out_dir:
            fail_at(f"{s}.out_dir", "empty")
        require_positive_or_none(s, "max_examples", self.max_examples)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            fail_at(f"{s}.lr", f"must be a positive number, got {self.lr}")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            fail_at(f"{s}.adam_betas", f"expected two numbers in [0, 1), got {self.adam_betas}")
        if not self.adam_eps > 0:
            fail_at(f"{s}.adam_eps", f"must be > 0, got {self.adam_eps}")
        if not self.weight_decay >= 0:
            fail_at(f"{s}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        require_positive(s, "max_nonfinite_steps", self.max_nonfinite_steps)
        if self.checkpoint_store and not self.checkpoint_root:
            fail_at(f"{s}.checkpoint_store", "needs checkpoint_root (the store mirrors its checkpoints)")
        if "://" in self.checkpoint_store and not self.checkpoint_store.startswith("s3://"):
            fail_at(f"{s}.checkpoint_store", f"{self.checkpoint_store!r}: expected a folder or s3://bucket/prefix")
        if not self.max_grad_norm >= 0:
            fail_at(f"{s}.max_grad_norm", f"must be >= 0 (0 disables clipping), got {self.max_grad_norm}")
        require_one_of(s, "lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        if self.warmup_steps < 0:
            fail_at(f"{s}.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            fail_at(f"{s}.warmup_ratio", f"must be in [0, 1], got {self.warmup_ratio}")
        require_positive(s, "batch_size", self.batch_size)
        require_positive(s, "grad_accum", self.grad_accum)
        if not (self.epochs > 0 and math.isfinite(self.epochs)):
            fail_at(f"{s}.epochs", f"must be a positive number, got {self.epochs}")
        require_positive_or_none(s, "max_steps", self.max_steps)
        if self.save_steps < 0:
            fail_at(f"{s}.save_steps", f"must be >= 0, got {self.save_steps}")
        require_positive_or_none(s, "save_total_limit", self.save_total_limit)
        require_positive(s, "logging_steps", self.logging_steps)
        require_one_of(s, "mixed_precision", self.mixed_precision, MIXED_PRECISION)
        require_one_of(s, "model_dtype", self.model_dtype, MODEL_DTYPES)
        require_one_of(s, "device", self.device, DEVICES)
        if not self.full_finetune:
            require_positive(s, "lora_r", self.lora_r)
            if not self.lora_alpha > 0:
                fail_at(f"{s}.lora_alpha", f"must be > 0, got {self.lora_alpha}")
            if not 0.0 <= self.lora_dropout < 1.0:
                fail_at(f"{s}.lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
            if not self.lora_target_modules:
                fail_at(f"{s}.lora_target_modules", "no module given")

    def other_data(self) -> list[str]:
        """What the stage trains on besides the tasks' train splits (SFT: its ``sft_data`` sets); with
        any, ``tasks`` may be empty."""
        return []

    @property
    def dvclive_dir(self) -> str:
        return self.logging_dir or f"{self.out_dir.rstrip('/')}/dvclive"


def require_positive(section: str, key: str, value: int) -> None:
    if value < 1:
        fail_at(f"{section}.{key}", f"must be a positive integer, got {value}")


def require_positive_or_none(section: str, key: str, value: int | None) -> None:
    if value is not None and value < 1:
        fail_at(f"{section}.{key}", f"must be a positive integer or null, got {value}")


def require_one_of(section: str, key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        fail_at(f"{section}.{key}", f"{value!r} is not one of {', '.join(allowed)}")
