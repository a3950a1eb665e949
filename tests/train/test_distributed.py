"""Two CPU processes (gloo) under ``accelerate launch``, DDP and FSDP2: SFT and GRPO train, save, resume,
and agree across ranks and with one process accumulating the same two micro-batches.

tests/train/ddp_script.py runs the stages (see its docstring). Each launch checks:

- the mode it asked for: DDP (accelerate's MULTI_CPU) or FSDP with sharded (DTensor) weights;
- every rank holds the same trained weights (gathered under FSDP: what GRPO's rollouts see), exactly;
- 2 processes x 1 micro-batch train the weights 1 process x 2 accumulated micro-batches train, same
  data, seed and step: within float32 summation-order noise (``TOLERANCE``);
- a run resumed from a checkpoint (SFT at step 2, GRPO at step 1, mid-round) ends where the
  uninterrupted run did;
- the files: merged SFT model, adapters, per-rank RNG states and mid-round rollouts in checkpoints.

GRPO's rollouts decode with a confidence threshold, so the two ranks run different numbers of sampler
passes: under FSDP that hangs unless the rollouts gather the weights once (``TrainingRun.full_params``);
a hung launch is stopped after ``HANG_AFTER_S`` and fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.train.conftest import save_tiny_base, write_tiny_data

SCRIPT = Path(__file__).with_name("ddp_script.py")
FSDP_CONFIG = "infra/gpu/accelerate/8gpu-fsdp.yaml"
#: 2 x 1 against 1 x 2 micro-batches: the same sums in another order (all-reduce mean vs accumulation)
#: and, in GRPO, prompts padded to another length; then 3 AdamW steps at lr 1e-2. Measured max abs
#: difference on weights up to 0.19: SFT 0 (DDP) / 1.5e-8 (FSDP), GRPO 1.8e-6 (both)
TOLERANCE = dict(rtol=1e-4, atol=1e-5)
#: a launch takes ~10 s on 2 cores; one that runs this long has hung
HANG_AFTER_S = 150
LAUNCH = {
    "ddp": ["--multi_gpu", "--mixed_precision", "no", "--main_process_port", "29517"],
    "fsdp": ["--config_file", FSDP_CONFIG, "--mixed_precision", "no", "--main_process_port", "29518"],
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    data = write_tiny_data(root / "data")
    return data, save_tiny_base(data, root / "base")


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """1 process x 2 accumulated micro-batches, in this process: {stage: trainable weights}."""
    from tests.train.ddp_script import train

    data, base = inputs
    out = tmp_path_factory.mktemp("one-process")
    train(base, data, out, world=1)
    return {stage: weights(out, stage, 0) for stage in ("sft", "grpo")}


def weights(out: Path, stage: str, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(out / "weights" / f"{stage}_{rank}.pt", weights_only=True)


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name


def launch(mode: str, inputs, out: Path, repo_root: Path) -> list[dict]:
    data, base = inputs
    accelerate = Path(sys.executable).with_name("accelerate")
    # On a machine without GPUs --multi_gpu gives accelerate's MULTI_CPU mode (torchrun + gloo); the
    # FSDP config's processes are switched to FSDP on the CPU by the script (fsdp_on_cpu).
    cmd = [str(accelerate), "launch", *LAUNCH[mode], "--num_processes", "2", "--num_machines", "1",
           "--dynamo_backend", "no", str(SCRIPT), str(base), str(data), str(out)]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(repo_root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(cmd, env=env, cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=HANG_AFTER_S)
    except subprocess.TimeoutExpired:
        # A hung run (a collective one rank never reaches): SIGTERM lets torchrun stop its workers, which
        # run in sessions of their own; then SIGKILL whatever is left of the launcher's session.
        proc.terminate()
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
        pytest.fail(f"{mode}: the 2-process run hung (stopped after {HANG_AFTER_S} s): {stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-4000:]
    return [json.loads((out / f"summary_{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_agree_with_each_other_and_with_accumulation(mode, inputs, reference, tmp_path, repo_root):
    out = tmp_path / "out"
    summaries = launch(mode, inputs, out, repo_root)
    assert [s["world"] for s in summaries] == [2, 2]
    expected = {"ddp": ("MULTI_CPU", False), "fsdp": ("FSDP", True)}[mode]
    assert all((s["distributed_type"].split(".")[-1], s["sharded"]) == expected for s in summaries)
    assert all(s[stage]["steps"] == 3 for s in summaries for stage in ("sft", "grpo"))
    for stage in ("sft", "grpo"):
        mine = weights(out, stage, 0)
        assert_identical(mine, weights(out, stage, 1))  # (a) the ranks hold the same weights
        assert mine.keys() == reference[stage].keys()
        for name in mine:  # (b) 2 processes x 1 micro-batch == 1 process x 2 accumulated
            torch.testing.assert_close(mine[name], reference[stage][name], **TOLERANCE, msg=f"{stage} {name}")
        resumed = weights(out, f"{stage}-resumed", 0)
        assert_identical(resumed, weights(out, f"{stage}-resumed", 1))
        for name in mine:  # a resumed run ends where the uninterrupted one did
            torch.testing.assert_close(resumed[name], mine[name], rtol=0, atol=1e-6, msg=f"{stage} resumed {name}")
        # both stages trained: every LoRA B matrix left zero
        assert all(bool(mine[name].abs().sum() > 0) for name in mine if "lora_B" in name), stage
    # files: one merged SFT model, adapters, per-rank RNG states and mid-round rollouts
    merged = load_file(str(out / "sft" / "model" / "model.safetensors"))
    start = load_file(str(inputs[1] / "model.safetensors"))
    assert merged.keys() == start.keys() and any(not torch.equal(merged[k], start[k]) for k in start)
    assert (out / "sft" / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "grpo" / "model" / "adapter_model.safetensors").is_file()
    ckpt = out / "grpo" / "checkpoints" / "step-3"
    assert {p.name for p in ckpt.iterdir()} >= {"rng_state_0.pt", "rng_state_1.pt", "model", "optimizer.pt"}
    assert {"rollouts_0.pt", "rollouts_1.pt"} <= {p.name for p in (out / "grpo" / "checkpoints" / "step-1").iterdir()}
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["sharding"] == {"ddp": "replicated", "fsdp": "fsdp"}[mode]


def test_the_fsdp_config_shards_llada_blocks(repo_root):
    from accelerate.commands.config.config_args import load_config_from_file

    from d1.models.llada import LLaDAModelLM

    cfg = load_config_from_file(str(repo_root / FSDP_CONFIG))
    assert str(getattr(cfg.distributed_type, "value", cfg.distributed_type)) == "FSDP"
    assert (cfg.num_processes, cfg.mixed_precision) == (8, "bf16")
    fsdp = yaml.safe_load((repo_root / FSDP_CONFIG).read_text())["fsdp_config"]
    assert fsdp["fsdp_version"] == 2  # the training loops refuse FSDP1
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] in LLaDAModelLM._no_split_modules


@pytest.mark.parametrize("mode, fsdp2, refused", [("FSDP", False, "fsdp_version: 2"), ("DEEPSPEED", False, "DeepSpeed"),
                                                   ("FSDP", True, None), ("MULTI_GPU", False, None)])
def test_the_training_loops_refuse_fsdp1_and_deepspeed(mode, fsdp2, refused):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from d1.errors import ConfigError
    from d1.train.common import check_distributed_mode

    accelerator = SimpleNamespace(distributed_type=DistributedType[mode], is_fsdp2=fsdp2)
    if refused is None:
        check_distributed_mode(accelerator)
    else:
        with pytest.raises(ConfigError, match=refused):
            check_distributed_mode(accelerator)
