"""The ``d1`` command line: thin wrappers over library functions.

Every user error (unknown task, missing file, malformed data, bad params) is
reported as one line on stderr with a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Callable, Sequence

from d1 import __version__
from d1.errors import D1Error

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are a single line naming the command and the problem."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _task_name(value: str) -> str:
    from d1.tasks import available_tasks

    if value not in available_tasks():
        raise argparse.ArgumentTypeError(
            f"unknown task {value!r}; available: {', '.join(available_tasks())}"
        )
    return value


def _cmd_score(args: argparse.Namespace) -> int:
    from d1.scoring import score_files

    print(json.dumps(score_files(args.task, args.files)))
    return 0


def _cmd_score_dir(args: argparse.Namespace) -> int:
    from d1.scoring import markdown_table, score_directory

    results = score_directory(args.directory)
    if args.json:
        for r in results:
            print(json.dumps(r))
    else:
        print(markdown_table(results))
    return 0


def _cmd_reward(args: argparse.Namespace) -> int:
    from d1.scoring import reward_records

    # Collect first: a malformed item later in the file must not leave half the output.
    rows = list(reward_records(args.task, args.file))
    for row in rows:
        print(json.dumps(row))
    return 0


# Pipeline stages: (config class, runner, summary, description). Imports are lazy:
# torch and transformers are only loaded by the stages that need them.
STAGES = {
    "prepare": (
        "d1.prepare:PrepareConfig", "d1.prepare:prepare",
        "write the train/test files of every task and a manifest",
        "Data-prep stage: load the benchmark test sets (shipped with the package, or from a local file, "
        "hf:NAME or s3:// URI), load or generate the training sets, and write OUT_DIR/<task>/{train,test}.jsonl, "
        "OUT_DIR/manifest.json (counts, sources, sha256, seed) and OUT_DIR/prepare_config.json.",
    ),
    "base": (
        "d1.base:BaseConfig", "d1.base:run_base",
        "the base model: pre-train the tiny model, or name an existing one (Hub id or folder)",
        "Base-model stage: with `pretrain` settings, train the tokenizer and pre-train the built-in tiny LLaDA "
        "(tiny profiles); with `model`, record an existing base model such as GSAI-ML/LLaDA-8B-Instruct "
        "(nothing is trained or downloaded). Writes OUT_DIR/base.json naming the model SFT and the base "
        "evaluation load.",
    ),
    "pretrain": (
        "d1.train.pretrain_config:PretrainConfig", "d1.train.pretrain:run_pretrain",
        "train the tokenizer and pre-train the built-in tiny LLaDA (tiny profile)",
        "Tiny profile only: train a tokenizer on the prepared task corpora and pre-train the built-in tiny "
        "LLaDA model from scratch with the masked-diffusion objective; writes a full model folder usable as "
        "the SFT base. The pipeline runs it through `d1 base` (its settings are then `<profile>.base.pretrain`: "
        "`d1 pretrain --section tiny.base.pretrain` runs them alone).",
    ),
    "sft": (
        "d1.train.sft_config:SFTConfig", "d1.train.sft:run_sft",
        "masked SFT on worked solutions (LoRA or full), then merge",
        "Masked SFT (d1): the prompt is never masked, each response token is masked with probability t ~ U(eps, 1), "
        "the loss is CE/t over masked tokens divided by the response tokens; EOS padding is learned. Writes the "
        "adapter or model, checkpoints, dvclive metrics and, if configured, the adapter merged into its base.",
    ),
    "grpo": (
        "d1.train.grpo_config:GRPOConfig", "d1.train.grpo:run_grpo",
        "diffu-GRPO reinforcement learning with the task's rewards",
        "diffu-GRPO (d1): G rollouts per prompt with the shared sampler, rewards from the task registry, "
        "group advantages, mu inner iterations with the one-step masked log-prob estimator, PPO clip and k3 KL "
        "against the adapter-disabled reference. Writes the adapter or model, checkpoints and dvclive metrics.",
    ),
    "eval": (
        "d1.eval:EvalConfig", "d1.eval:run_eval",
        "generate on the test sets at several lengths and score",
        "Evaluation stage: generate on each task's test set at each generation length with the shared sampler "
        "(d1 protocol: greedy, block 32, steps = length/2), write d1-format generations files (re-scorable "
        "with `d1 score`) and metrics.json. One DVC eval cell = one model label, task and length "
        "(see `models` in the eval section).",
    ),
    "report": (
        "d1.report:ReportConfig", "d1.report:run_report",
        "the results table (base / +SFT / d1), paired gains with 95%% intervals, plots, an offline page",
        "Report stage: read every evaluation cell (EVAL_DIR/<model>/<task>/<gen length>/), write "
        "OUT_DIR/results.md and results.json (accuracy by task and length; the gains +SFT - base and d1 - +SFT "
        "per task with a paired bootstrap 95% interval over the same test items), PNG plots (accuracy vs "
        "length, GRPO reward curves) and index.html with everything embedded (opens offline).",
    ),
}

#: commands that take --resume (the training stages)
RESUMABLE = ("base", "pretrain", "sft", "grpo")


def _load(ref: str):
    import importlib

    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _cmd_stage(args: argparse.Namespace) -> int:
    """Load the stage's section, run it, write its provenance record (OUT_DIR/provenance.json or --provenance)."""
    from d1.config import check_graph_axes, default_section, load_config, read_params
    from d1.locks import stage_run
    from d1.progress import quiet_library_bars
    from d1.provenance import PROVENANCE_FILE, is_main_process, make_record, utc_now, write_provenance

    quiet_library_bars()  # in a log, only our own progress lines (d1.progress)
    config_ref, runner_ref, _, _ = STAGES[args.command]
    cls = _load(config_ref)
    params = read_params(args.params)
    section = args.section or default_section(params, cls.SECTION)
    check_graph_axes(params, section, args.params)  # the DVC graph's tasks and lengths are the profile's
    overrides = list(args.set)
    # `d1 report --tasks ... --gen-lengths ... --models ... --algorithms ...` (DVC passes the graph's axes)
    for key in ("tasks", "gen_lengths", "models", "algorithms"):
        if getattr(args, key, None):
            overrides.append(f"{section}.{key}={json.dumps(getattr(args, key))}")
    cfg = load_config(cls, args.params, section=section, overrides=overrides)
    runner = _load(runner_ref)
    kwargs = {"resume": True} if getattr(args, "resume", False) else {}
    started = utc_now()
    # one writer per output folder, none while a flow run holds the checkout (d1.locks)
    holding = stage_run(cfg.out_dir, section=section) if is_main_process() else contextlib.nullcontext()
    with holding:
        result = runner(cfg, **kwargs)
    if is_main_process():
        write_provenance(args.provenance or Path(cfg.out_dir) / PROVENANCE_FILE,
                         make_record(command=args.command, section=section, started_at=started))
    if args.command == "prepare":
        sets = {**result["tasks"], **result.get("sft_data", {})}  # tasks, then SFT data sets (s1k)
        result = {"out_dir": cfg.out_dir, "counts": {t: {s: v["count"] for s, v in e.items()} for t, e in sets.items()}}
    print(json.dumps(finite_json(result), default=str, allow_nan=False))
    return 0


def finite_json(value):
    """``value`` with every NaN or infinity replaced by None: the summary stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def _cmd_lineage(args: argparse.Namespace) -> int:
    from d1.lineage import format_text, lineage

    result = lineage(args.path, args.lock)
    print(json.dumps(result, indent=2, default=str) if args.json else format_text(result))
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from d1.models.lora import merge_adapter

    out = merge_adapter(args.base, args.adapter, args.out)
    print(json.dumps({"merged": str(out)}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="d1",
        description="d1-pipeline: masked SFT, diffu-GRPO and evaluation for diffusion language models.",
    )
    parser.add_argument("--version", action="version", version=f"d1 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    for name, (_, _, summary, description) in STAGES.items():
        p = sub.add_parser(name, help=summary, description=description + " Settings come from the "
                           f"`{name}` section of the active profile of the params file (`<profile>.{name}`, "
                           "see params.yaml); a provenance record (git commit, flow run, times; --provenance) "
                           "is written for `d1 lineage`.")
        p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
        p.add_argument("--section", metavar="DOTTED.PATH",
                       help=f"params section to read, e.g. tiny.{name} (default: <profile>.{name} when the file "
                       f"names a profile, else {name})")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help=f"override a param of the section, e.g. --set {name}.seed=1 or --set tiny.{name}.seed=1 "
                       "(repeatable; value parsed as YAML)")
        p.add_argument("--provenance", metavar="FILE",
                       help="where to write the provenance record (default: OUT_DIR/provenance.json; dvc.yaml "
                       "writes outputs/provenance/<stage>.json so that it stays out of the hashed output folders)")
        if name in RESUMABLE:
            p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in out_dir")
        if name == "report":
            p.add_argument("--tasks", nargs="+", metavar="TASK", help="report these tasks (default: the section's)")
            p.add_argument("--gen-lengths", "--gen_lengths", dest="gen_lengths", nargs="+", type=int, metavar="N",
                           help="report these generation lengths (default: the section's)")
            p.add_argument("--models", nargs="+", metavar="MODEL",
                           help="the table's rows, in order (default: the section's)")
            p.add_argument("--algorithms", nargs="+", metavar="NAME",
                           help="the RL models whose reward curves are drawn (default: the models but base, sft)")
        p.set_defaults(func=_cmd_stage)

    p = sub.add_parser(
        "lineage",
        help="the stages, params, input hashes, git commit and flow run behind an output",
        description="Print how PATH (any file or folder inside a stage output: a metrics file, a model, a "
        "dataset) was produced: the stage, its command, params values and deps with their md5 (from "
        "dvc.lock), the git commit and Prefect flow-run id of the run (from the stage's provenance.json), "
        "then the same for every upstream stage, up to data preparation.",
    )
    p.add_argument("path", metavar="PATH", help="a file or folder produced by a stage")
    p.add_argument("--lock", default="dvc.lock", help="the dvc.lock to read (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=_cmd_lineage)

    p = sub.add_parser(
        "merge",
        help="merge a LoRA adapter into its base model and save a standalone model",
        description="Merge the LoRA adapter in ADAPTER into the base model BASE and save the standalone "
        "model (and the tokenizer, if present) to OUT.",
    )
    p.add_argument("base", metavar="BASE", help="base model folder or Hub id")
    p.add_argument("adapter", metavar="ADAPTER", help="LoRA adapter folder")
    p.add_argument("out", metavar="OUT", help="output folder")
    p.set_defaults(func=_cmd_merge)

    p = sub.add_parser(
        "score",
        help="score d1-format generations files (the paper's evaluation protocol)",
        description="Score generations files in the d1 format ({\"generations\": [{\"question\", "
        "\"generations\", \"ground_truth\"}, ...]}). Several files are pooled. Prints one JSON object: "
        "task, n (items), correct, total (items, or empty cells for sudoku), accuracy "
        "(percent, 100*correct/total), files.",
    )
    p.add_argument("--task", required=True, type=_task_name, help="gsm8k, math500, countdown or sudoku")
    p.add_argument("files", nargs="+", metavar="FILE", help="generations JSON file(s)")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser(
        "score-dir",
        help="score every generations file of a folder, pooled per task and length",
        description="Score every {task}_{model}_{gen_length}_{steps}_{shard}_generations.json file in "
        "DIRECTORY, pooling the shards of each (task, gen_length) setting, and print an accuracy "
        "table (markdown) or one JSON object per setting (--json).",
    )
    p.add_argument("directory", metavar="DIRECTORY")
    p.add_argument("--json", action="store_true", help="one JSON object per setting instead of a table")
    p.set_defaults(func=_cmd_score_dir)

    p = sub.add_parser(
        "reward",
        help="training reward of every item of a generations file, per component",
        description="Print one JSON object per item of a d1-format generations file: index, total "
        "training reward and each of its components (the diffu-GRPO rewards of the task).",
    )
    p.add_argument("--task", required=True, type=_task_name, help="gsm8k, math500, countdown or sudoku")
    p.add_argument("file", metavar="FILE", help="generations JSON file")
    p.set_defaults(func=_cmd_reward)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except D1Error as exc:
        print(f"d1 {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `d1 lineage PATH | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 141
    except OSError as exc:  # unwritable output folder, disk full, ...
        print(f"d1 {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"d1 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
