"""Registries of estimators and objectives, the loss aggregation, and d1's loss against its pre-registry values."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import d1.algo
from d1.algo import (
    AGG_MODES,
    ESTIMATORS,
    OBJECTIVES,
    ObjectiveInputs,
    Registry,
    agg_loss,
    coupled_completion_mask,
    diffu_grpo_loss,
    mask_generator,
    per_token_logps,
    register_objective,
)
from d1.algo.estimators import Blockwise, Coupled, Estimator, Replay
from d1.algo.registry import ESTIMATORS as REGISTRY_ESTIMATORS
from d1.algo.registry import OBJECTIVES as REGISTRY_OBJECTIVES
from d1.errors import ConfigError
from tests.algo.test_grpo import MASK, TinyBidirectionalLM, estimator_case

# ---------------------------------------------------------------- lookup


def test_registries_hold_the_built_in_variants_by_name():
    assert ESTIMATORS is REGISTRY_ESTIMATORS and OBJECTIVES is REGISTRY_OBJECTIVES
    assert ESTIMATORS.names() == ("one_step", "blockwise", "coupled", "replay", "elbo", "spg_blocks")
    assert OBJECTIVES.names() == ("diffu_grpo", "espo", "spg", "wd1")
    assert ESTIMATORS["one_step"] is Estimator and ESTIMATORS.get("blockwise") is Blockwise
    assert ESTIMATORS["coupled"] is Coupled and ESTIMATORS["replay"] is Replay
    assert "replay" in ESTIMATORS and "two_step" not in ESTIMATORS and 3 not in ESTIMATORS
    assert len(ESTIMATORS) == 6 and list(ESTIMATORS) == list(ESTIMATORS.names())
    assert callable(OBJECTIVES["diffu_grpo"])
    # the lazy package exports the same objects
    assert d1.algo.ESTIMATORS is ESTIMATORS and d1.algo.OBJECTIVES is OBJECTIVES


def test_unknown_names_are_errors_listing_the_known_ones():
    with pytest.raises(ConfigError, match=r"^unknown estimator 'two_step' \(known: one_step, blockwise, coupled, "
                                          r"replay, elbo, spg_blocks\)$"):
        ESTIMATORS.get("two_step")
    with pytest.raises(ConfigError, match=r"^unknown objective 'ppo' \(known: diffu_grpo, espo, spg, wd1\)$"):
        OBJECTIVES["ppo"]
    with pytest.raises(ConfigError, match="unknown objective None"):
        OBJECTIVES.get(None)


def test_register_decorates_once_per_name():
    registry = Registry("thing")

    @registry.register("a")
    def a():
        return 1

    assert a() == 1 and registry["a"] is a  # the decorator returns its function unchanged
    registry.register("a")(a)  # registering the same object again is harmless
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        registry.register("a")(lambda: 2)
    with pytest.raises(ValueError, match="non-empty strings"):
        registry.register("")
    registry.unregister("a")
    assert "a" not in registry and registry.names() == ()


# ---------------------------------------------------------------- agg_loss


def agg_by_loop(values, mask, mode, denominator=None):
    rows = []
    total, count = 0.0, 0
    for b in range(values.shape[0]):
        row_sum, row_count = 0.0, 0
        for t in range(values.shape[1]):
            if mask[b, t]:
                row_sum += float(values[b, t])
                row_count += 1
        rows.append(row_sum / max(row_count, 1))
        total += row_sum
        count += row_count
    if mode == "sum":
        return total
    if mode == "token_mean":
        return total / (max(count, 1) if denominator is None else denominator)
    return sum(rows) / (len(rows) if denominator is None else denominator)


def test_agg_loss_matches_a_loop_for_each_mode():
    g = torch.Generator().manual_seed(3)
    values = torch.randn(4, 7, generator=g)
    mask = torch.rand(4, 7, generator=g) < 0.6
    mask[2] = False  # a row without kept tokens
    for mode in AGG_MODES:
        assert math.isclose(float(agg_loss(values, mask, mode)), agg_by_loop(values, mask, mode), rel_tol=1e-5,
                            abs_tol=1e-6), mode
    for mode in ("token_mean", "seq_mean"):
        got = float(agg_loss(values, mask, mode, denominator=11.0))
        assert math.isclose(got, agg_by_loop(values, mask, mode, 11.0), rel_tol=1e-5, abs_tol=1e-6), mode
    # hand values: token_mean weighs tokens, seq_mean weighs rows
    v = torch.tensor([[1.0, 3.0, 100.0], [6.0, 0.0, 0.0]])
    m = torch.tensor([[True, True, False], [True, False, False]])
    assert float(agg_loss(v, m, "token_mean")) == pytest.approx(10 / 3)
    assert float(agg_loss(v, m, "seq_mean")) == pytest.approx((2 + 6) / 2)
    assert float(agg_loss(v, m, "sum")) == pytest.approx(10.0)
    assert float(agg_loss(v, torch.zeros_like(m), "token_mean")) == 0.0  # nothing kept: 0, not NaN
    # micro-batches with the batch's count as denominator sum to the batch's token mean
    parts = [agg_loss(values[i:i + 2], mask[i:i + 2], "token_mean", denominator=float(mask.sum()))
             for i in (0, 2)]
    torch.testing.assert_close(sum(parts), agg_loss(values, mask, "token_mean"))
    # gradients flow through the values, weighted by the mask
    x = values.clone().requires_grad_(True)
    agg_loss(x, mask, "sum").backward()
    assert torch.equal(x.grad, mask.float())


def test_agg_loss_errors():
    v, m = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ConfigError, match=r"unknown mode 'mean' \(known: token_mean, seq_mean, sum\)"):
        agg_loss(v, m, "mean")
    with pytest.raises(ConfigError, match="must both be"):
        agg_loss(v, m[:, :2], "sum")
    with pytest.raises(ConfigError, match="takes no denominator"):
        agg_loss(v, m, "sum", denominator=3.0)


# ---------------------------------------------------------------- diffu_grpo_loss: the values before the registry


def golden_inputs():
    logp = torch.tensor([[-0.5, -1.25, -2.0, -0.125], [-3.0, -0.75, -1.5, -0.25], [-0.0625, -4.0, -1.0, -2.5]])
    old = torch.tensor([[-0.75, -1.0, -2.5, -0.125], [-2.0, -0.5, -1.5, -1.25], [-0.5, -3.0, -1.25, -2.5]])
    ref = torch.tensor([[-0.5, -1.5, -1.75, -0.25], [-2.5, -1.0, -1.0, -0.5], [-0.25, -3.5, -1.5, -2.0]])
    adv = torch.tensor([1.0, -0.5, -0.5])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    return logp, old, ref, adv, mask


_CLIP = {"ratio_mean": 1.0065513849258423, "ratio_min": 0.3678794503211975, "ratio_max": 1.6487212181091309,
         "clip_low_frac": 0.3333333432674408, "clip_high_frac": 0.2222222238779068, "clip_frac": 0.5555555820465088,
         "num_tokens": 9.0}
# (uses old, uses ref, kwargs) -> (loss, stats, d loss / d logp), computed with diffu_grpo_loss as it was before
# the registries (git show b346de9:d1/algo/grpo.py) on golden_inputs()
GOLDEN = {
    "full": ((True, True, dict(eps=0.2, beta=0.04)), (
        -0.0039932262152433395,
        {"loss": -0.0039932262152433395, "policy_loss": -0.006930351257324219, **_CLIP, "kl": 0.07342781126499176},
        [[0.0, -0.08555031567811966, -0.0012623351067304611, -0.0],
         [-0.0028832056559622288, 0.000983107602223754, 0.0, 0.0],
         [0.08680599927902222, -0.0028832056559622288, 0.07308350503444672, 0.05267234891653061]])),
    "mu1": ((False, True, dict(eps=0.5, beta=0.04)), (
        0.002937098266556859,
        {"loss": 0.002937098266556859, "policy_loss": 0.0, "ratio_mean": 1.0, "ratio_min": 1.0, "ratio_max": 1.0,
         "clip_low_frac": 0.0, "clip_high_frac": 0.0, "clip_frac": 0.0, "num_tokens": 9.0,
         "kl": 0.07342781126499176},
        [[-0.1111111119389534, -0.1101280078291893, -0.11237344890832901, -0.0],
         [0.05267234891653061, 0.0565386638045311, 0.0, 0.0],
         [0.05631542578339577, 0.05267234891653061, 0.05730430781841278, 0.05267234891653061]])),
    "beta0": ((True, False, dict(eps=0.2, beta=0.0)), (
        -0.006930351257324219,
        {"loss": -0.006930351257324219, "policy_loss": -0.006930351257324219, **_CLIP},
        [[0.0, -0.08653341978788376, 0.0, -0.0], [0.0, 0.0, 0.0, 0.0],
         [0.08604612946510315, 0.0, 0.07133474946022034, 0.0555555559694767]])),
    "global": ((True, True, dict(eps=0.2, beta=0.1, num_tokens=20.0)), (
        0.0001856043963925913,
        {"loss": 0.0001856043963925913, "policy_loss": -0.006930351257324219, **_CLIP, "kl": 0.07342781126499176},
        [[0.0, -0.0378340408205986, -0.0014201272279024124, -0.0],
         [-0.003243606071919203, 0.0011059960816055536, 0.0, 0.0],
         [0.03957561030983925, -0.003243606071919203, 0.03406798467040062, 0.02175639383494854]])),
}


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_diffu_grpo_loss_returns_exactly_its_pre_registry_values(case):
    (with_old, with_ref, kwargs), (loss_value, stats_value, grad_value) = GOLDEN[case]
    logp, old, ref, adv, mask = golden_inputs()
    logp.requires_grad_(True)
    loss, stats = diffu_grpo_loss(logp, old if with_old else None, ref if with_ref else None, adv, mask, **kwargs)
    loss.backward()
    assert loss.item() == loss_value
    assert stats == stats_value
    assert logp.grad.tolist() == grad_value
    # the registered objective is the same function of the same inputs
    logp2 = golden_inputs()[0].requires_grad_(True)
    hparams = SimpleNamespace(epsilon=kwargs["eps"], beta=kwargs["beta"])
    loss2, stats2 = OBJECTIVES["diffu_grpo"](
        ObjectiveInputs(logp2, old if with_old else None, ref if with_ref else None, adv, mask), hparams,
        agg="token_mean", denominator=kwargs.get("num_tokens"))
    loss2.backward()
    assert loss2.item() == loss_value and stats2 == stats_value and logp2.grad.tolist() == grad_value


def test_diffu_grpo_objective_aggregates_by_mode():
    logp, old, ref, adv, mask = golden_inputs()
    hparams = SimpleNamespace(epsilon=0.2, beta=0.04)
    inputs = ObjectiveInputs(logp, old, ref, adv, mask)
    token_mean, _ = OBJECTIVES["diffu_grpo"](inputs, hparams)
    total, _ = OBJECTIVES["diffu_grpo"](inputs, hparams, agg="sum")
    seq_mean, _ = OBJECTIVES["diffu_grpo"](inputs, hparams, agg="seq_mean")
    torch.testing.assert_close(total / mask.sum(), token_mean)
    assert not torch.allclose(seq_mean, token_mean)  # rows of 3, 2 and 4 kept tokens weigh the same


# ---------------------------------------------------------------- estimators


def test_each_estimator_is_per_token_logps_with_its_option():
    model = TinyBidirectionalLM()
    ids, prompt_mask, attention, noisy = estimator_case()
    common = dict(mask_id=MASK, p_mask_prompt=0.3, noisy_ids=noisy, attention_mask=attention)
    split = coupled_completion_mask(2, 6, group_size=2, generator=mask_generator(5))
    order = torch.tensor([[2, 0, 1, 1, 3, 3], [0, 2, 2, 1, 3, 0]])
    cfg = SimpleNamespace(sampler=SimpleNamespace(block_length=2, steps_for=lambda: 4), num_generations=2,
                          replay_chunks=None)
    expected = {
        "one_step": per_token_logps(model, ids, prompt_mask, **common),
        "blockwise": per_token_logps(model, ids, prompt_mask, block_length=2, **common),
        "coupled": per_token_logps(model, ids, prompt_mask, coupled_mask=split, **common),
        "replay": per_token_logps(model, ids, prompt_mask, unmask_order=order, **common),
    }
    for name, want in expected.items():
        estimator = ESTIMATORS[name].from_config(cfg)
        got = estimator.logps(model, ids, prompt_mask, draw=split if name == "coupled" else None,
                              order=order if name == "replay" else None, **common)
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
    with pytest.raises(ConfigError, match="no unmasking order"):
        Replay(4, None).logps(model, ids, prompt_mask, **common)


def test_estimators_say_what_they_need():
    cfg = SimpleNamespace(sampler=SimpleNamespace(block_length=4, steps_for=lambda: 8), num_generations=2,
                          replay_chunks=4)
    built = {name: ESTIMATORS[name].from_config(cfg) for name in ("one_step", "blockwise", "coupled", "replay")}
    assert [n for n, e in built.items() if e.needs_decode_order] == ["replay"]
    # only the coupled estimator draws per iteration, so only it is scored every iteration without prompt masking
    assert [n for n, e in built.items() if not e.same_input_every_iteration(0.0)] == ["coupled"]
    assert not any(e.same_input_every_iteration(0.15) for e in built.values())
    assert built["blockwise"].block_length == 4 and built["coupled"].group_size == 2
    # the coupled draw is coupled_completion_mask on the iteration's generator
    draw = built["coupled"].draw(mask_generator(9), 4, 6)
    assert torch.equal(draw, coupled_completion_mask(4, 6, group_size=2, generator=mask_generator(9)))
    assert built["one_step"].draw(mask_generator(9), 4, 6) is None
    # replay keeps the sampler's steps cut into chunks: 8 steps into 4 chunks of 2
    steps = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7]])
    assert built["replay"].rollout_order(steps).tolist() == [[0, 0, 1, 1, 2, 2, 3, 3]]
    assert built["one_step"].rollout_order(steps) is None


# ---------------------------------------------------------------- a toy objective through the trainer


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from tests.train.conftest import save_tiny_base, write_tiny_data

    data = write_tiny_data(tmp_path_factory.mktemp("data"))
    return save_tiny_base(data, tmp_path_factory.mktemp("base")), data


@pytest.fixture
def toy_objective():
    """A REINFORCE-style objective, ``-A * logp`` per kept token, registered for the test only."""
    calls = []

    @register_objective("toy_reinforce")
    def toy(inputs, hparams, *, agg="token_mean", denominator=None):
        calls.append(inputs)
        per_token = -inputs.advantages[:, None].detach() * inputs.logp
        loss = agg_loss(per_token, inputs.mask, agg, denominator=denominator)
        with torch.no_grad():
            mean_logp = float(agg_loss(inputs.logp, inputs.mask, "token_mean"))
        return loss, {"loss": float(loss.detach()), "toy_mean_logp": mean_logp}

    yield calls
    OBJECTIVES.unregister("toy_reinforce")


def test_a_toy_objective_trains_one_grpo_step(tiny_setup, tmp_path, toy_objective, monkeypatch):
    from d1.generation import SamplerConfig
    from d1.tasks.countdown import CountdownTask
    from d1.train.grpo import DiffuGRPO, run_grpo
    from d1.train.grpo_config import GRPOConfig

    # a random tiny model never earns Countdown's reward: score text features so advantages vary
    monkeypatch.setattr(CountdownTask, "reward_components", lambda self, completion, example: {
        "digits": sum(c.isdigit() for c in completion) / 10, "length": len(completion) / 40})
    base, data = tiny_setup
    cfg = GRPOConfig(model_path=str(base), data_dir=str(data), tasks=["countdown"], out_dir=str(tmp_path / "toy"),
                     num_generations=2, generation_batch_size=4, batch_size=2, grad_accum=2, num_iterations=1,
                     beta=0.0, max_steps=1, lr=1e-2, warmup_ratio=0.0, lora_r=4, lora_alpha=8.0,
                     lora_dropout=0.0, save_steps=0, device="cpu", objective="toy_reinforce",
                     loss_normalization="batch",
                     sampler=SamplerConfig(gen_length=8, block_length=8, steps=4, temperature=1.0))
    cfg.validate()
    seen = []
    built = []
    init = DiffuGRPO.__init__

    def spy_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(DiffuGRPO, "__init__", spy_init)
    summary = run_grpo(cfg, callbacks=[lambda step, metrics: seen.append(dict(metrics))])
    assert summary["steps"] == 1 and len(seen) == 1
    assert built[0].objective is OBJECTIVES["toy_reinforce"]
    # one call per micro-batch, with the estimator's log-probs (grad on) and the kept-token mask
    assert len(toy_objective) == 2
    assert any(bool(inputs.advantages.abs().sum() > 0) for inputs in toy_objective)
    for inputs in toy_objective:
        assert inputs.logp.shape == (2, 8) and inputs.logp.requires_grad
        assert inputs.old_logp is None and inputs.ref_logp is None  # mu = 1, beta = 0
        assert inputs.mask.dtype == torch.bool and inputs.advantages.shape == (2,)
    metrics = seen[0]
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["train/grad_norm"])
    assert metrics["train/grad_norm"] > 0
    # the objective's own stat is logged, token-weighted
    assert metrics["train/toy_mean_logp"] < 0
    assert "train/kl" not in metrics and "train/ratio_mean" not in metrics
    # unregistered, the name is refused again by the config
    OBJECTIVES.unregister("toy_reinforce")
    with pytest.raises(ConfigError, match=r"grpo.objective: 'toy_reinforce' is not one of diffu_grpo"):
        cfg.validate()
