"""LLaDA's semi-autoregressive sampler with low-confidence (or random) remasking.

One implementation for RL rollouts and evaluation. The semantics follow LLaDA's
``generate.py`` as used by d1 (``eval/generate.py``, ``DiffuGRPOTrainer.generate``):

1. ``x`` = prompt followed by ``gen_length`` mask tokens.
2. The answer is cut into ``gen_length / block_length`` blocks decoded left to
   right; ``steps`` is split evenly over the blocks.
3. Inside a block, the number of tokens unmasked at each step is the block's
   masked count split evenly over its steps, the remainder going to the earliest
   steps (:func:`transfer_schedule`).
4. Each step is one forward pass over the whole sequence (two with
   classifier-free guidance: the second with the prompt masked, combined as
   ``un + (s + 1) (cond - un)``). With ``temperature > 0`` the proposal is a
   Gumbel-max draw in float64, ``argmax(exp(logits) / (-log U) ** T)``
   (:func:`add_gumbel_noise`); with ``temperature == 0`` it is the argmax.
5. Confidence of a proposal: ``low_confidence`` = softmax probability of the
   proposed token (computed from the logits without noise); ``random`` = a
   uniform random number. Positions outside the current block and positions
   already decoded get ``-inf``.
6. The ``k`` most confident masked positions of the block take their proposal.

Deviations from the reference, none of which changes greedy outputs of a model
that never proposes the mask token:

- The mask token is never proposed (its logit is excluded from the argmax /
  Gumbel-max). In the reference a position "decoded" to the mask id stays
  masked, the step's transfer count is silently lost, and the final answer can
  contain mask tokens. The confidence is still the softmax probability under
  the full distribution, as in the reference.
- Proposals, noise and confidences are computed for the current block only
  (``block_length`` positions instead of the whole sequence): positions outside
  the block get ``-inf`` confidence anyway, so only the block's proposals can be
  used. This cuts the float64 Gumbel noise by ``L / block_length``. The random
  numbers drawn are therefore not the reference's (which used the global RNG).
- Steps whose transfer count is zero for every row (``steps_per_block >
  block_length``) are skipped instead of running a forward pass whose result is
  discarded.
- Left-padded batches pass ``attention_mask`` to the model (extended with ones
  over the generated positions); the reference had no padding mask.
- Randomness comes only from the explicit ``generator`` (``None`` means torch's
  default generator for the prompt's device); the reference reseeded globals.

Exact random draws per step (so a test can replicate them): with
``temperature > 0``, ``torch.rand(block_logits.shape, dtype=float64,
generator=generator)``; then with ``remasking="random"``, ``torch.rand((B,
block_length), generator=generator)`` (float32), both on the prompt's device.

Fast sampling (not in LLaDA's sampler; Fast-dLLM, arXiv:2505.22618), both off by default:

- ``cache="prefix" | "dual"``: block-wise approximate KV cache
  (:mod:`d1.generation.cache_modes`). The first step of each block is a full
  pass (exact); the later steps recompute the block (``dual``) or the block and
  everything after it (``prefix``) against cached keys/values of the rest.
  With one step per block every mode gives the tokens of ``"none"``.
- ``threshold``: confidence-aware parallel decoding. Each step unmasks every
  masked position of the block whose confidence is at least ``threshold`` and
  always at least the most confident one; a block runs until it has no mask
  left, so ``steps`` no longer sets the schedule. ``threshold=0`` decodes a
  block in one step (the tokens of ``steps == gen_length / block_length``); a
  threshold above 1 unmasks one token per step (``steps == gen_length``). Draws
  per step are those above, so the equivalences hold with temperature and
  random remasking too. In a batch, a row whose block is finished waits (its
  tokens do not change) while the others go on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from d1.errors import ConfigError
from d1.generation.cache_modes import CACHE_MODES, FullPasses, as_logits, cache_mode

REMASKING_STRATEGIES = ("low_confidence", "random")


def transfer_schedule(mask_count: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to unmask at each step: ``mask_count`` split evenly, remainder to the earliest steps.

    mask_count: [B] integer tensor (masked positions per row). Returns [B, steps] int64
    whose rows sum to ``mask_count``; e.g. 10 over 4 steps -> [3, 3, 2, 2].
    """
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps!r}")
    mask_count = mask_count.to(torch.int64)
    base = mask_count // steps
    remainder = mask_count % steps
    step_index = torch.arange(steps, device=mask_count.device)
    return base[:, None] + (step_index[None, :] < remainder[:, None]).to(torch.int64)


def add_gumbel_noise(
    logits: torch.Tensor, temperature: float, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Scores whose argmax is a sample from ``softmax(logits / temperature)`` (Gumbel-max).

    Computed in float64 as ``exp(logits) / (-log U) ** temperature`` with ``U ~ U[0, 1)``
    drawn from ``generator`` (the form LLaDA and d1 use; low-precision Gumbel-max
    hurts masked-diffusion sampling, arXiv:2409.02908). ``temperature == 0``
    returns ``logits`` unchanged (greedy). logits: [..., V]; returns the same shape.
    """
    if temperature == 0.0:
        return logits
    logits = logits.to(torch.float64)
    uniform = torch.rand(logits.shape, dtype=torch.float64, generator=generator, device=logits.device)
    return logits.exp() / (-torch.log(uniform)) ** temperature


def _select_top_k(confidence: torch.Tensor, k: torch.Tensor, k_max: int) -> torch.Tensor:
    """Boolean [B, N] marking the ``k[b]`` highest-confidence entries of each row of [B, N]; k_max = max(k)."""
    selected = torch.zeros_like(confidence, dtype=torch.bool)
    if k_max == 0:
        return selected
    top = confidence.topk(k_max, dim=-1).indices  # [B, k_max], distinct per row
    keep = torch.arange(k_max, device=k.device)[None, :] < k[:, None]
    return selected.scatter_(1, top, keep)


def _validate(
    prompt: Any, *, gen_length: Any, block_length: Any, steps: Any, temperature: Any, cfg_scale: Any,
    remasking: Any, mask_id: Any, attention_mask: Any, generator: Any, threshold: Any,
) -> None:
    def positive_int(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"generate: {name} must be a positive integer, got {value!r}")

    if not isinstance(prompt, torch.Tensor) or prompt.dim() != 2 or prompt.dtype != torch.long:
        desc = f"{tuple(prompt.shape)} {prompt.dtype}" if isinstance(prompt, torch.Tensor) else type(prompt).__name__
        raise ConfigError(f"generate: prompt must be a LongTensor [batch, prompt_len], got {desc}")
    if prompt.shape[0] == 0:
        raise ConfigError("generate: prompt has an empty batch")
    positive_int("gen_length", gen_length)
    positive_int("block_length", block_length)
    positive_int("steps", steps)
    if gen_length % block_length:
        raise ConfigError(
            f"generate: gen_length {gen_length} is not a multiple of block_length {block_length}"
        )
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ConfigError(
            f"generate: steps {steps} cannot be split evenly over {num_blocks} blocks "
            f"(gen_length {gen_length} / block_length {block_length})"
        )
    for name, value in (("temperature", temperature), ("cfg_scale", cfg_scale)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ConfigError(f"generate: {name} must be a number >= 0, got {value!r}")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not threshold >= 0):
        raise ConfigError(f"generate: threshold must be None or a number >= 0, got {threshold!r}")
    if remasking not in REMASKING_STRATEGIES:
        raise ConfigError(f"generate: unknown remasking {remasking!r}; expected one of {REMASKING_STRATEGIES}")
    if isinstance(mask_id, bool) or not isinstance(mask_id, int) or mask_id < 0:
        raise ConfigError(f"generate: mask_id must be a non-negative integer, got {mask_id!r}")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != prompt.shape:
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else attention_mask
            raise ConfigError(
                f"generate: attention_mask must have the prompt's shape {tuple(prompt.shape)}, got {shape!r}"
            )
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ConfigError(f"generate: generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != prompt.device.type:
            raise ConfigError(
                f"generate: generator is on {generator.device} but the prompt is on {prompt.device}; "
                "create it with torch.Generator(device=prompt.device)"
            )


@torch.no_grad()
def generate(
    model: Any,
    prompt: torch.Tensor,
    *,
    gen_length: int,
    block_length: int,
    steps: int,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    mask_id: int,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    decode_order: torch.Tensor | None = None,
    cache: str = "none",
    threshold: float | None = None,
) -> torch.Tensor:
    """Decode ``gen_length`` tokens after ``prompt`` by iterative unmasking (LLaDA sampler).

    model: called as ``model(input_ids)`` or, when ``attention_mask`` is given,
        ``model(input_ids, attention_mask=mask)``; returns logits [B, L, V] or an
        object with ``.logits``. Its train/eval mode is left as it is.
    prompt: [B, P] token ids; left-padded when rows differ in length.
    attention_mask: [B, P] (1 = token, 0 = padding) or None; extended with ones
        over the generated positions. The model must honour it (and start
        positions after the padding) for padded rows to decode as they would alone.
    generator: source of the Gumbel noise and random confidences; must live on
        the prompt's device. Unused when ``temperature == 0`` and ``remasking ==
        "low_confidence"``.
    decode_order: optional [B, gen_length] integer tensor on the prompt's device,
        filled in place with the step (0-based, counted over all blocks) at which
        each answer position was unmasked: the record diffu-GRPO's ``replay``
        estimator scores the rollout with. Not in LLaDA's sampler; does not
        change the tokens. With ``threshold`` the step is counted per row (the
        steps that row took), so a batch records what each row would alone.
    cache: ``"none"`` (a full pass per step), ``"prefix"`` or ``"dual"``
        (block-wise approximate KV cache; the model must support it).
    threshold: None (``steps`` sets the schedule) or a confidence >= 0 for
        parallel decoding (see the module docstring).

    Returns [B, P + gen_length]: the prompt unchanged (mask tokens in it are never
    filled), then the answer. Runs under ``torch.no_grad`` (not inference mode, so
    the result can be fed to a training forward pass).
    """
    _validate(
        prompt, gen_length=gen_length, block_length=block_length, steps=steps, temperature=temperature,
        cfg_scale=cfg_scale, remasking=remasking, mask_id=mask_id, attention_mask=attention_mask,
        generator=generator, threshold=threshold,
    )
    passes = cache_mode(cache, model)
    batch, prompt_len = prompt.shape
    device = prompt.device
    if decode_order is not None and (decode_order.shape != (batch, gen_length) or decode_order.is_floating_point()
                                     or decode_order.device != device):
        raise ConfigError(
            f"generate: decode_order must be an integer tensor of shape {(batch, gen_length)} on {device}, got "
            f"{decode_order.dtype} {tuple(decode_order.shape)} on {decode_order.device}"
        )
    x = torch.full((batch, prompt_len + gen_length), mask_id, dtype=torch.long, device=device)
    x[:, :prompt_len] = prompt
    full_mask = None
    if attention_mask is not None:
        generated = torch.ones((batch, gen_length), dtype=attention_mask.dtype, device=device)
        full_mask = torch.cat([attention_mask.to(device), generated], dim=1)
    guided = _GuidedLogits(passes(model, full_mask), passes(model, full_mask) if cfg_scale else None,
                           prompt_len=prompt_len, cfg_scale=cfg_scale, mask_id=mask_id)

    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    row_steps = torch.zeros(batch, dtype=torch.long, device=device)  # threshold: steps each row took
    for block in range(num_blocks):
        start = prompt_len + block * block_length
        end = start + block_length
        window = decode_order[:, start - prompt_len:end - prompt_len] if decode_order is not None else None
        if threshold is not None:
            refresh = True
            while True:
                masked = x[:, start:end] == mask_id
                active = masked.any(dim=1)
                if not bool(active.any()):  # one host sync per step
                    break
                logits = guided(x, start, end, refresh)
                refresh = False
                proposal, confidence = _propose(logits, temperature, remasking, mask_id, generator)
                confidence = confidence.masked_fill(~masked, float("-inf"))
                transfer = (confidence >= threshold) | _select_top_k(confidence, active.long(), 1)
                x[:, start:end] = torch.where(transfer, proposal, x[:, start:end])
                if window is not None:
                    window.copy_(torch.where(transfer, row_steps[:, None], window))
                row_steps += active.long()
            continue
        schedule = transfer_schedule((x[:, start:end] == mask_id).sum(dim=1), steps_per_block)
        k_max = schedule.max(dim=0).values.tolist()  # one host sync per block
        refresh = True
        for step in range(steps_per_block):
            if k_max[step] == 0:
                continue
            logits = guided(x, start, end, refresh)
            refresh = False
            proposal, confidence = _propose(logits, temperature, remasking, mask_id, generator)
            block_tokens = x[:, start:end]
            confidence = confidence.masked_fill(block_tokens != mask_id, float("-inf"))
            transfer = _select_top_k(confidence, schedule[:, step], k_max[step])
            x[:, start:end] = torch.where(transfer, proposal, block_tokens)
            if window is not None:
                window.masked_fill_(transfer, block * steps_per_block + step)
    return x


class _GuidedLogits:
    """Block logits [B, block_length, V] with classifier-free guidance when asked.

    The unconditional pass sees the whole prompt masked (padding stays hidden by
    the attention mask) and has its own cache.
    """

    def __init__(self, cond: FullPasses, uncond: FullPasses | None, *, prompt_len: int, cfg_scale: float,
                 mask_id: int) -> None:
        self.cond, self.uncond = cond, uncond
        self.prompt_len, self.cfg_scale, self.mask_id = prompt_len, cfg_scale, mask_id

    def __call__(self, x: torch.Tensor, start: int, end: int, refresh: bool) -> torch.Tensor:
        cond = self.cond.block_logits(x, start, end, refresh)
        if self.mask_id >= cond.shape[-1]:
            raise ConfigError(
                f"generate: mask_id {self.mask_id} is outside the model's vocabulary of {cond.shape[-1]}"
            )
        if self.uncond is None:
            return cond
        unconditional = x.clone()
        unconditional[:, : self.prompt_len] = self.mask_id
        dtype = torch.promote_types(cond.dtype, torch.float32)  # at least float32 for the combination
        un = self.uncond.block_logits(unconditional, start, end, refresh).to(dtype)
        return un + (self.cfg_scale + 1) * (cond.to(dtype) - un)


def _propose(
    logits: torch.Tensor, temperature: float, remasking: str, mask_id: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposed tokens [B, N] and their confidence [B, N] (float) from block logits [B, N, V]."""
    scores = add_gumbel_noise(logits, temperature, generator=generator)
    scores = scores.clone() if scores is logits else scores
    scores[..., mask_id] = float("-inf")  # never propose the mask token (see module docstring)
    proposal = scores.argmax(dim=-1)
    del scores
    if remasking == "low_confidence":
        probs = F.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        confidence = probs.gather(-1, proposal[..., None]).squeeze(-1)
    else:  # "random"
        confidence = torch.rand(proposal.shape, generator=generator, device=logits.device)
    return proposal, confidence


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists -> (ids [B, L] long, attention_mask [B, L] long, 0 on padding): the
    batched prompt layout :func:`generate` takes (rollouts and evaluation both build it here)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask
