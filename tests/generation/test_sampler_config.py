"""SamplerConfig: the sampler section shared by GRPO's rollouts and evaluation (grpo.sampler, eval.sampler)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
import yaml

from d1.config import from_dict, load_config, write_resolved
from d1.errors import ConfigError
from d1.eval import EvalConfig
from d1.generation import CACHE_MODES, SamplerConfig, generate
from d1.train.grpo_config import GRPOConfig


def load(tmp_path, params: dict, cls, section: str, overrides: list[str] | None = None):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return load_config(cls, path, section=section, overrides=overrides)


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as exc:
        fn(*args, **kwargs)
    message = str(exc.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- the dataclass


def test_defaults_are_llada_exact_greedy_sampler():
    cfg = SamplerConfig()
    assert (cfg.gen_length, cfg.block_length, cfg.steps, cfg.temperature, cfg.remasking, cfg.cfg_scale, cfg.cache,
            cfg.threshold) == (None, 32, None, 0.0, "low_confidence", 0.0, "none", None)
    cfg.validate()
    assert cfg.cache in CACHE_MODES


def test_steps_rule_is_half_the_length_unless_set():
    assert [SamplerConfig().steps_for(n) for n in (64, 128, 256, 512)] == [32, 64, 128, 256]
    assert SamplerConfig(steps=12).steps_for(64) == 12
    assert SamplerConfig(gen_length=96).steps_for() == 48
    assert "no gen_length" in error_of(SamplerConfig().steps_for)


def test_generate_kwargs_are_generates_sampler_arguments():
    cfg = SamplerConfig(gen_length=64, block_length=16, temperature=0.7, remasking="random", cfg_scale=0.5,
                        cache="dual", threshold=0.9)
    kwargs = cfg.generate_kwargs()
    assert kwargs == {"gen_length": 64, "block_length": 16, "steps": 32, "temperature": 0.7, "cfg_scale": 0.5,
                      "remasking": "random", "cache": "dual", "threshold": 0.9}
    assert cfg.generate_kwargs(32)["gen_length"] == 32 and cfg.generate_kwargs(32)["steps"] == 16
    assert set(kwargs) <= set(inspect.signature(generate).parameters)
    # every field reaches generate: a new field must be passed on (or this test says why not)
    assert {f.name for f in dataclasses.fields(SamplerConfig)} == set(kwargs)


def test_generate_kwargs_run_the_sampler():
    class Uniform(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return torch.zeros(*input_ids.shape, 7)

    cfg = SamplerConfig(gen_length=8, block_length=4, temperature=0.5)
    out = generate(Uniform(), torch.tensor([[1, 2]]), mask_id=6, generator=torch.Generator().manual_seed(0),
                   **cfg.generate_kwargs())
    assert out.shape == (1, 10) and not (out[:, 2:] == 6).any()


@pytest.mark.parametrize("values, where, gen_lengths, message", [
    ({"gen_length": 64, "block_length": 5}, "grpo.sampler", None,
     "grpo.sampler.block_length: 5 does not divide gen_length 64"),
    ({"gen_length": 256, "steps": 100}, "grpo.sampler", None,
     "grpo.sampler.steps: 100 steps do not split evenly over 8 blocks (gen_length 256 / block_length 32)"),
    ({"gen_length": 96, "block_length": 32}, "grpo.sampler", None, None),  # 48 steps over 3 blocks
    ({"block_length": 3}, "eval.sampler", [6], "eval.sampler.steps: 3 steps (steps null: gen_length 6 // 2) do not "
                                               "split evenly over 2 blocks (gen_length 6 / block_length 3)"),
    ({"block_length": 1}, "eval.sampler", [1], "eval.sampler.steps: 0 steps (steps null: gen_length 1 // 2); set a "
                                               "positive number of steps"),
    ({"block_length": 32}, "eval.sampler", [64, 50], "eval.gen_lengths: 50 is not a positive multiple of the "
                                                     "sampler's block_length 32"),
    ({"block_length": 0}, "eval.sampler", None, "eval.sampler.block_length: must be a positive integer, got 0"),
    ({"steps": 0}, "eval.sampler", None, "eval.sampler.steps: must be a positive integer, got 0"),
    ({"gen_length": -8}, "grpo.sampler", None, "grpo.sampler.gen_length: must be a positive integer, got -8"),
    ({"temperature": -0.1}, "grpo.sampler", None, "grpo.sampler.temperature: must be a finite number >= 0, got -0.1"),
    ({"temperature": float("nan")}, "grpo.sampler", None,
     "grpo.sampler.temperature: must be a finite number >= 0, got nan"),
    ({"cfg_scale": -1.0}, "grpo.sampler", None, "grpo.sampler.cfg_scale: must be a finite number >= 0, got -1.0"),
    ({"remasking": "top_k"}, "grpo.sampler", None,
     "grpo.sampler.remasking: 'top_k' is not one of low_confidence, random"),
    ({"cache": "kv"}, "grpo.sampler", None, "grpo.sampler.cache: 'kv' is not one of none, prefix, dual"),
    ({"threshold": -0.5}, "grpo.sampler", None, "grpo.sampler.threshold: must be null or a number >= 0, got -0.5"),
    ({"threshold": 0.0, "cache": "prefix"}, "grpo.sampler", None, None),
])
def test_validate_names_the_full_key(values, where, gen_lengths, message):
    cfg = SamplerConfig(**values)
    if message is None:
        cfg.validate(where, gen_lengths=gen_lengths)
        return
    assert error_of(cfg.validate, where, gen_lengths=gen_lengths, lengths_key="eval.gen_lengths") == message


# ----------------------------------------------------------------------------- the stage sections


def test_grpo_default_sampler_is_d1s_rollouts():
    cfg = GRPOConfig()
    cfg.validate()
    assert cfg.sampler.generate_kwargs() == {"gen_length": 256, "block_length": 32, "steps": 128, "temperature": 0.9,
                                             "cfg_scale": 0.0, "remasking": "low_confidence", "cache": "none",
                                             "threshold": None}


def test_eval_default_sampler_is_d1s_evaluation():
    cfg = EvalConfig()
    cfg.validate()
    assert cfg.sampler.gen_length is None and cfg.sampler.temperature == 0.0
    assert [cfg.steps_for(n) for n in cfg.gen_lengths] == [64, 128, 256]


def test_a_sampler_section_replaces_only_the_keys_it_names(tmp_path):
    grpo = load(tmp_path, {"grpo": {"sampler": {"gen_length": 64, "cache": "dual"}}}, GRPOConfig, "grpo")
    # the rest keep grpo's defaults (temperature 0.9, not SamplerConfig's greedy 0)
    assert grpo.sampler == SamplerConfig(gen_length=64, temperature=0.9, cache="dual")
    assert grpo.sampler.steps_for() == 32
    # a --set override of one key of a profile without a sampler section
    grpo = load(tmp_path, {"tiny": {"grpo": {}}}, GRPOConfig, "tiny.grpo", ["grpo.sampler.temperature=1.3"])
    assert (grpo.sampler.gen_length, grpo.sampler.temperature) == (256, 1.3)
    ev = load(tmp_path, {"eval": {"sampler": {"threshold": 0.9}}}, EvalConfig, "eval")
    assert ev.sampler == SamplerConfig(threshold=0.9)


def test_grpo_sampler_errors_name_the_profile_key(tmp_path):
    def message(grpo: dict) -> str:
        return error_of(load, tmp_path, {"tiny": {"grpo": grpo}}, GRPOConfig, "tiny.grpo")

    assert message({"sampler": {"gen_length": 64, "block_length": 5}}) == \
        "tiny.grpo.sampler.block_length: 5 does not divide gen_length 64"
    assert message({"sampler": {"gen_length": None}}) == \
        "tiny.grpo.sampler.gen_length: required for rollouts (answer tokens per completion)"
    assert message({"sampler": {"temperature": "hot"}}) == "tiny.grpo.sampler.temperature: expected a number, got 'hot'"
    assert message({"sampler": {"top_p": 0.9}}).startswith(
        "tiny.grpo.sampler: unknown key 'top_p' (known: block_length")
    assert message({"sampler": 3}) == "tiny.grpo.sampler: expected a mapping, got 3"


def test_replay_needs_the_fixed_step_schedule(tmp_path):
    replay = {"estimator": "replay", "sampler": {"threshold": 0.9}}
    assert error_of(load, tmp_path, {"grpo": replay}, GRPOConfig, "grpo") == (
        "grpo.sampler.threshold: must be null with estimator replay (it replays the sampler's fixed step "
        "schedule), got 0.9")
    # threshold with another estimator, and replay without threshold, are fine
    load(tmp_path, {"grpo": {"estimator": "blockwise", "sampler": {"threshold": 0.9}}}, GRPOConfig, "grpo")
    cfg = load(tmp_path, {"grpo": {"estimator": "replay", "replay_chunks": 16,
                                   "sampler": {"gen_length": 64, "steps": 16}}}, GRPOConfig, "grpo")
    assert cfg.replay_chunks == 16
    # replay_chunks is checked against the sampler's steps (null: gen_length // 2)
    assert error_of(load, tmp_path, {"grpo": {"replay_chunks": 33, "sampler": {"gen_length": 64}}}, GRPOConfig,
                    "grpo") == "grpo.replay_chunks: 33 is more than the 32 sampler steps it cuts into chunks"


def test_eval_sampler_gen_length_must_stay_null(tmp_path):
    assert error_of(load, tmp_path, {"micro": {"eval": {"sampler": {"gen_length": 64}}}}, EvalConfig, "micro.eval") \
        == "micro.eval.sampler.gen_length: must be null in eval (the lengths come from eval.gen_lengths), got 64"
    assert error_of(load, tmp_path, {"eval": {"gen_lengths": [128, 100]}}, EvalConfig, "eval") == \
        "eval.gen_lengths: 100 is not a positive multiple of the sampler's block_length 32"
    assert error_of(load, tmp_path, {"eval": {"gen_lengths": [64], "sampler": {"steps": 3}}}, EvalConfig, "eval") \
        == "eval.sampler.steps: 3 steps do not split evenly over 2 blocks (gen_length 64 / block_length 32)"


@pytest.mark.parametrize("section, cls, key, value, moved_to", [
    ("grpo", GRPOConfig, "gen_length", 64, "sampler.gen_length"),
    ("grpo", GRPOConfig, "block_length", 32, "sampler.block_length"),
    ("grpo", GRPOConfig, "diffusion_steps", 32, "sampler.steps"),
    ("grpo", GRPOConfig, "temperature", 0.9, "sampler.temperature"),
    ("grpo", GRPOConfig, "cfg_scale", 0.0, "sampler.cfg_scale"),
    ("grpo", GRPOConfig, "remasking", "random", "sampler.remasking"),
    ("eval", EvalConfig, "block_length", 32, "sampler.block_length"),
    ("eval", EvalConfig, "steps", 32, "sampler.steps"),
    ("eval", EvalConfig, "temperature", 0.0, "sampler.temperature"),
    ("eval", EvalConfig, "cfg_scale", 0.0, "sampler.cfg_scale"),
    ("eval", EvalConfig, "remasking", "random", "sampler.remasking"),
])
def test_old_flat_keys_say_where_they_moved(tmp_path, section, cls, key, value, moved_to):
    # in the params file
    assert error_of(load, tmp_path, {"tiny": {section: {key: value}}}, cls, f"tiny.{section}") == \
        f"tiny.{section}.{key}: moved to tiny.{section}.{moved_to}"
    # and as an override (`d1 grpo --set grpo.diffusion_steps=32`, `dvc exp run -S tiny.grpo.temperature=...`)
    assert error_of(load, tmp_path, {"tiny": {section: {}}}, cls, f"tiny.{section}", [f"{section}.{key}={value}"]) \
        == f"tiny.{section}.{key}: moved to tiny.{section}.{moved_to}"


def test_round_trip_through_params_loading_and_the_resolved_config(tmp_path):
    params = {"profile": "tiny", "tiny": {
        "grpo": {"tasks": ["countdown"], "sampler": {"gen_length": 64, "block_length": 32, "steps": 32,
                                                     "temperature": 0.9, "cache": "prefix", "threshold": None}},
        "eval": {"tasks": ["countdown"], "gen_lengths": [64, 128], "sampler": {"block_length": 32, "steps": None,
                                                                              "threshold": 0.95}}}}
    grpo = load(tmp_path, params, GRPOConfig, None)
    ev = load(tmp_path, params, EvalConfig, None)
    assert grpo.sampler == SamplerConfig(gen_length=64, block_length=32, steps=32, temperature=0.9, cache="prefix")
    assert ev.sampler == SamplerConfig(block_length=32, threshold=0.95)
    assert ev.sampler.generate_kwargs(128)["steps"] == 64 and ev.sampler.generate_kwargs(128)["threshold"] == 0.95
    # the resolved config a stage writes reads back to the same config
    for cfg, cls, section in ((grpo, GRPOConfig, "grpo"), (ev, EvalConfig, "eval")):
        written = write_resolved(cfg, tmp_path / section)
        resolved = yaml.safe_load(written.read_text())
        assert resolved["sampler"] == dataclasses.asdict(cfg.sampler)
        assert from_dict(cls, resolved, section) == cfg


def test_the_projects_profiles_keep_their_sampler_values(repo_root):
    """The schedule values of each profile; llada-8b keeps LLaDA's exact sampler (d1's setting), tiny and
    micro sample with the dual cache and threshold 0.9 (benchmarks/sampler_speed.py)."""
    path = repo_root / "params.yaml"
    expected = {  # profile: rollouts, evaluation, (cache, threshold) of both
        "tiny": ({"gen_length": 64, "block_length": 32, "steps": 32, "temperature": 0.9},
                 {"block_length": 32, "steps": 32}, ("dual", 0.9)),
        "llada-8b": ({"gen_length": 256, "block_length": 32, "steps": 128, "temperature": 0.9},
                     {"block_length": 32, "temperature": 0.0}, ("none", None)),
        "micro": ({"gen_length": 32, "block_length": 32, "steps": 8, "temperature": 0.9},
                  {"block_length": 32, "steps": 12}, ("dual", 0.9)),
    }
    for profile, (rollouts, evaluation, fast) in expected.items():
        grpo = load_config(GRPOConfig, path, section=f"{profile}.grpo")
        kwargs = grpo.sampler.generate_kwargs()
        assert {k: kwargs[k] for k in rollouts} == rollouts, profile
        assert (kwargs["remasking"], kwargs["cfg_scale"], kwargs["cache"], kwargs["threshold"]) == (
            "low_confidence", 0.0, *fast), profile
        ev = load_config(EvalConfig, path, section=f"{profile}.eval")
        assert ev.sampler.gen_length is None and (ev.sampler.cache, ev.sampler.threshold) == fast, profile
        assert ev.sampler.temperature == 0.0 and ev.sampler.remasking == "low_confidence"
        for key, value in evaluation.items():
            assert getattr(ev.sampler, key) == value, (profile, key)
        if "steps" not in evaluation:
            assert ev.sampler.steps is None  # gen_length / 2 at every length
