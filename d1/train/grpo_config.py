"""The ``grpo`` section of ``params.yaml``: diffu-GRPO; defaults are d1's LLaDA-8B setting.

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

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from d1.config import set_fields
from d1.errors import ConfigError
from d1.generation.sampler_config import SamplerConfig
from d1.train.configs import (
    TrainConfigBase,
    fail_at,
    require_one_of,
    require_positive,
)

GRPO_LOSS_NORMALIZATION = ("d1", "batch")


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
    estimator: the log-prob estimator, by its name in :data:`d1.algo.ESTIMATORS`
    (:mod:`d1.algo.estimators`; was ``logp_estimator``). ``one_step`` = d1's estimator (one forward pass, every
    completion token masked); ``blockwise`` (not in d1) = one pass per block of
    ``sampler.block_length`` tokens, earlier blocks shown, so a token is scored given
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
    Needs the sampler's fixed step schedule (no ``sampler.threshold``).
    replay_chunks: chunks of sampler steps for ``replay`` (null = the sampler's steps).
    objective: the policy objective, by its name in :data:`d1.algo.OBJECTIVES`
    (:mod:`d1.algo.objectives`); ``diffu_grpo`` = d1's (PPO clip with ``epsilon``,
    ``beta`` x k3 KL to the reference).
    objective_params: the objective's own hyper-parameters (its ``params`` dataclass,
    :func:`d1.algo.objectives.objective_traits`; unset keys keep the paper's defaults).
    estimator_params: the estimator's own settings (its ``params`` dataclass, e.g. the
    number of Monte Carlo samples of ``elbo``).
    algorithm / algorithms: the RL algorithms a profile defines, by name, each a set of
    settings applied over the section's (and over its ``per_task`` entry), e.g. ``{d1: {},
    wd1: {objective: wd1, beta: 0.0}}``; ``algorithm`` picks this run's. The name labels
    the model (``outputs/<algorithm>/<task>``, the report's row); DVC runs one
    ``grpo@<algorithm>-<task>`` stage per algorithm the profile's report lists. Every
    entry is checked whatever the run's algorithm; ``algorithm``, ``algorithms``,
    ``tasks`` and ``per_task`` cannot be set in one.
    sampler: the rollout sampler (:class:`d1.generation.SamplerConfig`, the section
    evaluation uses too); defaults to d1's rollouts: gen_length 256, block 32, steps
    128 (null: gen_length / 2), temperature 0.9, low-confidence remasking. A
    ``sampler`` section replaces only the keys it names.
    per_task: settings of a run of one task, over the section's: ``{countdown:
    {num_iterations: 8}}`` applies when ``tasks`` is ``[countdown]`` (one DVC
    ``grpo@<algorithm>-<task>`` stage per task reads the one ``grpo`` section; d1 ran mu 12
    on GSM8K/MATH and 8 on Countdown/Sudoku). A ``sampler`` entry replaces only
    the keys it names. Every entry is checked whatever the run's task (unknown
    task, unknown key, bad value); a run of several tasks with an entry for one
    of them is an error (which entry would win is not obvious).
    """

    SECTION: ClassVar[str] = "grpo"
    # the sampler's settings moved into the shared `sampler` section (d1.config names the new key)
    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "gen_length": "sampler.gen_length", "block_length": "sampler.block_length",
        "diffusion_steps": "sampler.steps", "temperature": "sampler.temperature",
        "cfg_scale": "sampler.cfg_scale", "remasking": "sampler.remasking",
        "logp_estimator": "estimator",
    }

    model_path: str = "outputs/sft/model"
    out_dir: str = "outputs/grpo"
    # rollouts
    num_generations: int = 6  # G
    generation_batch_size: int = 6  # sequences per sampler call
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(gen_length=256, temperature=0.9))
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
    estimator: str = "one_step"
    objective: str = "diffu_grpo"
    objective_params: dict[str, Any] = field(default_factory=dict)
    estimator_params: dict[str, Any] = field(default_factory=dict)
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
    per_task: dict[str, dict[str, Any]] = field(default_factory=dict)
    algorithm: str = "d1"
    algorithms: dict[str, dict[str, Any]] = field(default_factory=lambda: {"d1": {}})

    def validate(self) -> None:
        """Apply, in this order, the ``per_task`` entry of a one-task run, the ``algorithms`` entry of the
        run's algorithm and that entry's own ``per_task`` entry; then check every value."""
        s = self.SECTION
        if self.algorithm not in self.algorithms:
            fail_at(f"{s}.algorithm", f"{self.algorithm!r} is not one of {s}.algorithms "
                    f"({', '.join(self.algorithms) or 'none'})")
        for name, values in self.algorithms.items():
            where = f"{s}.algorithms.{name}"
            if not isinstance(values, dict):
                fail_at(where, f"must be a mapping of {s} settings (may be empty), got {values!r}")
            for key in ("algorithm", "algorithms", "tasks"):
                if key in values:
                    fail_at(f"{where}.{key}", "cannot be set per algorithm")
            # every entry is checked now, not only when its algorithm's stage runs
            own = {k: v for k, v in values.items() if k != "per_task"}
            trial = dataclasses.replace(self, algorithm=name, algorithms={name: {}}, per_task={})
            set_fields(trial, own, where)
            trial._validate_as(where, own)
            if "per_task" in values:
                trial._check_per_task(values["per_task"], f"{where}.per_task")
        self._check_per_task(self.per_task, f"{s}.per_task")
        mine = [t for t in self.tasks if t in self.per_task]
        if mine and len(self.tasks) > 1:
            fail_at(f"{s}.per_task", f"holds settings for {', '.join(mine)}, which apply to a run of that task "
                    f"alone; {s}.tasks is {self.tasks}")
        if mine:
            set_fields(self, self.per_task[mine[0]], f"{s}.per_task.{mine[0]}")
        entry = self.algorithms[self.algorithm]
        where = f"{s}.algorithms.{self.algorithm}"
        set_fields(self, {k: v for k, v in entry.items() if k != "per_task"}, where)
        theirs = [t for t in self.tasks if t in entry.get("per_task", {})]
        if theirs and len(self.tasks) > 1:
            fail_at(f"{where}.per_task", f"holds settings for {', '.join(theirs)}, which apply to a run of that "
                    f"task alone; {s}.tasks is {self.tasks}")
        if theirs:
            set_fields(self, entry["per_task"][theirs[0]], f"{where}.per_task.{theirs[0]}")
        self._check_values()

    def _check_per_task(self, per_task: Any, where: str) -> None:
        """Check every entry of a ``per_task`` mapping over this config (as a run of that task would see it)."""
        from d1.tasks import available_tasks

        if not isinstance(per_task, dict):
            fail_at(where, f"must map task names to settings, got {per_task!r}")
        for task, values in per_task.items():
            at = f"{where}.{task}"
            if task not in available_tasks():
                fail_at(where, f"unknown task {task!r}; available: {', '.join(available_tasks())}")
            if not isinstance(values, dict):
                fail_at(at, f"must be a mapping of settings, got {values!r}")
            for key in ("tasks", "per_task", "algorithm", "algorithms"):
                if key in values:
                    fail_at(f"{at}.{key}", "cannot be set per task")
            # every entry is checked now, not only when its task's stage runs
            trial = dataclasses.replace(self, tasks=[task], per_task={}, algorithm=self.algorithm,
                                        algorithms={self.algorithm: {}})
            set_fields(trial, values, at)
            trial._validate_as(at, values)

    def _validate_as(self, where: str, values: dict) -> None:
        """``_check_values``, naming a bad value set by a per-task entry by that entry (``where.<key>``)."""
        s = self.SECTION
        try:
            self._check_values()
        except ConfigError as exc:
            message = str(exc)
            for key in values:
                if message.startswith((f"{s}.{key}:", f"{s}.{key}.")):
                    raise ConfigError(where + message[len(s):]) from None
            raise

    def _check_values(self) -> None:
        super().validate()
        s = self.SECTION
        for key in ("num_generations", "generation_batch_size", "max_prompt_length", "num_iterations"):
            require_positive(s, key, getattr(self, key))
        if self.num_generations < 2:
            fail_at(f"{s}.num_generations",
                  f"needs at least 2 rollouts per prompt for a group baseline, got {self.num_generations}")
        per_process = self.batch_size * self.grad_accum
        if per_process % self.num_generations:
            fail_at(f"{s}.num_generations", f"{self.num_generations} does not divide batch_size * grad_accum = "
                  f"{per_process} (each process holds whole groups)")
        if self.sampler.gen_length is None:
            fail_at(f"{s}.sampler.gen_length", "required for rollouts (answer tokens per completion)")
        self.sampler.validate(f"{s}.sampler")
        if not self.beta >= 0:
            fail_at(f"{s}.beta", f"must be >= 0, got {self.beta}")
        if not self.epsilon > 0:
            fail_at(f"{s}.epsilon", f"must be > 0, got {self.epsilon}")
        if not 0.0 <= self.p_mask_prompt <= 1.0:
            fail_at(f"{s}.p_mask_prompt", f"must be in [0, 1], got {self.p_mask_prompt}")
        require_one_of(s, "loss_normalization", self.loss_normalization, GRPO_LOSS_NORMALIZATION)
        # the registered variants (importing the modules registers the built-in ones)
        from d1.algo.estimators import ESTIMATORS
        from d1.algo.objectives import OBJECTIVES

        require_one_of(s, "estimator", self.estimator, ESTIMATORS.names())
        require_one_of(s, "objective", self.objective, OBJECTIVES.names())
        from d1.algo.estimators import estimator_params
        from d1.algo.objectives import objective_params, traits_of

        traits = traits_of(OBJECTIVES.get(self.objective))
        output = ESTIMATORS.get(self.estimator).output
        if output not in traits.estimator_outputs:
            fits = [n for n in ESTIMATORS.names() if ESTIMATORS.get(n).output in traits.estimator_outputs]
            fail_at(f"{s}.estimator", f"{self.estimator!r} estimates {output}, objective {self.objective!r} reads "
                    f"{' or '.join(traits.estimator_outputs)} (estimators that fit: {', '.join(fits) or 'none'})")
        if self.beta != 0 and not traits.uses_reference:
            fail_at(f"{s}.beta", f"objective {self.objective!r} has no KL term to a reference; set it to 0, "
                    f"got {self.beta}")
        objective_params(self.objective, self.objective_params, f"{s}.objective_params")
        estimator_params(self.estimator, self.estimator_params, f"{s}.estimator_params")
        ESTIMATORS.get(self.estimator).check_config(self)
        if ESTIMATORS.get(self.estimator).needs_decode_order and self.sampler.threshold is not None:
            fail_at(f"{s}.sampler.threshold", f"must be null with estimator {self.estimator} (it replays the "
                    f"sampler's fixed step schedule), got {self.sampler.threshold}")
        if self.replay_chunks is not None:
            require_positive(s, "replay_chunks", self.replay_chunks)
            steps = self.sampler.steps_for()
            if self.replay_chunks > steps:
                fail_at(f"{s}.replay_chunks", f"{self.replay_chunks} is more than the {steps} "
                      "sampler steps it cuts into chunks")
        if self.load_in_4bit and self.full_finetune:
            fail_at(f"{s}.load_in_4bit", "a 4-bit base cannot be fully fine-tuned; use LoRA")

    def objective_options(self) -> Any:
        """The objective's own hyper-parameters (its ``params`` dataclass from ``objective_params``;
        None for an objective without any)."""
        from d1.algo.objectives import objective_params

        return objective_params(self.objective, self.objective_params, f"{self.SECTION}.objective_params")

    @property
    def prompts_per_process(self) -> int:
        return self.batch_size * self.grad_accum // self.num_generations
