"""Sampling from masked diffusion LMs: one sampler shared by RL rollouts and evaluation."""

from d1.generation.sampler import (
    CACHE_MODES,
    REMASKING_STRATEGIES,
    add_gumbel_noise,
    as_logits,
    generate,
    left_pad,
    transfer_schedule,
)
from d1.generation.sampler_config import SamplerConfig

__all__ = ["CACHE_MODES", "REMASKING_STRATEGIES", "SamplerConfig", "add_gumbel_noise", "as_logits", "generate",
           "left_pad", "transfer_schedule"]
