"""The ``sft`` section of ``params.yaml``: masked SFT; defaults are d1's LLaDA-8B setting."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from d1.data.s1k import SFT_DATA_FORMATS
from d1.train.configs import (
    TrainConfigBase,
    fail_at,
    require_one_of,
)


@dataclass
class SFTConfig(TrainConfigBase):
    """Masked SFT (d1 ``SFT/sft_train.py``): defaults are d1's LLaDA setting.

    Examples are the prepared train splits of ``tasks`` with a worked
    ``solution``, then those of the SFT data sets ``sft_data`` that ``d1 prepare``
    wrote (``prepare.sft_data``; d1 trained on s1K alone: ``tasks: []``,
    ``sft_data: [s1k]``, :mod:`d1.data.s1k`). ``merge_adapter``: after LoRA training, merge the adapter into the base
    and write the standalone model to ``<out_dir>/model`` (d1 practice before RL).

    ``prefix_marker`` (extension, not in d1; empty = off, d1's data): a
    ``prefix_fraction`` of the examples whose response contains the marker also
    get a copy whose never-masked prompt runs through the marker's first
    occurrence (:func:`d1.train.sft.prefix_cuts`). The objective is d1's on every
    row; only the data gains rows. ``prefix_pattern`` (instead of the marker):
    a regular expression; one copy per match, whose prompt runs through the
    match (:func:`d1.train.sft.prefix_cuts`). Measured on the tiny Countdown
    model in ``docs/results.md`` (the learning benchmark's SFT recipe).
    """

    SECTION: ClassVar[str] = "sft"

    # SFT data sets prepared by `d1 prepare` (prepare.sft_data), e.g. [s1k]: <data_dir>/<name>/train.jsonl
    sft_data: list[str] = field(default_factory=list)
    out_dir: str = "outputs/sft"
    max_length: int = 4096  # every row is padded with EOS to this length (d1)
    pad_to: str = "max_length"  # or "longest": the longest row of the optimiser step (d1.train.sft)
    mask_eps: float = 1e-3
    lr: float = 1e-5
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # HF Trainer default, as d1
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    lr_scheduler: str = "linear"  # HF Trainer default, as d1
    batch_size: int = 1
    grad_accum: int = 4
    epochs: float = 20.0
    save_steps: int = 100
    save_total_limit: int | None = 20
    lora_r: int = 128
    lora_alpha: float = 256.0
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])
    merge_adapter: bool = True
    prefix_marker: str = ""
    prefix_fraction: float = 1.0
    prefix_pattern: str = ""

    def other_data(self) -> list[str]:
        return list(self.sft_data)

    def validate(self) -> None:
        super().validate()
        s = self.SECTION
        for name in self.sft_data:
            if name not in SFT_DATA_FORMATS:
                fail_at(f"{s}.sft_data", f"unknown SFT data set {name!r}; known: {', '.join(SFT_DATA_FORMATS)}")
        if len(set(self.sft_data)) != len(self.sft_data):
            fail_at(f"{s}.sft_data", f"a data set is listed twice: {self.sft_data}")
        if self.prefix_marker and self.prefix_pattern:
            fail_at(f"{s}.prefix_pattern", f"set prefix_marker or prefix_pattern, not both (prefix_marker is "
                  f"{self.prefix_marker!r})")
        if self.prefix_pattern:
            try:
                re.compile(self.prefix_pattern)
            except re.error as exc:
                fail_at(f"{s}.prefix_pattern", f"not a regular expression: {self.prefix_pattern!r} ({exc})")
        if not 0.0 <= self.prefix_fraction <= 1.0:
            fail_at(f"{s}.prefix_fraction", f"must be in [0, 1], got {self.prefix_fraction}")
        if self.max_length < 2:
            fail_at(f"{s}.max_length", f"must be >= 2, got {self.max_length}")
        require_one_of(s, "pad_to", self.pad_to, ("max_length", "longest"))
        if not 0.0 <= self.mask_eps < 1.0:
            fail_at(f"{s}.mask_eps", f"must be in [0, 1), got {self.mask_eps}")
