"""prefect.yaml and infra/ configs, checked statically against the flows, params.yaml and the tools."""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from flows.params import apply_flow_params

REPO = Path(__file__).resolve().parents[2]


def _deployments() -> dict[str, dict]:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    out = {}
    for d in spec["deployments"]:
        path, func = d["entrypoint"].split(":")
        module_spec = importlib.util.spec_from_file_location(f"_flow_{func}", REPO / path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        flow = getattr(module, func)
        out[f"{flow.name}/{d['name']}"] = dict(d, flow=flow)
    return out


def test_the_deployments_and_their_pools_and_schedules():
    deps = _deployments()
    assert set(deps) == {"d1-full/tiny", "d1-full/micro", "d1-full/llada-8b", "d1-stage/cpu", "d1-stage/gpu"}
    pools = {name: d["work_pool"]["name"] for name, d in deps.items()}
    assert pools == {"d1-full/tiny": "cpu", "d1-full/micro": "cpu", "d1-full/llada-8b": "gpu",
                     "d1-stage/cpu": "cpu", "d1-stage/gpu": "gpu"}
    assert [s["active"] for s in deps["d1-full/tiny"]["schedules"]] == [False]
    assert [s["active"] for s in deps["d1-full/llada-8b"]["schedules"]] == [True]
    assert deps["d1-full/llada-8b"]["schedules"][0]["cron"] == "0 3 * * 1"
    for name in ("d1-full/llada-8b", "d1-stage/gpu"):  # gpu runs move to the gpu box's checkout
        step = deps[name]["pull"][0]["prefect.deployments.steps.set_working_directory"]
        assert step["directory"] == "{{ $D1_GPU_CHECKOUT }}"
    for name, d in deps.items():  # the parameters are the flow's
        accepted = set(inspect.signature(d["flow"].fn).parameters)
        assert set(d.get("parameters") or {}) <= accepted, name


def test_the_full_deployments_parameters_apply_to_params_yaml(tmp_path):
    for name, d in _deployments().items():
        if not name.startswith("d1-full/"):
            continue
        shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
        p = d["parameters"]
        written = apply_flow_params(tmp_path, p["profile"], p.get("tasks"), p.get("overrides"))
        assert written[0] == f"profile={p['profile']}"
        assert yaml.safe_load((tmp_path / "params.yaml").read_text())["profile"] == p["profile"]


@pytest.mark.parametrize("name, processes, distributed", [("1gpu", 1, "NO"), ("8gpu", 8, "MULTI_GPU")])
def test_accelerate_configs_load(name, processes, distributed):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(REPO / f"infra/gpu/accelerate/{name}.yaml"))
    assert cfg.num_processes == processes
    assert str(getattr(cfg.distributed_type, "value", cfg.distributed_type)) == distributed
    assert cfg.mixed_precision == "bf16"


@pytest.mark.parametrize("name", ["gpu-process", "gpu-kubernetes"])
def test_pool_templates_use_only_declared_variables(name):
    template = json.loads((REPO / f"infra/gpu/pools/{name}.json").read_text())
    used = set(re.findall(r"{{\s*(\w+)\s*}}", json.dumps(template["job_configuration"])))
    declared = set(template["variables"]["properties"])
    assert used and used <= declared, used - declared


def test_the_process_template_is_prefects_with_gpu_defaults():
    from prefect.workers.process import ProcessWorker

    ours = json.loads((REPO / "infra/gpu/pools/gpu-process.json").read_text())
    default = ProcessWorker.get_default_base_job_template()
    assert ours["job_configuration"] == default["job_configuration"]
    assert set(ours["variables"]["properties"]) == set(default["variables"]["properties"])
    assert "CUDA_VISIBLE_DEVICES" in ours["variables"]["properties"]["env"]["default"]
