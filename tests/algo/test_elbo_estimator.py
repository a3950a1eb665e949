"""The ``elbo`` estimator (d1/algo/elbo_estimator.py): draw, weights, passes against a loop, exact limits."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from d1.algo import ESTIMATORS, mask_generator
from d1.algo.elbo_estimator import FIRST, OUTSIDE, SECOND, ELBOEstimator, ELBOParams, elbo_draw, elbo_weights
from d1.errors import ConfigError
from tests.algo.test_grpo import MASK, TinyBidirectionalLM, estimator_case


def keep_of(lengths, T):
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]


def test_draw_codes_lengths_and_stratification():
    keep = keep_of([6, 3, 6, 1, 6, 6], 6)
    draw = elbo_draw(mask_generator(4), 6, 6, num_mc=3, keep=keep)
    assert draw.shape == (6, 3, 6) and draw.dtype == torch.int8
    assert torch.equal(draw == OUTSIDE, ~keep[:, None, :].expand(6, 3, 6))  # outside exactly past the kept tokens
    assert bool(((draw == FIRST) | (draw == SECOND) | (draw == OUTSIDE)).all())
    x = (draw == FIRST).sum(dim=2)
    lengths = keep.sum(dim=1)[:, None]
    assert bool((x <= lengths).all())
    # same generator seed, same draw (old, reference and current policy share it); another seed differs
    assert torch.equal(draw, elbo_draw(mask_generator(4), 6, 6, num_mc=3, keep=keep))
    assert not torch.equal(draw, elbo_draw(mask_generator(5), 6, 6, num_mc=3, keep=keep))
    # N rows of one length L = N - 1: the strata are the N counts 0..L, each exactly once, in every sample
    full = elbo_draw(mask_generator(7), 6, 5, num_mc=4)
    for sample in range(4):
        assert sorted((full[:, sample] == FIRST).sum(dim=1).tolist()) == [0, 1, 2, 3, 4, 5]
    # no keep: every token kept
    assert not bool((full == OUTSIDE).any())


def test_each_rows_count_is_uniform_and_its_positions_too():
    counts = torch.zeros(5)
    positions = torch.zeros(4)
    trials = 2000
    for seed in range(trials):
        draw = elbo_draw(mask_generator(seed), 3, 4, num_mc=1)
        row = draw[1, 0]
        counts[int((row == FIRST).sum())] += 1
        positions += (row == FIRST).float()
    # x uniform on {0..4}: 1/5 each; a position is masked with probability E[x] / L = 2 / 4
    assert torch.allclose(counts / trials, torch.full((5,), 0.2), atol=0.03)
    assert torch.allclose(positions / trials, torch.full((4,), 0.5), atol=0.04)


def test_weights_are_inverse_rates_and_each_token_is_scored_once_per_pair():
    draw = torch.tensor([[[1, 1, 0, 0, -1]], [[0, 0, 0, -1, -1]], [[1, 1, 1, 1, 1]]], dtype=torch.int8)
    coupled = elbo_weights(draw, coupled=True)[:, 0]
    # row 0: L = 4, x = 2: (L + 1) / x = 2.5 on the first pass's tokens, (L + 1) / (L - x) = 2.5 on the others, halved
    assert coupled[0].tolist() == pytest.approx([1.25, 1.25, 1.25, 1.25, 0.0])
    # row 1: x = 0, only the complement pass: (3 + 1) / 3, halved; row 2: x = L = 5: 6 / 5, halved
    assert coupled[1].tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 0.0, 0.0])
    assert coupled[2].tolist() == pytest.approx([0.6] * 5)
    single = elbo_weights(draw, coupled=False)[:, 0]
    assert single[0].tolist() == pytest.approx([2.5, 2.5, 0, 0, 0]) and single[1].tolist() == [0.0] * 5
    # K samples are averaged
    two = elbo_weights(torch.cat([draw, draw], dim=1), coupled=True)
    torch.testing.assert_close(two.sum(dim=1), coupled)
    # every kept token has a weight in exactly one pass of a coupled pair; E[weight] = 1 per token
    total = torch.zeros(6)
    for seed in range(1500):
        d = elbo_draw(mask_generator(seed), 2, 6, num_mc=1, keep=keep_of([6, 4], 6))
        w = elbo_weights(d, coupled=True)
        assert bool(((w > 0) == (d != OUTSIDE)).all())
        total += w[0, 0]
    assert torch.allclose(total / 1500, torch.ones(6), atol=0.08)


def test_logps_match_a_loop_over_passes():
    model = TinyBidirectionalLM()
    ids, prompt_mask, attention, noisy = estimator_case()
    keep = keep_of([6, 4], 6)
    draw = elbo_draw(mask_generator(3), 2, 6, num_mc=2, keep=keep)
    for coupled in (True, False):
        model.calls.clear()
        est = ELBOEstimator(num_mc=2, coupled=coupled)
        got = est.logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.3, noisy_ids=noisy,
                        attention_mask=attention, draw=draw)
        assert got.shape == (2, 6) and got.dtype == torch.float32
        assert len(model.calls) == (4 if coupled else 2)  # one forward per pass over the micro-batch
        expected = torch.zeros(2, 6)
        with torch.no_grad():
            for b in range(2):
                for s in range(2):
                    code = draw[b, s]
                    L = int((code != OUTSIDE).sum())
                    x = int((code == FIRST).sum())
                    for c, count in ((FIRST, x), (SECOND, L - x)):
                        if c == SECOND and not coupled:
                            continue
                        for k in range(6):
                            if code[k] != c:
                                continue
                            inp = noisy[b].clone()
                            hidden = (code == c) | (code == OUTSIDE)
                            inp[3:] = torch.where(hidden, MASK, ids[b, 3:])
                            row = model(inp[None], attention_mask=attention[b:b + 1]).logits[0, 3 + k]
                            logp = float(row[ids[b, 3 + k]] - torch.logsumexp(row, 0))
                            expected[b, k] += (L + 1) / count * logp / (2 if coupled else 1) / 2
        torch.testing.assert_close(got.detach(), expected, rtol=1e-5, atol=1e-6)
        assert bool((got[~keep] == 0).all()) and bool((got[keep] <= 0).all())  # an ELBO is at most 0


class Oracle(nn.Module):
    """Puts (almost) all mass on the true token of every position: log p(true) = 0 in float32."""

    def __init__(self, ids):
        super().__init__()
        self.ids = ids
        self.scale = nn.Parameter(torch.tensor(100.0))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.scale * nn.functional.one_hot(self.ids, 10).float())


class ContextFree(nn.Module):
    """Logits depend on the position only: the model's joint is the product of its marginals."""

    def __init__(self, length):
        super().__init__()
        self.table = nn.Parameter(torch.randn(length, 10, generator=torch.Generator().manual_seed(2)))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[None].expand(input_ids.shape[0], -1, -1))


def test_a_model_sure_of_the_true_tokens_has_elbo_zero():
    ids, prompt_mask, attention, noisy = estimator_case()
    est = ELBOEstimator(num_mc=3)
    draw = est.draw(mask_generator(1), 2, 6, keep=keep_of([6, 2], 6))
    got = est.logps(Oracle(ids), ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.3, noisy_ids=noisy, draw=draw)
    assert float(got.detach().abs().sum()) < 1e-6
    # a less sure model has a negative ELBO
    weak = Oracle(ids)
    weak.scale.data.fill_(1.0)
    assert float(est.logps(weak, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.3, noisy_ids=noisy,
                           draw=draw).sum()) < -1.0


def test_elbo_is_unbiased_for_a_context_free_model():
    ids, prompt_mask, _, noisy = estimator_case()
    model = ContextFree(ids.shape[1])
    keep = keep_of([6, 3], 6)
    with torch.no_grad():
        exact = torch.log_softmax(model.table, -1)[torch.arange(3, 9), ids[:, 3:]]  # [2, 6] log p of each token
        exact = (exact * keep).sum(dim=1)
        est = ELBOEstimator(num_mc=1)
        runs = torch.stack([est.logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.0, noisy_ids=noisy,
                                      draw=est.draw(mask_generator(seed), 2, 6, keep=keep)).sum(dim=1)
                            for seed in range(600)])
    # the joint is the product of the marginals, so the ELBO equals log p in expectation
    assert torch.allclose(runs.mean(dim=0), exact, rtol=0.05)
    assert bool((runs.std(dim=0) > 0).all())  # and each estimate is random


def test_registration_config_and_errors():
    assert ESTIMATORS["elbo"] is ELBOEstimator
    assert ELBOEstimator.output == "elbo" and ELBOEstimator.draws_per_iteration
    est = ELBOEstimator.from_config(SimpleNamespace(estimator="elbo", estimator_params={"num_mc": 3,
                                                                                        "coupled": False}))
    assert est.num_mc == 3 and not est.coupled
    default = ELBOEstimator.from_config(SimpleNamespace(estimator="elbo", estimator_params={}))
    assert (default.num_mc, default.coupled) == (ELBOParams().num_mc, ELBOParams().coupled) == (2, True)
    assert not default.same_input_every_iteration(0.0)
    with pytest.raises(ConfigError, match="num_mc must be a positive integer"):
        ELBOEstimator.from_config(SimpleNamespace(estimator="elbo", estimator_params={"num_mc": 0}))
    ids, prompt_mask, attention, noisy = estimator_case()
    with pytest.raises(ConfigError, match="needs its draw"):
        default.logps(TinyBidirectionalLM(), ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.3, noisy_ids=noisy)
    # a pass that scores no kept token is skipped when given the kept tokens
    model = TinyBidirectionalLM()
    draw = torch.tensor([[[1] * 6], [[1] * 6]], dtype=torch.int8)  # x = L: the complement pass masks nothing
    default.logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.3, noisy_ids=noisy, draw=draw,
                  score_mask=torch.ones(2, 6, dtype=torch.bool))
    assert len(model.calls) == 1
    assert not math.isnan(float(elbo_weights(draw, coupled=True).sum()))
