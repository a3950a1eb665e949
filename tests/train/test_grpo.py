"""diffu-GRPO trainer: accumulation, shared masks, old/ref policies, resume, metrics."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from d1.algo.grpo import (
    completion_mask,
    coupled_completion_mask,
    diffu_grpo_loss,
    mask_generator,
    mask_prompt_for_logp,
    per_token_logps,
)
from d1.errors import ConfigError
from d1.generation import SamplerConfig
from d1.models.loading import load_model, load_tokenizer, token_ids
from d1.tasks.countdown import CountdownTask
from d1.train.common import prepare_trainable
from d1.train.run import TrainingRun
from d1.train.grpo_config import GRPOConfig
from d1.train.grpo import DiffuGRPO, load_prompts, run_grpo


SAMPLER_KEYS = {f.name for f in dataclasses.fields(SamplerConfig)}


def grpo_config(base, data, out, **overrides) -> GRPOConfig:
    """A small GRPOConfig; overrides named like a SamplerConfig field (gen_length, steps, ...) go to its sampler."""
    sampler = dict(gen_length=8, block_length=8, steps=4, temperature=1.0)
    sampler.update({k: overrides.pop(k) for k in list(overrides) if k in SAMPLER_KEYS})
    values = dict(model_path=str(base), data_dir=str(data), tasks=["countdown"], out_dir=str(out),
                  num_generations=2, generation_batch_size=4, batch_size=2, grad_accum=2, num_iterations=2,
                  beta=0.04, max_steps=2, lr=1e-2, warmup_ratio=0.0, lora_r=4, lora_alpha=8.0, lora_dropout=0.0,
                  save_steps=0, device="cpu", sampler=SamplerConfig(**sampler))
    values.update(overrides)
    cfg = GRPOConfig(**values)
    cfg.validate()
    return cfg


@pytest.fixture(autouse=True)
def varied_rewards(monkeypatch):
    """A random tiny model never earns Countdown's reward; score text features instead so advantages vary."""
    def components(self, completion, example):
        return {"digits": sum(c.isdigit() for c in completion) / 10, "length": len(completion) / 40}

    monkeypatch.setattr(CountdownTask, "reward_components", components)


@pytest.fixture
def capture(monkeypatch):
    """Rollouts of every round and the trainable gradients at every optimiser step."""
    seen = {"rollouts": [], "grads": [], "metrics": []}
    make, step = DiffuGRPO.make_rollouts, TrainingRun.optimizer_step

    def make_rollouts(self, round_index):
        ro = make(self, round_index)
        seen["rollouts"].append(ro)
        return ro

    def optimizer_step(self):
        if self.accelerator.sync_gradients:
            seen["grads"].append({n: p.grad.detach().clone() for n, p in self.unwrapped.named_parameters()
                                  if p.requires_grad and p.grad is not None})
        step(self)

    monkeypatch.setattr(DiffuGRPO, "make_rollouts", make_rollouts)
    monkeypatch.setattr(TrainingRun, "optimizer_step", optimizer_step)
    return seen


def record(seen):
    return lambda step, metrics: seen["metrics"].append(dict(metrics))


def assert_same_grads(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)


def fresh_policy(cfg: GRPOConfig):
    """The policy the trainer starts from: same base, same seeded LoRA initialisation."""
    return prepare_trainable(load_model(cfg.model_path), cfg)


def loss_by_hand(cfg, ro, iteration, *, per_sequence: bool):
    """Gradient of iteration ``iteration``'s loss from the spec, whole batch at once."""
    policy = fresh_policy(cfg)
    ids = token_ids(policy, load_tokenizer(cfg.model_path))
    noisy = ro.masked_input(iteration, mask_id=ids.mask_id, p_mask_prompt=cfg.p_mask_prompt)
    split = None
    if cfg.estimator == "coupled":  # the split drawn after the prompt mask from the iteration's seed
        generator = mask_generator(ro.mask_seeds[iteration])
        mask_prompt_for_logp(ro.ids, ro.prompt_mask, ids.mask_id, cfg.p_mask_prompt, generator=generator,
                             attention_mask=ro.attention)
        split = coupled_completion_mask(ro.ids.shape[0], ro.keep.shape[1], group_size=cfg.num_generations,
                                        generator=generator)
    logp = per_token_logps(policy, ro.ids, ro.prompt_mask, mask_id=ids.mask_id, p_mask_prompt=cfg.p_mask_prompt,
                           noisy_ids=noisy, attention_mask=ro.attention,
                           block_length=cfg.sampler.block_length if cfg.estimator == "blockwise" else None,
                           coupled_mask=split, unmask_order=ro.unmask_order)
    old = ro.old_logps[iteration] if ro.old_logps else None
    ref = ro.ref_logps[iteration] if ro.ref_logps else None
    if per_sequence:  # d1 normalisation with one sequence per micro-batch: mean of per-sequence means
        losses = [diffu_grpo_loss(logp[i:i + 1], None if old is None else old[i:i + 1], ref[i:i + 1],
                                  ro.advantages[i:i + 1], ro.keep[i:i + 1], eps=cfg.epsilon, beta=cfg.beta)[0]
                  for i in range(logp.shape[0])]
        loss = torch.stack(losses).mean()
    else:
        loss = diffu_grpo_loss(logp, old, ref, ro.advantages, ro.keep, eps=cfg.epsilon, beta=cfg.beta)[0]
    loss.backward()
    return {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}


def reference_scores(cfg, ro, **estimator):
    """Iteration 0's per-token log-probs [N, T] of the starting policy with its adapter off (the reference),
    by the estimator options given (``block_length=``, ``coupled_mask=``, ``unmask_order=``; none: d1's)."""
    policy = fresh_policy(cfg).eval()
    ids = token_ids(policy, load_tokenizer(cfg.model_path))
    noisy = ro.masked_input(0, mask_id=ids.mask_id, p_mask_prompt=cfg.p_mask_prompt)
    with torch.no_grad(), policy.disable_adapter():
        return per_token_logps(policy, ro.ids, ro.prompt_mask, mask_id=ids.mask_id, p_mask_prompt=cfg.p_mask_prompt,
                               noisy_ids=noisy, attention_mask=ro.attention, **estimator)


def test_accumulation_1x4_equals_4x1(tiny_base, tiny_data, tmp_path, capture):
    kw = dict(max_steps=1, num_generations=2, loss_normalization="batch")
    run_grpo(grpo_config(tiny_base, tiny_data, tmp_path / "a", batch_size=4, grad_accum=1, **kw))
    run_grpo(grpo_config(tiny_base, tiny_data, tmp_path / "b", batch_size=1, grad_accum=4, **kw))
    first, second = capture["rollouts"]
    assert torch.equal(first.ids, second.ids)  # the same rollouts (batching does not change them)
    assert first.advantages.abs().sum() > 0
    assert_same_grads(capture["grads"][0], capture["grads"][1])
    cfg = grpo_config(tiny_base, tiny_data, tmp_path / "c", batch_size=4, grad_accum=1, **kw)
    assert_same_grads(capture["grads"][0], loss_by_hand(cfg, first, 0, per_sequence=False))


def test_blockwise_estimator_scores_every_policy_block_by_block(tiny_base, tiny_data, tmp_path, capture):
    kw = dict(max_steps=1, num_generations=2, batch_size=4, grad_accum=1, gen_length=8, block_length=4,
              loss_normalization="batch")
    cfg = grpo_config(tiny_base, tiny_data, tmp_path / "blocks", estimator="blockwise", **kw)
    run_grpo(cfg)
    ro = capture["rollouts"][0]
    # the trainer's gradient is the spec's with the block-wise estimator for current, old and reference
    assert_same_grads(capture["grads"][0], loss_by_hand(cfg, ro, 0, per_sequence=False))
    by_block, one_step = reference_scores(cfg, ro, block_length=4), reference_scores(cfg, ro)
    kept = ro.keep
    torch.testing.assert_close(ro.ref_logps[0][kept], by_block[kept])
    assert kept[:, 4:].any()  # the second block is scored somewhere, and differs from d1's estimate
    assert not torch.allclose(ro.ref_logps[0][:, 4:][kept[:, 4:]], one_step[:, 4:][kept[:, 4:]])
    with pytest.raises(ConfigError, match="grpo.estimator"):
        grpo_config(tiny_base, tiny_data, tmp_path / "bad", estimator="two_step")


def test_coupled_estimator_scores_each_token_once_with_a_shared_split(tiny_base, tiny_data, tmp_path, capture):
    kw = dict(max_steps=1, num_generations=2, batch_size=4, grad_accum=1, gen_length=8, block_length=4,
              loss_normalization="batch", beta=0.04)
    cfg = grpo_config(tiny_base, tiny_data, tmp_path / "coupled", estimator="coupled", **kw)
    run_grpo(cfg)
    ro = capture["rollouts"][0]
    # the trainer's gradient is the spec's with the coupled estimator for current, old and reference
    assert_same_grads(capture["grads"][0], loss_by_hand(cfg, ro, 0, per_sequence=False))
    mask_id = token_ids(fresh_policy(cfg), load_tokenizer(cfg.model_path)).mask_id
    noisy, split = ro.estimator_inputs(0, mask_id=mask_id, p_mask_prompt=cfg.p_mask_prompt, coupled_group=2)
    assert torch.equal(noisy, ro.masked_input(0, mask_id=mask_id, p_mask_prompt=cfg.p_mask_prompt))
    assert torch.equal(split[0::2], split[1::2])  # the two completions of a prompt share the split
    assert split.any() and not split.all()
    coupled, one_step = reference_scores(cfg, ro, coupled_mask=split), reference_scores(cfg, ro)
    kept = ro.keep
    torch.testing.assert_close(ro.ref_logps[0][kept], coupled[kept])
    assert not torch.allclose(coupled[kept], one_step[kept])  # tokens are scored with part of the completion shown


def test_replay_estimator_scores_tokens_in_the_samplers_order(tiny_base, tiny_data, tmp_path, capture):
    kw = dict(max_steps=1, num_generations=2, batch_size=4, grad_accum=1, gen_length=8, block_length=4,
              steps=8, loss_normalization="batch", beta=0.04)
    cfg = grpo_config(tiny_base, tiny_data, tmp_path / "replay", estimator="replay", replay_chunks=4, **kw)
    run_grpo(cfg)
    ro = capture["rollouts"][0]
    # 8 steps, one token each, cut into 4 chunks of 2 steps: every chunk holds two tokens of its block
    assert ro.unmask_order.shape == (4, 8)
    for row in ro.unmask_order.tolist():
        assert sorted(row) == [0, 0, 1, 1, 2, 2, 3, 3]
        assert set(row[:4]) == {0, 1} and set(row[4:]) == {2, 3}  # blocks are decoded in turn
    # the trainer's gradient is the spec's with the replay estimator for current, old and reference
    assert_same_grads(capture["grads"][0], loss_by_hand(cfg, ro, 0, per_sequence=False))
    replayed = reference_scores(cfg, ro, unmask_order=ro.unmask_order)
    kept = ro.keep
    torch.testing.assert_close(ro.ref_logps[0][kept], replayed[kept])
    # one chunk per step (null) keeps the step itself
    run_grpo(grpo_config(tiny_base, tiny_data, tmp_path / "exact", estimator="replay", **kw))
    exact = capture["rollouts"][1]
    assert torch.equal(exact.ids, ro.ids)
    assert torch.equal(exact.unmask_order // 2, ro.unmask_order)
    for bad in (0, 9):
        with pytest.raises(ConfigError, match="grpo.replay_chunks"):
            grpo_config(tiny_base, tiny_data, tmp_path / "bad", estimator="replay", replay_chunks=bad, **kw)


def test_d1_normalisation_averages_micro_batch_means(tiny_base, tiny_data, tmp_path, capture):
    cfg = grpo_config(tiny_base, tiny_data, tmp_path / "d1", batch_size=1, grad_accum=4, max_steps=1,
                      loss_normalization="d1")
    run_grpo(cfg)
    ro = capture["rollouts"][0]
    assert_same_grads(capture["grads"][0], loss_by_hand(cfg, ro, 0, per_sequence=True))


def test_old_ref_and_current_policy_share_the_iteration_mask(tiny_base, tiny_data, tmp_path, capture):
    cfg = grpo_config(tiny_base, tiny_data, tmp_path / "mu2", num_iterations=2, max_steps=2, beta=0.04)
    run_grpo(cfg, callbacks=[record(capture)])
    first, second = capture["metrics"]
    # iteration 0: the current policy is the one that generated, scoring the same masked input -> ratio 1;
    # LoRA starts at zero, so policy == reference -> KL 0.
    assert first["train/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert first["train/clip_frac"] == 0.0
    assert first["train/kl"] == pytest.approx(0.0, abs=1e-7)
    # iteration 1 reuses the round's rollouts and old log-probs after one update: ratio and KL move.
    assert len(capture["rollouts"]) == 1 and second["train/iteration"] == 1
    assert second["train/ratio_mean"] != pytest.approx(1.0, abs=1e-6)
    assert second["train/kl"] > 0
    ro = capture["rollouts"][0]
    assert len(ro.old_logps) == 2 and len(ro.ref_logps) == 2 and len(set(ro.mask_seeds)) == 2
    assert not torch.equal(ro.old_logps[0], ro.old_logps[1])  # different mask seeds, different estimates


def test_without_prompt_masking_each_round_scores_old_and_reference_once(tiny_base, tiny_data, tmp_path, capture):
    cfg = grpo_config(tiny_base, tiny_data, tmp_path / "p0", num_iterations=3, max_steps=1, beta=0.04,
                      p_mask_prompt=0.0)
    run_grpo(cfg)
    ro = capture["rollouts"][0]
    # every iteration's estimator input is the same: one scoring serves all three
    assert ro.old_logps[0] is ro.old_logps[1] is ro.old_logps[2]
    assert ro.ref_logps[0] is ro.ref_logps[2]
    policy = fresh_policy(cfg).eval()
    ids = token_ids(policy, load_tokenizer(cfg.model_path))
    noisy = ro.masked_input(2, mask_id=ids.mask_id, p_mask_prompt=0.0)
    with torch.no_grad():
        third = per_token_logps(policy, ro.ids, ro.prompt_mask, mask_id=ids.mask_id, p_mask_prompt=0.0,
                                noisy_ids=noisy, attention_mask=ro.attention)
    torch.testing.assert_close(ro.old_logps[2][ro.keep], third[ro.keep])
    # the coupled split changes with each iteration's seed, so it is scored every time
    run_grpo(grpo_config(tiny_base, tiny_data, tmp_path / "p0c", num_iterations=3, max_steps=1, beta=0.04,
                         p_mask_prompt=0.0, estimator="coupled"))
    coupled = capture["rollouts"][1]
    assert not torch.equal(coupled.old_logps[0], coupled.old_logps[1])


def test_mu_1_with_beta_runs(tiny_base, tiny_data, tmp_path, capture):
    cfg = grpo_config(tiny_base, tiny_data, tmp_path / "mu1", num_iterations=1, beta=0.04, max_steps=3)
    summary = run_grpo(cfg, callbacks=[record(capture)])
    assert summary["steps"] == 3 and len(capture["rollouts"]) == 3  # a new round every step
    assert all(ro.old_logps is None and len(ro.ref_logps) == 1 for ro in capture["rollouts"])
    kls = [m["train/kl"] for m in capture["metrics"]]
    assert kls[0] == pytest.approx(0.0, abs=1e-7) and kls[-1] > 0 and all(math.isfinite(k) for k in kls)
    assert all(m["train/ratio_mean"] == pytest.approx(1.0) for m in capture["metrics"])


def test_beta_0_skips_the_reference(tiny_base, tiny_data, tmp_path, capture):
    run_grpo(grpo_config(tiny_base, tiny_data, tmp_path / "b0", beta=0.0, max_steps=1), callbacks=[record(capture)])
    assert capture["rollouts"][0].ref_logps is None and "train/kl" not in capture["metrics"][0]


def test_full_finetune_uses_a_frozen_reference_copy(tiny_base, tiny_data, tmp_path, capture):
    cfg = grpo_config(tiny_base, tiny_data, tmp_path / "full", full_finetune=True, num_iterations=1, max_steps=2,
                      lr=1e-3)
    run_grpo(cfg, callbacks=[record(capture)])
    kls = [m["train/kl"] for m in capture["metrics"]]
    assert kls[0] == pytest.approx(0.0, abs=1e-7) and kls[1] > 0
    assert (tmp_path / "full" / "model" / "config.json").is_file()  # a full model, not an adapter


def test_rollouts_take_every_sampler_setting(tiny_base, tiny_data, tmp_path, monkeypatch, capture):
    import d1.train.grpo as grpo_module

    seen = []
    real = grpo_module.generate
    monkeypatch.setattr(grpo_module, "generate", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    cfg = grpo_config(tiny_base, tiny_data, tmp_path / "thr", max_steps=1, gen_length=16, steps=8, threshold=0.5,
                      remasking="random", estimator="blockwise")
    run_grpo(cfg)
    wanted = cfg.sampler.generate_kwargs()
    assert wanted["threshold"] == 0.5 and wanted["steps"] == 8
    assert seen and all({k: kw[k] for k in wanted} == wanted for kw in seen)
    assert capture["rollouts"][0].ids.shape[1] == capture["rollouts"][0].prompt_len + 16


def test_completions_end_at_the_first_stop_token(tiny_base, tiny_data, tmp_path, capture):
    run_grpo(grpo_config(tiny_base, tiny_data, tmp_path / "eos", max_steps=1, gen_length=16, steps=8))
    ro = capture["rollouts"][0]
    ids = token_ids(load_model(tiny_base), load_tokenizer(tiny_base))
    completions = ro.ids[:, ro.prompt_len:]
    assert torch.equal(ro.keep, completion_mask(completions, [ids.eos_id, ids.eot_id]))
    assert ro.attention[:, ro.prompt_len:].all() and ro.ids.shape[1] == ro.prompt_len + 16


class Killed(Exception):
    pass


def test_resume_mid_round_ends_with_the_weights_of_an_uninterrupted_run(tiny_base, tiny_data, tmp_path):
    common = dict(num_iterations=2, max_steps=6, save_steps=3, lora_dropout=0.1)
    torch.manual_seed(1)  # the caller's global RNG differs between the calls: the runs must not depend on it
    run_grpo(grpo_config(tiny_base, tiny_data, tmp_path / "straight", **common))

    def kill(step, metrics):
        if step == 4:
            raise Killed

    broken = grpo_config(tiny_base, tiny_data, tmp_path / "broken", **common)
    torch.manual_seed(2)
    with pytest.raises(Killed):
        run_grpo(broken, callbacks=[kill])
    torch.manual_seed(3)
    assert (tmp_path / "broken" / "checkpoints" / "step-3" / "rollouts_0.pt").is_file()  # saved mid-round
    summary = run_grpo(broken, resume=True)
    assert summary["resumed_from"] == 3
    a = load_file(str(tmp_path / "straight" / "model" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "broken" / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)


def test_metrics_are_logged_for_dvc(tiny_base, tiny_data, tmp_path):
    out = tmp_path / "m"
    run_grpo(grpo_config(tiny_base, tiny_data, out, max_steps=2))
    metrics = json.loads((out / "dvclive" / "metrics.json").read_text())
    for group, key in [("reward", "mean"), ("reward", "std"), ("reward", "group_std"), ("train", "loss"),
                       ("train", "kl"), ("train", "clip_frac"), ("train", "grad_norm"), ("train", "lr"),
                       ("perf", "tokens_per_s"), ("perf", "rollout_tokens_per_s"), ("completion", "length")]:
        assert math.isfinite(metrics[group][key]), (group, key)
    for component in ("digits", "length"):
        assert {"mean", "std"} <= set(metrics["reward"][component]), component
    assert (out / "dvclive" / "plots" / "metrics" / "reward" / "mean.tsv").is_file()
    assert json.loads((out / "grpo_config.json").read_text())["num_iterations"] == 2


def test_several_tasks_log_each_tasks_components(tiny_base, tiny_data, tmp_path):
    out = tmp_path / "multi"
    # 4 prompts per task, 4 per round, 2 rounds: one epoch, so both tasks are sampled
    run_grpo(grpo_config(tiny_base, tiny_data, out, tasks=["countdown", "sudoku"], max_examples=4, max_steps=2,
                         num_iterations=1, batch_size=4, grad_accum=2, num_generations=2))
    plots = out / "dvclive" / "plots" / "metrics" / "reward"
    for component in ("countdown/length", "countdown/digits", "sudoku/sudoku"):
        assert (plots / component / "mean.tsv").is_file() and (plots / component / "std.tsv").is_file()


def test_prompts_truncate_left_and_can_prefill_reasoning(tiny_base, tiny_data):
    tokenizer = load_tokenizer(tiny_base)
    cfg = grpo_config(tiny_base, tiny_data, "unused", add_reasoning=True, max_prompt_length=40)
    prompts = load_prompts(tokenizer, cfg)
    assert len(prompts) == 48 and all(len(p.token_ids) <= 40 for p in prompts)
    text = tokenizer.decode(prompts[0].token_ids)
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n<reasoning>")


def test_grpo_raises_a_dense_reward(tiny_base, tiny_data, tmp_path, monkeypatch):
    """End-to-end direction check: rollouts, rewards, advantages, estimator, loss sign and optimiser together
    must push the policy towards higher reward (here: more digits in the completion, a reward the random tiny
    model can earn from its first round)."""
    import csv

    monkeypatch.setattr(CountdownTask, "reward_components",
                        lambda self, completion, example: {"digits": sum(c.isdigit() for c in completion) / 10})
    out = tmp_path / "dense"
    torch.manual_seed(0)  # nothing may depend on it: the run's randomness comes from cfg.seed
    run_grpo(grpo_config(tiny_base, tiny_data, out, num_generations=8, generation_batch_size=32, batch_size=16,
                         grad_accum=2, gen_length=16, block_length=16, steps=8, num_iterations=2, beta=0.0,
                         max_steps=16, lr=1e-3, full_finetune=True, logging_steps=1))
    with open(out / "dvclive" / "plots" / "metrics" / "reward" / "mean.tsv", encoding="utf-8") as f:
        per_step = [float(row["mean"]) for row in csv.DictReader(f, delimiter="\t")]
    rounds = per_step[::2]  # num_iterations = 2 optimiser steps per round share its rollouts
    assert len(rounds) == 8
    first, last = sum(rounds[:2]) / 2, sum(rounds[-2:]) / 2
    assert last > first + 0.3, rounds
