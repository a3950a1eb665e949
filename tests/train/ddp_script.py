"""Run by tests/train/test_distributed.py under ``accelerate launch`` (2 CPU processes, gloo).

Usage: ddp_script.py BASE DATA OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from d1.generation import SamplerConfig
from d1.train.grpo_config import GRPOConfig

from d1.train.sft_config import SFTConfig
from d1.train.grpo import run_grpo
from d1.train.sft import run_sft


def main() -> None:
    base, data, out = (Path(a) for a in sys.argv[1:4])
    sft = SFTConfig(model_path=str(base), data_dir=str(data), tasks=["countdown"], out_dir=str(out / "sft"),
                    max_length=224, batch_size=1, grad_accum=2, max_steps=3, lr=1e-2, lora_r=4, lora_alpha=8.0,
                    lora_dropout=0.1, save_steps=2, merge_adapter=True, device="cpu")
    grpo = GRPOConfig(model_path=str(base), data_dir=str(data), tasks=["countdown", "sudoku"],
                      out_dir=str(out / "grpo"),
                      num_generations=2, generation_batch_size=2, batch_size=2, grad_accum=1,
                      sampler=SamplerConfig(gen_length=8, block_length=8, steps=4, temperature=0.9),
                      num_iterations=2, max_steps=3, lr=1e-2, lora_r=4,
                      lora_alpha=8.0, lora_dropout=0.0, save_steps=1, warmup_ratio=0.0, device="cpu")
    for cfg in (sft, grpo):
        cfg.validate()
    summaries = {"sft": run_sft(sft), "grpo": run_grpo(grpo)}
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    (out / f"summary_{rank}.json").write_text(json.dumps({"world": world, **summaries}, default=str))


if __name__ == "__main__":
    main()
