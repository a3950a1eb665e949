"""SPG's block-wise Monte Carlo estimator of the sequence bounds (``spg_blocks``, output ``spg_bounds``).

SPG (Wang et al. 2025, "SPG: Sandwiched Policy Gradient for Masked Diffusion Language Models",
arXiv 2510.09541; the authors' ``spg/spg_trainer.py``, ``forward_process`` with ``forward_type
block_random`` and ``_get_per_seq_logps``) scores a completion with ``num_t`` partly masked copies of it,
each masked block-wise as the semi-autoregressive sampler wrote it, and turns the per-sample token
log-probs into an evidence lower bound (ELBO) and a Rényi-type evidence upper bound (EUBO) of
``log pi(o | q)``; the objective ``spg`` (:mod:`d1.algo.objectives.spg`) picks one per row by the sign of
its advantage.

The draw (:meth:`SPGBlocks.draw`, one per iteration, shared by every policy scored on it): for every row
and sample j, with L the row's kept tokens (up to and including the first stop token) and the
completion cut into blocks of ``block_length`` (the sampler's unless set):

- a block b among the blocks holding kept tokens: a random permutation of all the completion's blocks,
  its first ``num_t`` entries taken modulo the number of kept blocks (the authors' choice: distinct
  blocks whenever the kept tokens span every block);
- the blocks before b are shown (clean), the blocks after b and every token after the first stop are
  masked;
- of block b's m kept tokens, c are masked, at uniformly random places, c uniform on the integers
  ``[max(floor(m min_t), 1), max(min(floor(m max_t), m), that low end)]`` (the authors' range; the
  second ``max`` keeps it non-empty when ``m max_t < 1``, where their code asserts).

The prompt is the iteration's masked input (``noisy_ids``: each prompt token masked with probability
``p_mask_prompt``, as d1 does), the same for the ``num_t`` samples.

The output, [B, T, 3] float32, per row, with ``m_jk`` = token k is kept and masked in sample j,
``n_j = sum_k m_jk``, ``t_j = n_j / L`` (the sample's empirical mask ratio), ``p_jk`` the model's
probability of the true token k in sample j, S = ``num_t``, beta = ``eubo_beta`` (from the objective's
params, ``grpo.objective_params.eubo_beta``):

- channel 0 (ELBO terms): ``(1/S) sum_j m_jk log p_jk / n_j``; their sum over k is the row's ELBO per
  token, ``(1/S) sum_j mean over the masked kept tokens of sample j of log p``, and L times it is the
  usual ``E_t[(1/t) sum_{masked k} log p_k]`` estimate of ``log pi(o | q)``;
- channel 1 (EUBO terms): ``(1/beta) log((1/S) sum_j m_jk p_jk^beta / t_j)`` on the tokens masked in at
  least one sample, 0 elsewhere (computed in log space);
- channel 2 (coverage): 1 on the tokens masked in at least one sample, 0 elsewhere; the row's EUBO per
  token is ``sum_k channel1 / sum_k channel2``.

Every channel is 0 on tokens that are not kept. Costs ``num_t`` forward passes per micro-batch (the
authors batch the ``num_t`` copies into one pass of ``num_t`` times the rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from d1.algo.estimators import Estimator
from d1.algo.grpo import _prompt_length, token_log_probs
from d1.algo.registry import register_estimator
from d1.errors import ConfigError
from d1.generation.sampler import as_logits

#: the EUBO's beta when no objective params give one (the authors' config default)
DEFAULT_EUBO_BETA = 1.5


@dataclass
class SPGBlocksParams:
    """``spg_blocks``' own settings (``grpo.estimator_params``); defaults: the authors' runs
    (``spg/slurm_scripts/spg_eubo/*.sbatch``, ``spg_mix/*.sbatch``: ``--num_t 2 --min_t 0 --max_t 1``).

    num_t: Monte Carlo samples per completion (forward passes per micro-batch);
    min_t, max_t: the range of the masked share of the chosen block's kept tokens;
    block_length: the masking block (None: the sampler's ``block_length``, as the authors do)."""

    num_t: int = 2
    min_t: float = 0.0
    max_t: float = 1.0
    block_length: int | None = None

    def validate(self) -> None:
        if isinstance(self.num_t, bool) or not isinstance(self.num_t, int) or self.num_t < 1:
            raise ConfigError(f"spg_blocks: num_t must be a positive integer, got {self.num_t!r}")
        if not 0.0 <= self.min_t <= self.max_t <= 1.0:
            raise ConfigError(f"spg_blocks: need 0 <= min_t <= max_t <= 1, got min_t {self.min_t}, max_t {self.max_t}")
        if self.block_length is not None and (isinstance(self.block_length, bool) or self.block_length < 1):
            raise ConfigError(f"spg_blocks: block_length must be a positive integer or null, got {self.block_length!r}")


def spg_block_masks(keep: torch.Tensor, *, num_t: int, block_length: int, min_t: float, max_t: float,
                    generator: torch.Generator | None) -> torch.Tensor:
    """The masked completion tokens of ``num_t`` block-wise samples per row: [N, num_t, T] bool.

    keep: [N, T] bool, the kept tokens (a prefix of each row). See the module docstring for the law.
    Draws on the generator's device (CPU by default) in a fixed order (block permutation, counts,
    places), so equal generators give equal masks whatever device the batch is on."""
    if keep.dim() != 2:
        raise ConfigError(f"spg_block_masks: keep must be [rows, completion length], got {tuple(keep.shape)}")
    rows, length = keep.shape
    if length % block_length:
        raise ConfigError(f"spg_blocks: block_length {block_length} must divide the completion length {length}")
    num_blocks = length // block_length
    if num_t > num_blocks:
        raise ConfigError(f"spg_blocks: num_t {num_t} is more than the {num_blocks} blocks of the completion "
                          "(the authors draw distinct blocks)")
    device = generator.device if generator is not None else torch.device("cpu")
    keep = keep.to(device).bool()
    kept = keep.sum(dim=1)  # [N]
    kept_blocks = ((kept + block_length - 1) // block_length).clamp(min=1)  # [N]
    perm = torch.rand((rows, num_blocks), generator=generator, device=device).argsort(dim=1)
    block = perm[:, :num_t] % kept_blocks[:, None]  # [N, S]
    in_block = (kept[:, None] - block * block_length).clamp(min=0, max=block_length)  # m: kept tokens of block b
    low = torch.floor(in_block * min_t).long().clamp(min=1)
    high = torch.minimum(torch.floor(in_block * max_t).long(), in_block)
    high = torch.maximum(high, low)
    u = torch.rand((rows, num_t), generator=generator, device=device)
    count = torch.minimum(low + torch.floor(u * (high - low + 1)).long(), high)  # [N, S]
    count = torch.where(in_block > 0, count, torch.zeros_like(count))
    pos = torch.arange(length, device=device)
    start = (block * block_length)[..., None]  # [N, S, 1]
    candidate = (pos >= start) & (pos < start + block_length) & keep[:, None, :]  # block b's kept tokens
    scores = torch.rand((rows, num_t, length), generator=generator, device=device)
    scores = torch.where(candidate, scores, torch.full_like(scores, 2.0))
    rank = scores.argsort(dim=2).argsort(dim=2)  # candidates first, in random order
    chosen = candidate & (rank < count[..., None])
    later = pos >= start + block_length
    return (chosen | later | ~keep[:, None, :]).cpu()


def spg_channels(logp: torch.Tensor, masked: torch.Tensor, keep: torch.Tensor, eubo_beta: float) -> torch.Tensor:
    """The ``spg_bounds`` channels [B, T, 3] (module docstring) from the per-sample token log-probs.

    logp: [B, S, T] float, log p_jk of every sample (any value where a token is not masked);
    masked: [B, S, T] bool, the sample's masked completion tokens; keep: [B, T] bool."""
    if not eubo_beta > 0:
        raise ConfigError(f"spg_channels: eubo_beta must be > 0, got {eubo_beta!r}")
    if logp.dim() != 3 or masked.shape != logp.shape or keep.shape != (logp.shape[0], logp.shape[2]):
        raise ConfigError(f"spg_channels: logp {tuple(logp.shape)} and masked {tuple(masked.shape)} must be "
                          f"[B, S, T] and keep {tuple(keep.shape)} [B, T]")
    samples = logp.shape[1]
    m = masked.to(logp.device).bool() & keep.to(logp.device).bool()[:, None, :]
    mf = m.to(logp.dtype)
    n = mf.sum(dim=2)  # [B, S]
    length = keep.to(logp.device).to(logp.dtype).sum(dim=1)  # [B]
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    picked = torch.where(m, logp, zero)
    elbo = (picked / n.clamp(min=1)[..., None]).sum(dim=1) / samples
    t = n / length.clamp(min=1)[:, None]  # [B, S]
    log_w = -torch.log(t.clamp(min=torch.finfo(logp.dtype).tiny))  # log(1 / t_j)
    cover = m.any(dim=1)  # [B, T]
    terms = torch.where(m, eubo_beta * logp + log_w[..., None], torch.full_like(logp, -math.inf))
    terms = torch.where(cover[:, None, :], terms, zero)  # rows of no masked sample: finite, dropped below
    lse = torch.logsumexp(terms, dim=1)
    eubo = torch.where(cover, (lse - math.log(samples)) / eubo_beta, zero)
    return torch.stack([elbo, eubo, cover.to(logp.dtype)], dim=-1)


@register_estimator("spg_blocks")
class SPGBlocks(Estimator):
    """SPG's block-wise masking, ``num_t`` passes, the ELBO / EUBO terms of every token (module docstring)."""

    draws_per_iteration = True
    output = "spg_bounds"
    params = SPGBlocksParams

    def __init__(self, block_length: int, num_t: int = 2, min_t: float = 0.0, max_t: float = 1.0,
                 eubo_beta: float = DEFAULT_EUBO_BETA):
        SPGBlocksParams(num_t=num_t, min_t=min_t, max_t=max_t, block_length=block_length).validate()
        if not eubo_beta > 0:
            raise ConfigError(f"spg_blocks: eubo_beta must be > 0, got {eubo_beta!r}")
        self.block_length, self.num_t, self.min_t, self.max_t = block_length, num_t, min_t, max_t
        self.eubo_beta = eubo_beta

    @classmethod
    def from_config(cls, cfg: Any) -> "SPGBlocks":
        """Its params from ``cfg.estimator_params``, the sampler's block length unless set, and the EUBO's
        beta from the objective's params (``eubo_beta``; the authors' default when it has none)."""
        from d1.algo.estimators import estimator_params

        opts = estimator_params("spg_blocks", getattr(cfg, "estimator_params", {}) or {}, "grpo.estimator_params")
        beta = DEFAULT_EUBO_BETA
        objective_options = getattr(cfg, "objective_options", None)
        if callable(objective_options):
            beta = getattr(objective_options(), "eubo_beta", beta)
        block = opts.block_length if opts.block_length is not None else cfg.sampler.block_length
        return cls(block, num_t=opts.num_t, min_t=opts.min_t, max_t=opts.max_t, eubo_beta=beta)

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """The rollouts' length splits into blocks of ``block_length``, at least ``num_t`` of them (the
        samples take distinct blocks): checked when the config loads, not at the first scoring."""
        estimator = cls.from_config(cfg)
        length = cfg.sampler.gen_length
        if length % estimator.block_length:
            raise ConfigError(f"grpo.estimator_params.block_length: {estimator.block_length} does not divide "
                              f"sampler.gen_length {length} (spg_blocks masks whole blocks)")
        blocks = length // estimator.block_length
        if estimator.num_t > blocks:
            raise ConfigError(f"grpo.estimator_params.num_t: {estimator.num_t} is more than the {blocks} block(s) of "
                              f"{estimator.block_length} tokens in sampler.gen_length {length} (each sample takes "
                              "its own block); lower num_t or the block length")

    def draw(self, generator: torch.Generator, num_rows: int, completion_len: int,
             keep: torch.Tensor | None = None) -> torch.Tensor:
        """[num_rows, num_t + 1, completion_len] bool: slices 0..num_t-1 the samples' masked tokens, slice
        num_t the kept-token mask they were drawn for (``keep``; None: every token), which the scoring
        needs and the trainer passes only inside the draw."""
        if keep is None:
            keep = torch.ones((num_rows, completion_len), dtype=torch.bool)
        if keep.shape != (num_rows, completion_len):
            raise ConfigError(f"spg_blocks: keep {tuple(keep.shape)} is not [{num_rows}, {completion_len}]")
        masks = spg_block_masks(keep, num_t=self.num_t, block_length=self.block_length, min_t=self.min_t,
                                max_t=self.max_t, generator=generator)
        return torch.cat([masks, keep.bool().cpu()[:, None, :]], dim=1)

    def logps(self, model: Any, input_ids: torch.Tensor, prompt_mask: torch.Tensor, *, mask_id: int,
              p_mask_prompt: float, noisy_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              score_mask: torch.Tensor | None = None, draw: torch.Tensor | None = None,
              order: torch.Tensor | None = None) -> torch.Tensor:
        """The ``spg_bounds`` channels [B, T, 3] (float32) of ``model``: one pass per sample of ``draw``
        (its [B, num_t + 1, T] rows), the prompt as ``noisy_ids`` has it. Every sample masks a kept token
        of every row with one, so no pass is skipped (``score_mask`` is not needed)."""
        prompt_len = _prompt_length(prompt_mask)
        completion = input_ids[:, prompt_len:]
        if draw is None or draw.dim() != 3 or draw.shape[0] != input_ids.shape[0] \
                or draw.shape[2] != completion.shape[1] or draw.shape[1] < 2:
            raise ConfigError(f"spg_blocks: needs its draw [B, num_t + 1, T] = [{input_ids.shape[0]}, "
                              f"num_t + 1, {completion.shape[1]}], got "
                              f"{None if draw is None else tuple(draw.shape)}")
        if noisy_ids.shape != input_ids.shape:
            raise ConfigError(f"spg_blocks: noisy_ids {tuple(noisy_ids.shape)} must match input_ids "
                              f"{tuple(input_ids.shape)}")
        draw = draw.to(input_ids.device).bool()
        masks, keep = draw[:, :-1], draw[:, -1]
        samples = []
        for j in range(masks.shape[1]):
            visible = noisy_ids.clone()
            visible[:, prompt_len:] = torch.where(masks[:, j], torch.full_like(completion, mask_id), completion)
            output = model(visible) if attention_mask is None else model(visible, attention_mask=attention_mask)
            samples.append(token_log_probs(as_logits(output)[:, prompt_len:], completion))
        return spg_channels(torch.stack(samples, dim=1), masks, keep, self.eubo_beta)


__all__ = ["DEFAULT_EUBO_BETA", "SPGBlocks", "SPGBlocksParams", "spg_block_masks", "spg_channels"]
