"""wd1 (objectives/wd1.py): hand values against a loop, limiting cases, gradients, one GRPO step."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from d1.algo.objectives import OBJECTIVES, ObjectiveInputs, group_rows, traits_of
from d1.algo.objectives.wd1 import WD1Params, group_weights, wd1_loss
from d1.errors import ConfigError


def case():
    """Two groups of 3 completions of 4 tokens."""
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(6, 4, generator=g) * 3
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]],
                        dtype=torch.bool)
    adv = torch.tensor([1.0, -0.5, -0.5, 0.25, 0.75, -1.0])
    return logp, mask, adv


def loop_loss(logp, mask, adv, group, psi=1.0, neg_weight=1.0):
    """The authors' code per group (sum over the group of (w- - w+) log pi), averaged over groups."""
    losses = []
    for start in range(0, logp.shape[0], group):
        a = [float(x) for x in adv[start:start + group]]
        zp = sum(math.exp(psi * x) for x in a)
        zn = sum(math.exp(-psi * x) for x in a)
        total = 0.0
        for i in range(group):
            seq = sum(float(logp[start + i, k]) for k in range(logp.shape[1]) if mask[start + i, k])
            total += (neg_weight * math.exp(-psi * a[i]) / zn - math.exp(psi * a[i]) / zp) * seq
        losses.append(total)
    return sum(losses) / len(losses)


def run(logp, mask, adv, group=3, **kwargs):
    return wd1_loss(logp, adv, mask, group_rows(adv, group), **kwargs)


@pytest.mark.parametrize("psi,neg_weight", [(1.0, 1.0), (0.5, 1.0), (2.0, 0.0), (1.0, 0.3)])
def test_loss_matches_the_codes_loop(psi, neg_weight):
    logp, mask, adv = case()
    loss, stats = run(logp, mask, adv, psi=psi, neg_weight=neg_weight)
    assert math.isclose(float(loss), loop_loss(logp, mask, adv, 3, psi, neg_weight), rel_tol=1e-5, abs_tol=1e-6)
    assert stats["loss"] == pytest.approx(float(loss))
    assert stats["num_tokens"] == float(mask.sum())
    assert stats["pos_loss"] + stats["neg_loss"] == pytest.approx(stats["policy_loss"], abs=1e-5)


def test_weights_are_the_groups_softmax():
    _, _, adv = case()
    pos, neg = group_weights(adv, group_rows(adv, 3), psi=1.5)
    for start in (0, 3):
        torch.testing.assert_close(pos[start:start + 3], torch.softmax(1.5 * adv[start:start + 3].double(), 0))
        torch.testing.assert_close(neg[start:start + 3], torch.softmax(-1.5 * adv[start:start + 3].double(), 0))
    # a large psi puts the positive weight on the best completion, the negative one on the worst
    pos, neg = group_weights(adv, group_rows(adv, 3), psi=200.0)
    assert pos.tolist()[:3] == pytest.approx([1.0, 0.0, 0.0]) and neg.tolist()[3:] == pytest.approx([0, 0, 1.0])


def test_micro_batches_of_part_groups_sum_to_the_batch_loss_and_gradient():
    logp, mask, adv = case()
    groups = group_rows(adv, 3)
    whole = logp.clone().requires_grad_(True)
    loss, _ = wd1_loss(whole, adv, mask, groups)
    loss.backward()
    parts = logp.clone().requires_grad_(True)
    total = 0.0
    for rows in (slice(0, 2), slice(2, 4), slice(4, 6)):  # each micro-batch splits a group
        part, _ = wd1_loss(parts[rows], adv[rows], mask[rows], groups[rows], denominator=6.0)
        part.backward()
        total += float(part.detach())
    assert total == pytest.approx(float(loss), rel=1e-5)
    torch.testing.assert_close(parts.grad, whole.grad)


def test_zero_advantages_give_equal_weights_and_no_gradient():
    logp, mask, _ = case()
    adv = torch.tensor([0.0, 0.0, 0.0, 1.0, -1.0, 0.0])
    x = logp.clone().requires_grad_(True)
    loss, stats = run(x, mask, adv)
    loss.backward()
    pos, neg = group_weights(adv, group_rows(adv, 3), 1.0)
    torch.testing.assert_close(pos[:3], torch.full((3,), 1 / 3, dtype=torch.float64))
    torch.testing.assert_close(neg[:3], pos[:3])
    assert torch.equal(x.grad[:3], torch.zeros(3, 4))
    assert x.grad[3:].abs().sum() > 0
    # psi -> 0: every weight -> 1/G, both terms cancel, the loss vanishes
    small, _ = run(logp, mask, case()[2], psi=1e-6)
    assert abs(float(small)) < 1e-5


def test_gradient_is_the_signed_weight_on_each_kept_token():
    logp, mask, adv = case()
    x = logp.double().requires_grad_(True)
    loss, _ = run(x, mask, adv)
    loss.backward()
    pos, neg = group_weights(adv, group_rows(adv, 3), 1.0)
    expected = ((neg - pos) / 2)[:, None] * mask.double()  # (w- - w+) / (number of groups)
    torch.testing.assert_close(x.grad, expected)
    # the best completion of a group is pushed up, the worst down
    assert x.grad[0, 0] < 0 and x.grad[5, 0] > 0
    assert torch.autograd.gradcheck(lambda t: run(t, mask, adv, psi=0.7, neg_weight=0.5)[0], (x.detach().clone()
                                    .requires_grad_(True),))


def test_registered_objective_reads_its_params_and_refuses_token_mean():
    logp, mask, adv = case()
    fn = OBJECTIVES["wd1"]
    traits = traits_of(fn)
    assert traits.agg == "seq_mean" and not traits.uses_old_policy and not traits.uses_reference
    assert traits.params is WD1Params and traits.estimator_outputs == ("token_logp",)
    hparams = SimpleNamespace(epsilon=0.2, beta=0.0, objective_options=lambda: WD1Params(psi=2.0, neg_weight=0.5))
    loss, _ = fn(ObjectiveInputs(logp, None, None, adv, mask, group_rows(adv, 3)), hparams, agg="seq_mean")
    assert float(loss) == pytest.approx(loop_loss(logp, mask, adv, 3, 2.0, 0.5), rel=1e-5)
    with pytest.raises(ConfigError, match="seq_mean or sum"):
        fn(ObjectiveInputs(logp, None, None, adv, mask, group_rows(adv, 3)), hparams, agg="token_mean")
    with pytest.raises(ConfigError, match="group_advantages"):
        fn(ObjectiveInputs(logp, None, None, adv, mask), hparams)
    with pytest.raises(ConfigError, match="psi must be > 0"):
        WD1Params(psi=0.0).validate()


def test_wd1_trains_one_grpo_step_without_old_log_probs(tmp_path, monkeypatch):
    from d1.generation import SamplerConfig
    from d1.tasks.countdown import CountdownTask
    from d1.train.grpo import DiffuGRPO, run_grpo
    from d1.train.grpo_config import GRPOConfig
    from tests.train.conftest import save_tiny_base, write_tiny_data

    monkeypatch.setattr(CountdownTask, "reward_components", lambda self, completion, example: {
        "digits": sum(c.isdigit() for c in completion) / 10, "length": len(completion) / 40})
    data = write_tiny_data(tmp_path / "data")
    base = save_tiny_base(data, tmp_path / "base")
    seen_inputs, made = [], []
    real = OBJECTIVES["wd1"]

    def spy(inputs, hparams, **kwargs):
        seen_inputs.append(inputs)
        return real(inputs, hparams, **kwargs)

    spy.traits = real.traits
    monkeypatch.setitem(OBJECTIVES._items, "wd1", spy)
    rollouts = DiffuGRPO.make_rollouts

    def spy_rollouts(self, round_index):
        ro = rollouts(self, round_index)
        made.append(ro)
        return ro

    monkeypatch.setattr(DiffuGRPO, "make_rollouts", spy_rollouts)
    cfg = GRPOConfig(model_path=str(base), data_dir=str(data), tasks=["countdown"], out_dir=str(tmp_path / "wd1"),
                     num_generations=2, generation_batch_size=4, batch_size=2, grad_accum=2, num_iterations=2,
                     beta=0.0, max_steps=2, lr=1e-2, warmup_ratio=0.0, lora_r=4, lora_alpha=8.0,
                     lora_dropout=0.0, save_steps=0, device="cpu", objective="wd1", loss_normalization="batch",
                     objective_params={"psi": 1.0},
                     sampler=SamplerConfig(gen_length=8, block_length=8, steps=4, temperature=1.0))
    cfg.validate()
    metrics = []
    summary = run_grpo(cfg, callbacks=[lambda step, m: metrics.append(dict(m))])
    assert summary["steps"] == 2 and len(metrics) == 2
    assert len(made) == 1 and made[0].old_logps is None and made[0].ref_logps is None  # mu = 2, yet no old pass
    assert len(seen_inputs) == 4
    assert any(bool(i.advantages.abs().sum() > 0) for i in seen_inputs)
    for inputs in seen_inputs:
        assert inputs.old_logp is None and inputs.ref_logp is None and inputs.logp.requires_grad
        assert inputs.group_advantages.shape == (2, 2)
    for m in metrics:
        assert math.isfinite(m["train/loss"]) and m["train/grad_norm"] > 0
        assert 0 < m["train/weight_pos_mean"] < 1
    # wd1 has no KL term: a beta is refused
    cfg.beta = 0.04
    with pytest.raises(ConfigError, match="no KL term"):
        cfg.validate()
