"""What every training stage shares: accelerate set-up, seeds, optimiser, model loading, small helpers.

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

Checkpoints: :mod:`d1.train.checkpoints`; metrics: :mod:`d1.train.metrics`;
the run object every loop uses: :mod:`d1.train.run` (which also says what
sharded training, FSDP2, does differently; its helpers are here).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from d1.errors import ConfigError

log = logging.getLogger(__name__)

MODEL_DIR = "model"

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


def save_model_dir(model: torch.nn.Module, tokenizer: Any, path: Path,
                   state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """``save_pretrained`` of the model (the adapter only for a LoRA model) and the tokenizer.

    ``state_dict``: the weights to write instead of the model's own (FSDP: gathered from the shards).
    """
    path.mkdir(parents=True, exist_ok=True)
    if state_dict is None:
        model.save_pretrained(str(path), safe_serialization=True)
    else:
        model.save_pretrained(str(path), safe_serialization=True, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


def load_trainable_state(model: torch.nn.Module, path: Path) -> None:
    """Restore the trained weights saved by :func:`save_model_dir` into ``model`` (same structure)."""
    from safetensors.torch import load_file

    from d1.models.loading import check_safetensors_files

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{path}: no .safetensors weights in this checkpoint")
    check_safetensors_files(path, str(path))  # a truncated or foreign file: one error naming it
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


# ----------------------------------------------------------------------------- sharded training (FSDP2)
# What a sharded run does differently: d1/train/run.py's module docstring.


def is_fsdp(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def check_distributed_mode(accelerator: Any) -> None:
    """ConfigError for a distributed mode the training loops cannot run (FSDP1, DeepSpeed)."""
    from accelerate.utils import DistributedType

    if is_fsdp(accelerator) and not accelerator.is_fsdp2:
        raise ConfigError("accelerate FSDP version 1 is not supported by d1's training loops: set "
                          "fsdp_config.fsdp_version: 2 (infra/gpu/accelerate/8gpu-fsdp.yaml)")
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ConfigError(
            "DeepSpeed is not supported by d1's training loops (its engine steps and clips inside backward and "
            "partitions the optimiser state, which the non-finite guard and the checkpoints do not handle); use "
            "infra/gpu/accelerate/8gpu.yaml (DDP) or 8gpu-fsdp.yaml (FSDP2, sharded)")


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor (FSDP2 parameter or gradient); a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _options(**kwargs: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kwargs)


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's AcceleratedOptimizer."""
    return getattr(optimizer, "optimizer", optimizer)


def full_model_state(model: torch.nn.Module, *, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The whole model's state as full CPU tensors on the main process ({} on the others).

    A collective: every process calls it. ``trainable_only``: leave out frozen
    parameters (a LoRA run saves only its adapter)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(full_state_dict=True, cpu_offload=True,
                                                        ignore_frozen_params=trainable_only))


def full_optimizer_state(model: torch.nn.Module, optimizer: Any) -> dict:
    """The optimiser state, parameters keyed by name, full CPU tensors on the main process. Collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, _torch_optimizer(optimizer),
                                    options=_options(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: torch.nn.Module, optimizer: Any, state: dict) -> None:
    """Shard ``state`` (from :func:`full_optimizer_state`; read on the main process, ``{}`` elsewhere)
    into the optimiser. Collective."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, _torch_optimizer(optimizer), optim_state_dict=state,
                             options=_options(full_state_dict=True, broadcast_from_rank0=True))


@contextlib.contextmanager
def fsdp_full_params(model: torch.nn.Module) -> Iterator[None]:
    """Inside the block every FSDP unit of ``model`` holds its full parameters (one all-gather per unit
    on entry, freed on exit) and forward passes neither gather nor free them: no collective runs
    inside, so processes may run different numbers of forward passes. For no-grad work
    (generation, scoring); every process enters and leaves together. A plain model: nothing happens.

    Costs one full copy of the parameters per process (in the mixed-precision dtype) while open.
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield
        return
    # The root's first forward settles its own settings (lazy init); settle them before changing them
    # (a round's rollouts may be the first forward of the run).
    root = model if isinstance(model, FSDPModule) else units[0]
    lazy_init = getattr(root._get_fsdp_state(), "_lazy_init", None)
    if lazy_init is not None:
        lazy_init()
    # FSDP2 has no public getter for reshard_after_forward: remember its private state to restore it.
    saved = []
    for unit in units:
        state = unit._get_fsdp_state()
        saved.append((state, getattr(state, "_auto_reshard_after_forward", None),
                      [group.post_forward_mesh_info for group in state._fsdp_param_groups]))
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit, (state, auto, infos) in zip(units, saved):
            if auto is not None:
                state._auto_reshard_after_forward = auto
            for group, info in zip(state._fsdp_param_groups, infos):
                group.post_forward_mesh_info = info
            unit.reshard()


# ----------------------------------------------------------------------------- small helpers


def progress_bar(accelerator: Any, *, total: int, initial: int, desc: str):
    """The main process's progress over optimiser steps (:func:`d1.progress.progress`: tqdm in a terminal)."""
    from d1.progress import progress

    return progress(total=total, initial=initial, desc=desc, unit="step", disable=not accelerator.is_main_process)


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


def write_run_config(cfg: Any, accelerator: Any) -> None:
    from d1.config import write_resolved

    if accelerator.is_main_process:
        write_resolved(cfg, cfg.out_dir)
