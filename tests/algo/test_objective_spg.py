"""SPG's objective ``spg``: against a loop of its formula, its limiting cases, its gradient, one GRPO step."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from d1.algo import OBJECTIVES, ObjectiveInputs, mask_generator
from d1.algo.objectives import traits_of
from d1.algo.objectives import objective_params
from d1.algo.objectives.spg import SPGParams, spg_bounds, spg_loss
from d1.algo.spg_estimator import SPGBlocks
from d1.errors import ConfigError
from tests.algo.test_grpo import MASK, TinyBidirectionalLM
from tests.algo.test_spg_estimator import spg_case


def gen(seed):
    return torch.Generator().manual_seed(seed)


def case(seed=0, dtype=torch.float64):
    """Channels [4, 6, 3] as spg_blocks makes them (0 outside the kept tokens), advantages of both signs and 0."""
    g = gen(seed)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 4, 5, 2])[:, None]
    c0 = -torch.rand(4, 6, generator=g, dtype=dtype) * mask
    cover = (torch.rand(4, 6, generator=g) < 0.7) & mask
    cover[:, 0] = True
    c1 = (torch.rand(4, 6, generator=g, dtype=dtype) - 0.8) * cover
    channels = torch.stack([c0, c1, cover.to(dtype)], dim=-1)
    advantages = torch.tensor([0.5, -1.0, 0.0, -0.25], dtype=dtype)
    return channels, advantages, mask


def loss_by_loop(channels, advantages, mask, variant, omega, agg="token_mean", denominator=None):
    """sum_i L_i (-A_i bound_i) / sum_i L_i (token_mean) or mean_i -A_i bound_i (seq_mean), from the formula."""
    rows = []
    for i in range(channels.shape[0]):
        length = int(mask[i].sum())
        elbo = sum(float(channels[i, k, 0]) for k in range(channels.shape[1]))
        covered = sum(float(channels[i, k, 2]) for k in range(channels.shape[1]))
        eubo = sum(float(channels[i, k, 1]) for k in range(channels.shape[1])) / max(covered, 1)
        a = float(advantages[i])
        negative = {"eubo": eubo, "mix": omega * eubo + (1 - omega) * elbo, "elbo": elbo}[variant]
        rows.append((length, -a * (elbo if a > 0 else negative)))
    if agg == "seq_mean":
        return sum(v for _, v in rows) / (len(rows) if denominator is None else denominator)
    total = sum(n * v for n, v in rows)
    return total / (sum(n for n, _ in rows) if denominator is None else denominator)


@pytest.mark.parametrize("variant,omega", [("eubo", 0.5), ("mix", 0.5), ("mix", 0.3), ("elbo", 0.5)])
def test_loss_matches_a_loop(variant, omega):
    channels, advantages, mask = case(1)
    loss, stats = spg_loss(channels, advantages, mask, variant=variant, mix_weight=omega)
    assert math.isclose(float(loss), loss_by_loop(channels, advantages, mask, variant, omega), rel_tol=1e-12)
    assert stats["loss"] == float(loss) and stats["num_tokens"] == 17.0
    assert stats["pos_frac"] == pytest.approx(6 / 17)
    elbo, eubo = spg_bounds(channels)
    assert stats["bound_gap"] == pytest.approx(stats["eubo"] - stats["elbo"])
    assert stats["elbo"] == pytest.approx(float((elbo * mask.sum(1)).sum() / 17))
    # the optimiser batch's denominator and the seq_mean mode
    got = spg_loss(channels, advantages, mask, variant=variant, mix_weight=omega, denominator=40.0)[0]
    assert math.isclose(float(got), loss_by_loop(channels, advantages, mask, variant, omega, denominator=40.0),
                        rel_tol=1e-12)
    got = spg_loss(channels, advantages, mask, variant=variant, mix_weight=omega, agg="seq_mean")[0]
    assert math.isclose(float(got), loss_by_loop(channels, advantages, mask, variant, omega, "seq_mean"),
                        rel_tol=1e-12)
    # micro-batches with the batch's kept-token count sum to the batch's loss
    parts = [spg_loss(channels[sl], advantages[sl], mask[sl], variant=variant, mix_weight=omega,
                      denominator=float(mask.sum()))[0] for sl in (slice(0, 1), slice(1, 4))]
    torch.testing.assert_close(sum(parts), loss)


def test_mix_weight_zero_is_the_elbo_and_one_the_eubo():
    channels, advantages, mask = case(2)
    results = {}
    for name, variant, omega in [("mix0", "mix", 0.0), ("elbo", "elbo", 0.5), ("mix1", "mix", 1.0),
                                 ("eubo", "eubo", 0.5), ("mixh", "mix", 0.5)]:
        x = channels.clone().requires_grad_(True)
        loss, _ = spg_loss(x, advantages, mask, variant=variant, mix_weight=omega)
        loss.backward()
        results[name] = (loss.detach(), x.grad)
    for a, b in (("mix0", "elbo"), ("mix1", "eubo")):
        assert torch.equal(results[a][0], results[b][0]) and torch.equal(results[a][1], results[b][1])
    assert not torch.allclose(results["mixh"][0], results["elbo"][0])
    assert not torch.allclose(results["mixh"][0], results["eubo"][0])


def test_zero_advantages_give_zero_loss_and_gradient():
    channels, _, mask = case(3)
    x = channels.clone().requires_grad_(True)
    loss, _ = spg_loss(x, torch.zeros(4, dtype=torch.float64), mask, variant="eubo")
    loss.backward()
    assert float(loss.detach()) == 0.0 and bool((x.grad == 0).all())


def test_only_the_sign_of_the_advantage_picks_the_bound():
    channels, advantages, mask = case(4)
    x = channels.clone().requires_grad_(True)
    spg_loss(x, advantages, mask, variant="eubo")[0].backward()
    grad = x.grad
    # A > 0 (row 0): only its ELBO terms; A < 0 (rows 1, 3): only its EUBO terms; A = 0 (row 2): nothing
    assert bool((grad[0, :, 1:] == 0).all()) and bool((grad[0, :, 0][mask[0]] != 0).all())
    for i in (1, 3):
        assert bool((grad[i, :, 0] == 0).all()) and bool((grad[i, :, 1][channels[i, :, 2] > 0] != 0).all())
    assert bool((grad[2] == 0).all())
    # the bound of a row follows its sign alone: -A_i bound_i is linear in A_i on each side
    elbo, eubo = spg_bounds(channels)
    for a in (0.1, 2.0, -0.1, -3.0):
        adv = torch.tensor([a, 0.0, 0.0, 0.0], dtype=torch.float64)
        loss = spg_loss(channels, adv, mask, variant="eubo", denominator=1.0)[0]
        expected = -a * (elbo[0] if a > 0 else eubo[0]) * 6
        assert math.isclose(float(loss), float(expected), rel_tol=1e-12)
    # flipping the sign of every advantage swaps the bounds (not merely the sign of the loss)
    flipped = spg_loss(channels, -advantages, mask, variant="eubo")[0]
    assert not math.isclose(float(flipped), -float(spg_loss(channels, advantages, mask, variant="eubo")[0]))


def test_beta_one_fully_masked_bounds_coincide_in_the_loss():
    """With equal per-token bounds (beta = 1, one fully masked sample), every variant is the same loss."""
    logp = -torch.rand(4, 6, generator=gen(5), dtype=torch.float64)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 4, 5, 2])[:, None]
    from d1.algo.spg_estimator import spg_channels

    channels = spg_channels(logp[:, None, :], torch.ones(4, 1, 6, dtype=torch.bool), mask, 1.0)
    advantages = torch.tensor([0.5, -1.0, 0.7, -0.25], dtype=torch.float64)
    losses = [float(spg_loss(channels, advantages, mask, variant=v)[0]) for v in ("eubo", "mix", "elbo")]
    assert losses[0] == pytest.approx(losses[1], abs=1e-12) and losses[0] == pytest.approx(losses[2], abs=1e-12)
    # and it is -sum_i A_i sum_k log p_ik / sum L (the REINFORCE loss of the token log-probs)
    expected = float(-(advantages[:, None] * logp * mask).sum() / mask.sum())
    assert losses[0] == pytest.approx(expected, abs=1e-12)


def test_gradcheck_of_the_loss():
    channels, advantages, mask = case(6)
    x = channels.clone().requires_grad_(True)
    for variant in ("eubo", "mix", "elbo"):
        assert torch.autograd.gradcheck(lambda c: spg_loss(c, advantages, mask, variant=variant)[0], (x,))


def test_gradient_through_the_estimator_matches_finite_differences():
    """d loss / d head of the tiny model along a random direction: autograd against central differences."""
    model = TinyBidirectionalLM().double()
    ids, prompt_mask, attention, keep, noisy = spg_case()
    est = SPGBlocks(2, num_t=2, eubo_beta=2.0)
    draw = est.draw(mask_generator(12), 2, 8, keep=keep)
    advantages = torch.tensor([0.8, -0.6])

    def loss_of(m):
        channels = est.logps(m, ids, prompt_mask, mask_id=MASK, p_mask_prompt=0.5, noisy_ids=noisy,
                             attention_mask=attention, draw=draw)
        return spg_loss(channels, advantages, keep, variant="mix", mix_weight=0.5)[0]

    loss = loss_of(model)
    loss.backward()
    direction = torch.randn(model.head.shape, generator=gen(13), dtype=torch.float64)
    analytic = float((model.head.grad * direction).sum())
    eps = 1e-2
    with torch.no_grad():
        base = model.head.detach().clone()
        model.head.copy_(base + eps * direction)
        up = float(loss_of(model))
        model.head.copy_(base - eps * direction)
        down = float(loss_of(model))
        model.head.copy_(base)
    numeric = (up - down) / (2 * eps)
    assert abs(analytic) > 1e-3
    assert analytic == pytest.approx(numeric, rel=2e-3, abs=1e-5)


def test_params_traits_and_registration():
    assert OBJECTIVES["spg"] is not None
    traits = traits_of(OBJECTIVES["spg"])
    assert (traits.agg, traits.uses_old_policy, traits.uses_reference) == ("token_mean", False, False)
    assert traits.estimator_outputs == ("spg_bounds",) and traits.params is SPGParams
    assert SPGParams() == SPGParams(variant="mix", eubo_beta=1.5, mix_weight=0.5)
    assert objective_params("spg", {"variant": "eubo", "eubo_beta": 2.0}, "grpo.objective_params") == \
        SPGParams(variant="eubo", eubo_beta=2.0, mix_weight=0.5)
    for values, message in [({"variant": "zero"}, "variant must be one of mix, eubo, elbo"),
                            ({"eubo_beta": 0.5}, "eubo_beta must be >= 1"),
                            ({"mix_weight": 1.5}, r"mix_weight must be in \[0, 1\]")]:
        with pytest.raises(ConfigError, match=message):
            objective_params("spg", values, "grpo.objective_params")
    # the registered objective reads its params from the config
    channels, advantages, mask = case(7)
    hparams = SimpleNamespace(objective_options=lambda: SPGParams(variant="mix", mix_weight=0.25))
    loss, stats = OBJECTIVES["spg"](ObjectiveInputs(channels, None, None, advantages, mask), hparams)
    assert float(loss) == float(spg_loss(channels, advantages, mask, variant="mix", mix_weight=0.25)[0])
    with pytest.raises(ConfigError, match=r"channels \[B, T, 3\]"):
        spg_loss(channels[..., 0], advantages, mask)


# ---------------------------------------------------------------- one GRPO step through the trainer


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from tests.train.conftest import save_tiny_base, write_tiny_data

    data = write_tiny_data(tmp_path_factory.mktemp("data"))
    return save_tiny_base(data, tmp_path_factory.mktemp("base")), data


def test_spg_trains_grpo_steps_without_old_log_probs(tiny_setup, tmp_path, monkeypatch):
    from d1.generation import SamplerConfig
    from d1.tasks.countdown import CountdownTask
    from d1.train.grpo import run_grpo
    from d1.train.grpo_config import GRPOConfig

    monkeypatch.setattr(CountdownTask, "reward_components", lambda self, completion, example: {
        "digits": sum(c.isdigit() for c in completion) / 10, "length": len(completion) / 40})
    base, data = tiny_setup
    common = dict(model_path=str(base), data_dir=str(data), tasks=["countdown"], num_generations=2,
                  generation_batch_size=4, batch_size=2, grad_accum=2, num_iterations=2, max_steps=2, lr=1e-2,
                  warmup_ratio=0.0, lora_r=4, lora_alpha=8.0, lora_dropout=0.0, save_steps=0, device="cpu",
                  loss_normalization="batch", objective="spg", estimator="spg_blocks",
                  objective_params={"variant": "mix", "eubo_beta": 2.0},
                  estimator_params={"num_t": 2, "block_length": 4},
                  sampler=SamplerConfig(gen_length=8, block_length=8, steps=4, temperature=1.0))
    with pytest.raises(ConfigError, match="grpo.beta"):
        GRPOConfig(out_dir=str(tmp_path / "kl"), beta=0.04, **common).validate()
    cfg = GRPOConfig(out_dir=str(tmp_path / "spg"), beta=0.0, **common)
    cfg.validate()

    calls, seen_inputs = [], []
    logps = SPGBlocks.logps

    def spy_logps(self, *args, **kwargs):
        calls.append((torch.is_grad_enabled(), self.eubo_beta, self.block_length, self.num_t,
                      tuple(kwargs["draw"].shape)))
        return logps(self, *args, **kwargs)

    objective = OBJECTIVES["spg"]

    def spy_objective(inputs, hparams, **kwargs):
        seen_inputs.append(inputs)
        return objective(inputs, hparams, **kwargs)

    spy_objective.traits = objective.traits
    monkeypatch.setattr(SPGBlocks, "logps", spy_logps)
    monkeypatch.setitem(OBJECTIVES._items, "spg", spy_objective)
    seen = []
    summary = run_grpo(cfg, callbacks=[lambda step, metrics: seen.append(dict(metrics))])
    assert summary["steps"] == 2 and len(seen) == 2
    # mu = 2 and a ratio-free objective: no scoring without grad (no old policy, no reference), only the
    # 2 steps x 2 micro-batches with grad, with the beta of the objective's params and the estimator's own
    assert [c[0] for c in calls] == [True] * 4
    assert {c[1:4] for c in calls} == {(2.0, 4, 2)} and {c[4] for c in calls} == {(2, 3, 8)}
    assert len(seen_inputs) == 4
    for inputs in seen_inputs:
        assert inputs.old_logp is None and inputs.ref_logp is None
        assert inputs.logp.shape == (2, 8, 3) and inputs.logp.requires_grad
    assert any(bool(inputs.advantages.abs().sum() > 0) for inputs in seen_inputs)
    for metrics in seen:
        assert math.isfinite(metrics["train/loss"]) and metrics["train/grad_norm"] > 0
        assert metrics["train/elbo"] < 0 and math.isfinite(metrics["train/eubo"])
        assert "train/kl" not in metrics and "train/ratio_mean" not in metrics
    # the two iterations drew different masks (seeds per iteration): their ELBOs differ
    assert seen[0]["train/elbo"] != seen[1]["train/elbo"]
