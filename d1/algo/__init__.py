"""Pure tensor math of d1: masked-SFT forward process and loss, diffu-GRPO estimator and loss."""

from d1.algo.grpo import (
    completion_mask,
    coupled_completion_mask,
    diffu_grpo_loss,
    draw_mask_seeds,
    group_advantages,
    mask_generator,
    mask_prompt_for_logp,
    per_token_logps,
    token_log_probs,
)
from d1.algo.masking import (
    count_response_tokens,
    forward_mask,
    masked_sft_loss,
    sample_mask_ratio,
    sft_collate,
)

__all__ = [
    "completion_mask",
    "coupled_completion_mask",
    "count_response_tokens",
    "diffu_grpo_loss",
    "draw_mask_seeds",
    "forward_mask",
    "group_advantages",
    "mask_generator",
    "mask_prompt_for_logp",
    "masked_sft_loss",
    "per_token_logps",
    "sample_mask_ratio",
    "sft_collate",
    "token_log_probs",
]
