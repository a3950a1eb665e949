"""Sharded training with FSDP (accelerate's FSDP2, ``torch.distributed.fsdp.fully_shard``).

Under FSDP every process holds one shard (a DTensor) of each parameter, of its
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
  :func:`full_params` gathers every parameter once and keeps it gathered for the
  block, so the sampler's forward passes run without collectives (each rank may
  run a different number of them: threshold decoding stops a block when it is
  done, which would leave the others waiting in an all-gather);
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
from collections.abc import Iterator
from typing import Any

import torch

from d1.errors import ConfigError


def is_fsdp(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def check_supported(accelerator: Any) -> None:
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
def full_params(model: torch.nn.Module) -> Iterator[None]:
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
