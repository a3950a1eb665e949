"""Every bad input is one line naming the problem, a non-zero exit, and nothing written.

One row per bad input: params, data files, model and adapter folders, checkpoint folders,
generations files, dvc.lock files. Each row builds its input under ``tmp_path``, runs
``d1.cli.main`` in-process and checks that the command

* exits non-zero and prints nothing on stdout,
* prints exactly one line on stderr, ``d1 <command>: error: <message>``, with no traceback and
  no warning or log record around it (a resumed run may say ``<stage>: resuming from step N``
  first: the rows that resume allow that one status line),
* writes nothing: every file under ``tmp_path`` (inputs and the command's outputs) is as before
  (the lock files ``d1`` takes in the working directory's ``.d1-locks/`` aside).

docs/reliability.md tables the same rows; :func:`test_the_docs_table_lists_every_case` keeps them in
step.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import pytest
import yaml

from d1.cli import main

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
RANDOM_BYTES = bytes(random.Random(0).getrandbits(8) for _ in range(2048))
BIG = "9" * 5000  # a 5000-digit number: more digits than Python converts (sys.get_int_max_str_digits)
RESUMING = r"sft: resuming from step 1 \("


class Assets:
    """Inputs shared by the rows, built once and only when a row needs them (all tiny, CPU)."""

    def __init__(self, root: Path):
        self.root = root

    @cached_property
    def params(self) -> Path:
        """The project's params.yaml (its micro profile is what the stage rows read)."""
        path = self.root / "params.yaml"
        shutil.copy(REPO / "params.yaml", path)
        return path

    @cached_property
    def data(self) -> Path:
        from tests.train.conftest import write_tiny_data

        return write_tiny_data(self.root / "data")

    @cached_property
    def model(self) -> Path:
        from tests.train.conftest import save_tiny_base

        return save_tiny_base(self.data, self.root / "model")

    @cached_property
    def adapter(self) -> Path:
        from d1.models.loading import load_model
        from d1.models.lora import apply_lora

        peft_model = apply_lora(load_model(self.model), r=2, alpha=4.0, dropout=0.0, target_modules=["q_proj"])
        peft_model.save_pretrained(str(self.root / "adapter"))
        return self.root / "adapter"

    def sft_args(self, out: Path, *extra: str) -> list[str]:
        """`d1 sft` on the micro profile, with the tiny model and data, writing ``out``: one step, saved."""
        sets = {"model_path": self.model, "data_dir": self.data, "tasks": "[countdown]", "out_dir": out,
                "logging_dir": out / "dvclive",
                "checkpoint_root": "''", "max_steps": 1, "save_steps": 1}
        args = ["sft", "--params", str(self.params), "--section", "micro.sft"]
        for key, value in sets.items():
            args += ["--set", f"sft.{key}={value}"]
        return args + list(extra)

    @cached_property
    def checkpointed_run(self) -> Path:
        """An SFT output folder holding the complete checkpoint ``checkpoints/step-1``."""
        out = self.root / "sft-run"
        assert main(self.sft_args(out)) == 0
        assert (out / "checkpoints" / "step-1" / "complete.json").is_file()
        return out


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Assets:
    return Assets(tmp_path_factory.mktemp("assets"))


# ----------------------------------------------------------------------------- input builders


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _flat_params(t: Path, section: str, values: dict) -> str:
    return str(_write(t / "params" / f"{section}.yaml", yaml.safe_dump({section: values})))


def _micro(a: Assets, stage: str, *sets: str) -> list[str]:
    args = [stage, "--params", str(a.params), "--section", f"micro.{stage}"]
    for item in sets:
        args += ["--set", f"{stage}.{item}"]
    return args


def _prepare_from(t: Path, name: str, content: str | bytes, task: str = "gsm8k") -> list[str]:
    """`d1 prepare` whose train split comes from the file ``name`` holding ``content``."""
    source = _write(t / "sources" / name, content)
    return ["prepare", "--params", _flat_params(t, "prepare", {
        "out_dir": str(t / "prepared"),
        "tasks": {task: {"train": str(source), "test": "builtin", "test_size": 2}}})]


def _train_on(t: Path, a: Assets, stage: str, train_jsonl: str | None) -> list[str]:
    """`d1 sft|grpo` (micro profile, tiny model) on a data folder whose countdown train.jsonl holds
    ``train_jsonl`` (None: no file)."""
    data = t / "data"
    (data / "countdown").mkdir(parents=True)
    if train_jsonl is not None:
        _write(data / "countdown" / "train.jsonl", train_jsonl)
    out = t / "out"
    return _micro(a, stage, f"model_path={a.model}", f"data_dir={data}", "tasks=[countdown]", f"out_dir={out}",
                  f"logging_dir={out / 'dvclive'}", "checkpoint_root=''")


def _model_copy(t: Path, a: Assets, change: Callable[[Path], object]) -> Path:
    folder = t / "model"
    shutil.copytree(a.model, folder)
    change(folder)
    return folder


def _edit_json(path: Path, **values) -> None:
    data = json.loads(path.read_text())
    data.update(values)
    path.write_text(json.dumps(data))


def _eval_model(t: Path, a: Assets, change: Callable[[Path], object]) -> list[str]:
    """`d1 eval` of a copy of the tiny model folder changed by ``change``."""
    folder = _model_copy(t, a, change)
    return ["eval", "--params", _flat_params(t, "eval", {
        "model": str(folder), "data_dir": str(a.data), "out_dir": str(t / "eval"), "tasks": ["countdown"],
        "gen_lengths": [32], "device": "cpu"})]


def _adapter_copy(t: Path, a: Assets, change: Callable[[Path], object]) -> Path:
    folder = t / "adapter"
    shutil.copytree(a.adapter, folder)
    change(folder)
    return folder


def _eval_adapter(t: Path, a: Assets, change: Callable[[Path], object]) -> list[str]:
    folder = _adapter_copy(t, a, change)
    return ["eval", "--params", _flat_params(t, "eval", {
        "model": str(folder), "data_dir": str(a.data), "out_dir": str(t / "eval"), "tasks": ["countdown"],
        "gen_lengths": [32], "device": "cpu"})]


def _merge_adapter(t: Path, a: Assets, change: Callable[[Path], object]) -> list[str]:
    return ["merge", str(a.model), str(_adapter_copy(t, a, change)), str(t / "merged")]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _resume(t: Path, a: Assets, change: Callable[[Path], object], *extra: str) -> list[str]:
    """`d1 sft --resume` on a copy of a checkpointed run whose ``step-1`` is changed by ``change``;
    ``complete.json`` is rewritten, so the checkpoint looks whole and its content is what is read."""
    from d1.train.checkpoints import write_complete_marker

    out = t / "run"
    shutil.copytree(a.checkpointed_run, out)
    step = out / "checkpoints" / "step-1"
    change(step)
    write_complete_marker(step, 1)
    return a.sft_args(out, "--resume", *extra)


class _RunsCode:
    """A pickle that would run a command if loaded unsafely."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _code_pickle(step: Path) -> None:
    import pickle

    # protocol 2: torch's safe unpickler reads it without a warning of its own
    (step / "optimizer.pt").write_bytes(pickle.dumps({"state": _RunsCode(step.parent / "pwned")}, protocol=2))


def _other_stage(step: Path) -> None:
    _edit_json(step / "trainer_state.json", stage="grpo")


def _generations(t: Path, items_json: str, task: str = "gsm8k", command: str = "score") -> list[str]:
    path = _write(t / "generations.json", '{"generations": [' + items_json + "]}")
    return [command, "--task", task, str(path)]


def _item(ground_truth_json: str, question: str = "q", generations: str = "<answer>\\n3\\n</answer>") -> str:
    return f'{{"question": "{question}", "generations": "{generations}", "ground_truth": {ground_truth_json}}}'


def _lock(t: Path, content: str | bytes) -> list[str]:
    lock = _write(t / "project" / "dvc.lock", content)
    return ["lineage", str(t / "project" / "outputs" / "x"), "--lock", str(lock)]


# ----------------------------------------------------------------------------- the cases


@dataclass
class Case:
    id: str
    build: Callable[[Path, Assets], list[str]]  # builds the input under tmp_path; returns the d1 arguments
    message: str  # regex the error line must match after "d1 <command>: error: "
    status: list[str] = field(default_factory=list)  # regexes of the status lines allowed before the error


P = r"\S*"  # a path
TOO_LONG = r"a number of 5000 digits, more than the 4300 that can be read"


def _config(**values) -> Callable[[Path], None]:
    """A change of a model folder: set ``values`` in its config.json."""
    return lambda folder: _edit_json(folder / "config.json", **values)


CASES = [
    # --- params files and values
    Case("params-missing-file", lambda t, a: ["sft", "--params", str(t / "nope.yaml")],
         rf"{P}/nope\.yaml: no such params file$"),
    Case("params-random-bytes", lambda t, a: ["sft", "--params", str(_write(t / "garbage.yaml", RANDOM_BYTES))],
         rf"{P}/garbage\.yaml: not a params file: not UTF-8 text \("),
    Case("params-invalid-yaml", lambda t, a: ["sft", "--params", str(_write(t / "p.yaml", "sft: [\n"))],
         rf"{P}/p\.yaml: invalid YAML \(line 2, column 1: expected the node content"),
    Case("params-nested-too-deep", lambda t, a: ["sft", "--params", str(_write(t / "p.yaml", "a: " + "[" * 100_000))],
         rf"{P}/p\.yaml: invalid YAML \(nested too deeply\)$"),
    Case("params-python-tag",
         lambda t, a: ["sft", "--params", str(_write(t / "p.yaml", "a: !!python/object/apply:os.system [ls]\n"))],
         rf"{P}/p\.yaml: invalid YAML \(line 1, column 4: could not determine a constructor for the tag"),
    Case("params-top-level-list", lambda t, a: ["sft", "--params", str(_write(t / "p.yaml", "- sft\n"))],
         rf"{P}/p\.yaml: expected a mapping at the top level$"),
    Case("params-unknown-section", lambda t, a: ["sft", "--params", str(a.params), "--section", "nope.sft"],
         rf"{P}params\.yaml: no 'nope' section \(for section 'nope\.sft'\)$"),
    Case("param-unknown-key", lambda t, a: _micro(a, "sft", "lrr=1e-4"),
         r"micro\.sft: unknown key 'lrr' \(known: "),
    Case("param-wrong-type", lambda t, a: _micro(a, "sft", "batch_size=two"),
         r"micro\.sft\.batch_size: expected an integer, got 'two'$"),
    Case("param-negative-lr", lambda t, a: _micro(a, "sft", "lr=-1"),
         r"micro\.sft\.lr: must be a positive number, got -1\.0$"),
    Case("param-nan-lr", lambda t, a: _micro(a, "grpo", "lr=.nan"),
         r"micro\.grpo\.lr: must be a positive number, got nan$"),
    Case("param-malformed-override", lambda t, a: ["sft", "--params", str(a.params), "--set", "nonsense"],
         r"override 'nonsense': expected KEY=VALUE with a dotted KEY$"),
    Case("prepare-unknown-task", lambda t, a: _micro(a, "prepare", "tasks.chess.train=generate"),
         r"micro\.prepare\.tasks\.chess: unknown task 'chess'; available: countdown, gsm8k, math500, sudoku$"),
    Case("prepare-unknown-generator-option", lambda t, a: _micro(a, "prepare", "tasks.countdown.generator.bogus=1"),
         r"micro\.prepare\.tasks\.countdown\.generator: unknown option\(s\) bogus$"),
    Case("grpo-unknown-algorithm", lambda t, a: _micro(a, "grpo", "algorithm=ppo"),
         r"micro\.grpo\.algorithm: 'ppo' is not one of grpo\.algorithms \(d1, wd1, spg, espo\)$"),
    Case("grpo-algorithm-bad-value", lambda t, a: _micro(a, "grpo", "algorithms.spg.num_iterations=0"),
         r"micro\.grpo\.algorithms\.spg\.num_iterations: must be a positive integer, got 0$"),
    Case("grpo-objective-estimator-mismatch", lambda t, a: _micro(a, "grpo", "algorithms.espo.estimator=one_step"),
         r"micro\.grpo\.algorithms\.espo\.estimator: 'one_step' estimates token_logp, objective 'espo' reads elbo "
         r"\(estimators that fit: elbo\)$"),
    Case("grpo-kl-without-reference", lambda t, a: _micro(a, "grpo", "algorithms.wd1.beta=0.04"),
         r"micro\.grpo\.algorithms\.wd1\.beta: objective 'wd1' has no KL term to a reference; set it to 0, "
         r"got 0\.04$"),
    Case("grpo-unknown-objective-param", lambda t, a: _micro(a, "grpo", "algorithms.spg.objective_params={eubo: 2}"),
         r"micro\.grpo\.algorithms\.spg\.objective_params: unknown key 'eubo' \(known: .*eubo_beta.*\)$"),
    Case("grpo-spg-more-samples-than-blocks",
         lambda t, a: _micro(a, "grpo", "algorithms.spg.estimator_params.num_t=2"),
         r"micro\.grpo\.algorithms\.spg\.estimator_params\.num_t: 2 is more than the 1 block\(s\) of 32 tokens in "
         r"sampler\.gen_length 32 \(each sample takes its own block\); lower num_t or the block length$"),
    Case("eval-model-name-not-in-models", lambda t, a: _micro(a, "eval", "model_name=other"),
         r"micro\.eval\.model_name: 'other' is not one of the models of eval\.models \(base, d1, espo, sft, spg, wd1\)$"),
    Case("eval-gen-length-not-multiple", lambda t, a: _micro(a, "eval", "gen_lengths=[50]"),
         r"micro\.eval\.gen_lengths: 50 is not a positive multiple of the sampler's block_length 32$"),
    Case("param-moved-key", lambda t, a: _micro(a, "grpo", "diffusion_steps=8"),
         r"micro\.grpo\.diffusion_steps: moved to micro\.grpo\.sampler\.steps$"),
    Case("grpo-replay-with-threshold", lambda t, a: _micro(a, "grpo", "estimator=replay", "sampler.threshold=0.9"),
         r"micro\.grpo\.sampler\.threshold: must be null with estimator replay \(it replays the sampler's "
         r"fixed step schedule\), got 0\.9$"),
    # --- data files
    Case("data-missing-file", lambda t, a: ["prepare", "--params", _flat_params(t, "prepare", {
        "out_dir": str(t / "prepared"), "tasks": {"gsm8k": {"train": str(t / "none.jsonl"), "test": "builtin"}}})],
         rf"{P}/none\.jsonl: no such file$"),
    Case("data-malformed-jsonl-line",
         lambda t, a: _prepare_from(t, "bad.jsonl", '{"question": "q", "answer": "#### 2"}\n{bad\n'),
         rf"{P}/bad\.jsonl: line 2: invalid JSON \(Expecting property name enclosed in double quotes at column 2\)$"),
    Case("data-csv-missing-column", lambda t, a: _prepare_from(t, "gsm8k.csv", "question\nwhat is 1+1?\n"),
         rf"{P}/gsm8k\.csv: row 0: gsm8k record lacks a string 'answer'$"),
    Case("data-unknown-extension", lambda t, a: _prepare_from(t, "gsm8k.txt", "question,answer\n"),
         rf"{P}/gsm8k\.txt: unknown file extension '\.txt'; expected one of \.jsonl, \.json, \.csv, \.parquet$"),
    Case("data-random-bytes", lambda t, a: _prepare_from(t, "gsm8k.jsonl", RANDOM_BYTES),
         rf"{P}/gsm8k\.jsonl: not UTF-8 text \("),
    Case("data-random-parquet", lambda t, a: _prepare_from(t, "gsm8k.parquet", RANDOM_BYTES),
         rf"{P}/gsm8k\.parquet: not a readable parquet file \("),
    Case("data-empty-source", lambda t, a: _prepare_from(t, "gsm8k.jsonl", ""),
         rf"{P}/gsm8k\.jsonl: holds no rows \(the gsm8k train split would be empty\)$"),
    Case("data-nested-200k", lambda t, a: _prepare_from(t, "gsm8k.json", "[" * 200_000),
         rf"{P}/gsm8k\.json: not readable JSON \(arrays or objects nested too deeply to read\)$"),
    Case("data-5000-digit-number",
         lambda t, a: _prepare_from(t, "gsm8k.jsonl", f'{{"question": "q", "answer": {BIG}}}\n'),
         rf"{P}/gsm8k\.jsonl: line 1: not readable JSON \({TOO_LONG}\)$"),
    Case("data-wrong-record", lambda t, a: _prepare_from(t, "cd.jsonl", '{"nums": "abc"}\n', task="countdown"),
         rf"{P}/cd\.jsonl: row 0: countdown record lacks "),
    Case("sft-empty-train-file", lambda t, a: _train_on(t, a, "sft", ""),
         rf"{P}/countdown/train\.jsonl: holds no train example \(an empty file; run `d1 prepare` again\)$"),
    Case("grpo-empty-train-file", lambda t, a: _train_on(t, a, "grpo", ""),
         rf"{P}/countdown/train\.jsonl: holds no train example \(an empty file; run `d1 prepare` again\)$"),
    Case("sft-missing-train-file", lambda t, a: _train_on(t, a, "sft", None),
         rf"{P}/countdown/train\.jsonl: no such file \(run `d1 prepare` first\)$"),
    Case("sft-train-file-wrong-rows", lambda t, a: _train_on(t, a, "sft", '{"q": 1}\n'),
         rf"{P}/countdown/train\.jsonl: row 0: not a prepared countdown example \(KeyError\('question'\)\)$"),
    # --- model folders
    Case("model-no-config", lambda t, a: _eval_model(t, a, lambda m: (m / "config.json").unlink()),
         rf"model '{P}/model': folder has no config\.json$"),
    Case("model-config-not-json", lambda t, a: _eval_model(t, a, lambda m: _write(m / "config.json", "{")),
         rf"model '{P}/model': config\.json is not valid JSON \("),
    Case("model-config-is-a-list", lambda t, a: _eval_model(t, a, lambda m: _write(m / "config.json", "[1, 2]")),
         rf"model '{P}/model': config\.json holds a JSON list, expected an object"),
    Case("model-config-wrong-type", lambda t, a: _eval_model(t, a, _config(d_model="abc")),
         rf"model '{P}/model': config\.json: d_model must be an integer, got 'abc'$"),
    Case("model-config-negative-size", lambda t, a: _eval_model(t, a, _config(n_layers=-1)),
         rf"model '{P}/model': config\.json: n_layers must be positive, got -1$"),
    Case("model-config-fewer-layers", lambda t, a: _eval_model(t, a, _config(n_layers=1)),
         rf"model '{P}/model': its weights do not fit its config\.json: unexpected weights "
         r"model\.transformer\.blocks\.1\."),
    Case("model-config-other-vocab",
         lambda t, a: _eval_model(t, a, _config(vocab_size=600, embedding_size=600)),
         rf"model '{P}/model': its weights do not fit its config\.json: model\.transformer\.\S+ has shape "
         r"\[512, 32\] in the weights, the config makes it \[600, 32\]$"),
    Case("model-weights-truncated", lambda t, a: _eval_model(t, a, lambda m: _truncate(m / "model.safetensors")),
         rf"model '{P}/model': model\.safetensors is not a readable safetensors file, truncated or corrupt \("),
    Case("model-weights-random-bytes",
         lambda t, a: _eval_model(t, a, lambda m: _write(m / "model.safetensors", RANDOM_BYTES)),
         rf"model '{P}/model': model\.safetensors is not a readable safetensors file, truncated or corrupt \("),
    Case("model-no-weights", lambda t, a: _eval_model(t, a, lambda m: (m / "model.safetensors").unlink()),
         rf"model '{P}/model': cannot load it \(.*no file named model\.safetensors"),
    Case("model-path-is-a-file", lambda t, a: ["merge", str(_write(t / "model.bin", b"x")), str(a.adapter),
                                               str(t / "merged")],
         rf"model '{P}/model\.bin': expected a model folder, got a file$"),
    # --- LoRA adapter folders
    Case("adapter-weights-random-bytes",
         lambda t, a: _eval_adapter(t, a, lambda d: _write(d / "adapter_model.safetensors", RANDOM_BYTES)),
         rf"adapter '{P}/adapter': adapter_model\.safetensors is not a readable safetensors file, truncated or "
         r"corrupt \("),
    Case("adapter-weights-truncated",
         lambda t, a: _merge_adapter(t, a, lambda d: _truncate(d / "adapter_model.safetensors")),
         rf"adapter '{P}/adapter': adapter_model\.safetensors is not a readable safetensors file, truncated or "
         r"corrupt \("),
    Case("adapter-unknown-peft-type",
         lambda t, a: _merge_adapter(t, a, lambda d: _edit_json(d / "adapter_config.json", peft_type="BOGUS")),
         rf"adapter '{P}/adapter': adapter_config\.json: unknown peft_type 'BOGUS' \(this pipeline writes 'LORA'"),
    Case("adapter-config-not-json", lambda t, a: _eval_adapter(t, a, lambda d: _write(d / "adapter_config.json", "{")),
         rf"adapter '{P}/adapter': adapter_config\.json is not valid JSON \("),
    Case("adapter-rank-wrong-type",
         lambda t, a: _eval_adapter(t, a, lambda d: _edit_json(d / "adapter_config.json", r="abc")),
         rf"adapter '{P}/adapter': adapter_config\.json: r must be a positive integer, got 'abc'$"),
    Case("adapter-no-weights", lambda t, a: _eval_adapter(t, a, lambda d: (d / "adapter_model.safetensors").unlink()),
         rf"adapter '{P}/adapter': no adapter weights \(adapter_model\.safetensors or adapter_model\.bin\) in that "
         r"folder$"),
    Case("adapter-weights-missing-for-a-target",
         lambda t, a: _eval_adapter(t, a, lambda d: _edit_json(d / "adapter_config.json",
                                                                target_modules=["q_proj", "k_proj"])),
         rf"adapter '{P}/adapter': its weights do not fit its adapter_config\.json \(Found missing adapter keys"),
    Case("adapter-folder-without-config", lambda t, a: ["merge", str(a.model), str(t), str(t / "merged")],
         rf"adapter '{P}': no adapter_config\.json in that folder$"),
    # --- checkpoint folders (d1 sft --resume)
    Case("checkpoint-optimizer-random-bytes",
         lambda t, a: _resume(t, a, lambda s: _write(s / "optimizer.pt", RANDOM_BYTES)),
         rf"{P}/checkpoints/step-1/optimizer\.pt: not a readable checkpoint state \(UnpicklingError; read with weights_only=True", [RESUMING]),
    Case("checkpoint-optimizer-runs-code", lambda t, a: _resume(t, a, _code_pickle),
         rf"{P}/checkpoints/step-1/optimizer\.pt: not a readable checkpoint state \(UnpicklingError; read with weights_only=True", [RESUMING]),
    Case("checkpoint-scheduler-empty", lambda t, a: _resume(t, a, lambda s: _write(s / "scheduler.pt", b"")),
         rf"{P}/checkpoints/step-1/scheduler\.pt: not a readable checkpoint state \(EOFError; read with weights_only=True", [RESUMING]),
    Case("checkpoint-of-another-stage", lambda t, a: _resume(t, a, _other_stage),
         rf"{P}/checkpoints/step-1: a 'grpo' checkpoint, not 'sft'$"),
    Case("checkpoint-config-changed", lambda t, a: _resume(t, a, lambda s: None, "--set", "sft.lr=0.5"),
         r"sft: cannot resume, the config changed since the checkpoint \(lr: 0\.001 -> 0\.5\)"),
    # --- generations files (d1 score / reward / score-dir)
    Case("generations-missing-file", lambda t, a: ["score", "--task", "gsm8k", str(t / "none.json")],
         rf"{P}/none\.json: no such file$"),
    Case("generations-not-json",
         lambda t, a: ["score", "--task", "gsm8k", str(_write(t / "g.json", '{"generations": ['))],
         rf"{P}/g\.json: not valid JSON \(Expecting value: line 1 column "),
    Case("generations-random-bytes", lambda t, a: ["score", "--task", "gsm8k", str(_write(t / "g.json", RANDOM_BYTES))],
         rf"{P}/g\.json: not valid JSON \(not UTF-8 text: "),
    Case("generations-nested-200k", lambda t, a: ["score", "--task", "gsm8k", str(_write(t / "g.json", "[" * 200_000))],
         rf"{P}/g\.json: not readable JSON \(arrays or objects nested too deeply to read\)$"),
    Case("generations-nested-200k-reward",
         lambda t, a: ["reward", "--task", "countdown", str(_write(t / "g.json", "[" * 200_000 + "]" * 200_000))],
         rf"{P}/g\.json: not readable JSON \(arrays or objects nested too deeply to read\)$"),
    Case("generations-gsm8k-5000-digit-truth", lambda t, a: _generations(t, _item(BIG)),
         rf"{P}/generations\.json: not readable JSON \({TOO_LONG}\)$"),
    Case("generations-countdown-5000-digit-truth",
         lambda t, a: _generations(t, _item(f"[[1, 2, 3], {BIG}]"), task="countdown"),
         rf"{P}/generations\.json: not readable JSON \({TOO_LONG}\)$"),
    Case("generations-math500-5000-digit-truth", lambda t, a: _generations(t, _item(BIG), task="math500"),
         rf"{P}/generations\.json: not readable JSON \({TOO_LONG}\)$"),
    Case("generations-countdown-5000-digit-string",
         lambda t, a: _generations(t, _item(f'[[1, 2, 3], "{BIG}"]'), task="countdown"),
         rf"{P}/generations\.json: generations\[0\] is not a countdown item \({TOO_LONG}\)$"),
    Case("generations-item-lacks-field", lambda t, a: _generations(t, _item('"3"') + ', {"question": "q"}'),
         rf"{P}/generations\.json: generations\[1\] lacks generations, ground_truth$"),
    Case("generations-not-a-string",
         lambda t, a: _generations(t, '{"question": "q", "generations": 3, "ground_truth": 3}'),
         rf"{P}/generations\.json: generations\[0\]\.generations is not a string$"),
    Case("generations-not-a-sudoku-item", lambda t, a: _generations(t, _item("[1, 2]"), task="sudoku"),
         rf"{P}/generations\.json: generations\[0\] is not a sudoku item \("),
    Case("score-dir-no-files", lambda t, a: ["score-dir", str(t)],
         rf"{P}: no \{{task\}}_\.\.\._\{{gen_length\}}_\{{steps\}}_\{{shard\}}_generations\.json files$"),
    # --- dvc.lock files (d1 lineage)
    Case("lineage-lock-missing", lambda t, a: ["lineage", str(t / "x"), "--lock", str(t / "dvc.lock")],
         rf"{P}/dvc\.lock: no such file \(run `dvc repro` first\)$"),
    Case("lineage-lock-random-bytes", lambda t, a: _lock(t, RANDOM_BYTES),
         rf"{P}/dvc\.lock: not a dvc\.lock file: not UTF-8 text \("),
    Case("lineage-lock-wrong-shape", lambda t, a: _lock(t, "schema: '2.0'\nstages:\n  sft:\n    outs: [outputs]\n"),
         rf"{P}/dvc\.lock: stages\.sft\.outs\[0\]: expected a mapping with a 'path' string, got 'outputs'$"),
]


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (and each folder, as a name), the lock files aside."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("cwd/.d1-locks"):
            continue
        found[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return found


def run_cli(argv: list[str], capsys, caplog) -> tuple[int, str, list[str]]:
    """(exit status, stdout, stderr lines) of ``d1 ARGV``; warnings and log records of level WARNING
    and above count as stderr lines (the console script prints them there)."""
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
    out, err = capsys.readouterr()
    lines = err.splitlines()
    lines += [f"warning: {w.category.__name__}: {w.message}" for w in caught]
    lines += [f"log: {r.levelname}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]
    return rc, out, lines


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(case: Case, assets, tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    caplog.set_level(logging.WARNING)
    argv = case.build(tmp_path, assets)
    capsys.readouterr()  # what building the shared inputs printed (a training run) is not the case's
    cwd = tmp_path / "cwd"  # relative outputs of the micro profile (and the lock files) land here
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = _snapshot(tmp_path)
    rc, out, lines = run_cli(argv, capsys, caplog)
    assert rc != 0 and out == "", (rc, out, lines)
    assert not any("Traceback" in line for line in lines), lines
    assert len(lines) == len(case.status) + 1, lines
    for pattern, line in zip(case.status, lines):
        assert re.match(pattern, line), (pattern, line)
    prefix = f"d1 {argv[0]}: error: "
    assert re.match(re.escape(prefix) + case.message, lines[-1]), (case.message, lines[-1])
    assert _snapshot(tmp_path) == before, "the command wrote or changed files"
    assert _doc_rows().get(case.id, "").startswith(f"`d1 {argv[0]}"), "docs/reliability.md: no row for this case"


def test_enough_cases_and_unique_ids():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 30


@functools.lru_cache(maxsize=1)
def _doc_rows() -> dict[str, str]:
    """{case id: command column} of the table in docs/reliability.md."""
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))] if line.startswith("|") else []
        m = re.match(r"`([a-z0-9-]+)`", cells[0]) if cells else None
        if m:
            rows[m.group(1)] = cells[1]
    return rows


def test_the_docs_table_lists_every_case():
    """One row per case, by id (each case checks that its row names the command it runs)."""
    assert sorted(_doc_rows()) == sorted(c.id for c in CASES)


@pytest.mark.parametrize("case_id", ["params-random-bytes", "generations-nested-200k", "lineage-lock-random-bytes"])
def test_the_console_script_prints_the_same_one_line(case_id, assets, tmp_path):
    """The installed ``d1`` entry point, not just main(): one line on stderr, exit 1, no traceback."""
    case = next(c for c in CASES if c.id == case_id)
    argv = case.build(tmp_path, assets)
    exe = str(Path(sys.executable).parent / "d1")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([exe, *argv], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    lines = done.stderr.splitlines()
    assert done.returncode == 1 and done.stdout == ""
    assert len(lines) == 1, done.stderr
    assert re.match(re.escape(f"d1 {argv[0]}: error: ") + case.message, lines[0]), lines[0]
