"""Sampling from masked diffusion LMs: one sampler shared by RL rollouts and evaluation."""

from d1.generation.sampler import (
    REMASKING_STRATEGIES,
    add_gumbel_noise,
    as_logits,
    generate,
    left_pad,
    transfer_schedule,
)

__all__ = ["REMASKING_STRATEGIES", "add_gumbel_noise", "as_logits", "generate", "left_pad", "transfer_schedule"]
