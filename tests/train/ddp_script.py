"""Run by tests/train/test_distributed.py under ``accelerate launch`` (2 CPU processes, gloo; DDP, or FSDP2
with infra/gpu/accelerate/8gpu-fsdp.yaml), and in the test's own process as the 1-process reference.

Usage: ddp_script.py BASE DATA OUT

SFT and GRPO train 3 steps each with an optimiser batch of 2 micro-batches: 2 processes x 1 here, 1 process
x 2 accumulated in the reference (:func:`train` with ``world=1``). Each stage then resumes from a
checkpoint in a second folder and trains to the end again. Every process writes, before each stage saves
its model, the trainable weights it holds (gathered: under FSDP the full weights GRPO's rollouts see) to
``OUT/weights/<stage>_<rank>.pt``, and ``OUT/summary_<rank>.json``.

GRPO's rewards are replaced by one that varies with the completion (the share of digits in it), so that a
random tiny model gets non-zero advantages and its adapter moves. The rollouts decode with a confidence
threshold (0.005: the tiny model's confidences are around it), so a process runs as many sampler passes
as its prompts need, 5 to 8 here, and the ranks' counts differ: under FSDP the rollouts must not gather
weights per pass (``TrainingRun.full_params``). Two GRPO settings differ from the
defaults because their draws depend on how rows are batched, not on the rows: prompt masking is off
(``p_mask_prompt: 0``; its mask is drawn for the process's batch) and so is LoRA dropout (its mask has
the micro-batch's shape, whose prompt padding depends on the other prompts in the batch; SFT's rows are
padded to max_length, so SFT keeps dropout 0.1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import torch
import torch.distributed as dist

STAGES = ("sft", "grpo")
#: the checkpoint each stage resumes from (GRPO's step 1 is mid-round: its rollouts are saved with it)
RESUME_FROM = {"sft": 2, "grpo": 1}


def digits_reward(self, completion: str, example):
    """A reward with signal for a random model: the share of digits in the completion."""
    from d1.tasks.base import RewardBreakdown

    return RewardBreakdown.of({"digits": sum(c.isdigit() for c in completion) / max(len(completion), 1)})


def configs(base: Path, data: Path, out: Path, world: int):
    from d1.generation import SamplerConfig
    from d1.train.grpo_config import GRPOConfig
    from d1.train.sft_config import SFTConfig

    accum = 2 // world
    sft = SFTConfig(model_path=str(base), data_dir=str(data), tasks=["countdown"], out_dir=str(out / "sft"),
                    max_length=224, batch_size=1, grad_accum=accum, max_steps=3, lr=1e-2, lora_r=4,
                    lora_alpha=8.0, lora_dropout=0.1, save_steps=1, save_total_limit=None, merge_adapter=True,
                    device="cpu")
    grpo = GRPOConfig(model_path=str(base), data_dir=str(data), tasks=["countdown", "sudoku"],
                      out_dir=str(out / "grpo"), num_generations=2, generation_batch_size=2, batch_size=2,
                      grad_accum=accum, sampler=SamplerConfig(gen_length=8, block_length=8, steps=4, temperature=0.9,
                                                                   threshold=0.005),
                      num_iterations=2, max_steps=3, lr=1e-2, lora_r=4, lora_alpha=8.0, lora_dropout=0.0,
                      p_mask_prompt=0.0, save_steps=1, save_total_limit=None, warmup_ratio=0.0, device="cpu")
    for cfg in (sft, grpo):
        cfg.validate()
    return {"sft": sft, "grpo": grpo}


def rank_and_world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def instrumented(out: Path) -> Iterator[dict]:
    """The digits reward, and a record of every process's weights just before a stage saves its model."""
    import d1.train.grpo as grpo_module
    import d1.train.sft as sft_module
    from d1.tasks.base import Task

    facts: dict = {}

    def recording(module, key):
        original = module.save_final

        def save_final(run, *args, **kwargs):
            from torch.distributed.tensor import DTensor

            facts["distributed_type"] = str(run.accelerator.distributed_type)
            facts["sharded"] = any(isinstance(p, DTensor) for p in run.model.parameters())
            with run.full_params():
                weights = {n: p.detach().clone() for n, p in run.unwrapped.named_parameters() if p.requires_grad}
            (out / "weights").mkdir(parents=True, exist_ok=True)
            torch.save(weights, out / "weights" / f"{facts['stage']}_{run.rank}.pt")
            return original(run, *args, **kwargs)

        return mock.patch.object(module, key, save_final)

    with mock.patch.object(Task, "reward", digits_reward), \
            recording(sft_module, "save_final"), recording(grpo_module, "save_final"):
        yield facts


def resume_copy(cfg, step: int, folder: Path):
    """``cfg`` writing to ``folder``, which holds a copy of checkpoint ``step`` of ``cfg``'s run."""
    from d1.train.checkpoints import checkpoint_root

    rank, _ = rank_and_world()
    if rank == 0:
        shutil.copytree(checkpoint_root(cfg.out_dir) / f"step-{step}", checkpoint_root(folder) / f"step-{step}")
    if dist.is_initialized():
        dist.barrier()
    return dataclasses.replace(cfg, out_dir=str(folder))


def train(base: Path, data: Path, out: Path, *, world: int) -> dict:
    """SFT, then GRPO; then each resumed from a checkpoint. Returns this process's summary."""
    from d1.train.grpo import run_grpo
    from d1.train.sft import run_sft

    runners = {"sft": run_sft, "grpo": run_grpo}
    cfgs = configs(base, data, out, world)
    summary: dict = {"world": world}
    with instrumented(out) as facts:
        for stage in STAGES:
            facts["stage"] = stage
            summary[stage] = runners[stage](cfgs[stage])
        for stage in STAGES:
            facts["stage"] = f"{stage}-resumed"
            cfg = resume_copy(cfgs[stage], RESUME_FROM[stage], out / f"{stage}-resumed")
            summary[f"{stage}-resumed"] = runners[stage](cfg, resume=True)
        summary["distributed_type"], summary["sharded"] = facts["distributed_type"], facts["sharded"]
    return summary


def fsdp_on_cpu() -> None:
    """accelerate (1.16) turns FSDP on only for GPU-like distributed types: on CPU processes (MULTI_CPU,
    gloo) it ignores the FSDP config and wraps the model in DDP. Mark the processes MULTI_GPU before the
    Accelerator is built, so it prepares the model with FSDP2 (``fully_shard`` on a CPU mesh); the
    device stays the CPU. The summary's distributed_type and sharded say it worked."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = PartialState(cpu=True)
    if state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.MULTI_GPU


def main() -> None:
    base, data, out = (Path(a) for a in sys.argv[1:4])
    fsdp_on_cpu()
    from accelerate.state import PartialState

    state = PartialState(cpu=True)  # initialises the process group (as the first Accelerator would)
    rank, world = state.process_index, state.num_processes
    summary = train(base, data, out, world=world)
    (out / f"summary_{rank}.json").write_text(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
