"""diffu-GRPO (d1) on accelerate.

A *round* (per process): ``batch_size * grad_accum / G`` prompts, G rollouts
each with the shared sampler (:func:`d1.generation.generate`, temperature > 0,
one generator per sampler call seeded by (seed, round, the call's first row in
the round), so the number of processes does not change them); rewards from the
task registry (the sum of the task's components, each component logged); group advantages
``r - mean(group)`` (divided by the group std only with ``scale_rewards``);
``mu`` mask seeds. Then ``mu`` optimiser steps over those rollouts: in
iteration j, every completion token is masked and each prompt token is masked
with probability ``p_mask_prompt`` using ONE mask drawn from seed ``s_j`` for
the whole rollout batch, and the old, reference and current policy all score
that same masked input (``estimator: blockwise``: one pass per sampler
block, earlier blocks shown; ``coupled``: two passes with complementary random
parts of the completion masked, the split shared by a prompt's G completions;
``replay``: the sampler's unmasking order recorded with each rollout, one pass
per chunk of ``replay_chunks`` of its steps, each token scored given the tokens
unmasked before its chunk; none of them in d1: :mod:`d1.algo.estimators`). The loss is the
``objective`` (:mod:`d1.algo.objectives`; d1's ``diffu_grpo``: per token, PPO clip with ``epsilon`` and
``beta`` x k3 KL to the reference); tokens after the first stop token are excluded. Estimator and
objective are looked up by name once, when the trainer is built.

- old policy: the policy that generated the rollouts; its log-probs for every
  iteration j are computed once, right after the rollouts (as d1). With
  ``mu == 1`` the old policy is the current one detached (ratio 1).
- reference: the policy with the LoRA adapter disabled (the merged SFT model
  when starting from SFT), or, for full fine-tuning, a frozen copy of the
  starting model. ``beta == 0`` skips the reference pass; ``mu == 1`` with
  ``beta > 0`` works (d1 crashed there on an undefined variable).
- loss normalisation: ``d1`` (each micro-batch's kept-token mean, averaged over
  micro-batches and processes, as TRL then) or ``batch`` (kept-token sum of the
  optimiser batch over its count: invariant to micro-batching).

Differences from d1's trainer, by design:

- rollouts and the old/reference log-probs are computed with the model in
  eval mode (no LoRA dropout); d1 ran them in train mode, so its old
  log-probs carried a different dropout draw than the current ones;
- padded prompts get an attention mask (d1 attended to left padding) and
  padding is never masked by the estimator;
- a completion ends at its first EOS *or* end-of-turn token; rewards see the
  text up to there (d1 decoded everything, padding included, with special
  tokens skipped), and the same tokens carry the loss;
- randomness comes from generators derived from ``seed`` (d1 reseeded all
  global RNGs with each mask seed).

Prompts: ``apply_chat_template(task.messages(ex), add_generation_prompt=True)``
with nothing after it (d1's RL; its reward functions check the opening
``<reasoning>`` tag in the completion). ``add_reasoning: true`` prefills
``<reasoning>`` as d1's evaluation does and prepends it to the completion
before computing rewards. Prompts longer than ``max_prompt_length`` tokens keep
their last tokens (TRL).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from d1.algo.estimators import ESTIMATORS, Coupled, Estimator, replay_chunks  # noqa: F401 (replay_chunks: moved)
from d1.algo.grpo import (
    completion_mask,
    draw_mask_seeds,
    group_advantages,
    mask_generator,
    mask_prompt_for_logp,
)
from d1.algo.objectives import OBJECTIVES, ObjectiveInputs, group_rows, traits_of
from d1.errors import DataError
from d1.generation import generate, left_pad
from d1.train.common import (
    StepCallback,
    StepTimer,
    count_parameters,
    load_base_model,
    make_generator,
    positions_for_step,
    prepare_trainable,
    progress_bar,
    reduce_mean,
    reduce_sum,
)
from d1.train.run import TrainingRun, save_final
from d1.train.grpo_config import GRPOConfig
from d1.models.chat import prompt_text

REASONING_PREFIX = "<reasoning>"
FIXED_MASK_SEED = 42  # d1's seed for every iteration when random_masking is off
#: diffu_grpo_loss stats logged per optimiser step (token-weighted over micro-batches and processes);
#: any other stat an objective returns is logged the same way, except those of UNWEIGHTED_STATS
STEP_STATS = ("policy_loss", "kl", "clip_frac", "clip_low_frac", "clip_high_frac", "ratio_mean")
UNWEIGHTED_STATS = ("loss", "num_tokens", "ratio_min", "ratio_max")


@dataclass
class PromptItem:
    task: Any
    example: Any
    token_ids: list[int]


def load_prompts(tokenizer: Any, cfg: GRPOConfig) -> list[PromptItem]:
    """Every training prompt of ``cfg.tasks``, tokenised and left-truncated to ``max_prompt_length``."""
    from d1.prepare import read_split
    from d1.tasks import get_task

    items: list[PromptItem] = []
    for name in cfg.tasks:
        task = get_task(name)
        examples = read_split(cfg.data_dir, name, "train")
        if cfg.max_examples is not None:
            examples = examples[:cfg.max_examples]
        if not examples:
            raise DataError(f"grpo: task {name!r} has no training example in {cfg.data_dir}")
        texts = [prompt_text(tokenizer, task, ex) + (REASONING_PREFIX if cfg.add_reasoning else "")
                 for ex in examples]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        items.extend(PromptItem(task, ex, ids[-cfg.max_prompt_length:]) for ex, ids in zip(examples, encoded))
    return items


@dataclass
class Rollouts:
    """One round's rollouts on this process and everything the mu iterations reuse.

    ids [N, P+T] (left-padded prompt, then completion), attention [N, P+T]
    (0 on prompt padding), keep [N, T] (tokens up to the first stop), advantages
    [N], mask_seeds (mu ints), old_logps / ref_logps: mu tensors [N, T] or None.
    """

    ids: torch.Tensor
    attention: torch.Tensor
    prompt_len: int
    keep: torch.Tensor
    advantages: torch.Tensor
    mask_seeds: list[int]
    old_logps: list[torch.Tensor] | None
    ref_logps: list[torch.Tensor] | None
    metrics: dict = field(default_factory=dict)
    unmask_order: torch.Tensor | None = None  # [N, T] the estimator's rollout_order (replay: chunk of every token)

    @property
    def prompt_mask(self) -> torch.Tensor:
        mask = torch.zeros_like(self.ids, dtype=torch.bool)
        mask[:, :self.prompt_len] = True
        return mask

    def masked_input(self, iteration: int, *, mask_id: int, p_mask_prompt: float) -> torch.Tensor:
        """The estimator's input of iteration j for the whole batch: one CPU generator from seed s_j."""
        return self.estimator_inputs(iteration, mask_id=mask_id, p_mask_prompt=p_mask_prompt)[0]

    def estimator_inputs(self, iteration: int, *, mask_id: int, p_mask_prompt: float,
                         estimator: Estimator | None = None,
                         coupled_group: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Iteration j's masked input [N, P+T] and the estimator's draw [N, T] (None: it draws nothing;
        ``coupled_group=G`` stands for the coupled estimator of groups of G: its split).

        One CPU generator from seed s_j draws the prompt mask first, then the estimator's draw,
        so old, reference and current policy all see the same two."""
        if estimator is None and coupled_group is not None:
            estimator = Coupled(coupled_group)
        generator = mask_generator(self.mask_seeds[iteration])
        noisy = mask_prompt_for_logp(self.ids, self.prompt_mask, mask_id, p_mask_prompt, generator=generator,
                                     attention_mask=self.attention)
        draw = None if estimator is None else estimator.draw(generator, self.ids.shape[0],
                                                              self.ids.shape[1] - self.prompt_len, keep=self.keep)
        return noisy, None if draw is None else draw.to(self.ids.device)

    def state(self) -> dict:
        return {k: getattr(self, k) for k in ("ids", "attention", "prompt_len", "keep", "advantages", "mask_seeds",
                                              "old_logps", "ref_logps", "metrics", "unmask_order")}


class DiffuGRPO:
    """The diffu-GRPO loop of one run (see the module docstring)."""

    def __init__(self, run: TrainingRun, tokenizer: Any, ids: Any, prompts: list[PromptItem],
                 ref_model: torch.nn.Module | None):
        self.run = run
        self.cfg: GRPOConfig = run.cfg
        self.tokenizer = tokenizer
        self.ids = ids
        self.stop_ids = ids.end_of_turn_ids()
        self.prompts = prompts
        self.ref_model = ref_model
        # looked up once by name; the trainer asks them what they need and never compares names
        self.estimator: Estimator = ESTIMATORS.get(self.cfg.estimator).from_config(self.cfg)
        self.objective = OBJECTIVES.get(self.cfg.objective)
        self.traits = traits_of(self.objective)

    def score_mask(self, ro: Rollouts, rows: slice) -> torch.Tensor | None:
        """The scored tokens given to the estimator, which skips a pass that scores none of them
        (``blockwise``, ``coupled``, ``replay``; d1's single pass is always made). Under FSDP every
        pass is run (None): each gathers weights, so every process must run as many; the skipped
        passes' tokens are not kept, so the loss is the same."""
        return None if self.run.uses_fsdp else ro.keep[rows]

    # ------------------------------------------------------------------ steps and rounds
    def total_steps(self) -> int:
        cfg = self.cfg
        if cfg.max_steps is not None:
            return cfg.max_steps
        prompts_per_round = cfg.prompts_per_process * self.run.num_processes
        return max(1, math.ceil(cfg.epochs * len(self.prompts) / prompts_per_round)) * cfg.num_iterations

    def round_prompts(self, round_index: int) -> list[PromptItem]:
        per_process = self.cfg.prompts_per_process
        indices = positions_for_step(round_index, per_process * self.run.num_processes, len(self.prompts),
                                     self.cfg.seed)
        return [self.prompts[i] for i in indices[self.run.rank * per_process:(self.run.rank + 1) * per_process]]

    # ------------------------------------------------------------------ rollouts
    @torch.no_grad()
    def make_rollouts(self, round_index: int) -> Rollouts:
        cfg, run = self.cfg, self.run
        device = run.device
        G = cfg.num_generations
        items = self.round_prompts(round_index)
        # TRL layout: the G completions of a prompt are consecutive.
        prompt_ids, prompt_attention = left_pad([it.token_ids for it in items for _ in range(G)], self.ids.pad_id)
        prompt_ids, prompt_attention = prompt_ids.to(device), prompt_attention.to(device)
        with run.full_params():  # FSDP: gathered once, so ranks may run different numbers of passes
            return self._make_rollouts(round_index, items, prompt_ids, prompt_attention)

    def _make_rollouts(self, round_index: int, items: list[PromptItem], prompt_ids: torch.Tensor,
                       prompt_attention: torch.Tensor) -> Rollouts:
        cfg, run = self.cfg, self.run
        device = run.device
        G = cfg.num_generations
        policy = run.unwrapped
        was_training = policy.training
        policy.eval()
        start = time.perf_counter()
        chunks = []
        record = self.estimator.needs_decode_order
        sampler = cfg.sampler.generate_kwargs()
        decode_order = (torch.full((prompt_ids.shape[0], sampler["gen_length"]), -1, dtype=torch.long,
                                   device=device) if record else None)
        first_row = run.rank * prompt_ids.shape[0]  # this process's first row in the round's rollouts
        with run.accelerator.autocast():
            for lo in range(0, prompt_ids.shape[0], cfg.generation_batch_size):
                hi = lo + cfg.generation_batch_size
                # One generator per sampler call, keyed by the call's first row in the whole round: the
                # split over processes does not change the rollouts (one call per process: the key was
                # the process index, and a single process draws what it did).
                generator = make_generator(cfg.seed, "grpo", "rollout", round_index, first_row + lo, device=device)
                chunks.append(generate(policy, prompt_ids[lo:hi], **sampler, mask_id=self.ids.mask_id,
                                       attention_mask=prompt_attention[lo:hi], generator=generator,
                                       decode_order=decode_order[lo:hi] if record else None))
        rollout_time = time.perf_counter() - start
        ids = torch.cat(chunks)
        prompt_len = prompt_ids.shape[1]
        completions = ids[:, prompt_len:]
        keep = completion_mask(completions, self.stop_ids)
        attention = torch.cat([prompt_attention, torch.ones_like(completions)], dim=1)

        rewards, components = self.score(items, completions, keep)
        rewards = rewards.to(device)
        advantages = group_advantages(rewards, G, scale_by_std=cfg.scale_rewards)
        if cfg.random_masking:
            seeds = draw_mask_seeds(make_generator(cfg.seed, "grpo", "mask-seeds", round_index, run.rank),
                                    cfg.num_iterations)
        else:
            seeds = [FIXED_MASK_SEED] * cfg.num_iterations
        ro = Rollouts(ids=ids, attention=attention, prompt_len=prompt_len, keep=keep, advantages=advantages,
                      mask_seeds=seeds, old_logps=None, ref_logps=None,
                      unmask_order=self.estimator.rollout_order(decode_order) if record else None)
        with run.accelerator.autocast():
            if cfg.num_iterations > 1 and self.traits.uses_old_policy:  # a ratio-free objective needs none
                ro.old_logps = self.each_iteration(lambda j: self.score_logps(policy, ro, j))
            if cfg.beta > 0:
                ro.ref_logps = self.reference_logps(ro)
        policy.train(was_training)
        ro.metrics = self.round_metrics(rewards, components, keep, rollout_time)
        return ro

    def score(self, items: Sequence[PromptItem], completions: torch.Tensor,
              keep: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Rewards [N] (sum of the task's components) and each component [N]."""
        G = self.cfg.num_generations
        lengths = keep.sum(dim=1).tolist()
        totals: list[float] = []
        parts: list[dict[str, float]] = []
        prefix = REASONING_PREFIX if self.cfg.add_reasoning else ""
        # Component names get their task's name in front when several tasks share a run.
        tagged = len(self.cfg.tasks) > 1
        rows = completions.tolist()
        for n, (row, length) in enumerate(zip(rows, lengths)):
            item = items[n // G]
            text = prefix + self.tokenizer.decode(row[:int(length)], skip_special_tokens=True)
            breakdown = item.task.reward(text, item.example)
            totals.append(breakdown.total)
            parts.append({(f"{item.task.name}/{k}" if tagged else k): v for k, v in breakdown.components.items()})
        names = sorted({k for p in parts for k in p})
        # A component another task of the batch does not have counts as missing (NaN), not 0.
        components = {k: torch.tensor([p.get(k, float("nan")) for p in parts], dtype=torch.float32) for k in names}
        return torch.tensor(totals, dtype=torch.float32), components

    def score_logps(self, model: Any, ro: Rollouts, iteration: int) -> torch.Tensor:
        """Per-token log-probs [N, T] (no grad) of iteration ``iteration``, in micro-batches of batch_size."""
        cfg = self.cfg
        inputs = self.estimator_inputs(ro, iteration)
        return torch.cat([self.logps(model, ro, inputs, slice(lo, lo + cfg.batch_size))
                          for lo in range(0, ro.ids.shape[0], cfg.batch_size)])

    def estimator_inputs(self, ro: Rollouts, iteration: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Iteration ``iteration``'s masked input [N, P+T] and the estimator's draw [N, T] or None."""
        return ro.estimator_inputs(iteration, mask_id=self.ids.mask_id, p_mask_prompt=self.cfg.p_mask_prompt,
                                   estimator=self.estimator)

    def logps(self, model: Any, ro: Rollouts, inputs: tuple[torch.Tensor, torch.Tensor | None],
              rows: slice) -> torch.Tensor:
        """The estimator's per-token log-probs [rows, T] of ``model`` (grad as the caller's context has it)."""
        noisy, draw = inputs
        return self.estimator.logps(model, ro.ids[rows], ro.prompt_mask[rows], mask_id=self.ids.mask_id,
                                    p_mask_prompt=self.cfg.p_mask_prompt, noisy_ids=noisy[rows],
                                    attention_mask=ro.attention[rows], score_mask=self.score_mask(ro, rows),
                                    draw=None if draw is None else draw[rows],
                                    order=None if ro.unmask_order is None else ro.unmask_order[rows])

    def each_iteration(self, score: Any) -> list[torch.Tensor]:
        """``[score(j) for j in range(mu)]``, computed once when every iteration's estimator input is the
        same (no prompt masking, and an estimator that draws nothing per iteration: not the coupled one)."""
        mu = self.cfg.num_iterations
        if self.estimator.same_input_every_iteration(self.cfg.p_mask_prompt):
            return [score(0)] * mu
        return [score(j) for j in range(mu)]

    def reference_logps(self, ro: Rollouts) -> list[torch.Tensor]:
        if self.ref_model is not None:
            return self.each_iteration(lambda j: self.score_logps(self.ref_model, ro, j))
        policy = self.run.unwrapped
        with policy.disable_adapter():
            return self.each_iteration(lambda j: self.score_logps(policy, ro, j))

    def round_metrics(self, rewards: torch.Tensor, components: dict[str, torch.Tensor], keep: torch.Tensor,
                      rollout_time: float) -> dict:
        run, G = self.run, self.cfg.num_generations
        acc, device = run.accelerator, run.device
        rewards = rewards.float().cpu()
        n = reduce_sum(acc, rewards.numel(), device)
        mean = reduce_sum(acc, float(rewards.sum()), device) / n
        var = reduce_sum(acc, float(((rewards - mean) ** 2).sum()), device) / max(n - 1, 1)
        group_std = rewards.view(-1, G).std(dim=1)
        metrics = {
            "reward/mean": mean,
            "reward/std": math.sqrt(var),
            # d1/TRL's reward_std: the mean within-group std
            "reward/group_std": reduce_sum(acc, float(group_std.sum()), device) / (n / G),
            "reward/zero_std_frac": reduce_sum(acc, float((group_std < 1e-6).sum()), device) / (n / G),
            "completion/length": reduce_sum(acc, float(keep.sum()), device) / n,
            "perf/rollout_tokens_per_s": reduce_sum(acc, keep.shape[0] * keep.shape[1], device)
            / max(reduce_mean(acc, rollout_time, device), 1e-9),
        }
        names = sorted(components)
        if run.num_processes > 1:  # every process must reduce the same names in the same order
            from accelerate.utils import gather_object

            names = sorted(set(gather_object(names)))
        for name in names:
            values = components.get(name, torch.empty(0))
            valid = values[~values.isnan()]
            count = reduce_sum(acc, valid.numel(), device)
            if count == 0:
                continue
            c_mean = reduce_sum(acc, float(valid.sum()), device) / count
            c_var = reduce_sum(acc, float(((valid - c_mean) ** 2).sum()), device) / max(count - 1, 1)
            metrics[f"reward/{name}/mean"] = c_mean
            metrics[f"reward/{name}/std"] = math.sqrt(c_var)
        return metrics

    # ------------------------------------------------------------------ optimisation
    def train_step(self, step: int, ro: Rollouts, iteration: int) -> dict:
        """One optimiser step (iteration ``iteration`` over ``ro``); returns its metrics."""
        cfg, run = self.cfg, self.run
        acc, device = run.accelerator, run.device
        timer = StepTimer()
        inputs = self.estimator_inputs(ro, iteration)
        kept_global = reduce_sum(acc, float(ro.keep.sum()), device)
        batch_norm = cfg.loss_normalization == "batch"
        # batch: the optimiser batch's count for the objective's aggregation (kept tokens or rows)
        agg = self.traits.agg
        denominator = None
        if batch_norm and agg != "sum":
            denominator = max(kept_global if agg == "token_mean" else reduce_sum(acc, ro.ids.shape[0], device), 1.0)
        groups = group_rows(ro.advantages, cfg.num_generations)
        scale = cfg.grad_accum * run.num_processes  # undo accelerate's 1/grad_accum and DDP's mean
        sums: dict[str, float] = {}
        loss_total = 0.0
        for micro in range(cfg.grad_accum):
            sl = slice(micro * cfg.batch_size, (micro + 1) * cfg.batch_size)
            with run.micro_step(step, micro):
                logp = self.logps(run.model, ro, inputs, sl)
                old = ro.old_logps[iteration][sl] if ro.old_logps is not None else None
                ref = ro.ref_logps[iteration][sl] if ro.ref_logps is not None else None
                # d1: this micro-batch's mean; batch: the optimiser batch's count as the denominator (the
                # micro-batch losses then sum to the batch's)
                inputs_mb = ObjectiveInputs(logp, old, ref, ro.advantages[sl], ro.keep[sl], groups[sl])
                loss, stats = self.objective(inputs_mb, cfg, agg=agg, denominator=denominator)
                run.backward(loss * scale if batch_norm and agg != "sum" else loss)
                lr = run.lr
                run.optimizer_step()
            loss_total += float(loss.detach()) if batch_norm else float(loss.detach()) / cfg.grad_accum
            tokens = float(ro.keep[sl].sum())
            for key in self.logged_stats(stats):
                sums[key] = sums.get(key, 0.0) + stats[key] * tokens
            sums["tokens"] = sums.get("tokens", 0.0) + tokens
        tokens = max(kept_global, 1.0)
        metrics = dict(ro.metrics)
        metrics.update({
            "train/loss": reduce_sum(acc, loss_total, device) if batch_norm else reduce_mean(acc, loss_total, device),
            "train/grad_norm": run.grad_norm,
            "train/lr": lr,
            "train/iteration": iteration,
            "train/epoch": (step // cfg.num_iterations + 1) * cfg.prompts_per_process * run.num_processes
            / len(self.prompts),
            "perf/tokens_per_s": reduce_sum(acc, ro.ids.numel(), device) / timer.elapsed(),
        })
        for key in self.logged_stats(sums):
            metrics[f"train/{key}"] = reduce_sum(acc, sums[key], device) / tokens
        return metrics

    @staticmethod
    def logged_stats(stats: dict) -> list[str]:
        """The objective's stats logged token-weighted, in the same order on every process: STEP_STATS
        first, then the others an objective adds, by name."""
        extra = sorted(k for k in stats if k not in STEP_STATS and k not in UNWEIGHTED_STATS and k != "tokens")
        return [k for k in STEP_STATS if k in stats] + extra

    def train(self, model: torch.nn.Module, callbacks: Sequence[StepCallback] = ()) -> dict:
        """Run the optimiser steps from the start (or the resumed step) to the end; the last metrics."""
        run, cfg = self.run, self.cfg
        mu = cfg.num_iterations
        total = self.total_steps()
        start = run.setup(model, total)
        run.model.train()
        ro: Rollouts | None = None
        if start % mu:
            saved = run.checkpointer.load_extra(run.resume_state, "rollouts")
            if saved is None:
                raise DataError(f"{run.resume_state.path}: mid-round checkpoint without its rollouts")
            ro = Rollouts(**saved)
        bar = progress_bar(run.accelerator, total=total, initial=start, desc="grpo")
        metrics: dict = {}
        for step in range(start, total):
            iteration = step % mu
            if iteration == 0:
                ro = self.make_rollouts(step // mu)
            metrics = self.train_step(step, ro, iteration)
            round_done = iteration == mu - 1
            current = ro
            run.end_step(step, metrics, tokenizer=self.tokenizer, callbacks=callbacks,
                         extra_state={"iteration": iteration},
                         extra_files=None if round_done else (lambda: {"rollouts": current.state()}))
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}")
        bar.close()
        return run.finish() or metrics


def run_grpo(cfg: GRPOConfig, *, resume: bool = False, callbacks: Sequence[StepCallback] = ()) -> dict:
    """diffu-GRPO stage. Writes ``<out_dir>/model`` (the adapter, merged model or full model),
    ``checkpoints/step-N``, dvclive metrics and ``grpo_config.json``; returns a summary."""
    from d1.models.loading import load_tokenizer, token_ids

    run = TrainingRun(cfg, "grpo", resume=resume)
    tokenizer = load_tokenizer(cfg.model_path, trust_remote_code=cfg.trust_remote_code)
    model = load_base_model(cfg.model_path, cfg, run.device, quantize_4bit=cfg.load_in_4bit)
    ids = token_ids(model, tokenizer)
    prompts = load_prompts(tokenizer, cfg)
    ref_model = None
    if cfg.full_finetune and cfg.beta > 0:
        ref_model = load_base_model(cfg.model_path, cfg, run.device).to(run.device).eval()
        ref_model.requires_grad_(False)
    model = prepare_trainable(model, cfg)
    params = count_parameters(model)
    trainer = DiffuGRPO(run, tokenizer, ids, prompts, ref_model)
    last = trainer.train(model, callbacks)
    model_dir = save_final(run, tokenizer, base_path=cfg.model_path, merge=cfg.merge_adapter)
    return {"stage": "grpo", "out_dir": cfg.out_dir, "model_dir": str(model_dir), "steps": run.total_steps,
            "resumed_from": run.resume_state.step if run.resume_state else None, "prompts": len(prompts),
            "parameters": params, "last_metrics": last}
