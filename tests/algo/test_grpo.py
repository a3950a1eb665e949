"""diffu-GRPO math on hand-built tensors and against plain loops."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from d1.algo import (
    completion_mask,
    coupled_completion_mask,
    diffu_grpo_loss,
    draw_mask_seeds,
    group_advantages,
    mask_generator,
    mask_prompt_for_logp,
    per_token_logps,
    token_log_probs,
)
from d1.errors import ConfigError

MASK = 9
EOS = 2


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- advantages


def test_group_advantages_hand_values_and_zero_mean():
    rewards = torch.tensor([1.0, 0.0, 2.0, 3.0, 3.0, 3.0])
    adv = group_advantages(rewards, 3)
    torch.testing.assert_close(adv, torch.tensor([0.0, -1.0, 1.0, 0.0, 0.0, 0.0]))
    rewards = torch.rand(24, generator=gen(0)) * 4
    adv = group_advantages(rewards, 6)
    assert torch.allclose(adv.view(4, 6).sum(dim=1), torch.zeros(4), atol=1e-6)


def test_group_advantages_match_loop_with_and_without_std():
    rewards = torch.rand(12, generator=gen(1))
    for scale in (False, True):
        adv = group_advantages(rewards, 4, scale_by_std=scale, eps=1e-4)
        for g in range(3):
            group = rewards[4 * g: 4 * g + 4].tolist()
            mean = sum(group) / 4
            std = math.sqrt(sum((r - mean) ** 2 for r in group) / 3)  # unbiased, as torch.std / TRL
            for i, r in enumerate(group):
                expected = (r - mean) / (std + 1e-4) if scale else r - mean
                assert math.isclose(float(adv[4 * g + i]), expected, rel_tol=1e-5, abs_tol=1e-6)
    # a constant group scaled by std: 0 / (0 + eps) = 0, no NaN
    assert torch.equal(group_advantages(torch.ones(4), 2, scale_by_std=True), torch.zeros(4))
    # integer rewards are accepted
    assert group_advantages(torch.tensor([1, 3]), 2).tolist() == [-1.0, 1.0]


@pytest.mark.parametrize("args,kwargs,message", [
    ((torch.ones(5), 2), {}, r"rewards of shape \(5,\) do not split into groups of 2"),
    ((torch.ones(4), 0), {}, "group_size must be a positive integer, got 0"),
    ((torch.ones(4), 1), dict(scale_by_std=True), "scale_by_std needs group_size >= 2"),
])
def test_group_advantages_errors(args, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        group_advantages(*args, **kwargs)


# ---------------------------------------------------------------- EOS truncation


def loop_completion_mask(ids, eos_ids):
    out = []
    for row in ids.tolist():
        keep, seen = [], False
        for tok in row:
            keep.append(not seen)
            seen = seen or tok in eos_ids
        out.append(keep)
    return torch.tensor(out)


def test_completion_mask_hand_values():
    ids = torch.tensor([[5, 6, EOS, 7, EOS], [EOS, 5, 5, 5, 5], [5, 6, 7, 8, 3], [5, 5, 5, 5, EOS]])
    expected = [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    got = completion_mask(ids, EOS)
    assert got.dtype == torch.bool
    assert got.int().tolist() == expected
    # several end ids: the first occurrence of any counts
    assert completion_mask(torch.tensor([[5, 7, EOS, 5]]), [EOS, 7]).int().tolist() == [[1, 1, 0, 0]]


def test_completion_mask_matches_loop():
    ids = torch.randint(0, 6, (20, 9), generator=gen(2))
    for eos in ([EOS], [EOS, 4]):
        assert torch.equal(completion_mask(ids, eos), loop_completion_mask(ids, eos))


# ---------------------------------------------------------------- estimator input


def test_mask_prompt_for_logp_matches_loop_and_hides_nothing_but_padding():
    ids = torch.arange(1, 25).reshape(2, 12) % 8 + 1  # no MASK tokens
    prompt_mask = torch.arange(12)[None, :].expand(2, 12) < 7
    attention = torch.ones(2, 12, dtype=torch.long)
    attention[1, :3] = 0  # row 1 is left-padded
    noisy = mask_prompt_for_logp(ids, prompt_mask, MASK, 0.4, generator=gen(3), attention_mask=attention)
    u = torch.rand(2, 12, generator=gen(3)).tolist()
    for b in range(2):
        for pos in range(12):
            if pos >= 7:
                masked = True  # every completion token
            elif attention[b, pos] == 0:
                masked = False  # padding is never masked
            else:
                masked = u[b][pos] < 0.4
            assert int(noisy[b, pos]) == (MASK if masked else int(ids[b, pos])), (b, pos)


def test_mask_prompt_rate_and_edge_probabilities():
    ids = torch.ones(4, 10000, dtype=torch.long)
    prompt_mask = torch.ones(4, 10000, dtype=torch.bool)
    prompt_mask[:, -10:] = False
    noisy = mask_prompt_for_logp(ids, prompt_mask, MASK, 0.15, generator=gen(4))
    assert (noisy[:, -10:] == MASK).all()
    rate = float((noisy[:, :-10] == MASK).float().mean())
    assert abs(rate - 0.15) < 0.01
    assert not (mask_prompt_for_logp(ids, prompt_mask, MASK, 0.0, generator=None)[:, :-10] == MASK).any()
    assert (mask_prompt_for_logp(ids, prompt_mask, MASK, 1.0, generator=gen(0)) == MASK).all()
    with pytest.raises(ConfigError, match="p_mask_prompt must be in"):
        mask_prompt_for_logp(ids, prompt_mask, MASK, 1.5, generator=None)


def test_mask_seeds_share_the_mask_across_policies():
    seeds = draw_mask_seeds(gen(0), 4)
    assert seeds == draw_mask_seeds(gen(0), 4)
    assert len(set(seeds)) == 4
    ids = torch.ones(3, 40, dtype=torch.long)
    prompt_mask = torch.arange(40)[None, :].expand(3, 40) < 30
    masks = [mask_prompt_for_logp(ids, prompt_mask, MASK, 0.5, generator=mask_generator(seeds[j]))
             for j in (0, 0, 1)]
    assert torch.equal(masks[0], masks[1])  # same iteration: old, ref and current see the same mask
    assert not torch.equal(masks[0], masks[2])
    with pytest.raises(ConfigError, match="mu must be a positive integer, got 0"):
        draw_mask_seeds(gen(0), 0)


# ---------------------------------------------------------------- per-token log-probs


class TinyBidirectionalLM(nn.Module):
    """Embedding, mean-pooled context over attended positions, head; counts forward calls."""

    def __init__(self, vocab: int = 10, dim: int = 8):
        super().__init__()
        g = gen(0)
        self.embed = nn.Parameter(torch.randn(vocab, dim, generator=g))
        self.mix = nn.Parameter(torch.randn(dim, dim, generator=g) / dim**0.5)
        self.head = nn.Parameter(torch.randn(dim, vocab, generator=g))
        self.calls = []

    def forward(self, input_ids, attention_mask=None):
        self.calls.append((input_ids.clone(), attention_mask))
        keep = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        h = self.embed[input_ids]
        context = (h * keep[..., None]).sum(dim=1, keepdim=True) / keep.sum(dim=1)[:, None, None]
        return SimpleNamespace(logits=torch.tanh(h + context @ self.mix) @ self.head)


def test_token_log_probs_equals_log_softmax_gather():
    logits = torch.randn(3, 5, 11, generator=gen(5))
    targets = torch.randint(0, 11, (3, 5), generator=gen(6))
    expected = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    torch.testing.assert_close(token_log_probs(logits, targets), expected)
    low = token_log_probs(logits.bfloat16(), targets)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, token_log_probs(logits.bfloat16().float(), targets))


def test_per_token_logps_one_pass_on_the_masked_input():
    model = TinyBidirectionalLM()
    ids = torch.tensor([[0, 3, 4, 5, 6, 7, EOS, 1], [3, 3, 1, 5, 8, 2, 2, 2]])
    prompt_mask = torch.tensor([[True] * 4 + [False] * 4] * 2)
    attention = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1], [1] * 8])
    logp = per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.3, generator=gen(7),
                           attention_mask=attention)
    assert logp.shape == (2, 4) and logp.dtype == torch.float32
    assert len(model.calls) == 1
    seen, passed_mask = model.calls[0]
    assert passed_mask is attention
    expected_noisy = mask_prompt_for_logp(ids, prompt_mask, MASK, 0.3, generator=gen(7), attention_mask=attention)
    assert torch.equal(seen, expected_noisy)
    assert (seen[:, 4:] == MASK).all()
    with torch.no_grad():
        logits = model(expected_noisy, attention_mask=attention).logits
    for b in range(2):
        for k in range(4):
            row = logits[b, 4 + k]
            expected = float(row[ids[b, 4 + k]] - torch.logsumexp(row, dim=0))
            assert math.isclose(float(logp[b, k].detach()), expected, rel_tol=1e-5, abs_tol=1e-6)
    # a precomputed mask gives the same numbers; gradients reach the model
    again = per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.3, noisy_ids=expected_noisy,
                            attention_mask=attention)
    torch.testing.assert_close(again, logp)
    again.sum().backward()
    assert model.embed.grad is not None and model.embed.grad.abs().sum() > 0


def test_per_token_logps_errors():
    model = TinyBidirectionalLM()
    ids = torch.ones(2, 6, dtype=torch.long)
    ragged = torch.tensor([[True, True, False, False, False, False], [True, False, False, False, False, False]])
    with pytest.raises(ConfigError, match="same leading columns"):
        per_token_logps(model, ids, ragged, mask_id=MASK, p_mask_prompt=0.0)
    prompt_mask = ragged[:1].expand(2, 6)
    with pytest.raises(ConfigError, match="pass a generator"):
        per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.15)
    # p = 0 needs no randomness
    assert per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.0).shape == (2, 4)


def estimator_case():
    """Two rows of 3 prompt tokens (row 0 left-padded) + 6 completion tokens, and the prompt mask of an iteration."""
    ids = torch.tensor([[0, 3, 4, 5, 6, 7, 8, 3, EOS], [3, 3, 1, 5, 8, 2, 2, 2, 2]])
    prompt_mask = torch.zeros_like(ids, dtype=torch.bool)
    prompt_mask[:, :3] = True
    attention = torch.tensor([[0] + [1] * 8, [1] * 9])
    noisy = mask_prompt_for_logp(ids, prompt_mask, MASK, 0.3, generator=gen(11), attention_mask=attention)
    return ids, prompt_mask, attention, noisy


def assert_matches_token_loop(model, logp, ids, noisy, attention, prompt_len, hidden):
    """The spec, one forward pass per token: ``logp[b, k]`` is read from the prompt as ``noisy`` left it and
    the completion with the tokens where ``hidden(b, k)`` ([T] bool) is True masked, the others shown."""
    with torch.no_grad():
        for b in range(ids.shape[0]):
            for k in range(ids.shape[1] - prompt_len):
                x = noisy[b].clone()
                x[prompt_len:] = torch.where(hidden(b, k), MASK, ids[b, prompt_len:])
                row = model(x[None], attention_mask=attention[b:b + 1]).logits[0, prompt_len + k]
                expected = float(row[ids[b, prompt_len + k]] - torch.logsumexp(row, dim=0))
                assert math.isclose(float(logp[b, k]), expected, rel_tol=1e-5, abs_tol=1e-6)


def test_per_token_logps_blockwise_matches_a_loop_over_tokens():
    model = TinyBidirectionalLM()
    ids, prompt_mask, attention, noisy = estimator_case()
    prompt_len, block = 3, 2
    logp = per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.3, noisy_ids=noisy,
                           attention_mask=attention, block_length=block)
    assert logp.shape == (2, 6) and len(model.calls) == 3  # one pass per block
    assert (noisy[:, prompt_len:] == MASK).all()  # the iteration's input: every completion token masked
    # the completion's earlier blocks shown, this block and later ones masked
    assert_matches_token_loop(model, logp, ids, noisy, attention, prompt_len,
                              lambda b, k: torch.arange(6) >= (k // block) * block)
    # the first block is scored exactly as d1's estimator scores it; later blocks differ (they see more)
    one_step = per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.3, noisy_ids=noisy,
                               attention_mask=attention)
    torch.testing.assert_close(logp[:, :block], one_step[:, :block])
    assert not torch.allclose(logp[:, block:], one_step[:, block:])
    # one block covering the completion is d1's estimator
    whole = per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.3, noisy_ids=noisy,
                            attention_mask=attention, block_length=6)
    torch.testing.assert_close(whole, one_step)
    # gradients reach the model from the last block's pass
    logp[:, -block:].sum().backward()
    assert model.embed.grad is not None and model.embed.grad.abs().sum() > 0
    for bad in (4, 0, True, 2.0):
        with pytest.raises(ConfigError, match="block_length"):
            per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.0, block_length=bad)


def test_per_token_logps_blockwise_skips_blocks_nothing_is_scored_in():
    model = TinyBidirectionalLM()
    ids = torch.tensor([[0, 3, 4, 5, EOS, 7, 8, 3, EOS], [3, 3, 1, 5, 8, 2, 2, 2, 2]])
    prompt_mask = torch.zeros_like(ids, dtype=torch.bool)
    prompt_mask[:, :3] = True
    keep = completion_mask(ids[:, 3:], EOS)  # row 0 ends at column 1, row 1 at column 2
    assert keep.sum(dim=1).tolist() == [2, 3]
    full = per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.0, block_length=2)
    model.calls.clear()
    skipped = per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.0, block_length=2,
                              score_mask=keep)
    assert len(model.calls) == 2  # blocks 0 and 1 hold scored tokens, block 2 none: not computed
    torch.testing.assert_close(skipped[:, :4], full[:, :4])
    assert torch.equal(skipped[:, 4:], torch.zeros(2, 2))
    # d1's one pass is made whatever the mask says
    model.calls.clear()
    nothing = torch.zeros_like(keep)
    per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.0, score_mask=nothing)
    assert len(model.calls) == 1
    with pytest.raises(ConfigError, match="score_mask"):
        per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.0, block_length=2,
                        score_mask=keep[:, :4])


def test_coupled_completion_mask_is_seeded_shared_per_group_and_checked():
    split = coupled_completion_mask(6, 40, group_size=3, generator=gen(5))
    assert split.shape == (6, 40) and split.dtype == torch.bool
    assert torch.equal(split, coupled_completion_mask(6, 40, group_size=3, generator=gen(5)))
    assert not torch.equal(split, coupled_completion_mask(6, 40, group_size=3, generator=gen(6)))
    assert torch.equal(split[0], split[2]) and torch.equal(split[3], split[5])  # one split per group
    assert not torch.equal(split[0], split[3])
    # the masked share of each group follows its drawn rate, inside t_range
    many = coupled_completion_mask(400, 200, group_size=1, generator=gen(7), t_range=(0.3, 0.5))
    rates = many.float().mean(dim=1)
    assert 0.2 < float(rates.min()) and float(rates.max()) < 0.6
    assert abs(float(rates.mean()) - 0.4) < 0.01
    with pytest.raises(ConfigError, match="group_size"):
        coupled_completion_mask(6, 4, group_size=4, generator=gen(0))
    for bad in ((0.0, 0.5), (0.6, 0.5), (0.5, 1.0)):
        with pytest.raises(ConfigError, match="t_range"):
            coupled_completion_mask(2, 4, generator=gen(0), t_range=bad)


def test_per_token_logps_coupled_matches_a_loop_over_tokens():
    model = TinyBidirectionalLM()
    ids, prompt_mask, attention, noisy = estimator_case()
    prompt_len = 3
    split = torch.tensor([[True, False, True, True, False, False], [False, True, False, False, True, True]])
    logp = per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.3, noisy_ids=noisy,
                           attention_mask=attention, coupled_mask=split)
    assert logp.shape == (2, 6) and len(model.calls) == 2  # one pass per part
    # the tokens on the same side of the split as token k masked, the others shown
    assert_matches_token_loop(model, logp, ids, noisy, attention, prompt_len,
                              lambda b, k: split[b] == split[b, k])
    # gradients reach the model through both passes
    logp.sum().backward()
    assert model.embed.grad is not None and model.embed.grad.abs().sum() > 0
    # every token masked on one side: that side is d1's estimator, the other pass is skipped when nothing
    # it would score is kept
    everything = torch.ones_like(split)
    one_step = per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.3, noisy_ids=noisy,
                               attention_mask=attention)
    model.calls.clear()
    all_masked = per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.3, noisy_ids=noisy,
                                 attention_mask=attention, coupled_mask=everything,
                                 score_mask=torch.ones_like(split))
    torch.testing.assert_close(all_masked, one_step)
    assert len(model.calls) == 1
    with pytest.raises(ConfigError, match="exclude each other"):
        per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.0, block_length=2,
                        coupled_mask=split)
    with pytest.raises(ConfigError, match="coupled_mask"):
        per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.0, coupled_mask=split[:, :4])


def test_per_token_logps_replay_matches_a_loop_over_tokens():
    model = TinyBidirectionalLM()
    ids, prompt_mask, attention, noisy = estimator_case()
    prompt_len = 3
    order = torch.tensor([[2, 0, 1, 1, 3, 3], [0, 2, 2, 1, 3, 0]])
    logp = per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.3, noisy_ids=noisy,
                           attention_mask=attention, unmask_order=order)
    assert logp.shape == (2, 6) and len(model.calls) == 4  # one pass per chunk
    # tokens unmasked in an earlier chunk shown, the rest masked
    assert_matches_token_loop(model, logp, ids, noisy, attention, prompt_len,
                              lambda b, k: order[b] >= order[b, k])
    logp.sum().backward()
    assert model.embed.grad is not None and model.embed.grad.abs().sum() > 0
    # order = block index: the block-wise estimator; all zeros: d1's
    blocks = torch.arange(6).repeat(2, 1) // 2
    by_order = per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.3, noisy_ids=noisy,
                               attention_mask=attention, unmask_order=blocks)
    by_block = per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.3, noisy_ids=noisy,
                               attention_mask=attention, block_length=2)
    torch.testing.assert_close(by_order, by_block)
    one_step = per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.3, noisy_ids=noisy,
                               attention_mask=attention)
    torch.testing.assert_close(per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.3,
                                               noisy_ids=noisy, attention_mask=attention,
                                               unmask_order=torch.zeros_like(order)), one_step)
    # chunks holding no scored token are not computed
    model.calls.clear()
    keep = torch.tensor([[True, True, True, True, False, False], [True, False, False, True, False, True]])
    skipped = per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.3, noisy_ids=noisy,
                              attention_mask=attention, unmask_order=order, score_mask=keep)
    assert len(model.calls) == 3  # chunk 3 holds only unscored tokens
    torch.testing.assert_close(skipped[keep], logp.detach()[keep])
    for bad in (order[:, :4], order.float(), order - 1):
        with pytest.raises(ConfigError, match="unmask_order"):
            per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.0, unmask_order=bad)
    with pytest.raises(ConfigError, match="excludes"):
        per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.0, unmask_order=order,
                        block_length=2)


# ---------------------------------------------------------------- the loss


def loop_loss(logp, old, ref, adv, mask, eps, beta):
    total, count = 0.0, 0
    for b in range(logp.shape[0]):
        a = float(adv[b])
        for k in range(logp.shape[1]):
            if not mask[b, k]:
                continue
            ratio = math.exp(float(logp[b, k]) - float(old[b, k]))
            clipped = min(max(ratio, 1 - eps), 1 + eps)
            term = -min(ratio * a, clipped * a)
            if beta:
                d = float(ref[b, k]) - float(logp[b, k])
                term += beta * (math.exp(d) - d - 1)
            total += term
            count += 1
    return total / count


def test_ratio_one_gives_minus_mean_advantage():
    logp = torch.randn(3, 4, generator=gen(8), requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]).bool()
    for old in (logp.detach().clone(), None):  # None = mu 1: old policy is the current one
        loss, stats = diffu_grpo_loss(logp, old, None, adv, mask, eps=0.2, beta=0.0)
        expected = -(2 * 1.0 + 4 * -2.0 + 1 * 0.5) / 7
        assert math.isclose(loss.item(), expected, rel_tol=1e-6)
        assert stats["ratio_mean"] == pytest.approx(1.0) and stats["clip_frac"] == 0.0
        assert "kl" not in stats and stats["num_tokens"] == 7.0
    # the gradient of ratio*A at ratio 1 is A per kept token / count
    logp.grad = None
    diffu_grpo_loss(logp, None, None, adv, mask, eps=0.2, beta=0.0)[0].backward()
    expected_grad = -adv[:, None].expand(3, 4) * mask / 7
    torch.testing.assert_close(logp.grad, expected_grad)


@pytest.mark.parametrize("ratio,adv,expected_loss,clip", [
    (2.0, 1.0, -1.5, "high"),   # A > 0, ratio above 1 + eps: clipped at 1.5
    (0.2, 1.0, -0.2, None),     # A > 0, ratio below 1 - eps: min keeps the smaller, unclipped term
    (0.2, -1.0, 0.5, "low"),    # A < 0, ratio below 1 - eps: clipped at 0.5
    (2.0, -1.0, 2.0, None),     # A < 0, ratio above 1 + eps: unclipped (pessimistic) term
    (1.3, 1.0, -1.3, None),     # inside the interval
])
def test_clipping_hand_values(ratio, adv, expected_loss, clip):
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    old = torch.zeros(1, 1)
    loss, stats = diffu_grpo_loss(logp, old, None, torch.tensor([adv]), torch.ones(1, 1), eps=0.5, beta=0.0)
    assert math.isclose(loss.item(), expected_loss, rel_tol=1e-6)
    assert stats["clip_high_frac"] == (1.0 if clip == "high" else 0.0)
    assert stats["clip_low_frac"] == (1.0 if clip == "low" else 0.0)
    loss.backward()
    assert (float(logp.grad) == 0.0) == (clip is not None)  # a clipped token carries no gradient


def test_kl_zero_when_reference_equals_policy_and_hand_value_otherwise():
    logp = torch.randn(2, 3, generator=gen(9))
    adv = torch.tensor([0.0, 0.0])
    mask = torch.ones(2, 3, dtype=torch.bool)
    loss, stats = diffu_grpo_loss(logp, logp, logp.clone(), adv, mask, eps=0.2, beta=0.04)
    assert loss.item() == 0.0 and stats["kl"] == 0.0
    ref = logp + 0.5  # ref - logp = 0.5 everywhere
    kl = math.exp(0.5) - 0.5 - 1
    loss, stats = diffu_grpo_loss(logp, logp, ref, adv, mask, eps=0.2, beta=0.04)
    assert stats["kl"] == pytest.approx(kl, rel=1e-5) and kl > 0
    assert loss.item() == pytest.approx(0.04 * kl, rel=1e-5)
    # beta = 0 with a reference: KL is reported but not in the loss
    loss0, stats0 = diffu_grpo_loss(logp, logp, ref, adv, mask, eps=0.2, beta=0.0)
    assert float(loss0) == 0.0 and stats0["kl"] == pytest.approx(kl, rel=1e-5)


def test_loss_matches_loop_and_ignores_dropped_tokens():
    g = gen(10)
    logp = torch.randn(4, 6, generator=g) * 0.3 - 2
    old = logp + torch.randn(4, 6, generator=g) * 0.5
    ref = logp + torch.randn(4, 6, generator=g) * 0.5
    adv = torch.randn(4, generator=g)
    ids = torch.randint(0, 5, (4, 6), generator=g)
    mask = completion_mask(ids, EOS)
    loss, stats = diffu_grpo_loss(logp, old, ref, adv, mask, eps=0.2, beta=0.04)
    assert math.isclose(loss.item(), loop_loss(logp, old, ref, adv, mask, 0.2, 0.04), rel_tol=1e-5)
    assert 0.0 < stats["clip_frac"] < 1.0
    # values at excluded positions do not matter
    scrambled = torch.where(mask, logp, torch.full_like(logp, 50.0))
    assert float(diffu_grpo_loss(scrambled, old, ref, adv, mask, eps=0.2, beta=0.04)[0]) == pytest.approx(
        loss.item(), rel=1e-6)


def test_gradients_flow_only_through_logp():
    logp = torch.randn(2, 3, generator=gen(11), requires_grad=True)
    old = torch.randn(2, 3, generator=gen(12), requires_grad=True)
    ref = torch.randn(2, 3, generator=gen(13), requires_grad=True)
    adv = torch.tensor([1.0, -1.0], requires_grad=True)
    loss, _ = diffu_grpo_loss(logp, old, ref, adv, torch.ones(2, 3), eps=0.2, beta=0.1)
    loss.backward()
    assert logp.grad is not None and logp.grad.abs().sum() > 0
    assert old.grad is None and ref.grad is None and adv.grad is None


def test_micro_batches_with_global_token_count_sum_to_the_batch_loss():
    g = gen(14)
    logp = torch.randn(4, 5, generator=g)
    old = logp + 0.1 * torch.randn(4, 5, generator=g)
    ref = logp + 0.1 * torch.randn(4, 5, generator=g)
    adv = torch.randn(4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1] * 5, [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]]).bool()
    whole, _ = diffu_grpo_loss(logp, old, ref, adv, mask, eps=0.2, beta=0.04)
    total = float(mask.sum())
    parts = sum(diffu_grpo_loss(logp[i:i + 1], old[i:i + 1], ref[i:i + 1], adv[i:i + 1], mask[i:i + 1], eps=0.2,
                                beta=0.04, num_tokens=total)[0] for i in range(4))
    assert float(parts) == pytest.approx(float(whole), rel=1e-6)


def test_loss_errors():
    logp = torch.zeros(2, 3)
    with pytest.raises(ConfigError, match="beta = 0.04 needs ref_logp"):
        diffu_grpo_loss(logp, None, None, torch.zeros(2), torch.ones(2, 3), eps=0.2, beta=0.04)
    with pytest.raises(ConfigError, match=r"mask has shape \(2, 4\)"):
        diffu_grpo_loss(logp, None, None, torch.zeros(2), torch.ones(2, 4), eps=0.2, beta=0.0)
    with pytest.raises(ConfigError, match="advantages"):
        diffu_grpo_loss(logp, None, None, torch.zeros(3), torch.ones(2, 3), eps=0.2, beta=0.0)
    with pytest.raises(ConfigError, match="eps must be > 0"):
        diffu_grpo_loss(logp, None, None, torch.zeros(2), torch.ones(2, 3), eps=0.0, beta=0.0)
