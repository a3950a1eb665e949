"""Training stages on accelerate: tiny-model pre-training, masked SFT and diffu-GRPO.

``run_pretrain(cfg)``, ``run_sft(cfg)`` and ``run_grpo(cfg)`` take the stage's
config (:mod:`d1.train.pretrain_config`, :mod:`~d1.train.sft_config`,
:mod:`~d1.train.grpo_config`: one ``params.yaml`` section each), write the
trained model, checkpoints and dvclive metrics under ``cfg.out_dir`` and return
a summary dict. ``resume=True`` continues from the last checkpoint. Imports are
lazy so that ``import d1.train`` does not load torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GRPOConfig", "PretrainConfig", "SFTConfig", "run_grpo", "run_pretrain", "run_sft"]


def __getattr__(name: str) -> Any:
    if name == "PretrainConfig":
        from d1.train.pretrain_config import PretrainConfig

        return PretrainConfig
    if name == "SFTConfig":
        from d1.train.sft_config import SFTConfig

        return SFTConfig
    if name == "GRPOConfig":
        from d1.train.grpo_config import GRPOConfig

        return GRPOConfig
    if name == "run_pretrain":
        from d1.train.pretrain import run_pretrain

        return run_pretrain
    if name == "run_sft":
        from d1.train.sft import run_sft

        return run_sft
    if name == "run_grpo":
        from d1.train.grpo import run_grpo

        return run_grpo
    raise AttributeError(f"module 'd1.train' has no attribute {name!r}")
