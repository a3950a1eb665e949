"""d1-pipeline: post-train masked diffusion LMs to reason (masked SFT, diffu-GRPO, evaluation)."""

__version__ = "0.1.0"
