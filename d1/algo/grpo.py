"""diffu-GRPO math: group advantages, EOS truncation, the log-prob estimators' passes (the loss: objectives/).

d1 (``diffu-grpo/diffu_grpo_trainer.py``) adapts GRPO to masked diffusion LMs:
the per-token log-likelihood ``log pi(o_k | q)`` is estimated with ONE forward
pass in which every completion token is masked and each prompt token is masked
independently with probability ``p_mask_prompt``; the log-softmax at completion
position ``k`` is taken at the true token ``o_k``. Over the ``mu`` inner
iterations on the same rollouts, iteration ``j`` uses one mask seed ``s_j``
shared by the old, reference and current policy, so the ratio and the KL compare
the same estimator.

Randomness and mask sharing: draw the seeds with :func:`draw_mask_seeds` from
the trainer's generator; in iteration ``j`` build a FRESH generator with
:func:`mask_generator` (a generator is consumed when used, so reusing one
object for the three policies would give three different masks). The simplest
correct pattern, which also makes micro-batching irrelevant, is to mask the
whole rollout batch once per iteration::

    noisy_j = mask_prompt_for_logp(ids, prompt_mask, mask_id, p, generator=mask_generator(seeds[j]),
                                   attention_mask=attn)
    # old / ref / current policy, any micro-batch slice mb:
    logp = per_token_logps(model, ids[mb], prompt_mask[mb], mask_id=mask_id, p_mask_prompt=p,
                           noisy_ids=noisy_j[mb], attention_mask=attn[mb])

Block-wise option (``per_token_logps(..., block_length=...)``, not in d1):
one pass per block, earlier blocks shown; coupled option
(``coupled_mask=coupled_completion_mask(...)``, not in d1): two passes with
complementary halves of the completion masked; replay option
(``unmask_order=``); see :func:`per_token_logps`. The trainer reaches them
through the named estimators of :mod:`d1.algo.estimators`, and the loss through
the named objectives of :mod:`d1.algo.objectives` (d1's :func:`diffu_grpo_loss`
lives in :mod:`d1.algo.objectives.diffu_grpo` and is importable from here).

The reference reseeded every global RNG with ``s_j`` before masking each
micro-batch (``set_seed``), so every micro-batch got the same draws; the
distribution of masks is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

# d1's loss lives with the other objectives (d1.algo.objectives); importable from here as before
from d1.algo.objectives.diffu_grpo import diffu_grpo_loss  # noqa: F401
from d1.errors import ConfigError
from d1.generation.sampler import as_logits

# ---------------------------------------------------------------- rewards -> advantages


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, scale_by_std: bool = False, eps: float = 1e-4
) -> torch.Tensor:
    """``A_i = r_i - mean(r of its group)``, optionally divided by ``(std + eps)``.

    rewards: [N], groups are consecutive runs of ``group_size`` completions of the
    same prompt (TRL's ``repeat_interleave`` layout). d1 does not scale by the
    std (``scale_by_std=False``, the default); GRPO / TRL do, with the unbiased
    (Bessel-corrected, ``torch.std``) group std and ``eps = 1e-4``, which is what
    ``scale_by_std=True`` computes. Returns [N] float.
    """
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ConfigError(f"group_advantages: group_size must be a positive integer, got {group_size!r}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ConfigError(
            f"group_advantages: rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}"
        )
    if scale_by_std and group_size < 2:
        raise ConfigError("group_advantages: scale_by_std needs group_size >= 2 (the std of one sample is undefined)")
    grouped = rewards.view(-1, group_size)
    if not grouped.is_floating_point():
        grouped = grouped.float()
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + eps)
    return advantages.reshape(-1)


def completion_mask(completion_ids: torch.Tensor, eos_id: int | Sequence[int]) -> torch.Tensor:
    """Tokens up to and INCLUDING the first EOS: [B, T] bool.

    The TRL/d1 convention: the first EOS is kept (the policy is credited for
    stopping), everything after it is excluded; a row without EOS keeps all
    tokens. ``eos_id`` may be several ids (the first occurrence of any counts).
    """
    eos_ids = torch.as_tensor(eos_id, device=completion_ids.device).reshape(-1)
    is_eos = torch.isin(completion_ids, eos_ids)
    length = completion_ids.shape[1]
    no_eos = torch.full((completion_ids.shape[0],), length, dtype=torch.long, device=completion_ids.device)
    first_eos = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), no_eos)
    positions = torch.arange(length, device=completion_ids.device)
    return positions[None, :] <= first_eos[:, None]


# ---------------------------------------------------------------- masks and seeds


def draw_mask_seeds(generator: torch.Generator | None, mu: int) -> list[int]:
    """One mask seed per inner iteration, drawn from ``generator`` (int64 range, non-negative)."""
    if isinstance(mu, bool) or not isinstance(mu, int) or mu < 1:
        raise ConfigError(f"draw_mask_seeds: mu must be a positive integer, got {mu!r}")
    device = generator.device if generator is not None else "cpu"
    return torch.randint(0, 2**62, (mu,), generator=generator, device=device).tolist()


def mask_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator for mask seed ``seed``: equal seeds give equal masks (build one per use)."""
    return torch.Generator(device=device).manual_seed(int(seed))


def mask_prompt_for_logp(
    input_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    mask_id: int,
    p_mask_prompt: float,
    *,
    generator: torch.Generator | None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The estimator's input: every completion token masked, each prompt token w.p. ``p_mask_prompt``.

    input_ids, prompt_mask ([B, L] bool, True on prompt positions, padding
    included), attention_mask ([B, L], 0 on padding) -> masked ids [B, L].

    Padding: positions with ``attention_mask == 0`` are never masked (they are
    invisible to the model, so masking them would only blur what the mask rate
    means). d1 passed no attention mask and masked prompt padding like prompt
    tokens. One uniform [B, L] is drawn on the generator's device for every
    position, so the masks do not depend on the device the batch is on.
    """
    if not 0.0 <= p_mask_prompt <= 1.0:
        raise ConfigError(f"p_mask_prompt must be in [0, 1], got {p_mask_prompt!r}")
    if prompt_mask.shape != input_ids.shape or input_ids.dim() != 2:
        raise ConfigError(
            f"mask_prompt_for_logp: input_ids {tuple(input_ids.shape)} and prompt_mask "
            f"{tuple(prompt_mask.shape)} must both be [batch, length]"
        )
    prompt_mask = prompt_mask.bool()
    draw_device = generator.device if generator is not None else input_ids.device
    u = torch.rand(tuple(input_ids.shape), generator=generator, device=draw_device).to(input_ids.device)
    masked_prompt = prompt_mask & (u < p_mask_prompt)
    if attention_mask is not None:
        masked_prompt &= attention_mask.to(input_ids.device).bool()
    is_masked = masked_prompt | ~prompt_mask
    return torch.where(is_masked, torch.full_like(input_ids, mask_id), input_ids)


def coupled_completion_mask(
    num_rows: int,
    completion_len: int,
    *,
    group_size: int = 1,
    generator: torch.Generator | None,
    t_range: tuple[float, float] = (0.2, 0.8),
) -> torch.Tensor:
    """The coupled estimator's split of the completion: [num_rows, completion_len] bool.

    Not in d1 (the coupled sampling of DiffuCoder, Gong et al. 2025): per group
    of ``group_size`` consecutive rows (the G completions of one prompt) a
    masking rate ``t ~ U(t_range)`` and one uniform per completion position;
    True where ``u < t``. :func:`per_token_logps` then scores the True tokens in
    a pass where they are masked and the others shown, and the False tokens in
    a pass with the complement masked, so every token is scored exactly once,
    given a random part of the rest of its completion. The rows of a group
    share the split: a token the G completions share, in the same context,
    then gets the same log-prob in each and its gradient cancels (advantages
    sum to zero in a group), as with d1's estimator at ``p_mask_prompt = 0``.
    Draws on the generator's device (CPU by default), so masks do not depend on
    where the batch lives.
    """
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 \
            or num_rows % group_size:
        raise ConfigError(
            f"coupled_completion_mask: group_size {group_size!r} must be a positive integer dividing {num_rows} rows"
        )
    lo, hi = t_range
    if not 0.0 < lo <= hi < 1.0:
        raise ConfigError(f"coupled_completion_mask: t_range {t_range!r} must satisfy 0 < low <= high < 1")
    groups = num_rows // group_size
    device = generator.device if generator is not None else "cpu"
    t = lo + (hi - lo) * torch.rand((groups, 1), generator=generator, device=device)
    u = torch.rand((groups, completion_len), generator=generator, device=device)
    return (u < t).repeat_interleave(group_size, dim=0).cpu()


# ---------------------------------------------------------------- per-token log-probs


def token_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[..., target]`` in float32: logits [B, T, V], targets [B, T] -> [B, T].

    Row by row (as TRL's ``selective_log_softmax``): at most one row's [T, V]
    float32 copy exists at a time when the logits are bf16/fp16, and no [B, T, V]
    log-softmax is ever materialised.
    """
    rows = []
    for row_logits, row_targets in zip(logits, targets):
        row_logits = row_logits.float()
        picked = row_logits.gather(-1, row_targets[:, None]).squeeze(-1)
        rows.append(picked - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(rows)


def _prompt_length(prompt_mask: torch.Tensor) -> int:
    """Length of the prompt block that every row shares; the completion is the rest."""
    prompt_len = int(prompt_mask[0].sum())
    expected = torch.arange(prompt_mask.shape[1], device=prompt_mask.device) < prompt_len
    if not bool((prompt_mask.bool() == expected[None, :]).all()):
        raise ConfigError(
            "per_token_logps: prompt_mask must mark the same leading columns in every row "
            "(left-padded prompts, padding included, followed by the completions)"
        )
    return prompt_len


def per_token_logps(
    model: Any,
    input_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    mask_id: int,
    p_mask_prompt: float,
    generator: torch.Generator | None = None,
    noisy_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    block_length: int | None = None,
    score_mask: torch.Tensor | None = None,
    coupled_mask: torch.Tensor | None = None,
    unmask_order: torch.Tensor | None = None,
) -> torch.Tensor:
    """d1's one-step estimate of ``log pi(o_k | q)`` for every completion token: [B, T] float32.

    input_ids: [B, L] = prompt (left-padded, P columns) + completion (T = L - P
    columns); prompt_mask: [B, L] bool, True on the first P columns of every row.
    The model sees ``noisy_ids`` (every completion token masked, prompt tokens
    masked w.p. ``p_mask_prompt``), built here from ``generator`` unless given
    (see the module docstring for sharing one mask across policies). ONE forward
    pass (``model(noisy, attention_mask=...)`` when a mask is given); gradients
    flow through the result when grad is enabled. Classifier-free guidance is not
    applied (d1's default ``cfg_scale = 0``).

    ``block_length`` (not in d1; None = d1's estimator): the block-wise
    estimate, one forward pass per block of ``block_length`` completion tokens
    (it must divide T). For block b the completion tokens of blocks < b are
    shown (the true tokens), blocks >= b stay as in ``noisy_ids`` (masked), and
    the log-probs of block b's tokens are read from that pass. This matches the
    conditioning of semi-autoregressive decoding, where block b is written
    given the finished earlier blocks; d1's estimate scores every token with
    the whole completion masked. ``block_length == T`` is d1's estimator
    exactly. Costs T / block_length forward passes (and their activations when
    grad is enabled) instead of one. ``score_mask`` ([B, T] bool, e.g. the
    tokens up to the first EOS): a block with no scored token in any row is
    not computed, and its log-probs are returned as 0 (only with
    ``block_length``; d1's single pass is always made).

    ``coupled_mask`` ([B, T] bool, from :func:`coupled_completion_mask`; not in
    d1, excludes ``block_length``): two passes. In the first the completion
    tokens where the mask is True are masked and the others shown (the true
    tokens); in the second the complement. Each token's log-prob is read from
    the pass in which it is masked, so it is scored given a random part of its
    own completion, closer to how the sampler wrote it (one token at a time,
    given those decoded before) than d1's all-masked context. A pass that masks
    no scored token (``score_mask``) is skipped; its tokens get 0.

    ``unmask_order`` ([B, T] non-negative ints; not in d1, excludes the two
    options above): the replay estimator. Pass c shows the completion tokens
    whose order is below c, masks the rest, and scores the tokens of order c.
    With the sampler's decode step of every token (``generate(...,
    decode_order=)``) bucketed into K chunks, this scores each token given the
    tokens the sampler had unmasked before its chunk: with one chunk per
    sampler step it is the rollout's own conditioning exactly; with order =
    position // block_length it is the block-wise estimator. One pass per
    order value that holds a scored token (``score_mask``); unscored tokens get 0.
    """
    prompt_len = _prompt_length(prompt_mask)
    if noisy_ids is None:
        if generator is None and p_mask_prompt > 0:
            raise ConfigError(
                "per_token_logps: pass a generator (or noisy_ids) so old, reference and current policy "
                "can see the same prompt mask"
            )
        noisy_ids = mask_prompt_for_logp(
            input_ids, prompt_mask, mask_id, p_mask_prompt, generator=generator, attention_mask=attention_mask
        )
    elif noisy_ids.shape != input_ids.shape:
        raise ConfigError(
            f"per_token_logps: noisy_ids {tuple(noisy_ids.shape)} must match input_ids {tuple(input_ids.shape)}"
        )
    completion_len = input_ids.shape[1] - prompt_len
    if block_length is None:
        block_length = max(completion_len, 1)
    if isinstance(block_length, bool) or not isinstance(block_length, int) or block_length < 1 \
            or completion_len % block_length:
        raise ConfigError(
            f"per_token_logps: block_length {block_length!r} must be a positive integer dividing the "
            f"completion length {completion_len}"
        )
    if score_mask is not None and score_mask.shape != (input_ids.shape[0], completion_len):
        raise ConfigError(
            f"per_token_logps: score_mask {tuple(score_mask.shape)} must be [batch, completion length] = "
            f"{(input_ids.shape[0], completion_len)}"
        )
    if unmask_order is not None:
        if block_length != completion_len or coupled_mask is not None:
            raise ConfigError("per_token_logps: unmask_order excludes block_length and coupled_mask")
        if unmask_order.shape != (input_ids.shape[0], completion_len) or unmask_order.is_floating_point() \
                or bool((unmask_order < 0).any()):
            raise ConfigError(
                f"per_token_logps: unmask_order must hold non-negative integers of shape [batch, completion "
                f"length] = {(input_ids.shape[0], completion_len)}, got {unmask_order.dtype} "
                f"{tuple(unmask_order.shape)}"
            )
        order = unmask_order.to(input_ids.device)
        passes = [(order >= chunk, order == chunk) for chunk in torch.unique(order).tolist()]
        return _masked_passes(model, input_ids, noisy_ids, prompt_len, mask_id, passes, attention_mask, score_mask)
    if coupled_mask is not None:
        if block_length != completion_len:
            raise ConfigError("per_token_logps: coupled_mask and block_length exclude each other")
        if coupled_mask.shape != (input_ids.shape[0], completion_len):
            raise ConfigError(
                f"per_token_logps: coupled_mask {tuple(coupled_mask.shape)} must be [batch, completion length] = "
                f"{(input_ids.shape[0], completion_len)}"
            )
        split = coupled_mask.to(input_ids.device).bool()
        passes = [(split, split), (~split, ~split)]
        return _masked_passes(model, input_ids, noisy_ids, prompt_len, mask_id, passes, attention_mask, score_mask)
    pieces = []
    for start in range(prompt_len, input_ids.shape[1], block_length):
        block = slice(start - prompt_len, start - prompt_len + block_length)
        if score_mask is not None and block_length < completion_len and not bool(score_mask[:, block].any()):
            pieces.append(torch.zeros((input_ids.shape[0], block_length), device=input_ids.device))
            continue
        visible = noisy_ids
        if start > prompt_len:  # show the finished earlier blocks (d1's single pass copies nothing)
            visible = noisy_ids.clone()
            visible[:, prompt_len:start] = input_ids[:, prompt_len:start]
        output = model(visible) if attention_mask is None else model(visible, attention_mask=attention_mask)
        logits = as_logits(output)[:, start:start + block_length]
        pieces.append(token_log_probs(logits, input_ids[:, start:start + block_length]))
    return torch.cat(pieces, dim=1)


def _masked_passes(model: Any, input_ids: torch.Tensor, noisy_ids: torch.Tensor, prompt_len: int, mask_id: int,
                   passes: list[tuple[torch.Tensor, torch.Tensor]], attention_mask: torch.Tensor | None,
                   score_mask: torch.Tensor | None) -> torch.Tensor:
    """Log-probs [B, T] from one forward pass per ``(hidden, scored)`` pair ([B, T] bool each).

    Each pass shows the prompt as ``noisy_ids`` has it and the completion with the ``hidden``
    tokens masked and the others shown; the ``scored`` tokens take their log-probs from it
    (every token is scored by at most one pass; the others get 0). A pass whose scored tokens
    are all outside ``score_mask`` is not computed. The coupled and replay estimators of
    :func:`per_token_logps` are two choices of passes."""
    completion = input_ids[:, prompt_len:]
    kept = None if score_mask is None else score_mask.to(completion.device).bool()
    logps = torch.zeros(completion.shape, device=input_ids.device)
    for hidden, scored in passes:
        if kept is not None and not bool((scored & kept).any()):
            continue
        visible = noisy_ids.clone()
        visible[:, prompt_len:] = torch.where(hidden, torch.full_like(completion, mask_id), completion)
        output = model(visible) if attention_mask is None else model(visible, attention_mask=attention_mask)
        logps = torch.where(scored, token_log_probs(as_logits(output)[:, prompt_len:], completion), logps)
    return logps

