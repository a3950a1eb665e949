"""SPG's block-wise estimator ``spg_blocks``: its masks, its channels against loops, its passes."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from d1.algo import ESTIMATORS, mask_generator, mask_prompt_for_logp, token_log_probs
from d1.algo.estimators import estimator_params
from d1.algo.spg_estimator import SPGBlocks, SPGBlocksParams, spg_block_masks, spg_channels
from d1.errors import ConfigError
from tests.algo.test_grpo import MASK, TinyBidirectionalLM


def gen(seed):
    return torch.Generator().manual_seed(seed)


def prefix_keep(lengths, total):
    return torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]


# ---------------------------------------------------------------- the masks


def check_block_masks(masks, keep, block_length, min_t, max_t):
    """Every sample of every row follows the law of the module docstring; returns the chosen blocks [N, S]."""
    rows, samples, length = masks.shape
    chosen = torch.zeros(rows, samples, dtype=torch.long)
    for i in range(rows):
        kept = int(keep[i].sum())
        kept_blocks = max((kept + block_length - 1) // block_length, 1)
        for j in range(samples):
            m = masks[i, j]
            assert bool(m[~keep[i]].all()), "tokens after the first stop are masked"
            masked_kept = (m & keep[i]).nonzero().flatten().tolist()
            assert masked_kept, "every sample masks a kept token"
            b = masked_kept[0] // block_length
            assert b < kept_blocks
            start, end = b * block_length, (b + 1) * block_length
            assert not bool(m[:start].any()), "earlier blocks are clean"
            assert bool(m[end:].all()), "later blocks are masked"
            in_block = min(block_length, kept - start)
            count = int((m[start:end] & keep[i, start:end]).sum())
            low = max(math.floor(in_block * min_t), 1)
            high = max(min(math.floor(in_block * max_t), in_block), low)
            assert low <= count <= high, (i, j, count, low, high)
            chosen[i, j] = b
    return chosen


def test_block_masks_follow_the_law():
    keep = prefix_keep([12, 7, 1, 4, 9, 5, 12, 2], 12)
    for block_length, num_t, min_t, max_t in [(4, 2, 0.0, 1.0), (3, 3, 0.3, 0.7), (2, 1, 0.5, 0.5), (6, 2, 0.0, 0.2)]:
        masks = spg_block_masks(keep, num_t=num_t, block_length=block_length, min_t=min_t, max_t=max_t,
                                generator=gen(1))
        assert masks.shape == (8, num_t, 12) and masks.dtype == torch.bool
        chosen = check_block_masks(masks, keep, block_length, min_t, max_t)
        # a completion kept whole: its num_t blocks are distinct (the authors' permutation)
        for row in (0, 6):
            assert len(set(chosen[row].tolist())) == num_t


def test_block_masks_cover_their_range():
    """Over many rows every block of the kept part is chosen and both ends of the masked count occur."""
    keep = prefix_keep([10] * 400, 12)  # blocks of 4: two full kept blocks and one of 2 kept tokens
    masks = spg_block_masks(keep, num_t=1, block_length=4, min_t=0.25, max_t=1.0, generator=gen(2))
    chosen = check_block_masks(masks, keep, 4, 0.25, 1.0)[:, 0]
    assert set(chosen.tolist()) == {0, 1, 2}
    full = chosen < 2
    pos = torch.arange(12)[None, :]
    in_chosen = (pos >= 4 * chosen[:, None]) & (pos < 4 * chosen[:, None] + 4) & keep
    counts = (masks[:, 0] & in_chosen).sum(dim=1)
    assert set(counts[full].tolist()) == {1, 2, 3, 4}
    assert set(counts[~full].tolist()) == {1, 2}
    # the masked places inside a block are spread: every position of block 0 gets masked sometimes, not always
    block0 = masks[chosen == 0, 0, :4].float().mean(dim=0)
    assert bool((block0 > 0.2).all() and (block0 < 0.95).all())


def test_same_generator_same_masks_and_errors():
    keep = prefix_keep([8, 5, 3], 8)
    kwargs = dict(num_t=2, block_length=2, min_t=0.0, max_t=1.0)
    a = spg_block_masks(keep, generator=mask_generator(7), **kwargs)
    b = spg_block_masks(keep, generator=mask_generator(7), **kwargs)
    c = spg_block_masks(keep, generator=mask_generator(8), **kwargs)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ConfigError, match="must divide"):
        spg_block_masks(keep, generator=gen(0), num_t=1, block_length=3, min_t=0.0, max_t=1.0)
    with pytest.raises(ConfigError, match="num_t 5 is more than the 4 blocks"):
        spg_block_masks(keep, generator=gen(0), num_t=5, block_length=2, min_t=0.0, max_t=1.0)


def test_draw_holds_the_masks_then_the_kept_tokens():
    est = SPGBlocks(2, num_t=3, min_t=0.0, max_t=1.0)
    keep = prefix_keep([6, 4], 6)
    draw = est.draw(mask_generator(3), 2, 6, keep=keep)
    assert draw.shape == (2, 4, 6) and draw.dtype == torch.bool
    assert torch.equal(draw[:, 3], keep)
    assert torch.equal(draw[:, :3], spg_block_masks(keep, num_t=3, block_length=2, min_t=0.0, max_t=1.0,
                                                     generator=mask_generator(3)))
    assert torch.equal(est.draw(mask_generator(3), 2, 6)[:, 3], torch.ones(2, 6, dtype=torch.bool))
    assert est.draws_per_iteration and not est.same_input_every_iteration(0.0)
    assert est.output == "spg_bounds" and ESTIMATORS["spg_blocks"] is SPGBlocks


# ---------------------------------------------------------------- the channels


def channels_by_loop(logp, masked, keep, beta):
    """The module docstring's formulas, token by token, in Python floats."""
    rows, samples, length = logp.shape
    out = [[[0.0, 0.0, 0.0] for _ in range(length)] for _ in range(rows)]
    for i in range(rows):
        kept = int(keep[i].sum())
        m = [[bool(masked[i, j, k]) and bool(keep[i, k]) for k in range(length)] for j in range(samples)]
        n = [sum(m[j]) for j in range(samples)]
        for k in range(length):
            elbo = sum(float(logp[i, j, k]) / n[j] for j in range(samples) if m[j][k]) / samples
            weights = [math.exp(beta * float(logp[i, j, k])) / (n[j] / kept) for j in range(samples) if m[j][k]]
            if weights:
                out[i][k] = [elbo, math.log(sum(weights) / samples) / beta, 1.0]
    return torch.tensor(out, dtype=torch.float64)


def random_case(seed, rows=3, samples=3, length=8, block_length=2):
    g = gen(seed)
    keep = prefix_keep([8, 5, 2][:rows], length)
    masked = spg_block_masks(keep, num_t=samples, block_length=block_length, min_t=0.0, max_t=1.0, generator=g)
    logp = -3 * torch.rand(rows, samples, length, generator=g, dtype=torch.float64)
    return logp, masked, keep


@pytest.mark.parametrize("beta", [1.0, 1.5, 2.0])
def test_channels_match_a_loop(beta):
    logp, masked, keep = random_case(4)
    got = spg_channels(logp, masked, keep, beta)
    assert got.shape == (3, 8, 3) and got.dtype == torch.float64
    torch.testing.assert_close(got, channels_by_loop(logp, masked, keep, beta), rtol=1e-12, atol=1e-12)
    # nothing on tokens that are not kept, coverage 0/1
    assert bool((got[~keep] == 0).all())
    assert set(got[..., 2].unique().tolist()) <= {0.0, 1.0}
    # float32 gives the same values
    torch.testing.assert_close(spg_channels(logp.float(), masked, keep, beta), got.float(), rtol=1e-5, atol=1e-5)


def test_beta_one_and_one_fully_masked_sample_give_equal_bounds():
    logp = -2 * torch.rand(2, 1, 6, generator=gen(5), dtype=torch.float64)
    keep = prefix_keep([6, 4], 6)
    full = torch.ones(2, 1, 6, dtype=torch.bool)
    ch = spg_channels(logp, full, keep, 1.0)
    elbo = ch[..., 0].sum(dim=1)
    eubo = ch[..., 1].sum(dim=1) / ch[..., 2].sum(dim=1)
    expected = torch.stack([logp[0, 0].mean(), logp[1, 0, :4].mean()])
    torch.testing.assert_close(elbo, expected)
    torch.testing.assert_close(eubo, expected)
    # a larger beta keeps them equal with t = 1 (1/beta log p^beta = log p)
    ch2 = spg_channels(logp, full, keep, 2.0)
    torch.testing.assert_close(ch2[..., 1].sum(dim=1) / ch2[..., 2].sum(dim=1), expected)


def test_eubo_is_above_the_elbo_on_the_same_samples():
    # one sample, any mask: EUBO - ELBO = (1/beta) log(1 / t) >= 0, with equality only when t = 1
    for seed in range(5):
        logp, masked, keep = random_case(10 + seed, samples=1)
        for beta in (1.0, 1.5, 2.0):
            ch = spg_channels(logp, masked, keep, beta)
            elbo = ch[..., 0].sum(dim=1)
            eubo = ch[..., 1].sum(dim=1) / ch[..., 2].sum(dim=1)
            t = (masked[:, 0] & keep).sum(dim=1) / keep.sum(dim=1)
            torch.testing.assert_close(eubo - elbo, torch.log(1 / t.double()) / beta)
    # several fully masked samples: Jensen, (1/beta) log mean p^beta >= mean log p
    logp = -3 * torch.rand(2, 4, 6, generator=gen(6), dtype=torch.float64)
    ch = spg_channels(logp, torch.ones(2, 4, 6, dtype=torch.bool), prefix_keep([6, 6], 6), 1.5)
    gap = ch[..., 1].sum(dim=1) / 6 - ch[..., 0].sum(dim=1)
    assert bool((gap > 1e-3).all())


def test_channels_gradcheck():
    logp, masked, keep = random_case(7)
    logp.requires_grad_(True)
    for beta in (1.0, 2.0):
        assert torch.autograd.gradcheck(lambda x: spg_channels(x, masked, keep, beta), (logp,))
    # tokens masked in no sample get no gradient
    spg_channels(logp, masked, keep, 1.5).sum().backward()
    m = masked & keep[:, None, :]
    assert bool((logp.grad[~m] == 0).all()) and bool((logp.grad[m] != 0).all())


# ---------------------------------------------------------------- the passes through a model


def spg_case():
    """Two rows of 3 prompt tokens (row 0 left-padded) + 8 completion tokens; row 1 stops at position 4."""
    ids = torch.tensor([[0, 3, 4, 5, 6, 7, 8, 3, 1, 2, 6], [3, 3, 1, 5, 8, 2, 2, 7, 2, 2, 2]])
    prompt_mask = torch.zeros_like(ids, dtype=torch.bool)
    prompt_mask[:, :3] = True
    attention = torch.tensor([[0] + [1] * 10, [1] * 11])
    keep = prefix_keep([8, 5], 8)
    noisy = mask_prompt_for_logp(ids, prompt_mask, MASK, 0.5, generator=gen(11), attention_mask=attention)
    return ids, prompt_mask, attention, keep, noisy


def test_logps_are_the_channels_of_one_pass_per_sample():
    model = TinyBidirectionalLM()
    ids, prompt_mask, attention, keep, noisy = spg_case()
    est = SPGBlocks(2, num_t=3, eubo_beta=1.5)
    draw = est.draw(mask_generator(4), 2, 8, keep=keep)
    got = est.logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.5, noisy_ids=noisy,
                    attention_mask=attention, draw=draw)
    assert got.shape == (2, 8, 3) and got.dtype == torch.float32
    assert len(model.calls) == 3
    per_sample = torch.zeros(2, 3, 8)
    with torch.no_grad():
        for b in range(2):
            for j in range(3):
                x = noisy[b].clone()
                x[3:] = torch.where(draw[b, j], MASK, ids[b, 3:])
                seen, passed = model.calls[j]
                assert torch.equal(seen[b], x) and passed is attention  # prompt as noisy has it, same each pass
                logits = model(x[None], attention_mask=attention[b:b + 1]).logits[0, 3:]
                per_sample[b, j] = token_log_probs(logits[None], ids[b:b + 1, 3:])[0]
    torch.testing.assert_close(got, spg_channels(per_sample, draw[:, :3], keep, 1.5).float())
    torch.testing.assert_close(got.double(), channels_by_loop(per_sample.double(), draw[:, :3], keep, 1.5),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="needs its draw"):
        est.logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.5, noisy_ids=noisy)


def test_logps_do_not_depend_on_the_micro_batch_split():
    model = TinyBidirectionalLM()
    ids, prompt_mask, attention, keep, noisy = spg_case()
    ids, prompt_mask, attention, keep, noisy = (torch.cat([x, x.flip(0)]) for x in (ids, prompt_mask, attention,
                                                                                       keep, noisy))
    est = SPGBlocks(4, num_t=2)
    draw = est.draw(mask_generator(9), 4, 8, keep=keep)  # the iteration's draw, for the whole batch
    common = dict(mask_id=MASK, p_mask_prompt=0.5)
    whole = est.logps(model, ids, prompt_mask, noisy_ids=noisy, attention_mask=attention, draw=draw, **common)
    parts = [est.logps(model, ids[sl], prompt_mask[sl], noisy_ids=noisy[sl], attention_mask=attention[sl],
                       draw=draw[sl], **common) for sl in (slice(0, 1), slice(1, 3), slice(3, 4))]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-6, atol=1e-6)
    # and the same iteration seed gives the same channels again
    again = est.logps(model, ids, prompt_mask, noisy_ids=noisy, attention_mask=attention,
                      draw=est.draw(mask_generator(9), 4, 8, keep=keep), **common)
    assert torch.equal(again, whole)


# ---------------------------------------------------------------- settings


def test_settings_from_the_config():
    def cfg(est_params=None, obj=None):
        return SimpleNamespace(estimator="spg_blocks", estimator_params=est_params or {},
                               sampler=SimpleNamespace(block_length=4),
                               objective_options=lambda: obj)

    est = SPGBlocks.from_config(cfg())
    assert (est.block_length, est.num_t, est.min_t, est.max_t, est.eubo_beta) == (4, 2, 0.0, 1.0, 1.5)
    est = SPGBlocks.from_config(cfg({"num_t": 3, "block_length": 2, "min_t": 0.1, "max_t": 0.9},
                                    SimpleNamespace(eubo_beta=2.0)))
    assert (est.block_length, est.num_t, est.min_t, est.max_t, est.eubo_beta) == (2, 3, 0.1, 0.9, 2.0)
    assert SPGBlocksParams() == SPGBlocksParams(num_t=2, min_t=0.0, max_t=1.0, block_length=None)
    with pytest.raises(ConfigError, match="num_t must be a positive integer"):
        estimator_params("spg_blocks", {"num_t": 0}, "grpo.estimator_params")
    with pytest.raises(ConfigError, match="min_t <= max_t"):
        estimator_params("spg_blocks", {"min_t": 0.8, "max_t": 0.2}, "grpo.estimator_params")
    with pytest.raises(ConfigError, match="grpo.estimator_params: unknown key 'bogus'"):
        estimator_params("spg_blocks", {"bogus": 1}, "grpo.estimator_params")
