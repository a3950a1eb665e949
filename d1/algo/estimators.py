"""Log-prob estimators of diffu-GRPO, registered by name (``ESTIMATORS``).

An estimator turns a rollout batch into per-token log-probs ``log pi(o_k | q)``
[B, T] of one policy; old, reference and current policy of an iteration use the
same estimator with the same randomness. Each is a small class (the math is in
:func:`d1.algo.grpo.per_token_logps`) that tells the trainer what it needs:

- at rollout time: ``needs_decode_order`` (the sampler must record the step at
  which it unmasked every token, ``generate(..., decode_order=)``) and
  :meth:`Estimator.rollout_order` (what the rollouts keep of it, [N, T] or None);
- per iteration: :meth:`Estimator.draw`, the estimator's own random draw made
  on the iteration's mask generator right after the prompt mask ([N, T] or None;
  the coupled split), and :meth:`Estimator.same_input_every_iteration` (whether
  one scoring serves every iteration of a round);
- at scoring time: :meth:`Estimator.logps` over a micro-batch, given the masked
  input, the iteration's draw and the rollout order sliced to the same rows.

Every estimator may skip a forward pass that scores no kept token when given a
``score_mask``; the trainer passes none under FSDP, where every process must run
as many passes (each gathers the weights), and the tokens of such passes are not
kept anyway, so the loss is the same.

Adding an estimator: a class here (or in a new module imported by the trainer)
under ``@register_estimator``, and its test.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from d1.algo.grpo import coupled_completion_mask, per_token_logps
from d1.algo.registry import ESTIMATORS, register_estimator
from d1.errors import ConfigError, DataError


class Estimator:
    """d1's one-step estimator and the base of the others: ONE forward pass with every completion
    token masked (prompt tokens masked as the iteration's masked input has them)."""

    #: the rollouts record the sampler's decode step of every completion token
    needs_decode_order: ClassVar[bool] = False
    #: the estimator draws from the iteration's mask generator (its input changes with the seed)
    draws_per_iteration: ClassVar[bool] = False
    #: what :meth:`logps` returns, which objectives name in ``estimator_outputs``: ``token_logp`` = a
    #: per-token log-prob estimate [B, T]; an estimator of another quantity names it (``elbo``: per-token
    #: terms of a sequence ELBO, [B, T]; ``spg_bounds``: [B, T, 3])
    output: ClassVar[str] = "token_logp"
    #: the dataclass of its own settings (``grpo.estimator_params``), or None
    params: ClassVar[type | None] = None

    @classmethod
    def from_config(cls, cfg: Any) -> "Estimator":
        """The estimator a ``grpo`` config asks for (reads only the settings it needs)."""
        return cls()

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Raise a ConfigError naming the key when the ``grpo`` config cannot work with this estimator
        (called when the config is validated; by default nothing to check)."""

    @classmethod
    def options(cls, cfg: Any) -> Any:
        """This estimator's ``params`` filled from ``cfg.estimator_params`` (None when it has none)."""
        return estimator_params(cfg.estimator, getattr(cfg, "estimator_params", {}) or {}, "grpo.estimator_params")

    def rollout_order(self, decode_order: torch.Tensor) -> torch.Tensor | None:
        """What the rollouts keep of the sampler's decode steps [N, T] (None: nothing)."""
        return None

    def draw(self, generator: torch.Generator, num_rows: int, completion_len: int,
             keep: torch.Tensor | None = None) -> torch.Tensor | None:
        """The iteration's own draw [num_rows, ...] (None: none), made on ``generator`` after the
        prompt mask, so old, reference and current policy see the same one; ``keep`` [num_rows,
        completion_len] is the rollouts' kept-token mask (for draws that depend on the length)."""
        return None

    def same_input_every_iteration(self, p_mask_prompt: float) -> bool:
        """Whether every iteration's input is the same, so one scoring per round serves all mu."""
        return p_mask_prompt == 0 and not self.draws_per_iteration

    def logps(self, model: Any, input_ids: torch.Tensor, prompt_mask: torch.Tensor, *, mask_id: int,
              p_mask_prompt: float, noisy_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              score_mask: torch.Tensor | None = None, draw: torch.Tensor | None = None,
              order: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token log-probs [B, T] (float32) of ``model`` for input_ids [B, P+T] (prompt_mask [B, P+T]),
        seen as ``noisy_ids`` [B, P+T]; ``draw`` / ``order``: this estimator's [B, T] rows of
        :meth:`draw` / :meth:`rollout_order`; score_mask [B, T] (None: compute every pass)."""
        return per_token_logps(model, input_ids, prompt_mask, mask_id=mask_id, p_mask_prompt=p_mask_prompt,
                               noisy_ids=noisy_ids, attention_mask=attention_mask, score_mask=score_mask,
                               **self._options(draw, order))

    def _options(self, draw: torch.Tensor | None, order: torch.Tensor | None) -> dict:
        """This estimator's option of :func:`~d1.algo.grpo.per_token_logps` (none: d1's)."""
        return {}


register_estimator("one_step")(Estimator)


def estimator_params(name: str, values: dict, where: str) -> Any:
    """Estimator ``name``'s params dataclass filled from ``values`` (unknown keys and bad types are
    ConfigErrors naming ``where.<key>``; its ``validate()`` runs), or None for an estimator without
    params (then ``values`` must be empty)."""
    from d1.config import from_dict

    params = ESTIMATORS.get(name).params
    if params is None:
        if values:
            raise ConfigError(f"{where}: estimator {name!r} takes no parameters, got {', '.join(sorted(values))}")
        return None
    return from_dict(params, values, where)


@register_estimator("blockwise")
class Blockwise(Estimator):
    """One pass per block of ``block_length`` completion tokens (the sampler's), earlier blocks shown
    (not in d1): a token is scored given the blocks the sampler had finished when it wrote it."""

    def __init__(self, block_length: int):
        self.block_length = block_length

    @classmethod
    def from_config(cls, cfg: Any) -> "Blockwise":
        return cls(cfg.sampler.block_length)

    def _options(self, draw: torch.Tensor | None, order: torch.Tensor | None) -> dict:
        return {"block_length": self.block_length}


@register_estimator("coupled")
class Coupled(Estimator):
    """Two passes with complementary random parts of the completion masked (DiffuCoder's coupled
    sampling, not in d1); the split (:func:`~d1.algo.grpo.coupled_completion_mask`) is drawn per
    iteration and shared by the ``group_size`` completions of a prompt."""

    draws_per_iteration = True

    def __init__(self, group_size: int):
        self.group_size = group_size

    @classmethod
    def from_config(cls, cfg: Any) -> "Coupled":
        return cls(cfg.num_generations)

    def draw(self, generator: torch.Generator, num_rows: int, completion_len: int,
             keep: torch.Tensor | None = None) -> torch.Tensor:
        return coupled_completion_mask(num_rows, completion_len, group_size=self.group_size, generator=generator)

    def _options(self, draw: torch.Tensor | None, order: torch.Tensor | None) -> dict:
        return {"coupled_mask": draw}


def replay_chunks(decode_order: torch.Tensor, steps: int, chunks: int | None) -> torch.Tensor:
    """The sampler's decode step of every token [N, T] -> its replay chunk [N, T] (0..chunks-1).

    ``chunks`` consecutive runs of ``steps / chunks`` sampler steps (None: one chunk
    per step, the rollout's own conditioning). A position the sampler never filled
    (order -1: cannot happen with LLaDA's schedule) would be an error."""
    if bool((decode_order < 0).any()):
        raise DataError("grpo: the sampler left a completion position without a decode step")
    if chunks is None or chunks >= steps:
        return decode_order.clone()
    return decode_order * chunks // steps


@register_estimator("replay")
class Replay(Estimator):
    """The sampler's unmasking order replayed (not in d1): its ``steps`` cut into ``chunks``
    consecutive chunks (None: one per step), one pass per chunk showing the tokens unmasked
    before it and scoring its own."""

    needs_decode_order = True

    def __init__(self, steps: int, chunks: int | None):
        self.steps, self.chunks = steps, chunks

    @classmethod
    def from_config(cls, cfg: Any) -> "Replay":
        return cls(cfg.sampler.steps_for(), cfg.replay_chunks)

    def rollout_order(self, decode_order: torch.Tensor) -> torch.Tensor:
        return replay_chunks(decode_order, self.steps, self.chunks)

    def _options(self, draw: torch.Tensor | None, order: torch.Tensor | None) -> dict:
        if order is None:
            raise ConfigError("replay estimator: no unmasking order (rollouts without the sampler's decode_order)")
        return {"unmask_order": order}


__all__ = ["ESTIMATORS", "Blockwise", "Coupled", "Estimator", "Replay", "estimator_params", "register_estimator",
           "replay_chunks"]

from d1.algo import elbo_estimator  # noqa: E402,F401
from d1.algo import spg_estimator  # noqa: E402,F401
