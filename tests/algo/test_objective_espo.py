"""ESPO (objectives/espo.py): hand values against a loop, limiting cases, clipping, gradients, GRPO steps."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from d1.algo.objectives import OBJECTIVES, ObjectiveInputs, traits_of
from d1.algo.objectives.espo import ESPOParams, espo_loss
from d1.errors import ConfigError


def case():
    g = torch.Generator().manual_seed(1)
    cur = -torch.rand(4, 5, generator=g) * 2
    old = cur + 0.3 * torch.randn(4, 5, generator=g)
    ref = cur + 0.5 * torch.randn(4, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -0.5, 0.75, -1.25])
    return cur, old, ref, adv, mask


def loop_loss(cur, old, ref, adv, mask, eps_low, eps_high, beta):
    total = 0.0
    for i in range(cur.shape[0]):
        kept = [k for k in range(cur.shape[1]) if mask[i, k]]
        length = len(kept)
        e, o, r = (sum(float(t[i, k]) for k in kept) for t in (cur, old, ref))
        rho = math.exp((e - o) / length)
        a = float(adv[i])
        policy = -min(rho * a, min(max(rho, 1 - eps_low), 1 + eps_high) * a)
        total += policy + beta * (e - r) ** 2 / (2 * length)
    return total / cur.shape[0]


@pytest.mark.parametrize("eps_low,eps_high,beta", [(0.2, 0.2, 0.0), (0.05, 0.3, 0.01), (0.5, None, 1.0)])
def test_loss_matches_a_loop(eps_low, eps_high, beta):
    cur, old, ref, adv, mask = case()
    loss, stats = espo_loss(cur, old, ref, adv, mask, eps_low=eps_low, eps_high=eps_high, beta=beta)
    expected = loop_loss(cur, old, ref, adv, mask, eps_low, eps_low if eps_high is None else eps_high, beta)
    assert float(loss) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert stats["num_tokens"] == 11.0 and stats["kl"] > 0
    assert stats["loss"] == pytest.approx(stats["policy_loss"] + beta * stats["kl"], rel=1e-5, abs=1e-6)


def test_ratio_one_gives_minus_mean_advantage_and_a_length_normalised_gradient():
    cur, _, _, adv, mask = case()
    x = cur.clone().requires_grad_(True)
    loss, stats = espo_loss(x, None, None, adv, mask, eps_low=0.2)
    assert float(loss.detach()) == pytest.approx(-float(adv.mean()))
    assert stats["ratio_min"] == stats["ratio_max"] == 1.0 and stats["clip_frac"] == 0.0 and "kl" not in stats
    loss.backward()
    lengths = mask.sum(dim=1, keepdim=True).float()
    torch.testing.assert_close(x.grad, -adv[:, None] / lengths / 4 * mask.float())
    # old equal to current is the same
    same, _ = espo_loss(cur, cur.clone(), None, adv, mask, eps_low=0.2)
    assert float(same) == pytest.approx(-float(adv.mean()))


def test_identical_reference_has_zero_kl_and_gradient():
    cur, old, _, adv, mask = case()
    x = cur.clone().requires_grad_(True)
    loss, stats = espo_loss(x, None, cur.clone(), torch.zeros(4), mask, eps_low=0.2, beta=1.0)
    loss.backward()
    assert stats["kl"] == 0.0 and float(loss) == 0.0 and torch.equal(x.grad, torch.zeros(4, 5))
    # the k2 gradient: beta (ELBO - ELBO_ref) / L on every kept token, over the B rows
    ref = cur - 0.4
    y = cur.clone().requires_grad_(True)
    espo_loss(y, None, ref, torch.zeros(4), mask, eps_low=0.2, beta=0.5)[0].backward()
    lengths = mask.sum(dim=1, keepdim=True).float()
    delta = (0.4 * lengths)  # ELBO - ELBO_ref per row
    torch.testing.assert_close(y.grad, 0.5 * delta / lengths / 4 * mask.float())


def one_row(delta, adv, eps_low, eps_high):
    """A single one-token completion with log-ratio ``delta``: its loss and gradient."""
    x = torch.tensor([[delta]], requires_grad=True)
    loss, stats = espo_loss(x, torch.zeros(1, 1), None, torch.tensor([adv]), torch.ones(1, 1, dtype=torch.bool),
                            eps_low=eps_low, eps_high=eps_high)
    loss.backward()
    return float(loss), float(x.grad), stats


def test_clipping_at_the_edges():
    lo, hi = 0.2, 0.28
    # A > 0: above 1 + eps_high the gradient is cut, just inside it is rho * A
    loss, grad, stats = one_row(math.log(1.3), 1.0, lo, hi)
    assert loss == pytest.approx(-1.28) and grad == 0.0 and stats["clip_high_frac"] == 1.0
    loss, grad, stats = one_row(math.log(1.27), 1.0, lo, hi)
    assert loss == pytest.approx(-1.27) and grad == pytest.approx(-1.27) and stats["clip_frac"] == 0.0
    # A > 0 below 1 - eps_low: not clipped (min picks the unclipped term)
    loss, grad, _ = one_row(math.log(0.5), 1.0, lo, hi)
    assert loss == pytest.approx(-0.5) and grad == pytest.approx(-0.5)
    # A < 0: below 1 - eps_low the gradient is cut; above 1 + eps_high it is not
    loss, grad, stats = one_row(math.log(0.7), -1.0, lo, hi)
    assert loss == pytest.approx(0.8) and grad == 0.0 and stats["clip_low_frac"] == 1.0
    loss, grad, _ = one_row(math.log(1.5), -1.0, lo, hi)
    assert loss == pytest.approx(1.5) and grad == pytest.approx(1.5)


def test_gradcheck_in_float64():
    cur, old, ref, adv, mask = case()
    x = cur.double().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: espo_loss(t, old.double(), ref.double(), adv.double(), mask, eps_low=0.3, eps_high=0.4,
                            beta=0.1)[0], (x,))


def test_registered_objective_and_errors():
    cur, old, ref, adv, mask = case()
    fn = OBJECTIVES["espo"]
    traits = traits_of(fn)
    assert traits.agg == "seq_mean" and traits.uses_old_policy and traits.uses_reference
    assert traits.estimator_outputs == ("elbo",) and traits.params is ESPOParams
    hparams = SimpleNamespace(epsilon=0.05, beta=0.01, objective_options=lambda: ESPOParams(epsilon_high=0.3))
    loss, _ = fn(ObjectiveInputs(cur, old, ref, adv, mask), hparams, agg="seq_mean")
    assert float(loss) == pytest.approx(loop_loss(cur, old, ref, adv, mask, 0.05, 0.3, 0.01), rel=1e-5)
    # the optimiser batch's row count as denominator: micro-batches sum to the batch loss
    parts = sum(float(fn(ObjectiveInputs(cur[r], old[r], ref[r], adv[r], mask[r]), hparams, denominator=4.0)[0])
                for r in (slice(0, 1), slice(1, 4)))
    assert parts == pytest.approx(float(loss), rel=1e-5)
    with pytest.raises(ConfigError, match="seq_mean or sum"):
        fn(ObjectiveInputs(cur, old, ref, adv, mask), hparams, agg="token_mean")
    with pytest.raises(ConfigError, match="needs the reference"):
        espo_loss(cur, old, None, adv, mask, eps_low=0.2, beta=0.1)
    with pytest.raises(ConfigError, match="epsilon_high"):
        ESPOParams(epsilon_high=-0.1).validate()


def test_espo_trains_with_old_and_reference_elbos(tmp_path, monkeypatch):
    from d1.algo.elbo_estimator import ELBOEstimator
    from d1.generation import SamplerConfig
    from d1.tasks.countdown import CountdownTask
    from d1.train.grpo import DiffuGRPO, run_grpo
    from d1.train.grpo_config import GRPOConfig
    from tests.train.conftest import save_tiny_base, write_tiny_data

    monkeypatch.setattr(CountdownTask, "reward_components", lambda self, completion, example: {
        "digits": sum(c.isdigit() for c in completion) / 10, "length": len(completion) / 40})
    data = write_tiny_data(tmp_path / "data")
    base = save_tiny_base(data, tmp_path / "base")
    seen, made, built = [], [], []
    real = OBJECTIVES["espo"]

    def spy(inputs, hparams, **kwargs):
        seen.append(inputs)
        return real(inputs, hparams, **kwargs)

    spy.traits = real.traits
    monkeypatch.setitem(OBJECTIVES._items, "espo", spy)
    rollouts, init = DiffuGRPO.make_rollouts, DiffuGRPO.__init__

    def spy_rollouts(self, round_index):
        made.append(rollouts(self, round_index))
        return made[-1]

    def spy_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(DiffuGRPO, "make_rollouts", spy_rollouts)
    monkeypatch.setattr(DiffuGRPO, "__init__", spy_init)
    common = dict(model_path=str(base), data_dir=str(data), tasks=["countdown"], num_generations=2,
                  generation_batch_size=4, batch_size=2, grad_accum=2, lr=1e-2, warmup_ratio=0.0, lora_r=4,
                  lora_alpha=8.0, lora_dropout=0.0, save_steps=0, device="cpu", objective="espo",
                  estimator="elbo", p_mask_prompt=0.0, loss_normalization="batch",
                  sampler=SamplerConfig(gen_length=8, block_length=8, steps=4, temperature=1.0))
    cfg = GRPOConfig(out_dir=str(tmp_path / "espo"), num_iterations=2, beta=0.01, max_steps=2, epsilon=0.2,
                     estimator_params={"num_mc": 1}, **common)
    cfg.validate()
    metrics = []
    summary = run_grpo(cfg, callbacks=[lambda step, m: metrics.append(dict(m))])
    assert summary["steps"] == 2 and len(metrics) == 2
    assert isinstance(built[0].estimator, ELBOEstimator) and built[0].estimator.num_mc == 1
    ro = made[0]
    assert len(ro.old_logps) == 2 and len(ro.ref_logps) == 2  # mu = 2: one old and one reference scoring each
    assert not torch.equal(ro.old_logps[0], ro.old_logps[1])  # each iteration has its own draw
    assert len(seen) == 4
    for inputs in seen:
        assert inputs.old_logp is not None and inputs.ref_logp is not None and inputs.logp.requires_grad
        assert bool((inputs.logp.detach()[~inputs.mask] == 0).all())  # tokens after the stop carry nothing
    # the first iteration's current policy is the old one on the same draw: ratio 1 (eval vs train mode aside,
    # there is no dropout here)
    first = seen[0]
    torch.testing.assert_close(first.logp.detach(), first.old_logp, rtol=1e-4, atol=1e-4)
    for m in metrics:
        assert math.isfinite(m["train/loss"]) and m["train/grad_norm"] > 0 and m["train/kl"] >= 0
        assert m["train/ratio_mean"] > 0
    assert metrics[0]["train/ratio_mean"] == pytest.approx(1.0, abs=1e-3)  # iteration 0: current = old
    # the ELBO estimator is what ESPO reads: d1's estimator is refused, and ESPO's estimator for d1's objective
    with pytest.raises(ConfigError, match="estimates token_logp, objective 'espo' reads elbo"):
        GRPOConfig(out_dir=str(tmp_path / "x"), **{**common, "estimator": "one_step"}).validate()
    with pytest.raises(ConfigError, match="estimates elbo"):
        GRPOConfig(out_dir=str(tmp_path / "y"), **{**common, "objective": "diffu_grpo"}).validate()
