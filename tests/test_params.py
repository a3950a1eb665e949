"""params.yaml and dvc.yaml: every profile's sections validate, stages are wired to each other, and each
DVC stage's command reads and writes exactly the paths the stage declares."""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath

import pytest
import yaml

from d1.cli import STAGES, _load, build_parser
from d1.config import from_dict, load_config, read_params

PROFILES = ["tiny", "llada-8b", "micro"]
SECTIONS = {name: ref for name, (ref, *_rest) in STAGES.items() if name != "pretrain"}  # pretrain lives in base


def _flow_config():
    try:
        from flows.config import FlowConfig  # helper B's, may not exist yet
    except ImportError:
        return None
    return FlowConfig


@pytest.fixture
def params(repo_root):
    return read_params(repo_root / "params.yaml")


def load(repo_root, profile, section, cls=None, overrides=None):
    cls = cls or _load(SECTIONS[section])
    return load_config(cls, repo_root / "params.yaml", section=f"{profile}.{section}", overrides=overrides or [])


def test_top_level_layout(params):
    assert params["profile"] in PROFILES
    assert set(params) == {"profile", "pipeline", *PROFILES}
    assert set(params["pipeline"]) == {"tasks", "gen_lengths", "models", "algorithms"}


@pytest.mark.parametrize("profile", PROFILES)
def test_every_section_of_every_profile_is_valid(repo_root, params, profile):
    sections = set(params[profile])
    assert sections - {"flow"} == set(SECTIONS), f"{profile}: sections {sorted(sections)}"
    for section in SECTIONS:
        cfg = load(repo_root, profile, section)
        assert type(cfg).SECTION == section
    flow_cls = _flow_config()
    if flow_cls is not None:
        from_dict(flow_cls, params[profile]["flow"], f"{profile}.flow")
    else:
        assert isinstance(params[profile]["flow"], dict) and "default_pool" in params[profile]["flow"]


@pytest.mark.parametrize("profile", PROFILES)
def test_stage_chain_is_wired(repo_root, profile):
    """Each stage reads what the previous one writes."""
    cfg = {s: load(repo_root, profile, s) for s in SECTIONS}
    data = cfg["prepare"].out_dir
    base_model = cfg["base"].model_path
    assert cfg["sft"].model_path == base_model
    assert cfg["grpo"].model_path == f"{cfg['sft'].out_dir}/model"
    models = cfg["eval"].models
    assert models["base"] == base_model and models["sft"] == f"{cfg['sft'].out_dir}/model"
    assert models["d1"] == "outputs/d1/{task}/model" and cfg["grpo"].out_dir == f"outputs/d1/{cfg['grpo'].tasks[0]}"
    assert cfg["report"].eval_dir == cfg["eval"].out_dir
    logs = cfg["report"].reward_logs.replace("{algorithm}", cfg["grpo"].algorithm)
    assert logs.replace("{task}", cfg["grpo"].tasks[0]) == cfg["grpo"].dvclive_dir
    for s in ("sft", "grpo", "eval"):
        assert cfg[s].data_dir == data
    if cfg["base"].pretrain is not None:
        assert cfg["base"].pretrain.data_dir == data
    prepared = set(cfg["prepare"].tasks)
    assert set(cfg["sft"].tasks) <= prepared and set(cfg["eval"].tasks) <= prepared
    assert set(cfg["sft"].sft_data) <= set(cfg["prepare"].sft_data)  # SFT data sets that are not tasks (s1k)


def test_pipeline_axes_fit_the_default_profiles(repo_root, params):
    for profile in ("tiny", "micro"):
        eval_cfg = load(repo_root, profile, "eval")
        prepared = load(repo_root, profile, "prepare").tasks
        for task in params["pipeline"]["tasks"]:
            assert prepared[task].train is not None, f"{profile}: no train split for grpo@d1-{task}"
        for n in params["pipeline"]["gen_lengths"]:
            assert n % eval_cfg.sampler.block_length == 0


@pytest.mark.parametrize("profile", PROFILES)
def test_every_algorithm_of_a_profile_trains_and_is_evaluated(repo_root, profile):
    """Each RL algorithm a profile defines resolves to a valid grpo config with its objective and
    estimator, has an eval model path, and the report's models are defined ones."""
    grpo = load(repo_root, profile, "grpo")
    ev = load(repo_root, profile, "eval")
    report = load(repo_root, profile, "report")
    assert list(grpo.algorithms)[:1] == ["d1"] and grpo.algorithm == "d1" and grpo.objective == "diffu_grpo"
    for name in grpo.algorithms:
        cfg = load(repo_root, profile, "grpo", overrides=[f"{profile}.grpo.algorithm={name}"])
        assert cfg.objective == {"d1": "diffu_grpo"}.get(name, name), name
        assert ev.models[name].startswith(f"outputs/{name}/"), name
    assert set(report.models) - {"base", "sft"} <= set(grpo.algorithms)
    assert report.rl_models() == [m for m in report.models if m not in ("base", "sft")]


def test_llada_8b_is_the_papers_setting(repo_root):
    base = load(repo_root, "llada-8b", "base")
    assert base.model == "GSAI-ML/LLaDA-8B-Instruct" and base.pretrain is None
    sft = load(repo_root, "llada-8b", "sft")
    assert (sft.lora_r, sft.lora_alpha, sft.lora_dropout, sft.lr, sft.epochs) == (128, 256.0, 0.05, 1e-5, 20.0)
    assert (sft.batch_size, sft.grad_accum, sft.max_length, sft.full_finetune) == (1, 4, 4096, False)
    grpo = load(repo_root, "llada-8b", "grpo")
    assert (grpo.lr, grpo.beta, grpo.epsilon, grpo.num_generations, grpo.max_grad_norm) == (3e-6, 0.04, 0.5, 6, 0.2)
    assert grpo.sampler.generate_kwargs() == {"gen_length": 256, "block_length": 32, "steps": 128, "temperature": 0.9,
                                              "cfg_scale": 0.0, "remasking": "low_confidence", "cache": "none",
                                              "threshold": None}
    assert (grpo.lora_r, grpo.lora_alpha, grpo.full_finetune) == (128, 64.0, False)
    ev = load(repo_root, "llada-8b", "eval")
    assert ev.gen_lengths == [128, 256, 512] and ev.sampler.block_length == 32 and ev.sampler.steps is None
    assert [ev.steps_for(n) for n in ev.gen_lengths] == [64, 128, 256]
    assert ev.sampler.temperature == 0 and ev.sampler.remasking == "low_confidence" and ev.sampler.cache == "none"
    assert ev.sampler.threshold is None and ev.sampler.cfg_scale == 0
    assert set(ev.tasks) == {"gsm8k", "math500", "countdown", "sudoku"}
    assert ev.models["base"] == "GSAI-ML/LLaDA-8B-Instruct"
    assert load(repo_root, "llada-8b", "prepare").tasks["math500"].train  # GRPO on MATH needs a train split


# ----------------------------------------------------------------------------- dvc.yaml


def resolved_stages(repo_root, tmp_path, profile):
    """The stages DVC resolves from dvc.yaml with ``profile`` active: {name: (cmd, deps, outs, metrics, plots)}."""
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True)
    (tmp_path / "dvc.yaml").write_text((repo_root / "dvc.yaml").read_text())
    data = yaml.safe_load((repo_root / "params.yaml").read_text())
    data["profile"] = profile
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    out = {}
    with Repo(str(tmp_path)) as repo:
        for stage in repo.index.stages:
            outs = [o.def_path for o in stage.outs if not o.metric and not o.plot]
            out[stage.name] = (stage.cmd, [d.def_path for d in stage.deps], outs,
                                     [o.def_path for o in stage.outs if o.metric],
                                     [o.def_path for o in stage.outs if o.plot])
    return out


def _inside(path: str, roots: list[str]) -> bool:
    p = PurePosixPath(path).parts
    return any(p[: len(PurePosixPath(r).parts)] == PurePosixPath(r).parts for r in roots)


def _local(path: str) -> bool:
    return path.startswith(("outputs/", "data"))


@pytest.mark.parametrize("profile", PROFILES)
def test_dvc_stages_declare_what_their_commands_use(repo_root, tmp_path, profile, monkeypatch):
    stages = resolved_stages(repo_root, tmp_path, profile)
    tasks = yaml.safe_load((repo_root / "params.yaml").read_text())["pipeline"]["tasks"]
    assert {n.partition("@")[0] for n in stages} == {"prepare", "base", "sft", "grpo", "eval", "report"}
    algorithms = yaml.safe_load((repo_root / "params.yaml").read_text())["pipeline"]["algorithms"]
    assert sorted(n for n in stages if n.startswith("grpo@")) == sorted(f"grpo@{a}-{t}" for a in algorithms
                                                                          for t in tasks)
    monkeypatch.chdir(repo_root)  # commands name params.yaml relative to the project
    parser = build_parser()
    for name, (cmd, deps, outs, metrics, plots) in stages.items():
        argv = shlex.split(cmd)
        assert argv[0] == "d1", name
        args = parser.parse_args(argv[1:])
        assert args.section == f"{profile}.{args.command}", name
        cls = _load(STAGES[args.command][0])
        overrides = list(args.set)
        for key in ("tasks", "gen_lengths", "models", "algorithms"):
            if getattr(args, key, None):
                overrides.append(f"{args.section}.{key}={getattr(args, key)}")
        data = yaml.safe_load((repo_root / "params.yaml").read_text())
        data["profile"] = profile
        p = tmp_path / "p.yaml"
        p.write_text(yaml.safe_dump(data))
        cfg = load_config(cls, p, section=args.section, overrides=overrides)
        # the provenance record is an out of its own, outside the hashed output folders
        assert args.provenance == f"outputs/provenance/{name}.json" and args.provenance in outs, name
        written = [o for o in outs + metrics + plots if o != args.provenance]
        assert not any(_inside(args.provenance, [w]) for w in written), name
        assert _inside(cfg.out_dir, written) or all(_inside(w, [cfg.out_dir]) for w in written), name
        inputs = {"base": lambda c: [c.pretrain.data_dir] if c.pretrain else [],
                  "sft": lambda c: [c.data_dir, c.model_path], "grpo": lambda c: [c.data_dir, c.model_path],
                  "eval": lambda c: [c.data_dir, c.model],
                  "report": lambda c: [c.eval_dir] + [c.reward_logs.replace("{algorithm}", a).replace("{task}", t)
                                                      for a in c.rl_models() for t in tasks]}
        for value in inputs.get(args.command, lambda c: [])(cfg):
            if _local(value):
                assert _inside(value, deps), f"{name}: {value} is not a declared dep"
        if args.command in ("sft", "grpo"):
            assert f"{cfg.dvclive_dir}/metrics.json" in metrics and f"{cfg.dvclive_dir}/plots/metrics" in plots, name
        if args.command == "eval":
            assert cfg.tasks == [name.split("-")[1]] and f"{cfg.out_dir}/metrics.json" in metrics
            assert _inside(cfg.generations_dir, outs)
        if args.command == "report":
            assert cfg.tasks == tasks and _inside(cfg.eval_dir, deps)
            assert "outputs/report/results.json" in metrics
