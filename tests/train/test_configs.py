"""Training configs: d1 defaults, params.yaml loading, bad values named."""

from __future__ import annotations

import pytest

from d1.config import load_config, write_resolved
from d1.errors import ConfigError
from d1.train.grpo_config import GRPOConfig
from d1.train.pretrain_config import PretrainConfig
from d1.train.sft_config import SFTConfig


def test_defaults_are_valid_and_are_d1s_settings():
    sft, grpo, pre = SFTConfig(), GRPOConfig(), PretrainConfig()
    for cfg in (sft, grpo, pre):
        cfg.validate()
    # d1 SFT/sft_train.py on LLaDA
    assert (sft.lr, sft.batch_size, sft.grad_accum, sft.epochs, sft.max_length) == (1e-5, 1, 4, 20.0, 4096)
    assert (sft.lora_r, sft.lora_alpha, sft.lora_dropout, sft.weight_decay, sft.max_grad_norm, sft.seed) == (
        128, 256.0, 0.05, 0.1, 1.0, 42)
    assert sft.lora_target_modules == ["q_proj", "k_proj", "v_proj"] and sft.merge_adapter
    # d1 diffu-grpo train.yaml
    assert (grpo.lr, grpo.adam_betas, grpo.weight_decay, grpo.max_grad_norm) == (3e-6, [0.9, 0.99], 0.1, 0.2)
    assert (grpo.num_generations, grpo.beta, grpo.epsilon, grpo.p_mask_prompt, grpo.num_iterations) == (
        6, 0.04, 0.5, 0.15, 12)
    sampler = grpo.sampler
    assert (sampler.gen_length, sampler.block_length, sampler.steps_for(), sampler.temperature) == (256, 32, 128, 0.9)
    assert (sampler.remasking, sampler.cfg_scale, sampler.cache, sampler.threshold) == ("low_confidence", 0.0, "none",
                                                                                         None)
    assert (grpo.max_prompt_length, grpo.batch_size, grpo.grad_accum) == (200, 6, 2)
    assert (grpo.lora_r, grpo.lora_alpha, grpo.lora_dropout) == (128, 64.0, 0.05)
    assert grpo.lr_scheduler == "constant_with_warmup" and not grpo.scale_rewards
    assert grpo.mixed_precision == "auto"


def test_load_from_params_yaml(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "sft:\n  tasks: [countdown]\n  max_length: 256\n  full_finetune: true\n"
        "grpo:\n  num_generations: 4\n  batch_size: 4\n  grad_accum: 1\n  num_iterations: 1\n  beta: 0.04\n"
        "pretrain:\n  seq_len: 128\n  d_model: 64\n  n_heads: 4\n"
    )
    sft = load_config(SFTConfig, params)
    grpo = load_config(GRPOConfig, params)
    pre = load_config(PretrainConfig, params)
    assert sft.max_length == 256 and sft.full_finetune and sft.tasks == ["countdown"]
    assert grpo.num_iterations == 1 and grpo.prompts_per_process == 1
    assert pre.seq_len == 128
    written = write_resolved(grpo, tmp_path / "out")
    assert written.name == "grpo_config.json" and '"num_iterations": 1' in written.read_text()


@pytest.mark.parametrize(
    "section, body, message",
    [
        ("sft", "lr: -1", "sft.lr: must be a positive number, got -1.0"),
        ("sft", "tasks: [chess]", "sft.tasks: unknown task 'chess'"),
        ("sft", "lora_target_modules: []", "sft.lora_target_modules"),
        ("sft", "mixed_precision: fp8", "sft.mixed_precision: 'fp8' is not one of"),
        ("sft", "adam_betas: [0.9]", "sft.adam_betas"),
        ("sft", "grad_accum: 0", "sft.grad_accum: must be a positive integer, got 0"),
        ("sft", "learning_rate: 1e-4", "sft: unknown key 'learning_rate'"),
        ("grpo", "num_iterations: 0", "grpo.num_iterations: must be a positive integer, got 0"),
        ("grpo", "sampler: {block_length: 48}", "grpo.sampler.block_length: 48 does not divide gen_length 256"),
        ("grpo", "sampler: {steps: 100}", "grpo.sampler.steps: 100 steps do not split evenly over 8 blocks"),
        ("grpo", "diffusion_steps: 100", "grpo.diffusion_steps: moved to grpo.sampler.steps"),
        ("grpo", "num_generations: 5", "grpo.num_generations: 5 does not divide batch_size * grad_accum = 12"),
        ("grpo", "num_generations: 1\nbatch_size: 1\ngrad_accum: 1", "grpo.num_generations: needs at least 2"),
        ("grpo", "p_mask_prompt: 1.5", "grpo.p_mask_prompt: must be in [0, 1], got 1.5"),
        ("grpo", "loss_normalization: token", "grpo.loss_normalization: 'token' is not one of d1, batch"),
        ("grpo", "beta: -0.1", "grpo.beta: must be >= 0"),
        ("grpo", "sampler: {remasking: greedy}", "grpo.sampler.remasking: 'greedy' is not one of"),
        ("grpo", "sampler: {temperature: x}", "grpo.sampler.temperature: expected a number, got 'x'"),
        ("grpo", "sampler: {gen_length: null}", "grpo.sampler.gen_length: required for rollouts"),
        ("grpo", "estimator: replay\nsampler: {threshold: 0.9}", "grpo.sampler.threshold: must be null with "
         "estimator replay"),
        ("grpo", "estimator: replay\nreplay_chunks: 200", "grpo.replay_chunks: 200 is more than the 128 sampler"),
        ("grpo", "logp_estimator: replay", "grpo.logp_estimator: moved to grpo.estimator"),
        ("grpo", "estimator: two_step", "grpo.estimator: 'two_step' is not one of one_step, blockwise, coupled, "
         "replay"),
        ("grpo", "objective: ppo", "grpo.objective: 'ppo' is not one of diffu_grpo, espo, spg, wd1"),
        ("pretrain", "model_path: GSAI-ML/LLaDA-8B-Instruct", "pretrain.model_path: only the built-in 'tiny'"),
        ("pretrain", "seq_len: 2048", "pretrain.seq_len: 2048 exceeds max_sequence_length 1024"),
        ("pretrain", "d_model: 100\nn_heads: 3", "pretrain.n_heads"),
        ("pretrain", "tokenizer_vocab_size: 100", "pretrain.tokenizer_vocab_size: must be >= 262"),
    ],
)
def test_bad_values_are_named(tmp_path, section, body, message):
    params = tmp_path / "params.yaml"
    indented = "\n".join("  " + line for line in body.splitlines())
    params.write_text(f"{section}:\n{indented}\n")
    cls = {"sft": SFTConfig, "grpo": GRPOConfig, "pretrain": PretrainConfig}[section]
    with pytest.raises(ConfigError) as exc:
        load_config(cls, params)
    assert message in str(exc.value)


def test_dvclive_dir_defaults_under_out_dir():
    assert SFTConfig(out_dir="runs/x").dvclive_dir == "runs/x/dvclive"
    assert SFTConfig(out_dir="runs/x", logging_dir="logs").dvclive_dir == "logs"
