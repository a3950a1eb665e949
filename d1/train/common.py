"""What every training stage shares: accelerate set-up, seeds, optimiser, checkpoints, logging.

Randomness. Every random draw of a run is a pure function of ``cfg.seed`` and
the position in the run (step, micro-batch, process): :func:`derive_seed`
hashes them into a seed for a fresh ``torch.Generator`` (data order, masks,
rollouts). The one consumer of torch's global RNG is dropout (LoRA dropout);
each micro-step runs inside :func:`scoped_rng`, which forks the global RNG,
seeds the fork from the same kind of derived seed and restores the caller's
state afterwards. So a run resumed from step N repeats exactly what an
uninterrupted run does after step N, without saving generator states, and
library code never reseeds the caller's RNG. (Checkpoints still store the
global RNG states of every process and restore them on resume, for any code
outside these loops that draws from them.)

Checkpoint layout (``<out_dir>/checkpoints/step-N``, written to a temporary
folder and renamed, so a kill while saving leaves no half checkpoint)::

    model/               save_pretrained: the LoRA adapter, or the full model, + tokenizer
    optimizer.pt         optimiser state (AdamW moments, step counts)
    scheduler.pt         learning-rate scheduler state
    trainer_state.json   {"global_step", "stage", "config"} (+ stage extras)
    rng_state_<rank>.pt  torch / CUDA / python / numpy RNG states of each process
    <stage extras>       e.g. GRPO's rollouts_<rank>.pt when saved mid-round

Only the last ``save_total_limit`` checkpoints are kept.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from d1.config import to_dict, write_json_atomic
from d1.errors import ConfigError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STEP_PREFIX = "step-"
MODEL_DIR = "model"
#: config keys that may change between a run and its resumption (they do not change the trajectory)
RESUMABLE_CHANGES = frozenset({"max_steps", "epochs", "save_steps", "save_total_limit", "logging_steps",
                               "out_dir", "logging_dir", "merge_adapter"})

#: called after every optimiser step with (global_step, metrics of that step); may raise to stop the run
StepCallback = Callable[[int, dict], None]


# ----------------------------------------------------------------------------- seeds


def derive_seed(seed: int, *keys: Any) -> int:
    """A stable 63-bit seed for ``(seed, *keys)`` (sha256; independent of process, order, platform)."""
    text = ":".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def make_generator(seed: int, *keys: Any, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``derive_seed(seed, *keys)``."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *keys))


@contextlib.contextmanager
def scoped_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with torch's global RNG (CPU and ``device``) seeded to ``seed``; restore it after.

    Used around forward/backward passes so dropout draws are reproducible per
    micro-step without touching the caller's RNG state.
    """
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)  # seeds the forked state only; restored on exit
        yield


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The order of ``n`` items in ``epoch`` (a fresh shuffle per epoch, deterministic in ``seed``)."""
    return torch.randperm(n, generator=make_generator(seed, "data-order", epoch)).tolist()


def positions_for_step(step: int, per_step: int, n: int, seed: int) -> list[int]:
    """Item indices for optimiser step ``step`` (``per_step`` items, crossing epochs when needed).

    Position ``p = step * per_step + i`` of the stream is item
    ``epoch_permutation(n, seed, p // n)[p % n]``: a pure function of the step, so
    data order survives a resume without any saved sampler state.
    """
    out, cache = [], {}
    for p in range(step * per_step, (step + 1) * per_step):
        epoch = p // n
        if epoch not in cache:
            cache[epoch] = epoch_permutation(n, seed, epoch)
        out.append(cache[epoch][p % n])
    return out


# ----------------------------------------------------------------------------- accelerate


def resolve_mixed_precision(requested: str, device: torch.device) -> str:
    """accelerate's ``mixed_precision`` for ``requested`` on ``device``: ``no`` wherever unsupported.

    ``auto``: bf16 on a CUDA device with bf16 support (d1's setting), else no.
    On the CPU every request becomes ``no`` (bf16 autocast on CPU is slow and
    not what the tiny profile measures).
    """
    if device.type != "cuda":
        if requested not in ("auto", "no"):
            log.info("mixed_precision %s is not used on %s; training in full precision", requested, device)
        return "no"
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    if requested == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("mixed_precision: bf16 is not supported by this GPU; use fp16 or no")
    return requested


def resolve_model_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, requested)


def build_accelerator(cfg: Any):
    """An Accelerator with the config's gradient accumulation and (supported) mixed precision."""
    from accelerate import Accelerator

    cpu = cfg.device == "cpu" or not torch.cuda.is_available()
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{cfg.SECTION}.device: cuda requested but no CUDA device is available")
    device = torch.device("cpu") if cpu else torch.device("cuda")
    precision = resolve_mixed_precision(cfg.mixed_precision, device)
    return Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=precision, cpu=cpu)


def build_optimizer(model: torch.nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; no weight decay on vectors (biases, norm weights).

    As HF Trainer (d1) except that it decays the weights of norm layers it does
    not recognise (LLaDA's RMSNorm); LoRA matrices are decayed either way.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise ConfigError(f"{cfg.SECTION}: the model has no trainable parameter")
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps)


def warmup_steps(cfg: Any, total_steps: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps > 0 else math.ceil(cfg.warmup_ratio * total_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Any, total_steps: int):
    """transformers' schedule ``cfg.lr_scheduler`` over ``total_steps`` optimiser steps."""
    from transformers import get_scheduler

    return get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warmup_steps(cfg, total_steps),
                         num_training_steps=total_steps)


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


# ----------------------------------------------------------------------------- models


def load_base_model(path: str, cfg: Any, device: torch.device, *, quantize_4bit: bool = False):
    """The model at ``path`` (Hub id or folder) in the config's dtype, with gradient checkpointing if asked."""
    from d1.models.loading import load_model

    dtype = resolve_model_dtype(cfg.model_dtype, device)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if quantize_4bit:
        kwargs["quantization_config"] = _nf4_config(device)
        kwargs["device_map"] = {"": device.index or 0}  # a quantised model cannot be moved afterwards
    return load_model(path, **kwargs)


def _nf4_config(device: torch.device):
    """d1's QLoRA base: 4-bit NF4, double quantisation, bf16 compute (needs CUDA + bitsandbytes)."""
    if device.type != "cuda":
        raise ConfigError("load_in_4bit: 4-bit loading needs a CUDA device")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("load_in_4bit: needs the bitsandbytes package (pip install bitsandbytes)") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=torch.bfloat16)


def prepare_trainable(model: torch.nn.Module, cfg: Any, *, seed_keys: Sequence[Any] = ()) -> torch.nn.Module:
    """LoRA (d1) or full fine-tuning; gradient checkpointing when asked.

    LoRA matrices are initialised from torch's RNG: done inside :func:`scoped_rng`
    so the adapter is a function of the seed.
    """
    from d1.models.lora import apply_lora

    if cfg.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ConfigError(f"{cfg.SECTION}.gradient_checkpointing: {type(model).__name__} does not support it")
        # Non-reentrant: works with frozen inputs (LoRA) and keeps dropout masks on recomputation.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.full_finetune:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    device = next(model.parameters()).device
    with scoped_rng(derive_seed(cfg.seed, "lora-init", *seed_keys), device):
        return apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_target_modules))


def is_peft(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def save_model_dir(model: torch.nn.Module, tokenizer: Any, path: Path) -> Path:
    """``save_pretrained`` of the model (the adapter only for a LoRA model) and the tokenizer."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


def load_trainable_state(model: torch.nn.Module, path: Path) -> None:
    """Restore the trained weights saved by :func:`save_model_dir` into ``model`` (same structure)."""
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{path}: no .safetensors weights in this checkpoint")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    if is_peft(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, state)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise ConfigError(f"{path}: adapter weights do not fit the model (unexpected: {unexpected[:3]})")
        return
    result = model.load_state_dict(state, strict=False)
    tied = {name for name, _ in _tied_parameter_names(model)}
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise ConfigError(f"{path}: checkpoint weights do not fit the model "
                          f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")


def _tied_parameter_names(model: torch.nn.Module) -> list[tuple[str, str]]:
    """(alias, original) names of parameters that share storage with an earlier parameter."""
    seen: dict[int, str] = {}
    out = []
    for name, p in model.named_parameters(remove_duplicate=False):
        key = id(p)
        if key in seen:
            out.append((name, seen[key]))
        else:
            seen[key] = name
    return out


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINTS


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints ``(step, path)`` in step order (temporary folders are ignored)."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        name = path.name
        if path.is_dir() and name.startswith(STEP_PREFIX) and name[len(STEP_PREFIX):].isdigit():
            if (path / "trainer_state.json").is_file():
                found.append((int(name[len(STEP_PREFIX):]), path))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def check_resumable(cfg: Any, saved: dict) -> None:
    """ConfigError naming the keys whose change would make the resumed run differ from the saved one."""
    now = to_dict(cfg)
    changed = sorted(k for k in set(now) | set(saved) if k not in RESUMABLE_CHANGES and now.get(k) != saved.get(k))
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
        raise ConfigError(f"{cfg.SECTION}: cannot resume, the config changed since the checkpoint ({detail}); "
                          "start a fresh run or restore the old values")


def _rng_states() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover
        pass
    return state


def _restore_rng_states(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


@dataclasses.dataclass
class ResumeState:
    step: int
    path: Path
    trainer_state: dict


class Checkpointer:
    """Save, find, restore and prune checkpoints of one run (see the module docstring)."""

    def __init__(self, cfg: Any, accelerator: Any, stage: str):
        self.cfg = cfg
        self.accelerator = accelerator
        self.stage = stage
        self.root = checkpoint_root(cfg.out_dir)

    def save(self, step: int, *, model: torch.nn.Module, tokenizer: Any, optimizer: Any, scheduler: Any,
             extra_state: dict | None = None, extra_files: dict[str, Any] | None = None) -> Path:
        """Write ``step-N``; ``extra_files`` are per-process objects saved as ``<name>_<rank>.pt``."""
        acc = self.accelerator
        final = self.root / f"{STEP_PREFIX}{step}"
        tmp = self.root / f".{STEP_PREFIX}{step}.tmp"
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_model_dir(acc.unwrap_model(model), tokenizer, tmp / MODEL_DIR)
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        acc.wait_for_everyone()
        rank = acc.process_index
        torch.save(_rng_states(), tmp / f"rng_state_{rank}.pt")
        for name, obj in (extra_files or {}).items():
            torch.save(obj, tmp / f"{name}_{rank}.pt")
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {"global_step": step, "stage": self.stage, "num_processes": acc.num_processes,
                     "config": to_dict(self.cfg), **(extra_state or {})}
            write_json_atomic(tmp / "trainer_state.json", state)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            self.prune()
        acc.wait_for_everyone()
        return final

    def prune(self) -> None:
        limit = self.cfg.save_total_limit
        if limit is None:
            return
        for _, path in list_checkpoints(self.cfg.out_dir)[:-limit]:
            shutil.rmtree(path, ignore_errors=True)

    def clear(self) -> None:
        """Remove the checkpoints of an earlier run (a fresh run must not resume into them later)."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process and self.root.exists():
            shutil.rmtree(self.root)
        self.accelerator.wait_for_everyone()

    def find(self) -> ResumeState | None:
        path = latest_checkpoint(self.cfg.out_dir)
        if path is None:
            return None
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        if state.get("stage") != self.stage:
            raise ConfigError(f"{path}: a {state.get('stage')!r} checkpoint, not {self.stage!r}")
        if state.get("num_processes") != self.accelerator.num_processes:
            raise ConfigError(f"{path}: saved by {state.get('num_processes')} processes, resumed with "
                              f"{self.accelerator.num_processes}; resume with the same number")
        check_resumable(self.cfg, state.get("config", {}))
        return ResumeState(step=int(state["global_step"]), path=path, trainer_state=state)

    def restore(self, resume: ResumeState, *, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> None:
        """Load weights, optimiser, scheduler and this process's RNG states from ``resume``."""
        path = resume.path
        load_trainable_state(self.accelerator.unwrap_model(model), path / MODEL_DIR)
        # The optimiser moves its state to each parameter's device itself.
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        rng_file = path / f"rng_state_{self.accelerator.process_index}.pt"
        if rng_file.is_file():
            _restore_rng_states(torch.load(rng_file, weights_only=False))

    def load_extra(self, resume: ResumeState, name: str) -> Any | None:
        f = resume.path / f"{name}_{self.accelerator.process_index}.pt"
        device = self.accelerator.device
        # "cpu:0" (what accelerate reports in multi-CPU runs) is not a valid map_location.
        map_location = "cpu" if device.type == "cpu" else device
        return torch.load(f, map_location=map_location, weights_only=False) if f.is_file() else None


# ----------------------------------------------------------------------------- metrics


class MetricsLogger:
    """dvclive metrics of the main process (no-op elsewhere).

    Written to ``cfg.dvclive_dir``: ``metrics.json`` (the last values, for
    ``dvc exp show`` / ``dvc metrics``) and ``plots/metrics/**.tsv`` (one row per
    logged step, for ``dvc plots``). dvclive is told not to touch ``dvc.yaml``
    nor to make experiments: the stage graph declares these files. On resume
    from step N, rows after N (logged by the interrupted run after its last
    checkpoint) are dropped first so every step appears once.
    """

    def __init__(self, cfg: Any, accelerator: Any, *, resume_step: int | None):
        self.enabled = accelerator.is_main_process
        self.live = None
        self.last: dict[str, float] = {}
        if not self.enabled:
            return
        from dvclive import Live

        directory = Path(cfg.dvclive_dir)
        if resume_step is None:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            _truncate_tsv_after(directory / "plots" / "metrics", resume_step)
            summary = directory / "metrics.json"
            if summary.is_file():  # a resumed run that has nothing left to do still reports its metrics
                self.last = _flatten(json.loads(summary.read_text(encoding="utf-8")))
                self.last.pop("step", None)
        self.live = Live(dir=str(directory), resume=resume_step is not None, save_dvc_exp=False, dvcyaml=None,
                         report=None)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled or self.live is None:
            return
        self.live.step = step
        for name, value in metrics.items():
            if value is not None and math.isfinite(float(value)):
                self.live.log_metric(name, float(value))
        self.live.make_summary()
        self.last = dict(metrics)

    def close(self) -> None:
        if self.live is not None:
            self.live.end()
            self.live = None


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """dvclive's nested summary ({"train": {"loss": 1.0}}) -> {"train/loss": 1.0}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}/"))
        else:
            out[name] = value
    return out


def _truncate_tsv_after(directory: Path, step: int) -> None:
    if not directory.is_dir():
        return
    for path in directory.rglob("*.tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        if not rows:
            continue
        header, body = rows[0], rows[1:]
        col = header.index("step") if "step" in header else None
        if col is None:
            continue
        kept = [r for r in body if r and int(float(r[col])) <= step]
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(header)
            writer.writerows(kept)


# ----------------------------------------------------------------------------- small helpers


def progress_bar(accelerator: Any, *, total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not accelerator.is_main_process,
                dynamic_ncols=True)


def reduce_sum(accelerator: Any, value: float | int, device: torch.device) -> float:
    """Sum of a number over processes (itself when single-process)."""
    if accelerator.num_processes == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    return float(accelerator.reduce(t, reduction="sum").item())


def reduce_mean(accelerator: Any, value: float, device: torch.device) -> float:
    return reduce_sum(accelerator, value, device) / accelerator.num_processes


class StepTimer:
    """Wall time of an optimiser step (for tokens/s)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists -> (ids [B, L] long, attention_mask [B, L] long, 0 on padding)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def write_run_config(cfg: Any, accelerator: Any) -> None:
    from d1.config import write_resolved

    if accelerator.is_main_process:
        write_resolved(cfg, cfg.out_dir)


# ----------------------------------------------------------------------------- one run


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
        self.resume_state = self.checkpointer.find() if resume else None
        if resume and self.resume_state is None:
            log.info("%s: no checkpoint in %s; starting from scratch", stage, checkpoint_root(cfg.out_dir))
        if self.resume_state is None:
            self.checkpointer.clear()
        self.model = self.optimizer = self.scheduler = self.logger = None
        self.total_steps = 0
        self.grad_norm: float | None = None

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
        self.accelerator.backward(loss)

    def optimizer_step(self) -> None:
        """Call inside :meth:`micro_step` after backward: clip + step on the last micro-batch only."""
        acc = self.accelerator
        if acc.sync_gradients:
            max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
            norm = acc.clip_grad_norm_(trainable_parameters(self.model), max_norm)
            self.grad_norm = float(norm) if norm is not None else None
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
        if done % self.cfg.logging_steps == 0 or done == self.total_steps:
            self.logger.log(done, metrics)
        for callback in callbacks:
            callback(done, metrics)
        if self.cfg.save_steps and (done % self.cfg.save_steps == 0 or done == self.total_steps):
            self.checkpointer.save(done, model=self.model, tokenizer=tokenizer, optimizer=self.optimizer,
                                   scheduler=self.scheduler, extra_state=extra_state,
                                   extra_files=extra_files() if extra_files else None)

    def finish(self) -> dict:
        self.accelerator.wait_for_everyone()
        last = dict(self.logger.last) if self.logger else {}
        if self.logger:
            self.logger.close()
        return last
