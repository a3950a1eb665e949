"""Training-stage configs: ``pretrain``, ``sft`` and ``grpo`` sections of ``params.yaml``.

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

Known differences from d1's settings, by design:

- ``grpo.load_in_4bit`` defaults to false (d1 trained a 4-bit NF4 base, QLoRA);
  set it on a CUDA machine with bitsandbytes installed.
- ``grpo.lora_target_modules`` defaults to the modules d1's list actually hit
  on LLaDA (q_proj, k_proj, v_proj, up_proj): d1 also named o_proj, down_proj
  and gate_proj, which LLaDA does not have (our LoRA rejects unknown names).
- ``grpo.save_total_limit`` defaults to 3 (d1: 500, i.e. every checkpoint,
  each with optimiser state: gigabytes per checkpoint on LLaDA-8B).
- d1's TRL config set ``sync_ref_model: true``; with a LoRA policy the
  reference is the adapter-disabled model and TRL never synchronised it, so
  there is no such option here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import ClassVar

from d1.errors import ConfigError

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
MODEL_DTYPES = ("auto", "float32", "bfloat16", "float16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
DEVICES = ("auto", "cpu", "cuda")
REMASKING = ("low_confidence", "random")
GRPO_LOSS_NORMALIZATION = ("d1", "batch")
GRPO_LOGP_ESTIMATORS = ("one_step", "blockwise", "coupled", "replay")
DOCUMENT_FORMATS = ("plain", "chat", "bare")

LLADA_INSTRUCT = "GSAI-ML/LLaDA-8B-Instruct"


def _fail(where: str, message: str) -> None:
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
    lr_scheduler: str = "linear"
    warmup_steps: int = 0  # used when > 0, else ceil(warmup_ratio * total steps)
    warmup_ratio: float = 0.0

    # --- batch and length --------------------------------------------------------
    batch_size: int = 1  # per process micro-batch
    grad_accum: int = 4  # micro-batches per optimiser step
    epochs: float = 1.0
    max_steps: int | None = None  # optimiser steps; None: from epochs

    # --- checkpoints and logging ------------------------------------------------
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

        if not self.tasks:
            _fail(f"{s}.tasks", "no task given")
        for name in self.tasks:
            if name not in available_tasks():
                _fail(f"{s}.tasks", f"unknown task {name!r}; available: {', '.join(available_tasks())}")
        if len(set(self.tasks)) != len(self.tasks):
            _fail(f"{s}.tasks", f"a task is listed twice: {self.tasks}")
        if not self.model_path:
            _fail(f"{s}.model_path", "empty")
        if not self.out_dir:
            _fail(f"{s}.out_dir", "empty")
        _positive_or_none(s, "max_examples", self.max_examples)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            _fail(f"{s}.lr", f"must be a positive number, got {self.lr}")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            _fail(f"{s}.adam_betas", f"expected two numbers in [0, 1), got {self.adam_betas}")
        if not self.adam_eps > 0:
            _fail(f"{s}.adam_eps", f"must be > 0, got {self.adam_eps}")
        if not self.weight_decay >= 0:
            _fail(f"{s}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        if not self.max_grad_norm >= 0:
            _fail(f"{s}.max_grad_norm", f"must be >= 0 (0 disables clipping), got {self.max_grad_norm}")
        _one_of(s, "lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        if self.warmup_steps < 0:
            _fail(f"{s}.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            _fail(f"{s}.warmup_ratio", f"must be in [0, 1], got {self.warmup_ratio}")
        _positive(s, "batch_size", self.batch_size)
        _positive(s, "grad_accum", self.grad_accum)
        if not (self.epochs > 0 and math.isfinite(self.epochs)):
            _fail(f"{s}.epochs", f"must be a positive number, got {self.epochs}")
        _positive_or_none(s, "max_steps", self.max_steps)
        if self.save_steps < 0:
            _fail(f"{s}.save_steps", f"must be >= 0, got {self.save_steps}")
        _positive_or_none(s, "save_total_limit", self.save_total_limit)
        _positive(s, "logging_steps", self.logging_steps)
        _one_of(s, "mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _one_of(s, "model_dtype", self.model_dtype, MODEL_DTYPES)
        _one_of(s, "device", self.device, DEVICES)
        if not self.full_finetune:
            _positive(s, "lora_r", self.lora_r)
            if not self.lora_alpha > 0:
                _fail(f"{s}.lora_alpha", f"must be > 0, got {self.lora_alpha}")
            if not 0.0 <= self.lora_dropout < 1.0:
                _fail(f"{s}.lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
            if not self.lora_target_modules:
                _fail(f"{s}.lora_target_modules", "no module given")

    @property
    def dvclive_dir(self) -> str:
        return self.logging_dir or f"{self.out_dir.rstrip('/')}/dvclive"


def _positive(section: str, key: str, value: int) -> None:
    if value < 1:
        _fail(f"{section}.{key}", f"must be a positive integer, got {value}")


def _positive_or_none(section: str, key: str, value: int | None) -> None:
    if value is not None and value < 1:
        _fail(f"{section}.{key}", f"must be a positive integer or null, got {value}")


def _one_of(section: str, key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(f"{section}.{key}", f"{value!r} is not one of {', '.join(allowed)}")


@dataclass
class PretrainConfig(TrainConfigBase):
    """Masked-diffusion pre-training of the built-in tiny LLaDA from scratch (tiny profile only).

    The corpus is the prepared train split of every task in ``tasks``: one
    document per example (``document_format``: ``plain`` = the task's user turn,
    a blank line and the worked solution; ``chat`` = the same as a chat-templated
    conversation; ``bare`` = the question without instructions, a blank line and
    the solution). The tokenizer (``tokenizer_vocab_size``) is trained on that
    corpus first; documents are joined with EOS and packed into ``seq_len``-token
    rows; every token is maskable (LLaDA pre-training).
    """

    SECTION: ClassVar[str] = "pretrain"

    model_path: str = "tiny"  # only the built-in tiny model can be pre-trained
    tasks: list[str] = field(default_factory=lambda: ["countdown", "sudoku", "gsm8k"])
    out_dir: str = "outputs/pretrain"
    document_format: str = "plain"
    extra_documents: list[str] = field(default_factory=list)  # .txt (a document per line) or records with "text"
    tokenizer_vocab_size: int = 1024
    tokenizer_min_frequency: int = 2
    tokenizer_split_words: bool = True  # false: merges may span words (d1.models.tokenizer.train_tokenizer)
    tokenizer_number_digits: int = 1  # 1: every digit a token; 3: numbers < 1000 may be one token
    # Tiny LLaDA architecture (LLaDA config field names; d1.models.llada.tiny_llada_config's sizes).
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_hidden_size: int = 384
    max_sequence_length: int = 1024
    seq_len: int = 256
    mask_eps: float = 1e-3
    # LLaDA pre-training: AdamW, lr 4e-4, weight decay 0.1, warmup; we decay with a cosine.
    lr: float = 4e-4
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    max_grad_norm: float = 1.0
    lr_scheduler: str = "cosine"
    warmup_steps: int = 100
    batch_size: int = 16
    grad_accum: int = 1
    epochs: float = 1.0
    save_steps: int = 500
    full_finetune: bool = True  # from scratch: every weight trains (LoRA fields unused)

    def validate(self) -> None:
        super().validate()
        s = self.SECTION
        if self.model_path != "tiny":
            _fail(f"{s}.model_path", f"only the built-in 'tiny' model can be pre-trained, got {self.model_path!r}")
        if not self.full_finetune:
            _fail(f"{s}.full_finetune", "pre-training from scratch trains every weight; must be true")
        _one_of(s, "document_format", self.document_format, DOCUMENT_FORMATS)
        if self.tokenizer_vocab_size < 262:
            _fail(f"{s}.tokenizer_vocab_size", f"must be >= 262 (256 bytes + 6 special tokens), "
                  f"got {self.tokenizer_vocab_size}")
        _positive(s, "tokenizer_min_frequency", self.tokenizer_min_frequency)
        _positive(s, "tokenizer_number_digits", self.tokenizer_number_digits)
        for key in ("d_model", "n_layers", "n_heads", "mlp_hidden_size", "max_sequence_length", "seq_len"):
            _positive(s, key, getattr(self, key))
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            _fail(f"{s}.n_heads", f"d_model {self.d_model} must split into {self.n_heads} heads of even size")
        if self.seq_len > self.max_sequence_length:
            _fail(f"{s}.seq_len", f"{self.seq_len} exceeds max_sequence_length {self.max_sequence_length}")
        if not 0.0 <= self.mask_eps < 1.0:
            _fail(f"{s}.mask_eps", f"must be in [0, 1), got {self.mask_eps}")


@dataclass
class SFTConfig(TrainConfigBase):
    """Masked SFT (d1 ``SFT/sft_train.py``): defaults are d1's LLaDA setting.

    Examples are the prepared train splits of ``tasks`` with a worked
    ``solution`` (d1 used s1K, which is not a task here; put it in a task to use
    it). ``merge_adapter``: after LoRA training, merge the adapter into the base
    and write the standalone model to ``<out_dir>/model`` (d1 practice before RL).

    ``prefix_marker`` (extension, not in d1; empty = off, d1's data): a
    ``prefix_fraction`` of the examples whose response contains the marker also
    get a copy whose never-masked prompt runs through the marker's first
    occurrence (:func:`d1.train.sft.prefix_cuts`). The objective is d1's on every
    row; only the data gains rows. ``prefix_pattern`` (instead of the marker):
    a regular expression; one copy per match, whose prompt runs through the
    match (:func:`d1.train.sft.prefix_cuts`). Measured on the tiny Countdown
    model in ``docs/results.md`` (the learning benchmark's SFT recipe).
    """

    SECTION: ClassVar[str] = "sft"

    out_dir: str = "outputs/sft"
    max_length: int = 4096  # every row is padded with EOS to this length (d1)
    pad_to: str = "max_length"  # or "longest": the longest row of the optimiser step (d1.train.sft)
    mask_eps: float = 1e-3
    lr: float = 1e-5
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # HF Trainer default, as d1
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    lr_scheduler: str = "linear"  # HF Trainer default, as d1
    batch_size: int = 1
    grad_accum: int = 4
    epochs: float = 20.0
    save_steps: int = 100
    save_total_limit: int | None = 20
    lora_r: int = 128
    lora_alpha: float = 256.0
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])
    merge_adapter: bool = True
    prefix_marker: str = ""
    prefix_fraction: float = 1.0
    prefix_pattern: str = ""

    def validate(self) -> None:
        super().validate()
        s = self.SECTION
        if self.prefix_marker and self.prefix_pattern:
            _fail(f"{s}.prefix_pattern", f"set prefix_marker or prefix_pattern, not both (prefix_marker is "
                  f"{self.prefix_marker!r})")
        if self.prefix_pattern:
            try:
                re.compile(self.prefix_pattern)
            except re.error as exc:
                _fail(f"{s}.prefix_pattern", f"not a regular expression: {self.prefix_pattern!r} ({exc})")
        if not 0.0 <= self.prefix_fraction <= 1.0:
            _fail(f"{s}.prefix_fraction", f"must be in [0, 1], got {self.prefix_fraction}")
        if self.max_length < 2:
            _fail(f"{s}.max_length", f"must be >= 2, got {self.max_length}")
        _one_of(s, "pad_to", self.pad_to, ("max_length", "longest"))
        if not 0.0 <= self.mask_eps < 1.0:
            _fail(f"{s}.mask_eps", f"must be in [0, 1), got {self.mask_eps}")


@dataclass
class GRPOConfig(TrainConfigBase):
    """diffu-GRPO (d1 ``diffu-grpo``): defaults are d1's LLaDA setting.

    One *round* = ``batch_size * grad_accum`` completions per process
    (``/ num_generations`` prompts, ``num_generations`` rollouts each), then
    ``num_iterations`` (mu) optimiser steps over those rollouts, iteration j with
    its own mask seed. ``max_steps`` counts optimiser steps (mu per round), as
    TRL does; an epoch is one pass over the prompts, i.e. mu optimiser steps per
    round of prompts.

    loss_normalization: ``d1`` = each micro-batch's loss is the mean over its kept
    tokens and micro-batches are averaged (d1/TRL); ``batch`` = the sum over kept
    tokens of the whole optimiser batch divided by their count (independent of
    micro-batching). They agree when every micro-batch keeps as many tokens.
    add_reasoning: prefill ``<reasoning>`` after the chat template (and prepend it
    to the completion before computing rewards). d1's RL did not prefill (its
    rewards check the opening tag in the completion); d1's evaluation did.
    random_masking: draw a fresh mask seed per inner iteration (d1 default);
    false uses seed 42 for every iteration (d1's fixed-seed option).
    p_mask_prompt: d1's 0.15 by default. With 0, the G completions of a prompt see
    the same estimator input (prompt + all-masked completion), so the gradient of
    a token that all G share cancels exactly (advantages sum to zero in a group)
    and only the positions where completions differ move; with > 0 every row gets
    its own prompt mask, and a masked number hides the puzzle of a short prompt.
    The CPU learning benchmark uses 0 (measured GRPO gain +2.8 vs +0.4 points from
    the same SFT model: docs/results.md).
    logp_estimator: ``one_step`` = d1's estimator (one forward pass, every
    completion token masked); ``blockwise`` (not in d1) = one pass per block of
    ``block_length`` tokens, earlier blocks shown, so a token is scored given
    the blocks the sampler had finished when it wrote it
    (:func:`d1.algo.grpo.per_token_logps`). Costs gen_length / block_length
    passes (and activations) per scoring instead of one; with one block the two
    are identical. ``coupled`` (not in d1; DiffuCoder's coupled sampling) = two
    passes per scoring: each iteration's mask seed also draws a rate t ~ U(0.2,
    0.8) and a split of the completion per prompt (shared by its G
    completions); the tokens of one part are scored with that part masked and
    the other part shown, then the other way round, so every token is scored
    once, given a random part of its own completion. ``replay`` (not in d1) =
    the sampler records the step at which it unmasked every rollout token;
    the steps are cut into ``replay_chunks`` consecutive chunks (null: one per
    step) and each chunk is one pass that shows the tokens unmasked before it
    and scores its own, so a token is scored given (nearly) what the sampler
    saw when it wrote it. Costs one pass per chunk.
    replay_chunks: chunks of sampler steps for ``replay`` (null = diffusion_steps).
    """

    SECTION: ClassVar[str] = "grpo"

    model_path: str = "outputs/sft/model"
    out_dir: str = "outputs/grpo"
    # rollouts
    num_generations: int = 6  # G
    generation_batch_size: int = 6  # sequences per sampler call
    gen_length: int = 256
    block_length: int = 32
    diffusion_steps: int = 128
    temperature: float = 0.9
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    max_prompt_length: int = 200  # prompts longer than this keep their last tokens (d1/TRL)
    add_reasoning: bool = False
    # objective
    beta: float = 0.04
    epsilon: float = 0.5
    p_mask_prompt: float = 0.15
    num_iterations: int = 12  # mu (d1: 12 for GSM8K/MATH, 8 for Countdown/Sudoku)
    random_masking: bool = True
    scale_rewards: bool = False  # divide advantages by the group std (GRPO); d1 does not
    loss_normalization: str = "d1"
    logp_estimator: str = "one_step"
    replay_chunks: int | None = None
    # optimiser (d1 train.yaml)
    lr: float = 3e-6
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.1
    max_grad_norm: float = 0.2
    lr_scheduler: str = "constant_with_warmup"
    warmup_ratio: float = 0.0001
    batch_size: int = 6  # completions per micro-batch
    grad_accum: int = 2
    epochs: float = 10.0
    save_steps: int = 100
    save_total_limit: int | None = 3
    # LoRA (d1 train.yaml)
    lora_r: int = 128
    lora_alpha: float = 64.0
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "up_proj"])
    load_in_4bit: bool = False
    merge_adapter: bool = False

    def validate(self) -> None:
        super().validate()
        s = self.SECTION
        for key in ("num_generations", "generation_batch_size", "gen_length", "block_length",
                    "diffusion_steps", "max_prompt_length", "num_iterations"):
            _positive(s, key, getattr(self, key))
        if self.num_generations < 2:
            _fail(f"{s}.num_generations",
                  f"needs at least 2 rollouts per prompt for a group baseline, got {self.num_generations}")
        per_process = self.batch_size * self.grad_accum
        if per_process % self.num_generations:
            _fail(f"{s}.num_generations", f"{self.num_generations} does not divide batch_size * grad_accum = "
                  f"{per_process} (each process holds whole groups)")
        if self.gen_length % self.block_length:
            _fail(f"{s}.block_length", f"{self.block_length} does not divide gen_length {self.gen_length}")
        blocks = self.gen_length // self.block_length
        if self.diffusion_steps % blocks:
            _fail(f"{s}.diffusion_steps", f"{self.diffusion_steps} steps do not split evenly over {blocks} blocks")
        if not self.temperature >= 0:
            _fail(f"{s}.temperature", f"must be >= 0, got {self.temperature}")
        if not self.cfg_scale >= 0:
            _fail(f"{s}.cfg_scale", f"must be >= 0, got {self.cfg_scale}")
        _one_of(s, "remasking", self.remasking, REMASKING)
        if not self.beta >= 0:
            _fail(f"{s}.beta", f"must be >= 0, got {self.beta}")
        if not self.epsilon > 0:
            _fail(f"{s}.epsilon", f"must be > 0, got {self.epsilon}")
        if not 0.0 <= self.p_mask_prompt <= 1.0:
            _fail(f"{s}.p_mask_prompt", f"must be in [0, 1], got {self.p_mask_prompt}")
        _one_of(s, "loss_normalization", self.loss_normalization, GRPO_LOSS_NORMALIZATION)
        _one_of(s, "logp_estimator", self.logp_estimator, GRPO_LOGP_ESTIMATORS)
        if self.replay_chunks is not None:
            _positive(s, "replay_chunks", self.replay_chunks)
            if self.replay_chunks > self.diffusion_steps:
                _fail(f"{s}.replay_chunks", f"{self.replay_chunks} is more than the {self.diffusion_steps} "
                      "sampler steps it cuts into chunks")
        if self.load_in_4bit and self.full_finetune:
            _fail(f"{s}.load_in_4bit", "a 4-bit base cannot be fully fine-tuned; use LoRA")

    @property
    def prompts_per_process(self) -> int:
        return self.batch_size * self.grad_accum // self.num_generations
