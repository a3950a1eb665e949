"""The kubernetes work pools of infra/gpu/README.md: the template (infra/gpu/pools/gpu-kubernetes.json)
against the kubernetes worker's own schema, the pools created from it on a local Prefect server,
prefect.yaml deployed to them, and the Jobs the worker would submit for a ``d1-full/llada-8b`` run
and the ``d1-stage/cpu`` run it dispatches, built with prefect-kubernetes' classes (no cluster: nothing
is scheduled); the init container's script (infra/gpu/checkout.sh) run here on a git + DVC repo."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

try:  # the dev extra installs it (through the k8s extra): CI runs these tests
    from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration
except ImportError as err:
    pytest.fail(f"prefect-kubernetes is not installed ({err}); run scripts/setup.sh (dev extra)", pytrace=False)

from infra.local.stack import LocalStack

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "infra/gpu/pools/gpu-kubernetes.json"
README = REPO / "infra/gpu/README.md"
CHECKOUT = "/workspace/d1-pipeline"  # the image's WORKDIR, the pods' checkout, D1_GPU_CHECKOUT when deploying

# The site's values and the jq programs of README step 3 (the test checks the README holds them verbatim).
IMAGE = "registry.example.com/ml/d1-pipeline-gpu:3e02d01"
REMOTE = "s3://d1-bucket/d1"
ENDPOINT = "https://s3.example.com"
GPU_JQ = ("'.variables.properties.image.default = $image | .variables.properties.dvc_remote_url.default = $remote"
          " | .variables.properties.dvc_endpoint_url.default = $endpoint'")
GPU_EDITS = {"image": IMAGE, "dvc_remote_url": REMOTE, "dvc_endpoint_url": ENDPOINT}
CPU_JQ = ("'.variables.properties.gpus.default = 0 | .variables.properties.tolerations.default = []"
          ' | .variables.properties.cpu_request.default = "4" | .variables.properties.memory_request.default = "16Gi"'
          ' | .variables.properties.memory_limit.default = "16Gi"'
          ' | .variables.properties.cache_claim.default = "d1-hf-cache-cpu"\'')
CPU_EDITS = {"gpus": 0, "tolerations": [], "cpu_request": "4", "memory_request": "16Gi", "memory_limit": "16Gi",
             "cache_claim": "d1-hf-cache-cpu"}
SITE_VARIABLES = {"git_repo", "git_revision", "dvc_remote_url", "dvc_endpoint_url", "s3_secret"}


def _template() -> dict:
    return json.loads(TEMPLATE.read_text())


def _with_defaults(template: dict, edits: dict) -> dict:
    out = copy.deepcopy(template)
    for name, value in edits.items():
        out["variables"]["properties"][name]["default"] = value
    return out


def _pod(template_or_manifest: dict) -> dict:
    manifest = template_or_manifest.get("job_configuration", {}).get("job_manifest", template_or_manifest)
    return manifest["spec"]["template"]["spec"]


def _signature(schema: dict):
    """A variable's JSON type, however it is spelled (``type`` or ``anyOf``)."""
    if "anyOf" in schema:
        return sorted(json.dumps(s, sort_keys=True) for s in schema["anyOf"])
    return [json.dumps({k: schema[k] for k in ("type", "$ref") if k in schema}, sort_keys=True)]


def _readme_commands() -> str:
    return "\n".join(re.findall(r"```bash\n(.*?)```", README.read_text(), re.S))


# ------------------------------------------------------------------------------------------ static


def test_the_template_is_the_kubernetes_workers_with_gpus_a_checkout_and_a_remote():
    ours, default = _template(), KubernetesWorker.get_default_base_job_template()
    assert set(ours["job_configuration"]) == set(default["job_configuration"])
    props = ours["variables"]["properties"]
    for name, schema in default["variables"]["properties"].items():  # the worker's variables, same types
        assert name in props, name
        assert _signature(props[name]) == _signature(schema), name
    used = set(re.findall(r"{{\s*(\w+)\s*}}", json.dumps(ours["job_configuration"])))
    assert used <= set(props), used - set(props)

    pod = _pod(ours)
    main, = pod["containers"]
    assert main["name"] == "prefect-job" and main["image"] == "{{ image }}" and main["args"] == "{{ command }}"
    assert main["resources"]["requests"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert props["gpus"]["type"] == "integer" and props["gpus"]["default"] >= 1
    assert props["image"]["default"] == "d1-pipeline-gpu:latest"  # infra/gpu/Dockerfile's tag
    assert "-t d1-pipeline-gpu" in (REPO / "infra/gpu/Dockerfile").read_text()
    assert pod["nodeSelector"] == "{{ node_selector }}" and pod["tolerations"] == "{{ tolerations }}"

    # the checkout and the remote: template variables handed to the init container
    assert SITE_VARIABLES <= set(props)
    init, = pod["initContainers"]
    assert init["image"] == "{{ image }}"
    assert init["command"] == ["bash", f"{CHECKOUT}/infra/gpu/checkout.sh"]
    env = {e["name"]: e["value"] for e in init["env"]}
    assert env["D1_GIT_REPO"] == "{{ git_repo }}" and env["D1_GIT_REVISION"] == "{{ git_revision }}"
    assert env["D1_DVC_REMOTE_URL"] == "{{ dvc_remote_url }}"
    assert env["D1_DVC_ENDPOINT_URL"] == "{{ dvc_endpoint_url }}"
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    assert mounts["checkout"] == main["workingDir"] == CHECKOUT == env["D1_IMAGE_CHECKOUT"]
    assert {m["name"]: m["mountPath"] for m in init["volumeMounts"]}["checkout"] == env["D1_RUN_CHECKOUT"]
    dockerfile = (REPO / "infra/gpu/Dockerfile").read_text()
    assert f"WORKDIR {CHECKOUT}" in dockerfile and f"D1_GPU_CHECKOUT={CHECKOUT}" in dockerfile

    # credentials only by reference to a Kubernetes secret
    assert main["envFrom"] == [{"secretRef": {"name": "{{ s3_secret }}"}}]
    names = set(env) | set(props["env"]["default"])
    assert not [n for n in names if re.search(r"(^|_)(KEY|SECRET|TOKEN|PASSWORD|AUTH|CREDENTIALS?)(_|$)", n)], names


def test_the_llada_8b_deployments_target_the_gpu_pool_with_the_templates_variables(monkeypatch):
    props = _template()["variables"]
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    by_name = {(d["entrypoint"], d["name"]): d for d in spec["deployments"]}
    for key in (("flows/d1_full.py:d1_full", "llada-8b"), ("flows/d1_stage.py:d1_stage", "gpu")):
        pool = by_name[key]["work_pool"]
        assert pool["name"] == "gpu", key
        job_variables = pool.get("job_variables") or {}
        assert set(job_variables) <= set(props["properties"]), key
        jsonschema.validate(job_variables, props)  # what the server checks when deploying
        step = by_name[key]["pull"][0]["prefect.deployments.steps.set_working_directory"]
        assert step["directory"] == "{{ $D1_GPU_CHECKOUT }}"
    assert by_name[("flows/d1_stage.py:d1_stage", "cpu")]["work_pool"]["name"] == "cpu"

    commands = _readme_commands()  # README step by step: what the next test does
    assert f"D1_CHECKOUT={CHECKOUT} D1_GPU_CHECKOUT={CHECKOUT} prefect --no-prompt deploy --all" in commands
    for pool in ("gpu", "cpu"):
        assert (f"prefect work-pool create {pool} --type kubernetes --base-job-template /tmp/d1-{pool}-pool.json "
                "--overwrite") in commands
        assert f"prefect worker start --pool {pool} --type kubernetes" in commands
    assert f"jq --arg image \"$IMAGE\" --arg remote \"$REMOTE\" --arg endpoint \"$ENDPOINT\" {GPU_JQ} " \
           "infra/gpu/pools/gpu-kubernetes.json > /tmp/d1-gpu-pool.json" in commands
    assert f"jq {CPU_JQ} /tmp/d1-gpu-pool.json > /tmp/d1-cpu-pool.json" in commands
    assert "prefect deployment run d1-full/llada-8b" in commands
    defaults = {k: v.get("default") for k, v in props["properties"].items()}
    assert f"kubectl create namespace {defaults['namespace']}" in commands
    assert f"create secret generic {defaults['s3_secret']} --from-literal=AWS_ACCESS_KEY_ID=" in commands
    claims = [d["metadata"]["name"] for d in yaml.safe_load_all(commands.split("<<'EOF'\n")[1].split("\nEOF")[0])]
    assert claims == [defaults["cache_claim"], CPU_EDITS["cache_claim"]]
    # the worker settings that move the Prefect auth string into its secret are prefect-kubernetes' own
    from prefect_kubernetes.settings import KubernetesSettings

    exports = dict(re.findall(r"^export (PREFECT_INTEGRATIONS_KUBERNETES_\w+)=(\S+)$", commands, re.M))
    assert len(exports) == 2, exports
    for name, value in exports.items():
        monkeypatch.setenv(name, value)
    worker = KubernetesSettings().worker
    assert (worker.api_auth_string_secret_name, worker.api_auth_string_secret_key) == ("d1-prefect-auth", "auth-string")
    assert "create secret generic d1-prefect-auth --from-literal=auth-string=" in commands


@pytest.mark.skipif(shutil.which("jq") is None, reason="no jq here")
def test_the_readmes_jq_programs_set_the_site_defaults(tmp_path):
    gpu = subprocess.run(["jq", "--arg", "image", IMAGE, "--arg", "remote", REMOTE, "--arg", "endpoint", ENDPOINT,
                          GPU_JQ.strip("'"), str(TEMPLATE)], capture_output=True, text=True, check=True).stdout
    assert json.loads(gpu) == _with_defaults(_template(), GPU_EDITS)
    (tmp_path / "gpu.json").write_text(gpu)
    cpu = subprocess.run(["jq", CPU_JQ.strip("'"), str(tmp_path / "gpu.json")],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(cpu) == _with_defaults(_template(), {**GPU_EDITS, **CPU_EDITS})


# ------------------------------------------------------------------------------------------ a Prefect server


def _prefect(stack: LocalStack, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=stack.root, env=stack.env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-2000:])
    return proc.stdout


async def _worker_jobs(stack: LocalStack, runs: dict[str, str]) -> dict[str, dict]:
    """The job manifest the kubernetes worker would submit for each flow run (pool name -> flow-run id)."""
    from prefect.client.orchestration import PrefectClient
    from prefect.settings import PREFECT_API_URL, temporary_settings

    out = {}
    # the worker hands its own settings (PREFECT_API_URL, ...) to the flow-run pods
    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        async with PrefectClient(stack.api_url) as client:
            for pool_name, run_id in runs.items():
                flow_run = await client.read_flow_run(run_id)
                pool = await client.read_work_pool(pool_name)
                config = await KubernetesWorkerJobConfiguration.resolve_for_flow_run(
                    flow_run, client=client, work_pool=pool, worker_name=f"test-{pool_name}")
                assert config.namespace == "d1"
                out[pool_name] = config.job_manifest
    return out


async def _as_v1_jobs(manifests: dict[str, dict]) -> dict[str, dict]:
    """Each manifest read into kubernetes' V1Job model and written back: fields the API does not
    know (a misspelt key) are dropped."""
    from kubernetes_asyncio.client import ApiClient

    class Response:
        def __init__(self, data: dict) -> None:
            self.data = json.dumps(data)

    async with ApiClient() as api:
        return {k: api.sanitize_for_serialization(api.deserialize(Response(m), "V1Job")) for k, m in manifests.items()}


def _as_the_api_reads_it(manifest: dict) -> dict:
    out = copy.deepcopy(manifest)
    pod = _pod(out)
    for key in ("parallelism", "completions"):  # prefect-kubernetes requires them in the pod spec; the API ignores them
        pod.pop(key)
    for container in pod["containers"]:
        for kind in ("requests", "limits"):
            container["resources"][kind] = {k: str(v) for k, v in container["resources"][kind].items()}
    return out


@pytest.mark.slow
def test_the_pools_on_a_prefect_server_make_the_workers_gpu_and_cpu_jobs(tmp_path):
    checkout = tmp_path / "checkout"  # prefect.yaml and flows/, as README step 4 deploys them
    checkout.mkdir()
    shutil.copy(REPO / "prefect.yaml", checkout / "prefect.yaml")
    shutil.copytree(REPO / "flows", checkout / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    gpu_template = _with_defaults(_template(), GPU_EDITS)
    cpu_template = _with_defaults(gpu_template, CPU_EDITS)
    for pool, template in (("gpu", gpu_template), ("cpu", cpu_template)):
        (tmp_path / f"d1-{pool}-pool.json").write_text(json.dumps(template))

    stack = LocalStack(checkout, state_dir=tmp_path / "stack", gpu_checkout=Path(CHECKOUT),
                       extra_env={"D1_CHECKOUT": CHECKOUT})
    try:
        stack.start_server()
        for pool in ("gpu", "cpu"):
            _prefect(stack, "work-pool", "create", pool, "--type", "kubernetes",
                     "--base-job-template", str(tmp_path / f"d1-{pool}-pool.json"), "--overwrite")
        with stack.client() as client:
            for pool, template in (("gpu", gpu_template), ("cpu", cpu_template)):
                read = client.read_work_pool(pool)
                assert read.type == "kubernetes"
                assert read.base_job_template == template
        stack.deploy()
        from prefect.exceptions import PrefectHTTPStatusError

        with stack.client() as client:
            full = client.read_deployment_by_name("d1-full/llada-8b")
            assert full.work_pool_name == "gpu"
            assert full.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == CHECKOUT
            stage = client.read_deployment_by_name("d1-stage/cpu")
            assert stage.work_pool_name == "cpu"
            with pytest.raises(PrefectHTTPStatusError, match="gpus"):  # the server checks job variables
                client.create_flow_run_from_deployment(full.id, job_variables={"gpus": "eight"})
            cpu_run = client.create_flow_run_from_deployment(stage.id, parameters={"stage": "prepare"})
        out = _prefect(stack, "deployment", "run", "d1-full/llada-8b", "--job-variable", "gpus=8")
        gpu_run = re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", out)[-1]

        jobs = asyncio.run(_worker_jobs(stack, {"gpu": gpu_run, "cpu": str(cpu_run.id)}))
    finally:
        stack.down()

    for pool, manifest in jobs.items():
        pod = _pod(manifest)
        main, = pod["containers"]
        init, = pod["initContainers"]
        gpus = {"gpu": 8, "cpu": 0}[pool]  # the run's job variable; the cpu pool's default
        assert main["resources"]["requests"]["nvidia.com/gpu"] == gpus
        assert main["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert main["image"] == init["image"] == IMAGE
        assert main["args"] == ["prefect", "flow-run", "execute"]
        env = {e["name"]: e.get("value") for e in main["env"]}
        assert env["PREFECT__FLOW_RUN_ID"] == {"gpu": gpu_run, "cpu": str(cpu_run.id)}[pool]
        assert env["PREFECT_API_URL"] == stack.api_url
        assert env["HF_HOME"] == "/cache/huggingface"
        assert not [n for n in env if n.startswith("AWS_")]  # they come from the secret:
        assert main["envFrom"] == [{"secretRef": {"name": "d1-s3"}}]
        init_env = {e["name"]: e["value"] for e in init["env"]}
        assert init_env["D1_DVC_REMOTE_URL"] == REMOTE and init_env["D1_DVC_ENDPOINT_URL"] == ENDPOINT
        assert init_env["D1_GIT_REPO"] == init_env["D1_GIT_REVISION"] == ""  # the image's checkout
        assert main["workingDir"] == CHECKOUT
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert claims == [{"gpu": "d1-hf-cache", "cpu": "d1-hf-cache-cpu"}[pool]]
        assert pod["tolerations"] == ([] if pool == "cpu" else
                                      [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    assert jobs["gpu"]["metadata"]["labels"]["prefect.io/deployment-name"] == "llada-8b"  # README's kubectl -l
    assert jobs["gpu"]["metadata"]["namespace"] == "d1"

    # every field is one the Kubernetes API knows (a misspelt key would be dropped here)
    read_back = asyncio.run(_as_v1_jobs(jobs))
    for pool, manifest in jobs.items():
        assert read_back[pool] == _as_the_api_reads_it(manifest), pool


# ------------------------------------------------------------------------------------------ the init container


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.slow
def test_the_checkout_script_checks_out_the_revision_and_sets_the_dvc_remote(tmp_path, monkeypatch):
    for var in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(var, "d1 test")
    for var in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(var, "d1@example.com")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    repo = tmp_path / "repo"  # what git_repo names
    repo.mkdir()
    _git(repo, "init", "-q")
    subprocess.run(["dvc", "init", "-q"], cwd=repo, check=True)
    (repo / "stage.txt").write_text("one\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "first")
    first = _git(repo, "rev-parse", "HEAD")
    (repo / "stage.txt").write_text("two\n")
    _git(repo, "commit", "-qam", "second")
    second = _git(repo, "rev-parse", "HEAD")
    image = tmp_path / "image"  # the checkout baked into the image, at the second commit
    _git(tmp_path, "clone", "-q", str(repo), str(image))

    def run(dest: Path, **env: str) -> Path:
        dest.mkdir()  # the emptyDir
        full = {"D1_IMAGE_CHECKOUT": str(image), "D1_RUN_CHECKOUT": str(dest), "D1_GIT_REPO": "",
                "D1_GIT_REVISION": "", "D1_DVC_REMOTE_URL": "", "D1_DVC_ENDPOINT_URL": "", **env}
        proc = subprocess.run(["bash", str(REPO / "infra/gpu/checkout.sh")], env={**os.environ, **full},
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert f"d1 checkout at {_git(dest, 'rev-parse', 'HEAD')}" in proc.stdout
        return dest

    cloned = run(tmp_path / "run1", D1_GIT_REPO=str(repo), D1_GIT_REVISION=first,
                 D1_DVC_REMOTE_URL=REMOTE, D1_DVC_ENDPOINT_URL=ENDPOINT)
    assert _git(cloned, "rev-parse", "HEAD") == first
    assert (cloned / "stage.txt").read_text() == "one\n"
    local = (cloned / ".dvc/config.local").read_text()
    assert REMOTE in local and ENDPOINT in local and "remote = d1" in local
    assert _git(cloned, "status", "--porcelain") == ""  # config.local is git-ignored: the checkout stays clean

    copied = run(tmp_path / "run2")  # nothing set: the image's checkout as it is
    assert _git(copied, "rev-parse", "HEAD") == second
    assert not (copied / ".dvc/config.local").exists()

    older = run(tmp_path / "run3", D1_GIT_REVISION=first)  # a commit the image's history has
    assert _git(older, "rev-parse", "HEAD") == first
