"""One sampler configuration for evaluation and RL rollouts: the ``sampler`` section of ``grpo`` and ``eval``.

``params.yaml`` holds the settings of :func:`d1.generation.generate` in one nested
section per stage, ``<profile>.grpo.sampler`` (rollouts) and ``<profile>.eval.sampler``
(evaluation), both read into :class:`SamplerConfig`, checked by the same code and
passed to the sampler by :meth:`SamplerConfig.generate_kwargs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from d1.errors import ConfigError
from d1.generation.sampler import CACHE_MODES, REMASKING_STRATEGIES


@dataclass
class SamplerConfig:
    """Settings of the masked-diffusion sampler (:func:`d1.generation.generate`), shared by rollouts and evaluation.

    Fields (defaults in brackets):

    - ``gen_length`` [null]: answer tokens. GRPO's rollouts need it (``grpo.sampler.gen_length``);
      evaluation leaves it null and takes its lengths from ``eval.gen_lengths`` (the DVC matrix axis).
    - ``block_length`` [32]: the answer is decoded in ``gen_length / block_length`` blocks, left to right.
    - ``steps`` [null]: sampler steps over the whole answer, split evenly over the blocks; null means
      ``gen_length // 2`` (two tokens per step, the d1 paper's rule).
    - ``temperature`` [0.0]: 0 is greedy; > 0 samples (Gumbel-max in float64).
    - ``remasking`` [low_confidence]: ``low_confidence`` or ``random``.
    - ``cfg_scale`` [0.0]: classifier-free guidance scale (0: no unconditional pass).
    - ``cache`` [none]: ``none``, ``prefix`` or ``dual`` (:data:`d1.generation.CACHE_MODES`).
    - ``threshold`` [null]: null, or a confidence >= 0 for parallel decoding; when set, a block
      runs until it has no mask left and ``steps`` no longer sets the schedule.

    ``cache`` and ``threshold`` are Fast-dLLM's approximations (arXiv:2505.22618): a block-wise
    approximate KV cache and confidence-aware parallel decoding. Their defaults (``none``,
    null) keep LLaDA's exact sampler, the one d1 used for rollouts and evaluation.

    The stage sections' defaults differ only where d1's did: ``grpo.sampler`` defaults to
    d1's rollouts (gen_length 256, block 32, steps 128 by the null rule, temperature 0.9),
    ``eval.sampler`` to d1's evaluation (greedy, block 32, steps = gen_length / 2). A
    ``sampler`` section in params.yaml replaces only the keys it names.
    """

    SECTION: ClassVar[str] = "sampler"  # validate() names keys from here; d1.config rebases them

    gen_length: int | None = None
    block_length: int = 32
    steps: int | None = None  # None: gen_length // 2 (the d1 paper's rule)
    temperature: float = 0.0
    remasking: str = "low_confidence"
    cfg_scale: float = 0.0
    cache: str = "none"
    threshold: float | None = None

    def validate(self, where: str = SECTION, gen_lengths: list[int] | None = None,
                 lengths_key: str | None = None) -> None:
        """Check the values; ConfigError naming the key by ``where`` (``grpo.sampler.block_length: ...``).

        The block and step checks run for each answer length used: ``gen_lengths``
        when given (evaluation's, named by ``lengths_key``, e.g. ``eval.gen_lengths``),
        else ``gen_length`` when set.
        """
        if self.gen_length is not None:
            _positive_int(f"{where}.gen_length", self.gen_length)
        _positive_int(f"{where}.block_length", self.block_length)
        if self.steps is not None:
            _positive_int(f"{where}.steps", self.steps)
        for key in ("temperature", "cfg_scale"):
            value = getattr(self, key)
            if not _number(value) or not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{where}.{key}: must be a finite number >= 0, got {value!r}")
        if self.remasking not in REMASKING_STRATEGIES:
            raise ConfigError(f"{where}.remasking: {self.remasking!r} is not one of {', '.join(REMASKING_STRATEGIES)}")
        if self.cache not in CACHE_MODES:
            raise ConfigError(f"{where}.cache: {self.cache!r} is not one of {', '.join(CACHE_MODES)}")
        if self.threshold is not None and (not _number(self.threshold) or not self.threshold >= 0):
            raise ConfigError(f"{where}.threshold: must be null or a number >= 0, got {self.threshold!r}")
        if gen_lengths is not None:
            for n in gen_lengths:
                self.check_length(n, where, lengths_key=lengths_key)
        elif self.gen_length is not None:
            self.check_length(self.gen_length, where)

    def check_length(self, gen_length: int, where: str = SECTION, *, lengths_key: str | None = None) -> None:
        """``gen_length`` splits into whole blocks and the steps split evenly over them.

        ``lengths_key``: the key the length comes from when it is not ``<where>.gen_length``."""
        blocks = gen_length // self.block_length if gen_length > 0 else 0
        if gen_length <= 0 or gen_length % self.block_length:
            if lengths_key:
                raise ConfigError(f"{lengths_key}: {gen_length} is not a positive multiple of the sampler's "
                                  f"block_length {self.block_length}")
            raise ConfigError(f"{where}.block_length: {self.block_length} does not divide gen_length {gen_length}")
        steps = self.steps_for(gen_length)
        rule = "" if self.steps is not None else f" (steps null: gen_length {gen_length} // 2)"
        if steps < 1:
            raise ConfigError(f"{where}.steps: {steps} steps{rule}; set a positive number of steps")
        if steps % blocks:
            raise ConfigError(f"{where}.steps: {steps} steps{rule} do not split evenly over {blocks} blocks "
                              f"(gen_length {gen_length} / block_length {self.block_length})")

    def steps_for(self, gen_length: int | None = None) -> int:
        """Sampler steps for ``gen_length`` (default: this config's): ``steps``, or ``gen_length // 2``."""
        n = self._length(gen_length)
        return self.steps if self.steps is not None else n // 2

    def generate_kwargs(self, gen_length: int | None = None) -> dict[str, Any]:
        """The keyword arguments of :func:`d1.generation.generate` for ``gen_length`` (default: this
        config's): gen_length, block_length, steps, temperature, cfg_scale, remasking, cache, threshold."""
        n = self._length(gen_length)
        return {"gen_length": n, "block_length": self.block_length, "steps": self.steps_for(n),
                "temperature": self.temperature, "cfg_scale": self.cfg_scale, "remasking": self.remasking,
                "cache": self.cache, "threshold": self.threshold}

    def _length(self, gen_length: int | None) -> int:
        n = self.gen_length if gen_length is None else gen_length
        if n is None:
            raise ConfigError("sampler: no gen_length given (the config has none)")
        return n


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(where: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: must be a positive integer, got {value!r}")
