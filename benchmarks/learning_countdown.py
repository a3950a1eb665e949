"""Learning on the tiny model, CPU: pre-train -> masked SFT -> diffu-GRPO on Countdown.

Runs the whole chain with the library's stage functions and prints a table:
stage, seconds, optimiser steps, held-out accuracy (95% CI), cd3 accuracy, and
the GRPO gain on the held-out puzzles with its paired 95% CI.

    .venv/bin/python benchmarks/learning_countdown.py [--out DIR] [--seed N]
        [--steps-pretrain N --steps-sft N --steps-grpo N]
        [--budget-pretrain S --budget-sft S --budget-grpo S]
        [--sft-from EARLIER_OUT --grpo-seed N]   # GRPO alone, another seed, same SFT model

Chain (every step a library function; nothing here re-implements training):

1. data: ``HELDOUT`` Countdown puzzles generated first (seeded), then
   ``d1.prepare.prepare`` generates the training split with the held-out file
   as its test split, so training puzzles are disjoint from the held-out ones
   (and, as always, from the shipped cd3 test set); then ``--extra-heldout``
   more puzzles (default 1,500) disjoint from both, generated after the training
   split so that they do not change it. Held-out accuracy and the GRPO gain are
   reported on all of them (a paired CI over 2,000 puzzles is half as wide as
   over 500) and on the first ``HELDOUT`` alone (comparable with older rows);
2. ``run_pretrain``: tokenizer trained on the training split, tiny LLaDA
   pre-trained from scratch on the worked solutions (plain documents);
3. ``run_sft``: masked SFT (d1 objective: chat-templated d1 prompt, the
   ``<reasoning>...</reasoning>\\n<answer>...</answer>`` solution, EOS padding
   learned) from the pre-trained model, full fine-tuning;
4. evaluation of the SFT model (below);
5. ``run_grpo``: diffu-GRPO from the SFT model, rewards from the task registry;
6. evaluation of the GRPO model on the same puzzles.

Evaluation: greedy decoding with the shared sampler (``d1.eval.generate_completions``)
on the prompt the model was trained on (the d1 Countdown *training* prompt through
the chat template, the GRPO rollout prompt); a puzzle counts as solved when the
equation in the last ``<answer>`` block uses each number exactly once and hits
the target (the task's reward is 1.0). d1's own evaluation prompt asks for a
``\\boxed{}`` answer that neither the SFT targets nor the RL reward contain, and
d1's scorer then reads the whole text; the tiny model has never seen that
prompt, so it is not used here (see benchmarks/README.md).

Step counts are fixed by default (reproducible: the same seed gives the same
numbers on the same software); ``--budget-*`` turns a wall-clock budget into a
step count from a short timing probe of that stage (not reproducible across
machines or loads).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from d1.config import from_dict, write_json_atomic  # noqa: E402
from d1.data.io import sha256_file, write_jsonl  # noqa: E402
from d1.prepare import PrepareConfig, builtin_path, prepare, read_split  # noqa: E402
from d1.stats import paired_gain, wilson_interval  # noqa: E402
from d1.tasks import get_task  # noqa: E402
from d1.tasks.countdown_gen import TEST_SET, generate_countdown  # noqa: E402
from d1.train.common import derive_seed  # noqa: E402

TASK = "countdown"

# ----------------------------------------------------------------------------- settings
#
# Puzzles: 3 numbers drawn from 1..20 (the prototype's range; d1's data use 1..100),
# the target the value of a random expression over them (``targets: expression``,
# the way expression-first puzzle sets are built; our rebuild of the issue's
# prototype follows its learning curve on these, not on uniform targets: see
# research/README.md). ``--set generator.targets=uniform``: d1's uniform targets.
GENERATOR = {"num_numbers": 3, "number_range": [1, 20], "target_range": [1, 100], "max_misses_per_target": 200,
             "targets": "expression"}
TRAIN_SIZE = 8000
HELDOUT = 500
EXTRA_HELDOUT = 1500  # --extra-heldout: evaluation-only puzzles, disjoint from training and HELDOUT
# --grpo-fresh N: GRPO's prompts are N puzzles disjoint from the SFT split and every held-out one
# (d1 runs RL on other prompts than its SFT data); 0: GRPO samples the SFT training split (default).
GRPO_FRESH = 0

# Sampler, shared by GRPO rollouts and evaluation: the answer (< 52 tokens with the
# end-of-turn token) fits one 64-token window, decoded in two blocks of 32 (d1's
# block length).
GEN_LENGTH = 32
BLOCK_LENGTH = 32
EVAL_STEPS = 16  # gen_length / 2: d1's evaluation setting (two tokens per step)
EVAL_BATCH = 64
# A completion ends at the end of the assistant's turn (EOS or <|eot_id|>), as GRPO's rewards read
# rollouts. --whole-text: up to the first EOS only (d1's decoding, and how every result before the
# end-of-turn cut of 2026-11-26 was scored): the tiny model, trained with pad_to longest, can write
# junk with another <answer> after its turn.
STOP_AT_END_OF_TURN = True
DEVICE = "cpu"  # --device cuda: every stage and the evaluation on the GPU, float32 (no mixed precision)

PRETRAIN = {
    "tasks": [TASK], "document_format": "plain", "tokenizer_vocab_size": 1024, "tokenizer_split_words": False,
    "tokenizer_number_digits": 3,
    "d_model": 128, "n_layers": 4, "n_heads": 4, "mlp_hidden_size": 384,
    "max_sequence_length": 512, "seq_len": 256,
    "lr": 1e-3, "warmup_steps": 20, "lr_scheduler": "cosine", "batch_size": 16, "grad_accum": 1,
    "save_steps": 0, "logging_steps": 10, "device": "cpu",
}
SFT = {
    "tasks": [TASK], "full_finetune": True, "max_length": 72,
    "lr": 1e-3, "warmup_steps": 20, "lr_scheduler": "cosine", "weight_decay": 0.1,
    # 64 rows a step, padded to the step's longest: 2.3x the rows per second of 16 rows padded to 72
    "batch_size": 64, "grad_accum": 1, "adam_betas": [0.9, 0.999], "pad_to": "longest",
    "save_steps": 0, "logging_steps": 10, "device": "cpu", "merge_adapter": False,
}
GRPO = {
    "tasks": [TASK], "full_finetune": True,
    "num_generations": 8, "generation_batch_size": 64,
    # the rollout sampler (d1.generation.SamplerConfig: grpo.sampler)
    "sampler": {"gen_length": GEN_LENGTH, "block_length": BLOCK_LENGTH, "steps": 16, "temperature": 0.9},
    # p_mask_prompt 0 (d1: 0.15): the prompt's few number tokens are the whole puzzle; masking
    # one hides it from the estimator (measured: +2.8 vs +0.4 points from the same SFT model,
    # research/README.md)
    "beta": 0.04, "epsilon": 0.5, "p_mask_prompt": 0.0,
    "num_iterations": 4, "lr": 1e-4, "lr_scheduler": "constant_with_warmup", "warmup_steps": 1,
    "batch_size": 16, "grad_accum": 4, "max_grad_norm": 0.2, "weight_decay": 0.1,
    "save_steps": 0, "logging_steps": 1, "device": "cpu", "max_prompt_length": 64,
}
ARITHMETIC_FACTS = False  # --arithmetic-facts: add arithmetic_facts() to the pre-training corpus
STEPS = {"pretrain": 10, "sft": 1700, "grpo": 200}  # pre-training did not help SFT (research/README.md)


# ----------------------------------------------------------------------------- evaluation


@dataclass
class EvalResult:
    correct: list[int]
    answered: list[int]
    seconds: float
    completions: list[str] = field(repr=False)

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct)

    def summary(self) -> dict:
        lo, hi = wilson_interval(sum(self.correct), len(self.correct))
        return {"accuracy": self.accuracy, "ci95": [lo, hi], "correct": sum(self.correct), "n": len(self.correct),
                "answered": sum(self.answered) / len(self.answered), "seconds": round(self.seconds, 1)}


def evaluate(model_dir: Path, examples: list, *, desc: str) -> EvalResult:
    """Greedy completions of the training prompt with the shared sampler; solved = reward 1.0."""
    from d1.eval import generate_completions
    from d1.models.loading import load_for_inference, token_ids
    from d1.models.chat import prompt_text

    task = get_task(TASK)
    model, tokenizer = load_for_inference(str(model_dir), dtype=torch.float32)
    model.to(DEVICE).eval()
    ids = token_ids(model, tokenizer)
    prompts = [prompt_text(tokenizer, task, ex) for ex in examples]
    start = time.perf_counter()
    texts = generate_completions(model, tokenizer, prompts, mask_id=ids.mask_id, eos_id=ids.eos_id,
                                 pad_id=ids.pad_id, gen_length=GEN_LENGTH, block_length=BLOCK_LENGTH,
                                 steps=EVAL_STEPS, temperature=0.0, batch_size=EVAL_BATCH,
                                 device=torch.device(DEVICE), desc=desc,
                                 stop_ids=ids.end_of_turn_ids() if STOP_AT_END_OF_TURN else [ids.eos_id])
    seconds = time.perf_counter() - start
    rewards = [task.reward_components(text, ex)[TASK] for text, ex in zip(texts, examples)]
    return EvalResult(correct=[int(r == 1.0) for r in rewards], answered=[int(r > 0) for r in rewards],
                      seconds=seconds, completions=texts)


def save_eval(path: Path, result: EvalResult, examples: list) -> None:
    items = [{"question": ex.question, "ground_truth": ex.ground_truth, "generations": text, "correct": c}
             for ex, text, c in zip(examples, result.completions, result.correct)]
    write_json_atomic(path, {"generations": items, "metrics": result.summary()})


# ----------------------------------------------------------------------------- stages


def arithmetic_facts(number_range: tuple[int, int], max_value: int) -> list[str]:
    """Every ``a op b = c`` line a worked solution of these puzzles can contain
    (operands: puzzle numbers or intermediate results up to ``max_value``;
    non-negative integer results up to ``max_value``), in the trace's format.
    Added to the pre-training corpus (``pretrain.extra_documents``): a tiny
    model pre-trained on the task corpus alone sees each product too rarely to
    learn the arithmetic its reasoning lines need."""
    lo, hi = number_range
    facts = set()
    for x in range(0, max_value + 1):
        for y in range(lo, hi + 1):
            for a, b in ((x, y), (y, x)):
                for op, c in (("+", a + b), ("-", a - b), ("*", a * b), ("/", a // b if b and a % b == 0 else None)):
                    if c is not None and 0 <= c <= max_value:
                        facts.add(f"{a} {op} {b} = {c}")
    return sorted(facts)


def make_data(out: Path, seed: int) -> tuple[list, list]:
    """Held-out puzzles first, then the training split disjoint from them; returns (held-out, cd3)."""
    heldout = generate_countdown(HELDOUT, seed=derive_seed(seed, "heldout"), **GENERATOR)
    heldout_file = out / "heldout.jsonl"
    write_jsonl(heldout_file, (ex.to_record() for ex in heldout))
    if ARITHMETIC_FACTS:
        lo, hi = GENERATOR["number_range"]
        facts = arithmetic_facts((lo, hi), max_value=hi * hi)
        (out / "arithmetic_facts.txt").write_text("\n".join(facts) + "\n", encoding="utf-8")
    cfg = from_dict(PrepareConfig, {
        "out_dir": str(out / "data"), "seed": seed,
        "tasks": {TASK: {"train": "generate", "train_size": TRAIN_SIZE, "generator": dict(GENERATOR),
                         "test": str(heldout_file)}},
    }, "prepare")
    prepare(cfg)
    train = read_split(cfg.out_dir, TASK, "train")
    heldout = read_split(cfg.out_dir, TASK, "test")
    if EXTRA_HELDOUT:
        extra = generate_countdown(EXTRA_HELDOUT, seed=derive_seed(seed, "heldout-extra"),
                                   exclude=list(train) + list(heldout), **GENERATOR)
        write_jsonl(out / "heldout_extra.jsonl", (ex.to_record() for ex in extra))
        heldout = list(heldout) + extra
    if GRPO_FRESH:
        fresh = generate_countdown(GRPO_FRESH, seed=derive_seed(seed, "grpo-fresh"),
                                   exclude=list(train) + list(heldout), **GENERATOR)
        write_jsonl(out / "grpo_data" / TASK / "train.jsonl", (ex.to_record() for ex in fresh))
    task = get_task(TASK)
    cd3 = [task.example_from_record(json.loads(line))
           for line in builtin_path(TEST_SET).read_text(encoding="utf-8").splitlines() if line.strip()]
    return heldout, cd3


def stage_config(kind: str, out: Path, seed: int, steps: int, model_path: str | None):
    from d1.train import GRPOConfig, PretrainConfig, SFTConfig

    cls, base = {"pretrain": (PretrainConfig, PRETRAIN), "sft": (SFTConfig, SFT), "grpo": (GRPOConfig, GRPO)}[kind]
    data = out / ("grpo_data" if kind == "grpo" and GRPO_FRESH else "data")
    values = dict(base, data_dir=str(data), out_dir=str(out / kind), seed=seed, max_steps=steps,
                  device=DEVICE, mixed_precision="no")
    if kind == "pretrain" and ARITHMETIC_FACTS:
        values["extra_documents"] = [str(out / "arithmetic_facts.txt")]
    if model_path is not None:
        values["model_path"] = model_path
    return from_dict(cls, values, kind)


def run_stage(kind: str, cfg, callbacks=()) -> dict:
    from d1.train import run_grpo, run_pretrain, run_sft

    return {"pretrain": run_pretrain, "sft": run_sft, "grpo": run_grpo}[kind](cfg, callbacks=callbacks)


def steps_for_budget(kind: str, budget: float, out: Path, seed: int, model_path: str | None) -> int:
    """Optimiser steps that fit ``budget`` seconds, from a timed probe run of the same stage.

    Pre-training / SFT: 6 probe steps, the time per step from steps 2..6 (the first
    one carries the set-up). GRPO: one probe round (rollouts + mu steps, set-up
    included), whole rounds only.
    """
    mu = GRPO["num_iterations"]
    probe_steps = mu if kind == "grpo" else 6
    times: list[float] = []
    cfg = stage_config(kind, out / "probe", seed, probe_steps, model_path)
    start = time.perf_counter()
    run_stage(kind, cfg, callbacks=[lambda step, metrics: times.append(time.perf_counter())])
    shutil.rmtree(out / "probe", ignore_errors=True)
    if kind == "grpo":
        return max(1, int(budget / (times[-1] - start))) * mu
    return max(1, int(budget * (len(times) - 1) / (times[-1] - times[0])))


# ----------------------------------------------------------------------------- main


def apply_settings(items: list[str]) -> None:
    """Apply ``STAGE.KEY=YAML`` overrides to the settings above (recorded in results.json); KEY may be
    dotted into a nested section (``grpo.sampler.temperature=1.3``)."""
    import yaml

    tables = {"pretrain": PRETRAIN, "sft": SFT, "grpo": GRPO, "generator": GENERATOR}
    for item in items:
        key, sep, value = item.partition("=")
        stage, _, name = key.partition(".")
        parts = name.split(".")
        if not sep or stage not in tables or not all(parts):
            raise SystemExit(f"--set {item!r}: expected STAGE.KEY=VALUE with STAGE in {', '.join(tables)}")
        node = tables[stage]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SystemExit(f"--set {item!r}: {stage}.{part} is not a section")
        node[parts[-1]] = yaml.safe_load(value)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def main(argv: list[str] | None = None) -> dict:
    global TRAIN_SIZE, ARITHMETIC_FACTS, DEVICE, EVAL_STEPS, GEN_LENGTH, BLOCK_LENGTH, EXTRA_HELDOUT
    global STOP_AT_END_OF_TURN, GRPO_FRESH
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/bench/learning_countdown")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grpo-seed", type=int, default=None,
                    help="seed of the GRPO stage alone (default: --seed): GRPO's own run-to-run spread")
    ap.add_argument("--sft-from", default=None, metavar="DIR",
                    help="reuse the SFT model of an earlier run's --out DIR (same --seed and settings: its "
                         "training split must match) instead of pre-training and SFT")
    for kind in ("pretrain", "sft", "grpo"):
        ap.add_argument(f"--steps-{kind}", type=int, default=STEPS[kind], help=f"optimiser steps (default {STEPS[kind]})")
        ap.add_argument(f"--budget-{kind}", type=float, default=None,
                        help="wall-clock seconds instead of --steps (probed; not reproducible)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default=DEVICE,
                    help="where every stage and the evaluation run (float32 on both)")
    ap.add_argument("--gen-length", type=int, default=GEN_LENGTH,
                    help=f"answer tokens of evaluation and GRPO rollouts (default {GEN_LENGTH})")
    ap.add_argument("--block-length", type=int, default=BLOCK_LENGTH, help=f"sampler block (default {BLOCK_LENGTH})")
    ap.add_argument("--eval-steps", type=int, default=None,
                    help=f"evaluation sampler steps (default: gen length / 2, d1's setting; {EVAL_STEPS} for "
                         f"{GEN_LENGTH} tokens)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=YAML",
                    help="override a setting, e.g. --set sft.lr=1e-3 --set pretrain.document_format=bare "
                         "(stages: pretrain, sft, grpo, generator)")
    ap.add_argument("--arithmetic-facts", action="store_true",
                    help="add every a op b = c line of the puzzle range to the pre-training corpus")
    ap.add_argument("--train-size", type=int, default=TRAIN_SIZE, help=f"training puzzles (default {TRAIN_SIZE})")
    ap.add_argument("--eval-limit", type=int, default=None, help="evaluate only the first N puzzles of each set "
                    "(smoke runs; the CIs then mean little)")
    ap.add_argument("--extra-heldout", type=int, default=EXTRA_HELDOUT,
                    help=f"evaluation-only puzzles beyond the first {HELDOUT} (default {EXTRA_HELDOUT}; 0: none)")
    ap.add_argument("--grpo-fresh", type=int, default=GRPO_FRESH, metavar="N",
                    help="GRPO prompts: N new puzzles disjoint from the SFT split and the held-out ones "
                         "(default 0: the SFT training split, which a long SFT has memorised)")
    ap.add_argument("--whole-text", action="store_true",
                    help="score each completion up to its first EOS, past the end of its turn (d1's decoding; "
                         "how results measured before the end-of-turn cut of 2026-11-26 were scored)")
    args = ap.parse_args(argv)
    STOP_AT_END_OF_TURN = not args.whole_text
    if args.extra_heldout < 0:
        raise SystemExit(f"--extra-heldout must be >= 0, got {args.extra_heldout}")
    EXTRA_HELDOUT = args.extra_heldout
    if args.grpo_fresh < 0:
        raise SystemExit(f"--grpo-fresh must be >= 0, got {args.grpo_fresh}")
    GRPO_FRESH = args.grpo_fresh
    apply_settings(args.set)
    TRAIN_SIZE = args.train_size
    ARITHMETIC_FACTS = args.arithmetic_facts
    DEVICE, GEN_LENGTH, BLOCK_LENGTH = args.device, args.gen_length, args.block_length
    EVAL_STEPS = args.eval_steps or GEN_LENGTH // 2
    # Rollouts use the evaluation's sampler settings unless --set says otherwise.
    explicit = {item.partition("=")[0] for item in args.set}
    for key, value in (("gen_length", GEN_LENGTH), ("block_length", BLOCK_LENGTH), ("steps", EVAL_STEPS)):
        if f"grpo.sampler.{key}" not in explicit:
            GRPO["sampler"][key] = value
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    sft_from = Path(args.sft_from).resolve() if args.sft_from else None
    if sft_from is not None:
        if sft_from == out.resolve():
            raise SystemExit(f"--sft-from {args.sft_from}: must differ from --out (the run clears --out first)")
        if not (sft_from / "sft" / "model").is_dir():
            raise SystemExit(f"--sft-from {args.sft_from}: no SFT model at {sft_from / 'sft' / 'model'}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t_all = time.perf_counter()
    rows: list[dict] = []

    t0 = time.perf_counter()
    heldout, cd3 = make_data(out, args.seed)
    if args.eval_limit:
        heldout, cd3 = heldout[:args.eval_limit], cd3[:args.eval_limit]
    rows.append({"stage": "data", "seconds": time.perf_counter() - t0, "steps": None})
    if sft_from is not None:
        theirs, ours = (d / "data" / TASK / "train.jsonl" for d in (sft_from, out))
        if not theirs.is_file() or sha256_file(theirs) != sha256_file(ours):
            raise SystemExit(f"--sft-from {args.sft_from}: its training split differs from this run's "
                             f"(another --seed, --train-size or generator setting?)")

    model_path: str | None = None
    evals: dict[str, dict[str, EvalResult]] = {}
    for kind in ("pretrain", "sft", "grpo"):
        if sft_from is not None and kind == "pretrain":
            continue  # the reused SFT model's pre-training is done
        budget = getattr(args, f"budget_{kind}")
        steps = getattr(args, f"steps_{kind}")
        if budget is not None and not (sft_from is not None and kind == "sft"):
            steps = steps_for_budget(kind, budget, out, args.seed, model_path)
        if kind == "grpo" and steps == 0:
            break  # --steps-grpo 0: pre-training and SFT only
        if sft_from is not None and kind == "sft":
            row = {"stage": f"sft (from {sft_from})", "seconds": 0.0, "steps": None}
            rows.append(row)
            model_path = str(sft_from / "sft" / "model")
        else:
            seed = args.grpo_seed if kind == "grpo" and args.grpo_seed is not None else args.seed
            cfg = stage_config(kind, out, seed, steps, model_path)
            t0 = time.perf_counter()
            summary = run_stage(kind, cfg)
            row = {"stage": kind, "seconds": time.perf_counter() - t0, "steps": summary["steps"],
                   "last_metrics": summary.get("last_metrics", {})}
            rows.append(row)
            model_path = summary["model_dir"]
        if kind in ("sft", "grpo"):
            t0 = time.perf_counter()
            evals[kind] = {"heldout": evaluate(Path(model_path), heldout, desc=f"{kind} held-out"),
                           "cd3": evaluate(Path(model_path), cd3, desc=f"{kind} cd3")}
            for name, res in evals[kind].items():
                save_eval(out / f"eval_{kind}_{name}.json", res, heldout if name == "heldout" else cd3)
            rows.append({"stage": f"eval {kind}", "seconds": time.perf_counter() - t0, "steps": None})
            row["heldout"] = evals[kind]["heldout"].summary()
            row["cd3"] = evals[kind]["cd3"].summary()
        print(json.dumps({k: v for k, v in row.items() if k != "last_metrics"}), flush=True)

    gain = gain_cd3 = gain_first = None
    if "grpo" in evals:
        gain = paired_gain(evals["sft"]["heldout"].correct, evals["grpo"]["heldout"].correct,
                           seed=derive_seed(args.seed, "bootstrap"))
        if len(heldout) > HELDOUT:  # with no extra puzzles this is the gain above
            gain_first = paired_gain(evals["sft"]["heldout"].correct[:HELDOUT],
                                     evals["grpo"]["heldout"].correct[:HELDOUT],
                                     seed=derive_seed(args.seed, "bootstrap"))
        gain_cd3 = paired_gain(evals["sft"]["cd3"].correct, evals["grpo"]["cd3"].correct,
                               seed=derive_seed(args.seed, "bootstrap-cd3"))
    total = time.perf_counter() - t_all
    result = {"seed": args.seed, "grpo_seed": args.grpo_seed, "sft_from": args.sft_from,
              "total_seconds": total, "rows": rows, "gain_heldout": gain,
              "gain_heldout_first": gain_first, "gain_cd3": gain_cd3,
              "settings": {"generator": GENERATOR, "train_size": TRAIN_SIZE, "heldout": HELDOUT,
                           "extra_heldout": EXTRA_HELDOUT, "grpo_fresh": GRPO_FRESH,
                           "gen_length": GEN_LENGTH, "block_length": BLOCK_LENGTH, "eval_steps": EVAL_STEPS,
                           "stop_at_end_of_turn": STOP_AT_END_OF_TURN,
                           "pretrain": PRETRAIN, "sft": SFT, "grpo": GRPO},
              "torch_threads": torch.get_num_threads()}
    write_json_atomic(out / "results.json", result)

    print()
    print(f"Countdown, 3 numbers from {GENERATOR['number_range'][0]}..{GENERATOR['number_range'][1]}, "
          f"targets {GENERATOR['target_range'][0]}..{GENERATOR['target_range'][1]}; "
          f"{len(heldout)} held-out puzzles; cd3 = d1's shipped test set (numbers 1..100); seed {args.seed}"
          f"{'' if args.grpo_seed is None else f', GRPO seed {args.grpo_seed}'}")
    print()
    print("| stage | seconds | steps | held-out acc % [95% CI] | cd3 acc % |")
    print("|---|---|---|---|---|")
    for row in rows:
        held = row.get("heldout")
        held_s = f"{pct(held['accuracy'])} [{pct(held['ci95'][0])}, {pct(held['ci95'][1])}]" if held else ""
        cd3_s = pct(row["cd3"]["accuracy"]) if row.get("cd3") else ""
        steps = "" if row["steps"] is None else str(row["steps"])
        print(f"| {row['stage']} | {row['seconds']:.0f} | {steps} | {held_s} | {cd3_s} |")
    print(f"| total | {total:.0f} | | | |")
    print()
    if gain is None:
        return result
    lo, hi = gain["bootstrap_ci"]
    nlo, nhi = gain["normal_ci"]
    print(f"GRPO gain on held-out: {100 * gain['gain']:+.1f} points, paired 95% CI "
          f"[{100 * lo:+.1f}, {100 * hi:+.1f}] (bootstrap), [{100 * nlo:+.1f}, {100 * nhi:+.1f}] (normal); "
          f"{gain['improved']} puzzles gained, {gain['worsened']} lost")
    if gain_first is not None:
        lo, hi = gain_first["bootstrap_ci"]
        print(f"GRPO gain on the first {HELDOUT} held-out: {100 * gain_first['gain']:+.1f} points, paired 95% CI "
              f"[{100 * lo:+.1f}, {100 * hi:+.1f}]")
    lo, hi = gain_cd3["bootstrap_ci"]
    print(f"GRPO gain on cd3: {100 * gain_cd3['gain']:+.1f} points, paired 95% CI [{100 * lo:+.1f}, {100 * hi:+.1f}]")
    return result


if __name__ == "__main__":
    main()
