"""The ``d1`` command line: thin wrappers over library functions.

Every user error (unknown task, missing file, malformed data, bad params) is
reported as one line on stderr with a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
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


def _cmd_prepare(args: argparse.Namespace) -> int:
    from d1.config import load_config
    from d1.prepare import PrepareConfig, prepare

    cfg = load_config(PrepareConfig, args.params)
    if args.out_dir:
        cfg.out_dir = args.out_dir
    manifest = prepare(cfg)
    summary = {name: {s: v["count"] for s, v in splits.items()} for name, splits in manifest["tasks"].items()}
    print(json.dumps({"out_dir": cfg.out_dir, "counts": summary}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="d1",
        description="d1-pipeline: masked SFT, diffu-GRPO and evaluation for diffusion language models.",
    )
    parser.add_argument("--version", action="version", version=f"d1 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser(
        "prepare",
        help="write the train/test files of every task and a manifest",
        description="Data-prep stage: load the benchmark test sets (shipped with the package, or from a "
        "local file, hf:NAME or s3:// URI), load or generate the training sets, and write "
        "OUT_DIR/<task>/{train,test}.jsonl, OUT_DIR/manifest.json (counts, sources, sha256, seed) "
        "and OUT_DIR/prepare_config.json. Settings come from the `prepare` section of the params file.",
    )
    p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    p.add_argument("--out-dir", help="override prepare.out_dir")
    p.set_defaults(func=_cmd_prepare)

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
    except OSError as exc:  # unwritable output folder, disk full, ...
        print(f"d1 {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"d1 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
