"""The LLaDA sampler against a plain loop written from the sampler's specification in docs/algorithms.md, on a tiny toy model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from d1.errors import ConfigError, D1Error
from d1.generation import add_gumbel_noise, generate, transfer_schedule

VOCAB = 12
MASK = 11
PAD = 0


class ToyDiffusionLM(nn.Module):
    """Embedding + one bidirectional attention layer + head, in float64.

    Honours ``attention_mask`` (padded keys are ignored) and numbers positions
    from the first real token, so a left-padded row computes the same logits as
    the row alone: batched == unbatched is a meaningful test.
    """

    def __init__(self, seed: int = 0, dim: int = 16, max_len: int = 64, logit_scale: float = 3.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)

        def param(*shape: int, scale: float = 1.0) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=g, dtype=torch.float64) * scale)

        self.embed = param(VOCAB, dim)
        self.pos = param(max_len, dim, scale=0.5)
        self.wq, self.wk, self.wv = (param(dim, dim, scale=dim**-0.5) for _ in range(3))
        self.head = param(dim, VOCAB, scale=logit_scale * dim**-0.5)
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        self.calls.append((input_ids.clone(), None if attention_mask is None else attention_mask.clone()))
        keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        positions = (keep.long().cumsum(dim=1) - 1).clamp(min=0)
        h = self.embed[input_ids] + self.pos[positions]
        scores = (h @ self.wq) @ (h @ self.wk).transpose(1, 2) / math.sqrt(h.shape[-1])
        scores = scores.masked_fill(~keep[:, None, :], float("-inf"))
        h = torch.tanh(h + scores.softmax(dim=-1) @ (h @ self.wv))
        return SimpleNamespace(logits=h @ self.head)


# ---------------------------------------------------------------- plain-loop reference


def loop_generate(model, prompts, *, gen_length, block_length, steps, temperature=0.0, cfg_scale=0.0,
                  remasking="low_confidence", generator=None):
    """Straight from the spec, one row and one position at a time (unpadded prompts of equal length).

    Random numbers are drawn exactly as the sampler documents: per step with work,
    Gumbel uniforms [B, block, V] float64 if temperature > 0, then confidences
    [B, block] float32 if remasking == "random".
    """
    x = [list(p) + [MASK] * gen_length for p in prompts]
    prompt_len = len(prompts[0])
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    for block in range(num_blocks):
        start = prompt_len + block * block_length
        end = start + block_length
        n_masked = sum(tok == MASK for tok in x[0][start:end])
        counts = [n_masked // steps_per_block + (1 if i < n_masked % steps_per_block else 0)
                  for i in range(steps_per_block)]
        for step in range(steps_per_block):
            if counts[step] == 0:
                continue
            with torch.no_grad():
                logits = model(torch.tensor(x)).logits.tolist()
                if cfg_scale > 0:
                    un_x = [[MASK] * prompt_len + row[prompt_len:] for row in x]
                    un = model(torch.tensor(un_x)).logits.tolist()
                    logits = [[[u + (cfg_scale + 1) * (c - u) for c, u in zip(cp, up)]
                               for cp, up in zip(cr, ur)] for cr, ur in zip(logits, un)]
            noise = (torch.rand((len(x), block_length, VOCAB), dtype=torch.float64, generator=generator).tolist()
                     if temperature > 0 else None)
            rand_conf = (torch.rand((len(x), block_length), generator=generator).tolist()
                         if remasking == "random" else None)
            for r, row in enumerate(x):
                candidates = []
                for pos in range(start, end):
                    if row[pos] != MASK:
                        continue
                    lp = logits[r][pos]
                    if temperature > 0:
                        u = noise[r][pos - start]
                        score = [math.exp(lp[v]) / (-math.log(u[v])) ** temperature for v in range(VOCAB)]
                    else:
                        score = lp
                    token = max((v for v in range(VOCAB) if v != MASK), key=lambda v: score[v])
                    if remasking == "random":
                        conf = rand_conf[r][pos - start]
                    else:
                        top = max(lp)
                        conf = math.exp(lp[token] - top) / sum(math.exp(val - top) for val in lp)
                    candidates.append((conf, pos, token))
                candidates.sort(key=lambda c: -c[0])
                for _, pos, token in candidates[: counts[step]]:
                    row[pos] = token
    return torch.tensor(x)


def left_pad(prompts):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


PROMPTS = [[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]]


# ---------------------------------------------------------------- schedule and noise


def test_transfer_schedule_hand_values():
    got = transfer_schedule(torch.tensor([10, 3, 8, 0]), 4)
    assert got.tolist() == [[3, 3, 2, 2], [1, 1, 1, 0], [2, 2, 2, 2], [0, 0, 0, 0]]
    assert got.dtype == torch.int64
    assert transfer_schedule(torch.tensor([5]), 1).tolist() == [[5]]


def test_transfer_schedule_matches_loop():
    for count in range(0, 20):
        for steps in range(1, 9):
            expected = [count // steps + (1 if i < count % steps else 0) for i in range(steps)]
            assert transfer_schedule(torch.tensor([count]), steps)[0].tolist() == expected


def test_gumbel_noise_temperature_zero_is_identity_and_float64_otherwise():
    logits = torch.randn(2, 3, 5)
    assert add_gumbel_noise(logits, 0.0) is logits
    g = torch.Generator().manual_seed(0)
    noisy = add_gumbel_noise(logits, 0.7, generator=g)
    assert noisy.dtype == torch.float64
    u = torch.rand(logits.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(noisy, logits.double().exp() / (-u.log()) ** 0.7)


def test_gumbel_max_samples_softmax_at_temperature():
    logits = torch.tensor([1.0, 0.0, -1.0]).expand(40000, 3)
    g = torch.Generator().manual_seed(1)
    for temperature in (0.5, 1.0):
        draws = add_gumbel_noise(logits, temperature, generator=g).argmax(dim=-1)
        freq = torch.bincount(draws, minlength=3).double() / draws.numel()
        expected = torch.softmax(logits[0].double() / temperature, dim=0)
        assert torch.allclose(freq, expected, atol=0.015), (temperature, freq, expected)


# ---------------------------------------------------------------- greedy vs loop


@pytest.mark.parametrize(
    "gen_length,block_length,steps",
    [(8, 8, 8), (8, 4, 4), (12, 4, 6), (8, 2, 8), (6, 3, 4), (4, 4, 8)],
)
def test_greedy_matches_loop(gen_length, block_length, steps):
    model = ToyDiffusionLM(seed=0)
    prompt = torch.tensor(PROMPTS)
    got = generate(model, prompt, gen_length=gen_length, block_length=block_length, steps=steps, mask_id=MASK)
    expected = loop_generate(model, PROMPTS, gen_length=gen_length, block_length=block_length, steps=steps)
    assert torch.equal(got, expected)
    assert torch.equal(got[:, : prompt.shape[1]], prompt)
    assert not (got == MASK).any()


def test_cfg_matches_loop_and_masks_prompt_in_second_pass():
    model = ToyDiffusionLM(seed=1)
    prompt = torch.tensor(PROMPTS)
    got = generate(model, prompt, gen_length=8, block_length=4, steps=4, cfg_scale=1.5, mask_id=MASK)
    calls = list(model.calls)
    expected = loop_generate(model, PROMPTS, gen_length=8, block_length=4, steps=4, cfg_scale=1.5)
    assert torch.equal(got, expected)
    assert len(calls) == 2 * 4  # two passes per step
    for (cond, _), (uncond, _) in zip(calls[0::2], calls[1::2]):
        assert (uncond[:, :5] == MASK).all()
        assert torch.equal(uncond[:, 5:], cond[:, 5:])
    # guidance changes the answer on this model (otherwise the test above proves little)
    plain = generate(model, prompt, gen_length=8, block_length=4, steps=4, mask_id=MASK)
    assert not torch.equal(plain, got)


def test_temperature_matches_loop_with_same_draws():
    model = ToyDiffusionLM(seed=2)
    kwargs = dict(gen_length=8, block_length=4, steps=6, temperature=0.8)
    got = generate(model, torch.tensor(PROMPTS), mask_id=MASK, generator=torch.Generator().manual_seed(5), **kwargs)
    expected = loop_generate(model, PROMPTS, generator=torch.Generator().manual_seed(5), **kwargs)
    assert torch.equal(got, expected)


def test_random_remasking_matches_loop_with_same_draws():
    model = ToyDiffusionLM(seed=3)
    kwargs = dict(gen_length=8, block_length=8, steps=4, remasking="random")
    got = generate(model, torch.tensor(PROMPTS), mask_id=MASK, generator=torch.Generator().manual_seed(7), **kwargs)
    expected = loop_generate(model, PROMPTS, generator=torch.Generator().manual_seed(7), **kwargs)
    assert torch.equal(got, expected)


def test_random_remasking_order_depends_on_seed():
    model = ToyDiffusionLM(seed=3)
    first_positions = set()
    for seed in range(6):
        model.calls.clear()
        generate(model, torch.tensor(PROMPTS[:1]), gen_length=8, block_length=8, steps=8, remasking="random",
                 mask_id=MASK, generator=torch.Generator().manual_seed(seed))
        after_first_step = model.calls[1][0][0, 5:]
        first_positions.add(int((after_first_step != MASK).nonzero()[0]))
    assert len(first_positions) > 1


# ---------------------------------------------------------------- one token per step


def test_one_block_one_token_per_step_is_low_confidence_decoding():
    model = ToyDiffusionLM(seed=4)
    prompt = torch.tensor(PROMPTS[:1])
    out = generate(model, prompt, gen_length=8, block_length=8, steps=8, mask_id=MASK)
    states = [ids for ids, _ in model.calls] + [out]
    assert len(states) == 9
    for before, after in zip(states[:-1], states[1:]):
        changed = (before != after).nonzero()
        assert changed.shape[0] == 1  # exactly one token unmasked per step
        pos = int(changed[0, 1])
        with torch.no_grad():
            logits = model(before).logits[0]
        probs = logits.softmax(dim=-1)
        masked = (before[0] == MASK).nonzero().flatten().tolist()
        best = {p: max((v for v in range(VOCAB) if v != MASK), key=lambda v: float(logits[p, v])) for p in masked}
        conf = {p: float(probs[p, best[p]]) for p in masked}
        assert pos == max(masked, key=lambda p: conf[p])
        assert int(after[0, pos]) == best[pos]


def test_decode_order_records_the_step_each_token_was_unmasked():
    model = ToyDiffusionLM(seed=2)
    kwargs = dict(gen_length=8, block_length=4, steps=6, temperature=0.8, mask_id=MASK)
    prompt = torch.tensor(PROMPTS)
    plain = generate(model, prompt, generator=torch.Generator().manual_seed(5), **kwargs)
    model.calls.clear()
    order = torch.full((2, 8), -1, dtype=torch.long)
    out = generate(model, prompt, generator=torch.Generator().manual_seed(5), decode_order=order, **kwargs)
    assert torch.equal(out, plain)  # recording does not change the tokens
    # 3 steps per block, 4 tokens a block: 2, 1, 1 tokens at steps 0-2 (block 0) and 3-5 (block 1)
    assert sorted(order[0].tolist()) == [0, 0, 1, 2, 3, 3, 4, 5]
    states = [ids for ids, _ in model.calls] + [out]
    assert len(states) == 7
    for step, (before, after) in enumerate(zip(states[:-1], states[1:])):
        changed = (before[:, 5:] != after[:, 5:])
        assert torch.equal(changed, order == step)
    with pytest.raises(ConfigError, match="decode_order"):
        generate(model, prompt, decode_order=torch.zeros(2, 7, dtype=torch.long), gen_length=8, block_length=4,
                 steps=6, mask_id=MASK)
    with pytest.raises(ConfigError, match="decode_order"):
        generate(model, prompt, decode_order=torch.zeros(2, 8), gen_length=8, block_length=4, steps=6, mask_id=MASK)


# ---------------------------------------------------------------- batching and padding


@pytest.mark.parametrize("cfg_scale", [0.0, 1.0])
def test_left_padded_batch_equals_one_by_one(cfg_scale):
    model = ToyDiffusionLM(seed=5)
    prompts = [[3, 1, 4], [9, 2, 6, 5, 3, 5, 8], [7]]
    ids, mask = left_pad(prompts)
    kwargs = dict(gen_length=8, block_length=4, steps=4, cfg_scale=cfg_scale, mask_id=MASK)
    batched = generate(model, ids, attention_mask=mask, **kwargs)
    assert torch.equal(batched[:, : ids.shape[1]], ids)
    for row, prompt in enumerate(prompts):
        alone = generate(model, torch.tensor([prompt]), **kwargs)
        assert torch.equal(batched[row, ids.shape[1]:], alone[0, len(prompt):]), row
    # the generated positions are attended: the mask given to the model is extended with ones
    model.calls.clear()
    generate(model, ids, attention_mask=mask, **kwargs)
    _, first_mask = model.calls[0]
    assert torch.equal(first_mask, torch.cat([mask, torch.ones(3, 8, dtype=mask.dtype)], dim=1))


def test_padding_matters_without_attention_mask():
    """Sanity check on the toy model: without the mask, padding changes the answer."""
    model = ToyDiffusionLM(seed=5)
    prompts = [[3, 1, 4], [9, 2, 6, 5, 3, 5, 8]]
    ids, mask = left_pad(prompts)
    kwargs = dict(gen_length=8, block_length=4, steps=4, mask_id=MASK)
    masked = generate(model, ids, attention_mask=mask, **kwargs)
    unmasked = generate(model, ids, **kwargs)
    assert not torch.equal(masked[0], unmasked[0])


# ---------------------------------------------------------------- determinism and prompts


def test_seeded_generator_is_deterministic_and_seeds_differ():
    model = ToyDiffusionLM(seed=6, logit_scale=1.0)
    prompt = torch.tensor(PROMPTS)
    kwargs = dict(gen_length=12, block_length=4, steps=12, temperature=1.0, mask_id=MASK)
    runs = [generate(model, prompt, generator=torch.Generator().manual_seed(s), **kwargs) for s in (0, 0, 1, 2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2]) or not torch.equal(runs[0], runs[3])


def test_prompt_left_unchanged_including_mask_tokens():
    model = ToyDiffusionLM(seed=7)
    prompt = torch.tensor([[3, MASK, 4, 1, MASK], [2, 2, 2, 2, 2]])
    out = generate(model, prompt, gen_length=4, block_length=4, steps=2, mask_id=MASK)
    assert torch.equal(out[:, :5], prompt)
    assert not (out[:, 5:] == MASK).any()


def test_mask_token_is_never_proposed():
    class LovesMask(nn.Module):
        def forward(self, input_ids):
            logits = torch.zeros(*input_ids.shape, VOCAB)
            logits[..., MASK] = 10.0
            logits[..., 4] = 1.0
            return logits  # a bare tensor is accepted too

    out = generate(LovesMask(), torch.tensor([[1, 2]]), gen_length=4, block_length=2, steps=4, mask_id=MASK)
    assert out[0, 2:].tolist() == [4, 4, 4, 4]


def test_does_not_build_autograd_graph_and_output_trainable():
    model = ToyDiffusionLM(seed=8)
    out = generate(model, torch.tensor(PROMPTS), gen_length=4, block_length=4, steps=2, mask_id=MASK)
    assert not out.requires_grad
    model(out).logits.sum().backward()  # not an inference-mode tensor: usable in a training pass
    assert model.embed.grad is not None


# ---------------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(gen_length=10, block_length=4, steps=5), "gen_length 10 is not a multiple of block_length 4"),
        (dict(gen_length=8, block_length=4, steps=3), "steps 3 cannot be split evenly over 2 blocks"),
        (dict(gen_length=0, block_length=4, steps=4), "gen_length must be a positive integer, got 0"),
        (dict(gen_length=8, block_length=4, steps=-2), "steps must be a positive integer, got -2"),
        (dict(gen_length=8, block_length=4, steps=4, temperature=-0.1), "temperature must be a number >= 0"),
        (dict(gen_length=8, block_length=4, steps=4, cfg_scale=-1), "cfg_scale must be a number >= 0"),
        (dict(gen_length=8, block_length=4, steps=4, remasking="entropy"), "unknown remasking 'entropy'"),
        (dict(gen_length=8, block_length=4, steps=4, mask_id=-1), "mask_id must be a non-negative integer"),
        (dict(gen_length=8, block_length=4, steps=4, attention_mask=torch.ones(2, 3)),
         r"attention_mask must have the prompt's shape \(2, 5\)"),
        (dict(gen_length=8, block_length=4, steps=4, generator=123), "generator must be a torch.Generator"),
    ],
)
def test_argument_errors(kwargs, message):
    kwargs.setdefault("mask_id", MASK)
    with pytest.raises(ConfigError, match=message):
        generate(ToyDiffusionLM(), torch.tensor(PROMPTS), **kwargs)


def test_bad_prompt_and_bad_model_output():
    with pytest.raises(ConfigError, match="mask_id 99 is outside the model's vocabulary of 12"):
        generate(lambda ids: torch.zeros(*ids.shape, VOCAB), torch.tensor([[1]]), gen_length=4, block_length=4,
                 steps=4, mask_id=99)
    with pytest.raises(ConfigError, match=r"logits of shape \(1, 5\) for input \(1, 5\)"):
        generate(lambda ids: torch.zeros(*ids.shape), torch.tensor([[1]]), gen_length=4, block_length=4,
                 steps=4, mask_id=MASK)
    with pytest.raises(D1Error, match="prompt must be a LongTensor"):
        generate(ToyDiffusionLM(), torch.tensor([1, 2, 3]), gen_length=4, block_length=4, steps=4, mask_id=MASK)
    with pytest.raises(D1Error, match="prompt must be a LongTensor"):
        generate(ToyDiffusionLM(), torch.ones(1, 3), gen_length=4, block_length=4, steps=4, mask_id=MASK)
    with pytest.raises(D1Error, match="expected a tensor of logits"):
        generate(lambda ids: {"logits": 0}, torch.tensor([[1]]), gen_length=4, block_length=4, steps=4,
                 mask_id=MASK)
