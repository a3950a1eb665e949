"""The evaluation stage: generate on a task's test set at several lengths, score, write files.

For every (task, gen_length) it writes a d1-format generations file
``{task}_{model_name}_{gen_length}_{steps}_0_generations.json`` (re-scorable
by ``d1 score`` / ``d1 score-dir``; a superset of d1's format with the prompt,
the per-item score and the other sampler settings added) and, for all
settings, ``metrics.json`` (``{task: {gen_length: {accuracy, correct, total,
n}}}``) plus the resolved config.

One DVC eval cell is one (model, task, gen_length): ``model_name`` picks the
model from ``models`` (label -> Hub id or folder, ``{task}`` replaced by the
task: the d1 model of a task is that task's GRPO model), ``tasks`` and
``gen_lengths`` hold one value each, and ``generations_dir`` keeps the
generations apart from ``metrics.json`` (so DVC can track the latter as a
metric). With the defaults, one run still covers every task and length.

Protocol as d1's ``eval/eval.py``: greedy (temperature 0), block length 32,
steps = gen_length / 2, low-confidence remasking (the ``eval.sampler`` defaults,
:class:`d1.generation.SamplerConfig`, the section GRPO's rollouts use too), the
eval prompt of each task with the chat template and ``<reasoning>`` prefilled.
Deviations: d1 scores a random subsample of 256 Countdown/Sudoku items;
``limit`` takes the first N so runs are comparable without a seed; the stored
completion stops after the first EOS token (d1 kept the padding EOS tokens;
scores do not depend on them).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from d1.config import write_json_atomic, write_resolved
from d1.errors import ConfigError
from d1.generation import SamplerConfig, generate, left_pad
from d1.models.chat import prompt_text
from d1.prepare import read_split
from d1.progress import progress
from d1.tasks import available_tasks, get_task
from d1.tasks.base import Example, Task


@dataclass
class EvalConfig:
    """Settings of one evaluation run (params.yaml section ``eval``).

    ``sampler``: the sampler settings (:class:`d1.generation.SamplerConfig`) but its
    ``gen_length``, which stays null: the lengths are ``gen_lengths`` (the DVC matrix
    axis). Its ``steps`` (null: gen_length / 2) names the generations files.
    """

    SECTION: ClassVar[str] = "eval"
    # the sampler's settings moved into the shared `sampler` section (d1.config names the new key)
    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "block_length": "sampler.block_length", "steps": "sampler.steps", "temperature": "sampler.temperature",
        "cfg_scale": "sampler.cfg_scale", "remasking": "sampler.remasking",
    }

    model: str = "outputs/sft/model"
    model_name: str = "model"  # label in file names and tables (base, sft, d1, ...)
    # label -> model ("{task}" is replaced by the task); when given, model_name must be one of its labels
    # and its model replaces `model`
    models: dict[str, str] = field(default_factory=dict)
    data_dir: str = "data"
    out_dir: str = "outputs/eval"
    generations_dir: str | None = None  # where the generations files go (None: out_dir)
    tasks: list[str] = field(default_factory=lambda: ["gsm8k", "math500", "countdown", "sudoku"])
    gen_lengths: list[int] = field(default_factory=lambda: [128, 256, 512])
    # greedy, block 32, steps null = gen_length // 2 (the paper's setting); gen_length must stay null
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    add_reasoning: bool = True  # prefill "<reasoning>" after the chat template, as d1
    # "eval": d1's evaluation prompts and scorer (the paper's protocol); "train": the training
    # prompt (what SFT and GRPO condition on), scored from the answer block of the training
    # format (Task.score_training_format): for models that never saw the d1 eval prompts (tiny).
    prompt: str = "eval"
    batch_size: int = 8
    # true: a completion ends at the first EOS or end-of-turn token (<|eot_id|>), as GRPO's rewards
    # read rollouts; false (d1): at the first EOS only, so text a model writes after ending its turn
    # is scored too (LLaDA-8B-Instruct pads with EOS after <|eot_id|>; a tiny model trained with
    # sft.pad_to: longest may not; docs/results.md)
    stop_at_end_of_turn: bool = False
    limit: dict[str, int] = field(default_factory=dict)  # first N test items per task
    seed: int = 42
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    trust_remote_code: bool = False  # for non-LLaDA models (Dream, ...)
    device: str = "auto"

    def validate(self) -> None:
        for name in self.tasks:
            if name not in available_tasks():
                raise ConfigError(f"eval.tasks: unknown task {name!r}; available: {', '.join(available_tasks())}")
        if not self.tasks:
            raise ConfigError("eval.tasks: no task given")
        if not self.gen_lengths:
            raise ConfigError("eval.gen_lengths: no length given")
        if self.sampler.gen_length is not None:
            raise ConfigError(f"eval.sampler.gen_length: must be null in eval (the lengths come from "
                              f"eval.gen_lengths), got {self.sampler.gen_length}")
        self.sampler.validate("eval.sampler", gen_lengths=self.gen_lengths, lengths_key="eval.gen_lengths")
        if self.prompt not in ("eval", "train"):
            raise ConfigError(f"eval.prompt: {self.prompt!r} is not eval or train")
        if self.batch_size <= 0:
            raise ConfigError(f"eval.batch_size: must be positive, got {self.batch_size}")
        # Limits of tasks not evaluated in this run are ignored (a profile's limits cover all its eval cells).
        for name, n in self.limit.items():
            if name not in available_tasks() or n <= 0:
                raise ConfigError(f"eval.limit.{name}: must name a known task with a positive count, got {n}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"eval.dtype: {self.dtype!r} is not auto, float32, bfloat16 or float16")
        if self.models and self.model_name not in self.models:
            # evaluating `model` under a label the profile gives another model would mislabel the results
            raise ConfigError(f"eval.model_name: {self.model_name!r} is not one of the models of eval.models "
                              f"({', '.join(sorted(self.models))})")
        if self.model_name in self.models:
            self.model = self._model_for_label()

    def _model_for_label(self) -> str:
        template = self.models[self.model_name]
        if not template:
            raise ConfigError(f"eval.models.{self.model_name}: empty")
        if "{task}" not in template:
            return template
        if len(self.tasks) != 1:
            raise ConfigError(f"eval.models.{self.model_name}: {template!r} depends on the task, so eval.tasks "
                              f"must hold exactly one task, got {self.tasks}")
        return template.replace("{task}", self.tasks[0])

    def steps_for(self, gen_length: int) -> int:
        """Sampler steps at ``gen_length``: ``sampler.steps``, or gen_length // 2 when null."""
        return self.sampler.steps_for(gen_length)


def resolve_device_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if dtype == "auto":
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    return dev, getattr(torch, dtype)


def build_prompt(task: Task, example: Example, tokenizer, *, add_reasoning: bool, for_eval: bool = True) -> str:
    """The eval prompt: the task's eval user turn (``for_eval=False``: its training
    user turn) in the chat template, ``<reasoning>`` prefilled when ``add_reasoning``."""
    text = prompt_text(tokenizer, task, example, for_eval=for_eval)
    return text + "<reasoning>" if add_reasoning else text


def decode_completion(tokenizer, token_ids: list[int], eos_id: int | Sequence[int]) -> str:
    """Decoded completion up to and including the first stop token (special tokens kept, as d1).

    ``eos_id``: one id or several (e.g. EOS and ``<|eot_id|>``: the first of any ends it).
    """
    stops = {eos_id} if isinstance(eos_id, int) else set(eos_id)
    first = next((k for k, t in enumerate(token_ids) if t in stops), None)
    if first is not None:
        token_ids = token_ids[: first + 1]
    return tokenizer.decode(token_ids, skip_special_tokens=False)


@torch.no_grad()
def generate_completions(
    model, tokenizer, prompts: list[str], *, mask_id: int, eos_id: int, pad_id: int, gen_length: int,
    block_length: int, steps: int, temperature: float = 0.0, cfg_scale: float = 0.0,
    remasking: str = "low_confidence", cache: str = "none", threshold: float | None = None, batch_size: int = 8,
    generator: torch.Generator | None = None, device: torch.device | None = None, desc: str = "generate",
    stop_ids: Sequence[int] | None = None,
) -> list[str]:
    """Completions for ``prompts`` with the shared sampler, batched with left padding.

    The sampler arguments are :func:`d1.generation.generate`'s (``**SamplerConfig.generate_kwargs(n)``).

    Each completion is cut after its first ``eos_id`` (d1), or after the first of
    ``stop_ids`` when given (e.g. ``[eos_id, eot_id]``: the end of the assistant's
    turn, as GRPO's rewards read a rollout, :mod:`d1.train.grpo`).
    """
    device = device or next(model.parameters()).device
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    # Batch prompts of similar length together (less padding), keep the caller's order in the output.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out: list[str | None] = [None] * len(prompts)
    for start in progress(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
        idx = order[start : start + batch_size]
        ids, mask = left_pad([encoded[i] for i in idx], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        seqs = generate(
            model, ids, gen_length=gen_length, block_length=block_length, steps=steps, temperature=temperature,
            cfg_scale=cfg_scale, remasking=remasking, cache=cache, threshold=threshold, mask_id=mask_id,
            attention_mask=mask, generator=generator,
        )
        for row, i in enumerate(idx):
            out[i] = decode_completion(tokenizer, seqs[row, ids.shape[1]:].tolist(),
                                       list(stop_ids) if stop_ids else eos_id)
    return [s for s in out if s is not None]


def evaluate_task(
    model, tokenizer, task: Task, examples: list[Example], *, cfg: EvalConfig, gen_length: int,
    ids: Any, device: torch.device, generator: torch.Generator,
) -> tuple[dict, dict]:
    """Generate + score one (task, gen_length): (d1-format file content, metrics)."""
    sampler = cfg.sampler.generate_kwargs(gen_length)
    for_eval = cfg.prompt == "eval"
    prompts = [build_prompt(task, ex, tokenizer, add_reasoning=cfg.add_reasoning, for_eval=for_eval)
               for ex in examples]
    score = task.score if for_eval else task.score_training_format
    t0 = time.perf_counter()
    completions = generate_completions(
        model, tokenizer, prompts, mask_id=ids.mask_id, eos_id=ids.eos_id, pad_id=ids.pad_id,
        **sampler, batch_size=cfg.batch_size, generator=generator, device=device, desc=f"{task.name}@{gen_length}",
        stop_ids=ids.end_of_turn_ids() if cfg.stop_at_end_of_turn else [ids.eos_id],
    )
    wall = time.perf_counter() - t0
    items, correct, total = [], 0, 0
    for ex, prompt, text in zip(examples, prompts, completions):
        s = score(text, ex)
        correct += s.correct
        total += s.total
        items.append({"question": ex.question, "prompt_input": prompt, "generations": text,
                      "ground_truth": ex.ground_truth, "correct": s.correct, "total": s.total})
    metrics = {"accuracy": 100.0 * correct / total if total else 0.0, "correct": correct, "total": total,
               "n": len(items), "wall_time_s": round(wall, 3)}
    content = {"generations": items, "metrics": {"wall_time": wall, "total_processed": len(items), **metrics},
               "model_path": cfg.model, "gen_length": gen_length, "diffusion_steps": sampler["steps"],
               "block_length": sampler["block_length"],
               # the other sampler settings, so the file says how it was generated (cache/threshold: Fast-dLLM)
               **{k: sampler[k] for k in ("temperature", "cfg_scale", "remasking", "cache", "threshold")}}
    return content, metrics


def generations_filename(task: str, model_name: str, gen_length: int, steps: int) -> str:
    return f"{task}_{model_name}_{gen_length}_{steps}_0_generations.json"


def run_eval(cfg: EvalConfig, model=None, tokenizer=None) -> dict:
    """Run the evaluation stage; returns the metrics (also written to ``out_dir/metrics.json``).

    ``model``/``tokenizer`` may be passed in (tests, notebooks); otherwise they
    are loaded from ``cfg.model`` (a full model folder, or a LoRA adapter folder).
    """
    from d1.models.loading import load_for_inference, token_ids

    device, dtype = resolve_device_dtype(cfg.device, cfg.dtype)
    if model is None or tokenizer is None:
        model, tokenizer = load_for_inference(cfg.model, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    model = model.to(device).eval()
    ids = token_ids(model, tokenizer)
    out = Path(cfg.out_dir)
    # Load every test split before generating anything: a missing file fails fast.
    data = {}
    for name in cfg.tasks:
        examples = read_split(cfg.data_dir, name, "test")
        data[name] = examples[: cfg.limit[name]] if name in cfg.limit else examples
    metrics: dict[str, dict[str, dict]] = {}
    for name in cfg.tasks:
        task = get_task(name)
        for gen_length in cfg.gen_lengths:
            generator = torch.Generator(device=device).manual_seed(cfg.seed)
            content, m = evaluate_task(model, tokenizer, task, data[name], cfg=cfg, gen_length=gen_length,
                                       ids=ids, device=device, generator=generator)
            gen_dir = Path(cfg.generations_dir) if cfg.generations_dir else out
            path = gen_dir / generations_filename(name, cfg.model_name, gen_length, cfg.steps_for(gen_length))
            write_json_atomic(path, content)
            metrics.setdefault(name, {})[str(gen_length)] = m
    write_resolved(cfg, out)
    write_json_atomic(out / "metrics.json", metrics)
    return metrics
