"""Masked SFT: the forward (masking) process, the 1/t-weighted loss and the data collation.

d1's objective (``SFT/sft_trainer.py``): each example is prompt + response,
padded with EOS to a fixed length (the padding EOS tokens are response tokens
and are learned: this is how the model learns to stop). Per example a masking
ratio ``t ~ U(0, 1)``, ``t = (1 - eps) t + eps``; each response token is masked
independently with probability ``t``; prompt tokens are never masked and carry
no loss. The loss is the sum over masked positions of ``CE / t`` divided by the
number of response tokens in the batch.

Randomness: every draw comes from an explicit ``torch.Generator`` (``None``
means torch's default generator). Draws are made on the generator's device and
then moved, so a CPU generator gives the same masks whatever device the batch
is on.

Gradient accumulation: :func:`masked_sft_loss` takes ``num_response_tokens``
instead of counting it, so a trainer can pass the count of the whole optimiser
batch (all micro-batches, all processes) and SUM the micro-batch losses; the
result equals the loss of the whole batch at once, so 1 x 4 and 4 x 1
micro-batching give the same gradient. (With data parallelism, where gradients
are averaged over processes, multiply each process's loss by the number of
processes.) d1 instead normalised each micro-batch by its own count and
averaged over micro-batches (HF Trainer); the two agree when every micro-batch
has the same number of response tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from d1.errors import ConfigError, DataError


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str | None):
    """U[0, 1) float32 drawn on the generator's device (or ``device``), returned on ``device``."""
    draw_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_device).to(device)


def sample_mask_ratio(
    batch_size: int,
    *,
    eps: float = 1e-3,
    generator: torch.Generator | None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-example masking ratio ``t`` [B] float32: ``u ~ U(0, 1)``, ``t = (1 - eps) u + eps``.

    ``eps`` keeps ``t`` away from 0 so the ``1 / t`` weight stays bounded (<= 1 / eps).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"sample_mask_ratio: batch_size must be a positive integer, got {batch_size!r}")
    if not 0.0 <= eps < 1.0:
        raise ConfigError(f"sample_mask_ratio: eps must be in [0, 1), got {eps!r}")
    return (1.0 - eps) * _uniform((batch_size,), generator, device) + eps


def forward_mask(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    t: torch.Tensor,
    mask_id: int,
    *,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each maskable token independently with its row's probability ``t``.

    input_ids: [B, L]; maskable: [B, L] bool (response tokens; False for the
    prompt, which is never masked); t: [B] in (0, 1].
    Returns (noisy_ids [B, L] with masked positions set to ``mask_id``,
    is_masked [B, L] bool). One uniform [B, L] is drawn for every position,
    maskable or not, so the pattern of a row does not depend on where its prompt ends.
    """
    if input_ids.shape != maskable.shape or input_ids.dim() != 2:
        raise ConfigError(
            f"forward_mask: input_ids {tuple(input_ids.shape)} and maskable {tuple(maskable.shape)} "
            "must both be [batch, length]"
        )
    if t.shape != (input_ids.shape[0],):
        raise ConfigError(f"forward_mask: t must have shape ({input_ids.shape[0]},), got {tuple(t.shape)}")
    u = _uniform(tuple(input_ids.shape), generator, input_ids.device)
    is_masked = maskable.bool() & (u < t.to(u.device)[:, None])
    noisy_ids = torch.where(is_masked, torch.full_like(input_ids, mask_id), input_ids)
    return noisy_ids, is_masked


def masked_sft_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    is_masked: torch.Tensor,
    t: torch.Tensor,
    num_response_tokens: int | float | torch.Tensor,
) -> torch.Tensor:
    """d1's masked SFT loss: ``sum over masked positions of CE(logits, target) / t``, / ``num_response_tokens``.

    logits: [B, L, V] (any float dtype; the cross-entropy is computed in float32 on
    the masked positions only); targets: [B, L] clean token ids; is_masked: [B, L]
    bool from :func:`forward_mask`; t: [B] the rows' masking ratios;
    num_response_tokens: the number of response tokens (``B * L`` minus prompt
    tokens) of this batch, or of the whole optimiser batch when accumulating
    gradients (see the module docstring). Returns a scalar.
    """
    if logits.dim() != 3 or logits.shape[:2] != targets.shape or targets.shape != is_masked.shape:
        raise ConfigError(
            f"masked_sft_loss: expected logits [B, L, V], targets and is_masked [B, L]; got "
            f"{tuple(logits.shape)}, {tuple(targets.shape)}, {tuple(is_masked.shape)}"
        )
    if float(num_response_tokens) <= 0:
        raise ConfigError(f"masked_sft_loss: num_response_tokens must be > 0, got {num_response_tokens!r}")
    is_masked = is_masked.bool()
    ce = F.cross_entropy(logits[is_masked].float(), targets[is_masked], reduction="none")
    weight = t.float()[:, None].expand(is_masked.shape)[is_masked]
    return (ce / weight).sum() / num_response_tokens


def count_response_tokens(prompt_mask: torch.Tensor) -> int:
    """Number of response tokens (``B * L`` minus prompt tokens) of a [B, L] prompt mask."""
    return int((~prompt_mask.bool()).sum())


def sft_collate(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    eos_id: int,
    max_length: int,
) -> dict[str, torch.Tensor]:
    """Token lists -> fixed-length SFT batch: prompt + response, padded with EOS to ``max_length``.

    ``responses`` are the response token ids as the chat template produced them
    (e.g. ending with an end-of-turn token); the EOS padding after them counts as
    response and is learned, as in d1. Every row has exactly ``max_length`` tokens
    (d1 pads to the maximum length, not to the longest row).

    Over-long examples: a prompt that leaves no room for at least one response
    token is an error (DataError naming the example; a prompt is never cut). A
    response that does not fit is cut at ``max_length`` (as d1's tokenizer
    truncation did), so that row has no EOS; ``truncated`` reports those rows so
    the caller can count or filter them.

    Returns ``input_ids`` [B, L] long, ``prompt_mask`` [B, L] bool (True on prompt
    tokens) and ``truncated`` [B] bool.
    """
    if len(prompts) != len(responses):
        raise DataError(f"sft_collate: {len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        raise DataError("sft_collate: empty batch")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ConfigError(f"sft_collate: max_length must be an integer >= 2, got {max_length!r}")
    batch = len(prompts)
    input_ids = torch.full((batch, max_length), eos_id, dtype=torch.long)
    prompt_mask = torch.zeros((batch, max_length), dtype=torch.bool)
    truncated = torch.zeros(batch, dtype=torch.bool)
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        if len(prompt) >= max_length:
            raise DataError(
                f"sft_collate: example {row} has a {len(prompt)}-token prompt, which leaves no room for a "
                f"response within max_length {max_length}; raise max_length or filter long prompts"
            )
        room = max_length - len(prompt)
        truncated[row] = len(response) > room
        tokens = list(prompt) + list(response)[:room]
        input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        prompt_mask[row, : len(prompt)] = True
    return {"input_ids": input_ids, "prompt_mask": prompt_mask, "truncated": truncated}
