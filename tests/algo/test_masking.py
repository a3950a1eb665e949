"""Masked SFT math on hand-built tensors and against plain loops."""

from __future__ import annotations

import math

import pytest
import torch

from d1.algo import count_response_tokens, forward_mask, masked_sft_loss, sample_mask_ratio, sft_collate
from d1.errors import ConfigError, DataError

MASK = 99
EOS = 2


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- t


def test_mask_ratio_formula_range_and_determinism():
    t = sample_mask_ratio(5000, eps=1e-3, generator=gen(0))
    u = torch.rand(5000, generator=gen(0))
    torch.testing.assert_close(t, (1 - 1e-3) * u + 1e-3)
    assert t.min() >= 1e-3 and t.max() <= 1.0
    assert abs(float(t.mean()) - 0.5) < 0.02
    assert torch.equal(t, sample_mask_ratio(5000, generator=gen(0)))
    assert not torch.equal(t, sample_mask_ratio(5000, generator=gen(1)))
    assert sample_mask_ratio(3, eps=0.5, generator=gen(0)).min() >= 0.5


@pytest.mark.parametrize("kwargs,message", [
    (dict(batch_size=0), "batch_size must be a positive integer, got 0"),
    (dict(batch_size=2, eps=1.0), "eps must be in"),
    (dict(batch_size=2, eps=-0.1), "eps must be in"),
])
def test_mask_ratio_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        sample_mask_ratio(generator=None, **kwargs)


# ---------------------------------------------------------------- forward_mask


def test_forward_mask_matches_loop():
    ids = torch.arange(24).reshape(3, 8)
    maskable = torch.tensor([[0] * 3 + [1] * 5, [0] * 6 + [1] * 2, [1] * 8]).bool()
    t = torch.tensor([0.3, 0.9, 0.5])
    noisy, is_masked = forward_mask(ids, maskable, t, MASK, generator=gen(3))
    u = torch.rand(3, 8, generator=gen(3)).tolist()
    for b in range(3):
        for pos in range(8):
            expected = bool(maskable[b, pos]) and u[b][pos] < float(t[b])
            assert bool(is_masked[b, pos]) == expected
            assert int(noisy[b, pos]) == (MASK if expected else int(ids[b, pos]))


def test_forward_mask_rate_is_t_and_prompt_never_masked():
    length = 20000
    ids = torch.randint(0, 50, (3, length), generator=gen(1))
    maskable = torch.ones(3, length, dtype=torch.bool)
    maskable[:, :100] = False  # the prompt
    t = torch.tensor([0.05, 0.5, 0.95])
    noisy, is_masked = forward_mask(ids, maskable, t, MASK, generator=gen(2))
    assert not is_masked[:, :100].any()
    assert torch.equal(noisy[:, :100], ids[:, :100])
    rate = is_masked[:, 100:].float().mean(dim=1)
    assert torch.allclose(rate, t, atol=0.015), rate
    assert torch.equal(noisy == MASK, is_masked)


def test_forward_mask_shape_errors():
    with pytest.raises(ConfigError, match=r"t must have shape \(2,\)"):
        forward_mask(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool), torch.ones(3), MASK,
                     generator=None)
    with pytest.raises(ConfigError, match="must both be"):
        forward_mask(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool), torch.ones(2), MASK,
                     generator=None)


# ---------------------------------------------------------------- loss


def loop_loss(logits, targets, is_masked, t, n_response):
    total = 0.0
    for b in range(logits.shape[0]):
        for pos in range(logits.shape[1]):
            if is_masked[b, pos]:
                row = logits[b, pos].tolist()
                lse = math.log(sum(math.exp(v) for v in row))
                total += (lse - row[int(targets[b, pos])]) / float(t[b])
    return total / n_response


def test_loss_hand_values():
    # one masked position per row; uniform logits over 4 classes -> CE = log 4
    logits = torch.zeros(2, 3, 4)
    targets = torch.tensor([[0, 1, 2], [3, 0, 1]])
    is_masked = torch.tensor([[False, True, False], [True, False, False]])
    t = torch.tensor([0.5, 0.25])
    loss = masked_sft_loss(logits, targets, is_masked, t, num_response_tokens=4)
    expected = (math.log(4) / 0.5 + math.log(4) / 0.25) / 4
    assert math.isclose(float(loss), expected, rel_tol=1e-6)


def test_loss_matches_loop_and_weights_by_one_over_t():
    g = gen(4)
    logits = torch.randn(3, 6, 7, generator=g)
    targets = torch.randint(0, 7, (3, 6), generator=g)
    is_masked = torch.rand(3, 6, generator=g) < 0.5
    t = torch.tensor([0.2, 0.6, 1.0])
    loss = masked_sft_loss(logits, targets, is_masked, t, 15)
    assert math.isclose(float(loss), loop_loss(logits, targets, is_masked, t, 15), rel_tol=1e-5)
    # 1/t: halving every t doubles the loss
    assert math.isclose(float(masked_sft_loss(logits, targets, is_masked, t / 2, 15)), 2 * float(loss), rel_tol=1e-5)
    # bf16 logits give float32 CE of the bf16 values
    loss_bf16 = masked_sft_loss(logits.bfloat16(), targets, is_masked, t, 15)
    assert loss_bf16.dtype == torch.float32
    assert math.isclose(float(loss_bf16), loop_loss(logits.bfloat16().float(), targets, is_masked, t, 15),
                        rel_tol=1e-5)


def test_loss_gradient_only_at_masked_positions_and_empty_mask():
    logits = torch.randn(2, 4, 5, requires_grad=True)
    targets = torch.zeros(2, 4, dtype=torch.long)
    is_masked = torch.tensor([[True, False, False, True], [False, False, False, False]])
    masked_sft_loss(logits, targets, is_masked, torch.tensor([0.5, 0.5]), 8).backward()
    nonzero = logits.grad.abs().sum(dim=-1) > 0
    assert torch.equal(nonzero, is_masked)
    empty = masked_sft_loss(logits, targets, torch.zeros(2, 4, dtype=torch.bool), torch.ones(2), 8)
    assert empty.item() == 0.0
    empty.backward()  # still part of the graph


def test_loss_accumulation_normalised_by_whole_batch():
    g = gen(5)
    logits = torch.randn(4, 6, 7, generator=g)
    targets = torch.randint(0, 7, (4, 6), generator=g)
    prompt_mask = torch.arange(6)[None, :] < torch.tensor([1, 3, 2, 4])[:, None]
    t = torch.tensor([0.3, 0.5, 0.7, 0.9])
    _, is_masked = forward_mask(targets, ~prompt_mask, t, MASK, generator=g)
    total = count_response_tokens(prompt_mask)
    assert total == 24 - 10
    whole = masked_sft_loss(logits, targets, is_masked, t, total)
    parts = sum(masked_sft_loss(logits[i:i + 1], targets[i:i + 1], is_masked[i:i + 1], t[i:i + 1], total)
                for i in range(4))
    torch.testing.assert_close(whole, parts)


def test_loss_errors():
    with pytest.raises(ConfigError, match="num_response_tokens must be > 0, got 0"):
        masked_sft_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long),
                        torch.ones(1, 2, dtype=torch.bool), torch.ones(1), 0)
    with pytest.raises(ConfigError, match="expected logits"):
        masked_sft_loss(torch.zeros(1, 2, 3), torch.zeros(1, 3, dtype=torch.long),
                        torch.ones(1, 3, dtype=torch.bool), torch.ones(1), 3)


# ---------------------------------------------------------------- collation


def test_collate_pads_with_eos_and_marks_prompt():
    batch = sft_collate([[10, 11], [12]], [[20, 21, 22], [23]], eos_id=EOS, max_length=7)
    assert batch["input_ids"].tolist() == [[10, 11, 20, 21, 22, EOS, EOS], [12, 23, EOS, EOS, EOS, EOS, EOS]]
    assert batch["prompt_mask"].tolist() == [[True, True] + [False] * 5, [True] + [False] * 6]
    assert batch["truncated"].tolist() == [False, False]
    assert count_response_tokens(batch["prompt_mask"]) == 14 - 3


def test_collate_truncates_response_never_prompt():
    batch = sft_collate([[10, 11, 12]], [[20, 21, 22, 23]], eos_id=EOS, max_length=5)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21]]
    assert batch["truncated"].tolist() == [True]
    exact = sft_collate([[10]], [[20, 21]], eos_id=EOS, max_length=3)
    assert exact["truncated"].tolist() == [False]
    with pytest.raises(DataError, match="example 1 has a 5-token prompt.*max_length 5"):
        sft_collate([[1], [1, 2, 3, 4, 5]], [[7], [7]], eos_id=EOS, max_length=5)


def test_collate_errors():
    with pytest.raises(DataError, match="2 prompts but 1 responses"):
        sft_collate([[1], [2]], [[3]], eos_id=EOS, max_length=4)
    with pytest.raises(DataError, match="empty batch"):
        sft_collate([], [], eos_id=EOS, max_length=4)
    with pytest.raises(ConfigError, match="max_length must be an integer >= 2, got 1"):
        sft_collate([[1]], [[2]], eos_id=EOS, max_length=1)


def test_collate_then_mask_never_touches_prompt():
    batch = sft_collate([[10, 11, 12], [13]], [[20, 21], [22, 23, 24]], eos_id=EOS, max_length=8)
    t = torch.ones(2)  # t = 1: every response token masked
    noisy, is_masked = forward_mask(batch["input_ids"], ~batch["prompt_mask"], t, MASK, generator=gen(0))
    assert torch.equal(is_masked, ~batch["prompt_mask"])
    assert torch.equal(noisy[batch["prompt_mask"]], batch["input_ids"][batch["prompt_mask"]])
