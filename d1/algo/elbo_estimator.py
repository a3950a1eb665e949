"""The ``elbo`` estimator: per-token terms of a Monte Carlo sequence ELBO (ESPO's, arXiv 2512.03759).

For a completion o of L kept tokens (up to and including its first stop token), the
masked-diffusion ELBO with a discrete number of masked tokens is::

    ELBO(o) = E_{x ~ U{0..L}} E_{M: x of the L positions, uniformly} [ (L + 1) / x * sum_{k in M} log p(o_k | o with M masked, q) ]

(the x = 0 term is 0; it equals LLaDA's ``E_{l ~ U{1..L}} [L / l * sum ...]``), a lower bound of
``log pi(o | q)``. One Monte Carlo sample is one draw of (x, M); :meth:`ELBOEstimator.logps`
returns, per token, that token's share of the estimate, so the sum over the kept tokens is the
sample's ELBO estimate. The draw (``draw``, once per iteration, shared by the old, reference
and current policy) follows ESPO's ``forward_process`` (``espo/espo_trainer.py``):

- stratified masking rates: per Monte Carlo sample, ``u_i = ((perm(i) + s) / N) mod 1`` for the N
  rows of the rollout batch (one offset ``s ~ U[0, 1)``, ``perm`` a random permutation of the rows),
  and ``x_i = floor(u_i (L_i + 1))`` masked tokens; every row's ``x_i`` is exactly uniform on
  {0..L_i} and the rows' rates cover [0, 1) evenly;
- the ``x_i`` masked positions: uniformly among the row's kept tokens;
- ``coupled`` (ESPO's ``reduce_var``): a second pass masks the complement (``L_i - x_i`` tokens,
  weight ``(L_i + 1) / (L_i - x_i)``), and the two estimates are averaged, so every kept token is
  scored exactly once per pair of passes, with weight ``(L + 1) / (2 * masked count of its pass)``;
- ``num_mc`` independent samples are averaged.

Choices that differ from ESPO's code: the ELBO is the one of the kept tokens (ESPO masks and sums
over the whole generation, padding after the stop included, with L the generation length);
the positions after the first stop token are masked in every pass and never scored, so the
estimate is an ELBO of the model's marginal of the kept completion; the rates are stratified over
the whole rollout batch of the process (ESPO: over each micro-batch, strata in row order); the
prompt is shown as the iteration's masked input has it (ESPO never masks the prompt: set
``p_mask_prompt: 0`` for ESPO's estimator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from d1.algo.estimators import Estimator, estimator_params
from d1.algo.grpo import _masked_passes, _prompt_length
from d1.algo.registry import register_estimator
from d1.errors import ConfigError

#: draw codes per (row, sample, position): masked in the first pass, in the second (complement) pass,
#: outside the kept tokens (masked in both, never scored)
FIRST, SECOND, OUTSIDE = 1, 0, -1


@dataclass
class ELBOParams:
    """The ``elbo`` estimator's settings (``grpo.estimator_params``).

    num_mc: Monte Carlo samples averaged per scoring (ESPO's recipes: 2 for every task,
    ``recipes/run_*_llada.sh``; its config default is 1). coupled: the complementary second pass
    (ESPO's ``reduce_var``, default true)."""

    num_mc: int = 2
    coupled: bool = True

    def validate(self) -> None:
        if isinstance(self.num_mc, bool) or not isinstance(self.num_mc, int) or self.num_mc < 1:
            raise ConfigError(f"elbo estimator: num_mc must be a positive integer, got {self.num_mc!r}")


def elbo_draw(generator: torch.Generator | None, num_rows: int, completion_len: int, *, num_mc: int,
              keep: torch.Tensor | None = None) -> torch.Tensor:
    """The iteration's masks: int8 [num_rows, num_mc, completion_len] of codes FIRST / SECOND / OUTSIDE.

    ``keep`` [num_rows, completion_len] (None: every token): the kept tokens. Per sample, the rows' rates
    are stratified (module docstring) and each row masks ``x_i`` of its kept tokens in the first pass.
    Drawn on the generator's device, returned on the CPU."""
    device = generator.device if generator is not None else torch.device("cpu")
    keep = (torch.ones((num_rows, completion_len), dtype=torch.bool) if keep is None
            else keep.to(device).bool())
    if keep.shape != (num_rows, completion_len):
        raise ConfigError(f"elbo estimator: keep {tuple(keep.shape)} must be {(num_rows, completion_len)}")
    keep = keep.to(device)
    lengths = keep.sum(dim=1)  # [N]
    codes = []
    for _ in range(num_mc):
        offset = torch.rand((), generator=generator, device=device)
        perm = torch.randperm(num_rows, generator=generator, device=device)
        u = torch.remainder((perm.to(torch.float64) + offset.double()) / max(num_rows, 1), 1.0)
        x = torch.floor(u * (lengths + 1).double()).long().clamp(max=lengths)  # [N], uniform on {0..L_i}
        scores = torch.rand((num_rows, completion_len), generator=generator, device=device)
        scores = torch.where(keep, scores, torch.full_like(scores, 2.0))  # kept positions rank first
        ranks = scores.argsort(dim=1).argsort(dim=1)
        first = (ranks < x[:, None]) & keep
        code = torch.where(first, FIRST, SECOND).to(torch.int8)
        codes.append(torch.where(keep, code, torch.full_like(code, OUTSIDE)))
    return torch.stack(codes, dim=1).cpu()


def elbo_weights(draw: torch.Tensor, *, coupled: bool) -> torch.Tensor:
    """Per (row, sample, position) weight [N, K, T] float32 of a token's log-prob in the ELBO estimate of
    :func:`elbo_draw`'s ``draw``: ``(L + 1) / x`` on the first pass's masked tokens, ``(L + 1) / (L - x)``
    on the second's when ``coupled`` (else 0), halved when ``coupled``, divided by K; 0 outside."""
    first = draw == FIRST
    second = draw == SECOND
    lengths = (draw != OUTSIDE).sum(dim=2, keepdim=True).float()
    x = first.sum(dim=2, keepdim=True).float()
    w_first = (lengths + 1) / x.clamp(min=1)
    w_second = (lengths + 1) / (lengths - x).clamp(min=1)
    weights = torch.where(first, w_first, torch.zeros_like(w_first))
    if coupled:
        weights = (weights + torch.where(second, w_second, torch.zeros_like(w_second))) / 2
    return weights / draw.shape[1]


@register_estimator("elbo")
class ELBOEstimator(Estimator):
    """ESPO's Monte Carlo sequence ELBO, as per-token terms (module docstring): ``num_mc`` samples of
    1 (``coupled: false``) or 2 passes each; its draw changes every iteration."""

    output: ClassVar[str] = "elbo"
    params: ClassVar[type | None] = ELBOParams
    draws_per_iteration: ClassVar[bool] = True

    def __init__(self, num_mc: int = 2, coupled: bool = True):
        ELBOParams(num_mc, coupled).validate()
        self.num_mc, self.coupled = num_mc, coupled

    @classmethod
    def from_config(cls, cfg: Any) -> "ELBOEstimator":
        options = estimator_params("elbo", getattr(cfg, "estimator_params", {}) or {}, "grpo.estimator_params")
        return cls(options.num_mc, options.coupled)

    def draw(self, generator: torch.Generator, num_rows: int, completion_len: int,
             keep: torch.Tensor | None = None) -> torch.Tensor:
        return elbo_draw(generator, num_rows, completion_len, num_mc=self.num_mc, keep=keep)

    def logps(self, model: Any, input_ids: torch.Tensor, prompt_mask: torch.Tensor, *, mask_id: int,
              p_mask_prompt: float, noisy_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              score_mask: torch.Tensor | None = None, draw: torch.Tensor | None = None,
              order: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token ELBO terms [B, T] float32: token k's weighted log-probs from the passes that mask it,
        averaged over the samples; their sum over the kept tokens is the ELBO estimate. ``draw``: this
        micro-batch's rows of :meth:`draw` [B, num_mc, T]. Pass j of sample s shows the prompt as
        ``noisy_ids`` has it, masks the tokens of code j and the positions outside the kept tokens, and
        scores the tokens of code j (a pass scoring none of ``score_mask`` is skipped)."""
        prompt_len = _prompt_length(prompt_mask)
        completion_len = input_ids.shape[1] - prompt_len
        if draw is None or draw.dim() != 3 or draw.shape[0] != input_ids.shape[0] \
                or draw.shape[2] != completion_len:
            raise ConfigError(f"elbo estimator: needs its draw [batch, num_mc, {completion_len}], got "
                              f"{None if draw is None else tuple(draw.shape)}")
        draw = draw.to(input_ids.device)
        weights = elbo_weights(draw, coupled=self.coupled).to(input_ids.device)
        total = torch.zeros((input_ids.shape[0], completion_len), device=input_ids.device)
        for sample in range(draw.shape[1]):
            code = draw[:, sample]
            outside = code == OUTSIDE
            codes = (FIRST, SECOND) if self.coupled else (FIRST,)
            passes = [((code == c) | outside, code == c) for c in codes]
            logp = _masked_passes(model, input_ids, noisy_ids, prompt_len, mask_id, passes, attention_mask,
                                  score_mask)
            total = total + weights[:, sample] * logp
        return total


__all__ = ["ELBOEstimator", "ELBOParams", "elbo_draw", "elbo_weights"]
