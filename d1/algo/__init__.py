"""Pure tensor math of d1: masked-SFT forward process and loss, diffu-GRPO estimators and objectives.

``from d1.algo import diffu_grpo_loss`` works for every public name; the
submodules load on first use, so a stage that only trains with the masked
objective (pre-training, SFT) never loads :mod:`d1.algo.grpo` (its DVC
dependencies say so too).

Variants are registered by name: ``ESTIMATORS`` (log-prob estimators,
:mod:`d1.algo.estimators`) and ``OBJECTIVES`` (policy objectives,
:mod:`d1.algo.objectives`), filled by ``@register_estimator(name)`` /
``@register_objective(name)`` (:mod:`d1.algo.registry`).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "d1.algo.grpo": (
        "completion_mask",
        "coupled_completion_mask",
        "draw_mask_seeds",
        "group_advantages",
        "mask_generator",
        "mask_prompt_for_logp",
        "per_token_logps",
        "token_log_probs",
    ),
    "d1.algo.objectives.diffu_grpo": ("diffu_grpo_loss",),
    "d1.algo.estimators": ("ESTIMATORS", "Estimator"),
    "d1.algo.objectives": ("AGG_MODES", "OBJECTIVES", "ObjectiveInputs", "agg_loss"),
    "d1.algo.registry": ("Registry", "register_estimator", "register_objective"),
    "d1.algo.masking": (
        "count_response_tokens",
        "forward_mask",
        "masked_sft_loss",
        "sample_mask_ratio",
        "sft_collate",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'd1.algo' has no attribute {name!r}")
    return getattr(import_module(_MODULE_OF[name]), name)
