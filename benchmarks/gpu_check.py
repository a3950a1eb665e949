"""GPU check: an LLaDA-8B-shaped model through the library's own code paths, measured in one run, one table.

    bash scripts/gpu-check.sh [--budget-s 330] [--skip-stages] [--sections sampler sft grpo grpo-4bit stages]
    bash scripts/gpu-check.sh --cpu [--skip-stages]     # the same code paths on a tiny LLaDA, on the CPU

Meant to finish within 6 minutes on one H200-class GPU with no network: nothing is downloaded (random
weights, random token ids, the micro profile's generated and built-in data). Every row is measured in
this run: wall-clock seconds (``torch.cuda.synchronize`` around each timed block on CUDA), peak memory
from ``torch.cuda.max_memory_allocated`` reset before each row, the weights included ("n/a" on the CPU). A row's status is
``ok``, ``skipped: <why>`` (bitsandbytes absent, no GPU for 4-bit, the time budget, ``--skip-stages``)
or ``FAILED: <error>``; the exit status is 1 when any row failed, else 0.

Sections, in order (``--sections`` picks some):

- ``model``: ``LLaDAModelLM(LLaDAConfig())`` (the 8B config: 32 layers x 4096, vocab 126,464) built
  on the meta device, materialised on the GPU in bf16 and filled with normal(0, 0.02) weights (norm
  weights 1). This is not LLaDA's "mitchell" init (``initialize_llada_weights`` is slow at 8B); a
  throughput check does not need it. Built first when any model section runs.
- ``sampler``: :func:`d1.generation.generate` at gen 256, block 32, steps 128 (gen / 2, d1's
  evaluation rule), greedy, a 64-token random prompt, batch 1 and 16, each cache mode (none, prefix,
  dual; no threshold): tokens/s and peak memory, after one short warm-up call per mode.
- ``sft``: masked-SFT optimiser steps with d1's setting (:class:`d1.train.sft_config.SFTConfig`'s
  defaults: LoRA r128 / alpha 256 on q, k, v, sequence 4096, batch 1) with gradient checkpointing:
  :func:`d1.train.common.prepare_trainable` (LoRA + checkpointing) and ``build_optimizer`` (AdamW),
  :mod:`d1.algo.masking` (``sft_collate``, ``sample_mask_ratio``, ``forward_mask``,
  ``masked_sft_loss``: the functions ``d1.train.masked_diffusion`` runs) under bf16 autocast,
  gradient clipping. One warm-up step, then 2 timed: step seconds, tokens/s, peak memory, and the last
  loss and gradient norm (the row fails when either is not finite or no gradient reached the adapters).
- ``grpo``: one diffu-GRPO step with d1's setting (:class:`d1.train.grpo_config.GRPOConfig`'s
  defaults: G 6, gen 256, block 32, 128 steps, temperature 0.9, LoRA r128 / alpha 64 on q, k, v,
  up_proj, beta 0.04, p_mask_prompt 0.15, epsilon 0.5) with mu 1 and gradient checkpointing, on one
  200-token random prompt (the config's max_prompt_length): the G rollouts through ``generate`` under
  bf16 autocast (as ``DiffuGRPO.make_rollouts``), then the reference log-probs (adapter disabled) and
  the policy's through :func:`d1.algo.grpo.per_token_logps`, :func:`d1.algo.grpo.diffu_grpo_loss`,
  backward, clipping, AdamW step. Rewards are random numbers (no task can score random weights).
  Rows: rollout seconds (and tokens/s), log-probs + backward seconds, gradient norm (checked as for
  SFT), peak memory of the whole step. One step, no warm-up (the sections before it warmed the kernels).
- ``grpo-4bit``: the same step on a 4-bit NF4 base (QLoRA): the bf16 base re-loaded by transformers'
  bitsandbytes loader (``from_pretrained(None, state_dict=...)``) with d1's quantisation config
  (``d1.train.common._nf4_config``, what ``grpo.load_in_4bit`` uses). Needs CUDA and an importable
  ``bitsandbytes``; otherwise its rows are skipped (not a failure).
- ``stages``: the micro profile end to end: ``dvc repro`` of one task (countdown, gen 64) in a
  throwaway git copy of the working tree (tracked and new files, as the pipeline tests make one), every
  training and evaluation stage with ``device: cuda`` when a GPU exists (bf16 weights and bf16
  autocast: the stages' ``auto`` dtypes); per stage its seconds and whether its outputs (dvc.lock's
  ``outs``) exist. ``--skip-stages`` leaves it out.

``--budget-s`` (default 330): a section or row starts only when the time left covers a rough estimate
of it; what does not fit is printed as skipped and the run ends with what it has. ``dvc repro`` is
stopped at the budget.

``--cpu``: the same code on a tiny LLaDA (width 64, 2 layers, vocab 512) on the CPU in float32 (the
library's CPU dtype, no autocast): sampler gen 32 / block 16 / 16 steps, SFT sequence 128, GRPO
gen 32 / block 16 / 16 steps with a 16-token prompt; the configs' other values (LoRA ranks, G, beta, ...)
are d1's as on the GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from d1.generation import CACHE_MODES, SamplerConfig, generate  # noqa: E402
from d1.models.llada import LLaDAConfig, LLaDAModelLM, tiny_llada_config  # noqa: E402
from d1.train.grpo_config import GRPOConfig  # noqa: E402
from d1.train.sft_config import SFTConfig  # noqa: E402

SECTIONS = ("sampler", "sft", "grpo", "grpo-4bit", "stages")
MODEL_SECTIONS = ("sampler", "sft", "grpo", "grpo-4bit")
MICRO_TASK, MICRO_LENGTH = "countdown", 64
INIT_STD = 0.02
GIT = ["git", "-c", "user.email=gpu-check@example.com", "-c", "user.name=gpu-check"]


# ----------------------------------------------------------------------------- rows and the time budget


@dataclass
class Row:
    section: str
    setting: str
    metric: str
    value: str
    status: str = "ok"


class Check:
    """The table's rows and the time budget of the run."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s
        self.rows: list[Row] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def allows(self, seconds: float) -> bool:
        """Whether a step estimated at ``seconds`` fits in the time left."""
        return self.left() >= seconds

    def add(self, section: str, setting: str, metric: str, value: str, status: str = "ok") -> None:
        row = Row(section, setting, metric, value, status)
        self.rows.append(row)
        print(f"[gpu-check {self.elapsed():6.1f} s] {section} | {setting} | {metric} | {value} | {status}",
              file=sys.stderr, flush=True)

    def skip(self, section: str, setting: str, metrics: list[str], why: str) -> None:
        for metric in metrics:
            self.add(section, setting, metric, "-", f"skipped: {why}")

    def over_budget(self) -> str:
        return f"time budget ({self.left():.0f} s of {self.budget_s:.0f} s left)"

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status.startswith("FAILED")]


def one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    text = f"{type(err).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- what a run measures


@dataclass
class Setup:
    """The model and the settings of one mode (GPU: the 8B config; ``--cpu``: a tiny one)."""

    label: str
    device: torch.device
    dtype: torch.dtype
    config: LLaDAConfig
    sampler: SamplerConfig
    sampler_prompt: int
    batches: tuple[int, ...]
    sft: SFTConfig
    sft_prompt: int
    sft_timed_steps: int
    grpo: GRPOConfig
    need: dict[str, float] = field(default_factory=dict)  # rough seconds per step, for the budget

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA (the training stages' mixed precision); nothing on the CPU (the library
        trains in float32 there)."""
        if self.cuda:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def make_setup(cpu: bool) -> Setup:
    # d1's settings are the config classes' defaults; the check adds gradient checkpointing and mu 1.
    sft = dataclasses.replace(SFTConfig(), gradient_checkpointing=True)
    grpo = dataclasses.replace(GRPOConfig(), gradient_checkpointing=True, num_iterations=1)
    if not cpu:
        return Setup(
            label="LLaDA-8B config", device=torch.device("cuda", torch.cuda.current_device()),
            dtype=torch.bfloat16, config=LLaDAConfig(),
            sampler=SamplerConfig(gen_length=256, block_length=32), sampler_prompt=64, batches=(1, 16),
            sft=sft, sft_prompt=256, sft_timed_steps=2, grpo=grpo,
            need={"model": 30, "sampler-1": 8, "sampler-16": 40, "sft": 25, "grpo": 45, "grpo-4bit": 80,
                  "stages": 40},
        )
    config = tiny_llada_config(512, d_model=64, n_layers=2, n_heads=4, mlp_hidden_size=192)
    return Setup(
        label="tiny LLaDA", device=torch.device("cpu"), dtype=torch.float32,
        config=config, sampler=SamplerConfig(gen_length=32, block_length=16, steps=16), sampler_prompt=16,
        batches=(1, 16), sft=dataclasses.replace(sft, max_length=128), sft_prompt=16, sft_timed_steps=2,
        grpo=dataclasses.replace(grpo, max_prompt_length=16,
                                 sampler=SamplerConfig(gen_length=32, block_length=16, steps=16, temperature=0.9)),
        need={"model": 2, "sampler-1": 2, "sampler-16": 3, "sft": 3, "grpo": 3, "grpo-4bit": 3, "stages": 40},
    )


# ----------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall-clock seconds (synchronised with the GPU before and after)."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> str:
    if device.type != "cuda":
        return "n/a"
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}"


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def random_ids(generator: torch.Generator, shape: tuple[int, ...], config: LLaDAConfig) -> torch.Tensor:
    """Random token ids below the mask and EOS ids (so prompts hold neither)."""
    high = min(config.mask_token_id, config.eos_token_id)
    return torch.randint(0, high, shape, generator=generator)


def build_random_llada(config: LLaDAConfig, device: torch.device, dtype: torch.dtype, seed: int = 0) -> LLaDAModelLM:
    """Our LLaDA class with ``config``, built on the meta device (no float32 copy anywhere), materialised on
    ``device`` in ``dtype`` and filled with normal(0, INIT_STD) weights, norm weights 1 (a throughput
    check's init: not LLaDA's depth-scaled one, which ``initialize_llada_weights`` draws slowly at 8B)."""
    with torch.device("meta"):
        model = LLaDAModelLM(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.fill_(1.0)  # RMSNorm weights (the LLaDA config has no biases)
            else:
                param.normal_(0.0, INIT_STD, generator=generator)
    return model.eval()


def unload_lora(peft_model: Any) -> torch.nn.Module:
    """The base model back from a peft LoRA model (adapters removed, not merged)."""
    base = peft_model.unload()
    for param in base.parameters():
        param.requires_grad_(False)
    return base


def quantized_copy(model: torch.nn.Module, config: LLaDAConfig, device: torch.device) -> torch.nn.Module:
    """``model`` re-loaded with a 4-bit NF4 base by transformers' bitsandbytes loader, with d1's QLoRA
    quantisation config (what ``load_base_model(..., quantize_4bit=True)`` passes to from_pretrained)."""
    from d1.models.loading import _DTYPE_KWARG
    from d1.train.common import _nf4_config

    state = dict(model.state_dict())
    return LLaDAModelLM.from_pretrained(None, config=copy.deepcopy(config), state_dict=state,
                                        quantization_config=_nf4_config(device),
                                        device_map={"": device.index or 0}, **{_DTYPE_KWARG: torch.bfloat16})


def learning_status(values: list[float]) -> str:
    """``ok`` when the losses and gradient norms of a step are finite and a gradient reached the adapters."""
    if not all(torch.isfinite(torch.tensor(values))):
        return "FAILED: a non-finite loss or gradient norm"
    if values[-1] == 0:
        return "FAILED: no gradient reached the LoRA weights"
    return "ok"


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def lora_text(cfg: Any) -> str:
    return f"LoRA r{cfg.lora_r} / alpha {cfg.lora_alpha:g} on {', '.join(cfg.lora_target_modules)}"


# ----------------------------------------------------------------------------- sections


def model_rows(check: Check, setup: Setup) -> LLaDAModelLM:
    c = setup.config
    section = "model"
    setting = (f"{setup.label}: {c.n_layers} layers x {c.d_model}, vocab {c.vocab_size}, random normal(0, "
               f"{INIT_STD}) init, {str(setup.dtype).replace('torch.', '')}")
    reset_peak(setup.device)
    model, seconds = timed(setup.device, lambda: build_random_llada(c, setup.device, setup.dtype))
    params = sum(p.numel() for p in model.parameters())
    check.add(section, setting, "parameters", f"{params / 1e9:.2f} B" if params > 1e8 else f"{params:,}")
    check.add(section, setting, "build s", f"{seconds:.1f}")
    check.add(section, setting, "weights GiB", peak_gib(setup.device))
    return model


def sampler_rows(check: Check, setup: Setup, model: torch.nn.Module) -> None:
    cfg = setup.sampler
    kwargs = cfg.generate_kwargs()
    mask_id = setup.config.mask_token_id
    section = (f"sampler (gen {kwargs['gen_length']}, block {kwargs['block_length']}, steps {kwargs['steps']}, "
               f"greedy, {setup.sampler_prompt}-token prompt)")
    generator = torch.Generator().manual_seed(0)
    model.eval()
    with torch.no_grad():
        warm = random_ids(generator, (1, setup.sampler_prompt), setup.config).to(setup.device)
        for cache in CACHE_MODES:  # kernels, allocator and each cache path once, untimed
            generate(model, warm, gen_length=2 * cfg.block_length, block_length=cfg.block_length, steps=4,
                     mask_id=mask_id, cache=cache)
        for batch in setup.batches:
            need = setup.need["sampler-1" if batch == 1 else "sampler-16"]
            for cache in CACHE_MODES:
                setting = f"batch {batch}, cache {cache}"
                if not check.allows(need):
                    check.skip(section, setting, ["tokens/s", "peak GiB"], check.over_budget())
                    continue
                prompt = random_ids(generator, (batch, setup.sampler_prompt), setup.config).to(setup.device)
                reset_peak(setup.device)
                out, seconds = timed(setup.device, lambda: generate(model, prompt, **kwargs, mask_id=mask_id))
                answer = out[:, setup.sampler_prompt:]
                status = "ok"
                if tuple(answer.shape) != (batch, kwargs["gen_length"]) or bool((answer == mask_id).any()):
                    status = "FAILED: the answer still holds mask tokens"
                check.add(section, setting, "tokens/s", f"{batch * kwargs['gen_length'] / seconds:,.1f}", status)
                check.add(section, setting, "peak GiB", peak_gib(setup.device), status)


def sft_rows(check: Check, setup: Setup, model: torch.nn.Module) -> torch.nn.Module:
    """Masked-SFT steps; returns the base model (LoRA removed again)."""
    from d1.algo.masking import count_response_tokens, forward_mask, masked_sft_loss, sample_mask_ratio, sft_collate
    from d1.train.common import build_optimizer, prepare_trainable

    cfg = setup.sft
    seq, bs = cfg.max_length, cfg.batch_size
    section = f"masked SFT ({lora_text(cfg)}, gradient checkpointing, seq {seq}, batch {bs})"
    setting = f"{setup.sft_timed_steps} optimiser steps after 1 warm-up, {setup.sft_prompt}-token prompt"
    metrics = ["step s", "tokens/s", "peak GiB", "loss", "grad norm"]
    if not check.allows(setup.need["sft"]):
        check.skip(section, setting, metrics, check.over_budget())
        return model
    mask_id, eos_id = setup.config.mask_token_id, setup.config.eos_token_id
    peft_model = prepare_trainable(model, cfg)
    try:
        optimizer = build_optimizer(peft_model, cfg)
        params = trainable(peft_model)
        peft_model.train()

        def step(index: int) -> tuple[float, float]:
            g = torch.Generator().manual_seed(index)
            prompts = random_ids(g, (bs, setup.sft_prompt), setup.config).tolist()
            responses = random_ids(g, (bs, seq - setup.sft_prompt), setup.config).tolist()
            batch = sft_collate(prompts, responses, eos_id=eos_id, max_length=seq)
            ids, prompt_mask = batch["input_ids"], batch["prompt_mask"]
            t = sample_mask_ratio(bs, eps=cfg.mask_eps, generator=g)
            noisy, is_masked = forward_mask(ids, ~prompt_mask, t, mask_id, generator=g)
            ids, noisy, is_masked, t = (x.to(setup.device) for x in (ids, noisy, is_masked, t))
            with setup.autocast():
                logits = peft_model(noisy).logits
                loss = masked_sft_loss(logits, ids, is_masked, t, count_response_tokens(prompt_mask))
            loss.backward()
            del logits
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(loss.detach()), float(norm)

        step(0)
        reset_peak(setup.device)
        results, seconds = timed(setup.device, lambda: [step(i) for i in range(1, setup.sft_timed_steps + 1)])
        n = setup.sft_timed_steps
        loss, norm = results[-1]
        status = learning_status([x for r in results for x in r])
        check.add(section, setting, "step s", f"{seconds / n:.2f}", status)
        check.add(section, setting, "tokens/s", f"{bs * seq * n / seconds:,.0f}", status)
        check.add(section, setting, "peak GiB", peak_gib(setup.device), status)
        check.add(section, setting, "loss", f"{loss:.3f}", status)
        check.add(section, setting, "grad norm", f"{norm:.3g}", status)
        del optimizer, params
    finally:
        model = unload_lora(peft_model)
        del peft_model
        free_memory()
    return model


def grpo_rows(check: Check, setup: Setup, model: torch.nn.Module, section: str) -> torch.nn.Module:
    """One diffu-GRPO step (mu 1) on ``model``; returns the base model (LoRA removed again)."""
    from d1.algo.grpo import (
        completion_mask,
        diffu_grpo_loss,
        draw_mask_seeds,
        group_advantages,
        mask_generator,
        mask_prompt_for_logp,
        per_token_logps,
    )
    from d1.train.common import build_optimizer, prepare_trainable

    cfg = setup.grpo
    kwargs = cfg.sampler.generate_kwargs()
    G, P = cfg.num_generations, cfg.max_prompt_length
    mask_id, eos_id = setup.config.mask_token_id, setup.config.eos_token_id
    rollout_setting = (f"G {G} x gen {kwargs['gen_length']}, block {kwargs['block_length']}, {kwargs['steps']} "
                       f"steps, temperature {kwargs['temperature']:g}, cache {kwargs['cache']}, {P}-token prompt")
    logp_setting = (f"ref + policy log-probs (p_mask_prompt {cfg.p_mask_prompt:g}), loss (beta {cfg.beta:g}, "
                    f"epsilon {cfg.epsilon:g}), backward, AdamW step; mu 1")
    peft_model = prepare_trainable(model, cfg)
    try:
        optimizer = build_optimizer(peft_model, cfg)
        params = trainable(peft_model)
        g = torch.Generator().manual_seed(1)
        prompt = random_ids(g, (1, P), setup.config).repeat(G, 1).to(setup.device)  # one prompt's G rollouts
        attention = torch.ones_like(prompt)
        reset_peak(setup.device)
        peft_model.eval()  # rollouts in eval mode, as DiffuGRPO.make_rollouts
        rollout_gen = torch.Generator(device=setup.device).manual_seed(cfg.seed)

        def rollouts() -> torch.Tensor:
            with torch.no_grad(), setup.autocast():
                return generate(peft_model, prompt, **kwargs, mask_id=mask_id, attention_mask=attention,
                                generator=rollout_gen)

        ids, rollout_s = timed(setup.device, rollouts)
        completions = ids[:, P:]
        status = "ok"
        if tuple(completions.shape) != (G, kwargs["gen_length"]) or bool((completions == mask_id).any()):
            status = "FAILED: a rollout still holds mask tokens"
        check.add(section, rollout_setting, "rollout s", f"{rollout_s:.2f}", status)
        check.add(section, rollout_setting, "rollout tokens/s", f"{G * kwargs['gen_length'] / rollout_s:,.0f}",
                  status)

        keep = completion_mask(completions, [eos_id])
        rewards = torch.rand(G, generator=g)  # random rewards: no task can score random weights
        advantages = group_advantages(rewards, G, scale_by_std=cfg.scale_rewards).to(setup.device)
        full_attention = torch.ones_like(ids)
        prompt_mask = torch.zeros_like(ids, dtype=torch.bool)
        prompt_mask[:, :P] = True
        seed = draw_mask_seeds(torch.Generator().manual_seed(cfg.seed), 1)[0]
        noisy = mask_prompt_for_logp(ids, prompt_mask, mask_id, cfg.p_mask_prompt, generator=mask_generator(seed),
                                     attention_mask=full_attention)
        logp_kwargs = dict(mask_id=mask_id, p_mask_prompt=cfg.p_mask_prompt, noisy_ids=noisy,
                           attention_mask=full_attention)

        def logp_step() -> tuple[float, float]:
            ref = None
            with setup.autocast():
                if cfg.beta > 0:
                    with torch.no_grad(), peft_model.disable_adapter():
                        ref = per_token_logps(peft_model, ids, prompt_mask, **logp_kwargs)
                peft_model.train()
                logp = per_token_logps(peft_model, ids, prompt_mask, **logp_kwargs)
                loss, stats = diffu_grpo_loss(logp, None, ref, advantages, keep, eps=cfg.epsilon, beta=cfg.beta)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(loss.detach()), float(norm)

        (loss, norm), logp_s = timed(setup.device, logp_step)
        status = learning_status([loss, norm])
        check.add(section, logp_setting, "log-probs + backward s", f"{logp_s:.2f}", status)
        check.add(section, logp_setting, "grad norm", f"{norm:.3g}", status)
        check.add(section, "the whole step", "peak GiB", peak_gib(setup.device), status)
        del optimizer, params
    finally:
        model = unload_lora(peft_model)
        del peft_model
        free_memory()
    return model


def grpo_section(cfg: GRPOConfig, quantized: bool) -> str:
    base = "4-bit NF4 base (QLoRA), " if quantized else ""
    return f"diffu-GRPO ({base}{lora_text(cfg)}, gradient checkpointing)"


def qlora_rows(check: Check, setup: Setup, state: dict) -> None:
    """The GRPO step on a 4-bit base: replaces ``state['model']`` by the quantised copy."""
    section = grpo_section(setup.grpo, quantized=True)
    metrics = ["rollout s", "log-probs + backward s", "grad norm", "peak GiB"]
    if not setup.cuda:
        check.skip(section, "-", metrics, "4-bit needs CUDA")
        return
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        check.skip(section, "-", metrics, "bitsandbytes not installed")
        return
    except Exception as exc:  # noqa: BLE001 - installed but broken (no CUDA library for it, ...)
        check.add(section, "-", "import bitsandbytes", "-", f"FAILED: {one_line(exc)}")
        return
    if not check.allows(setup.need["grpo-4bit"]):
        check.skip(section, "-", metrics, check.over_budget())
        return
    quantized, seconds = timed(setup.device, lambda: quantized_copy(state["model"], setup.config, setup.device))
    state["model"] = None  # the bf16 base goes: its weights are now 4-bit
    free_memory()
    check.add(section, "bf16 base -> NF4 (transformers' bitsandbytes loader)", "quantise s", f"{seconds:.1f}")
    check.add(section, "bf16 base -> NF4 (transformers' bitsandbytes loader)", "weights GiB",
              f"{torch.cuda.memory_allocated(setup.device) / 2**30:.1f}")
    state["model"] = grpo_rows(check, setup, quantized, section)


# ----------------------------------------------------------------------------- the micro stages


def micro_workspace(dst: Path, device: str) -> Path:
    """A git copy of the working tree's tracked and new (not ignored) files, without dvc.lock, set to the
    micro profile on one task and length, every training and evaluation stage on ``device``."""
    import yaml

    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    (dst / "dvc.lock").unlink(missing_ok=True)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["profile"] = "micro"
    # every RL algorithm of the profile, so each objective and estimator runs on the device
    algorithms = list(params["micro"]["grpo"]["algorithms"])
    params["pipeline"] = {"tasks": [MICRO_TASK], "gen_lengths": [MICRO_LENGTH], "models": ["base", "sft", *algorithms],
                          "algorithms": algorithms}
    micro = params["micro"]
    for section in (micro["base"]["pretrain"], micro["sft"], micro["grpo"], micro["eval"]):
        section["device"] = device
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(GIT + ["init", "-q"], cwd=dst, check=True)
    subprocess.run(GIT + ["add", "-A"], cwd=dst, check=True)
    subprocess.run(GIT + ["commit", "-qm", "gpu-check: a copy of the working tree"], cwd=dst, check=True)
    return dst


def run_streamed(cmd: list[str], cwd: Path, env: dict, timeout: float) -> tuple[int, list[tuple[float, str]], bool]:
    """Run ``cmd`` in its own process group; (return code, output lines with their arrival times,
    whether it was stopped at ``timeout``)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    stopped = threading.Event()

    def stop() -> None:
        stopped.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)

    timer = threading.Timer(max(timeout, 0.0), stop)
    timer.start()
    lines: list[tuple[float, str]] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.perf_counter(), line.rstrip("\n")))
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
    finally:
        timer.cancel()
    return rc, lines, stopped.is_set()


def stage_rows(check: Check, setup: Setup) -> None:
    import yaml

    device = "cuda" if setup.cuda else "cpu"
    precision = "bf16 weights + autocast" if setup.cuda else "float32"
    section = f"micro stages (dvc repro, {MICRO_TASK}, gen {MICRO_LENGTH}, {device}, {precision})"
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        check.skip(section, "-", ["s"], "needs git and a git checkout")
        return
    bindir = Path(sys.executable).parent
    dvc = str(bindir / "dvc") if (bindir / "dvc").exists() else shutil.which("dvc")
    if dvc is None:
        check.add(section, "-", "s", "-", "FAILED: dvc not found")
        return
    if not check.allows(setup.need["stages"]):
        check.skip(section, "-", ["s"], check.over_budget())
        return
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", DVC_NO_ANALYTICS="1",
               PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
               GIT_AUTHOR_NAME="gpu-check", GIT_AUTHOR_EMAIL="gpu-check@example.com",
               GIT_COMMITTER_NAME="gpu-check", GIT_COMMITTER_EMAIL="gpu-check@example.com")
    for key in ("D1_DVC_STAGE", "D1_FLOW_RUN_ID", "D1_TASK_RUN_ID"):
        env.pop(key, None)
    with tempfile.TemporaryDirectory(prefix="d1-gpu-check-") as tmp:
        root = micro_workspace(Path(tmp) / "micro", device)
        start = time.perf_counter()
        rc, lines, stopped = run_streamed([dvc, "repro"], root, env, timeout=check.left())
        end = time.perf_counter()
        starts = [(m.group(1), t) for t, text in lines if (m := re.search(r"Running stage '([^']+)'", text))]
        lock_file = root / "dvc.lock"
        lock = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {}) if lock_file.is_file() else {}
        for i, (stage, t0) in enumerate(starts):
            t1 = starts[i + 1][1] if i + 1 < len(starts) else end
            outs = [o["path"] for o in lock.get(stage, {}).get("outs", [])]
            missing = [p for p in outs if not (root / p).exists()]
            if stage not in lock:
                status = "skipped: stopped at the time budget" if stopped else "FAILED: did not finish"
            elif not outs or missing:
                status = f"FAILED: outputs missing: {', '.join(missing) or 'none recorded'}"
            else:
                status = "ok"
            check.add(section, stage, "s (outputs present)", f"{t1 - t0:.1f}", status)
        tail = " / ".join(text.strip() for _, text in lines[-3:] if text.strip())[-300:]
        if rc == 0:
            total_status = "ok"
        elif stopped:
            total_status = f"skipped: stopped at the time budget after {len(lock)} finished stages"
        else:
            total_status = f"FAILED: dvc repro exited {rc}: {tail}"
        check.add(section, f"all {len(starts)} stages", "dvc repro s", f"{end - start:.1f}", total_status)


# ----------------------------------------------------------------------------- the table


def header(check: Check, setup: Setup) -> str:
    if setup.cuda:
        props = torch.cuda.get_device_properties(setup.device)
        device = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    else:
        device = f"CPU ({platform.machine()}, {torch.get_num_threads()} torch threads)"
    versions = [f"torch {torch.__version__}"]
    for name in ("transformers", "peft", "bitsandbytes"):
        try:
            module = __import__(name)
            versions.append(f"{name} {getattr(module, '__version__', '?')}")
        except ImportError:
            versions.append(f"{name} not installed")
        except Exception:  # noqa: BLE001 - the 4-bit row says what is wrong with it
            versions.append(f"{name} does not import")
    commit = "n/a"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10)
        if done.returncode == 0:
            commit = done.stdout.strip()
            dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO, capture_output=True, timeout=30)
            commit += " + uncommitted changes" if dirty.returncode == 1 else ""
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"GPU check ({'--cpu, ' if not setup.cuda else ''}{setup.label}): {device}; {', '.join(versions)}; "
            f"commit {commit}; {date}; {check.elapsed():.0f} s of a {check.budget_s:.0f} s budget")


def table(rows: list[Row]) -> str:
    out = ["| section | setting | metric | value | status |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [c.replace("|", "/") for c in (r.section, r.setting, r.metric, r.value, r.status)]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# ----------------------------------------------------------------------------- main


def run_section(check: Check, name: str, fn: Callable[[], None]) -> None:
    """Run one section; an exception becomes a FAILED row and the next section still runs."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - every failure is reported as a row
        traceback.print_exc(file=sys.stderr)
        check.add(name, "-", "-", "-", f"FAILED: {one_line(exc)}")
    finally:
        free_memory()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="a tiny LLaDA on the CPU (the CI mode)")
    ap.add_argument("--budget-s", type=float, default=330.0, help="stop starting work after this many seconds")
    ap.add_argument("--skip-stages", action="store_true", help="leave out the micro profile's dvc repro")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    args = ap.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("gpu-check: no CUDA device; `--cpu` runs the same code paths on a tiny model", file=sys.stderr)
        return 2
    check = Check(args.budget_s)
    setup = make_setup(args.cpu)
    sections = [s for s in args.sections if not (s == "stages" and args.skip_stages)]
    state: dict[str, Any] = {"model": None}

    if any(s in sections for s in MODEL_SECTIONS):
        if check.allows(setup.need["model"]):
            run_section(check, "model", lambda: state.update(model=model_rows(check, setup)))
        else:
            check.skip("model", setup.label, ["build s"], check.over_budget())
    model_sections: list[tuple[str, Callable[[], None]]] = [
        ("sampler", lambda: sampler_rows(check, setup, state["model"])),
        ("sft", lambda: state.update(model=sft_rows(check, setup, state["model"]))),
        ("grpo", lambda: state.update(model=grpo_rows(check, setup, state["model"],
                                                      grpo_section(setup.grpo, quantized=False)))),
        ("grpo-4bit", lambda: qlora_rows(check, setup, state)),
    ]
    for name, fn in model_sections:
        if name not in sections:
            continue
        if state["model"] is None:
            check.skip(name, "-", ["-"], "no model (see the model rows)")
            continue
        if name == "grpo" and not check.allows(setup.need["grpo"]):
            check.skip(grpo_section(setup.grpo, quantized=False), "-",
                       ["rollout s", "log-probs + backward s", "grad norm", "peak GiB"], check.over_budget())
            continue
        run_section(check, name, fn)
    state["model"] = None
    free_memory()

    if "stages" in sections:
        run_section(check, "micro stages", lambda: stage_rows(check, setup))
    elif args.skip_stages:
        check.skip("micro stages", "-", ["s"], "--skip-stages")

    print(header(check, setup))
    print()
    print(table(check.rows))
    counts = {k: sum(r.status.startswith(k) for r in check.rows) for k in ("ok", "skipped", "FAILED")}
    print(f"\n{counts['ok']} ok, {counts['skipped']} skipped, {counts['FAILED']} failed")
    sys.stdout.flush()
    return 1 if check.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
