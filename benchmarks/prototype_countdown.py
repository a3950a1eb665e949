"""The issue's calibration prototype, rebuilt from its description, on the library's parts.

Issue 3 calibrates the learning benchmark against a throwaway prototype: 4 layers x
width 128, character tokens, 3-number Countdown with numbers 1-20, the answer a
bare expression (no reasoning trace, no chat template, no d1 prompt), masked SFT
from scratch. This script rebuilds that setting with the project's own model
class (:class:`d1.models.llada.LLaDAModelLM`), masking and loss
(:mod:`d1.algo.masking`), sampler (:func:`d1.generation.generate`) and puzzle
generator, so its numbers can be set beside ``learning_countdown.py``'s (the real
recipe) on the same puzzles:

    .venv/bin/python benchmarks/prototype_countdown.py [--seconds 300] [--targets uniform|expression]

Prompt: the numbers zero-padded to two digits and the target to three
(``07,13,04=087:``), so every digit sits at a fixed position; answer: the
solver's expression without spaces, EOS-padded to 14 characters. Held-out: 500
puzzles generated first; training puzzles exclude them. Evaluation: greedy, one
character per step, solved when the expression uses each number once and hits the
target. Every minute of training it prints the accuracy on the first 250 held-out
puzzles (evaluation time not counted), then the final table.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from d1.algo.masking import forward_mask, masked_sft_loss, sample_mask_ratio  # noqa: E402
from d1.generation import generate  # noqa: E402
from d1.models.llada import LLaDAModelLM, initialize_llada_weights, tiny_llada_config  # noqa: E402
from d1.stats import wilson_interval  # noqa: E402
from d1.tasks.countdown_gen import generate_countdown, is_valid_solution  # noqa: E402

CHARS = "0123456789+-*/(),=:"
PAD, EOS, MASK = len(CHARS), len(CHARS) + 1, len(CHARS) + 2
PROMPT_LEN, ANSWER_LEN = 13, 14


def prompt_ids(example) -> list[int]:
    numbers, target = example.ground_truth
    text = ",".join(f"{x:02d}" for x in numbers) + f"={target:03d}:"
    return [CHARS.index(c) for c in text]


def answer_ids(example) -> list[int]:
    expression = re.search(r"<answer>\n(.*)\n</answer>", example.solution).group(1).replace(" ", "")
    ids = [CHARS.index(c) for c in expression]
    return ids + [EOS] * (ANSWER_LEN - len(ids))


def accuracy(model, examples) -> tuple[int, int]:
    model.eval()
    solved = 0
    with torch.no_grad():
        for start in range(0, len(examples), 250):
            batch = examples[start:start + 250]
            out = generate(model, torch.tensor([prompt_ids(e) for e in batch]), gen_length=ANSWER_LEN,
                           block_length=ANSWER_LEN, steps=ANSWER_LEN, mask_id=MASK)
            for example, row in zip(batch, out[:, PROMPT_LEN:].tolist()):
                row = row[:row.index(EOS)] if EOS in row else row
                text = "".join(CHARS[i] for i in row if i < PAD)
                solved += is_valid_solution(*example.ground_truth, text)
    model.train()
    return solved, len(examples)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300.0, help="training wall-clock budget (default 300)")
    ap.add_argument("--targets", choices=("uniform", "expression"), default="uniform",
                    help="the generator's target mode (see d1.tasks.countdown_gen)")
    ap.add_argument("--train-size", type=int, default=8000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = {"number_range": [1, 20], "target_range": [1, 100], "max_misses_per_target": 200, "targets": args.targets}
    heldout = generate_countdown(500, seed=args.seed + 1, **gen)
    train = generate_countdown(args.train_size, seed=args.seed + 2, exclude=heldout, **gen)
    rows = torch.tensor([prompt_ids(e) + answer_ids(e) for e in train])
    response = torch.zeros_like(rows, dtype=torch.bool)
    response[:, PROMPT_LEN:] = True

    g = torch.Generator().manual_seed(args.seed)
    model = LLaDAModelLM(tiny_llada_config(MASK + 1, mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD))
    initialize_llada_weights(model, generator=torch.Generator().manual_seed(args.seed))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    print(f"{sum(p.numel() for p in model.parameters())} parameters; targets {args.targets}; "
          f"{len(train)} training puzzles, batch {args.batch_size}, lr {args.lr}", flush=True)
    trained, step, next_report = 0.0, 0, 60.0
    while trained < args.seconds:
        start = time.perf_counter()
        idx = torch.randint(0, len(rows), (args.batch_size,), generator=g)
        x, maskable = rows[idx], response[idx]
        t = sample_mask_ratio(args.batch_size, generator=g)
        noisy, is_masked = forward_mask(x, maskable, t, MASK, generator=g)
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 20)  # 20 warm-up steps, then constant
        loss = masked_sft_loss(model(noisy).logits, x, is_masked, t, int(maskable.sum()))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        trained += time.perf_counter() - start
        if trained >= next_report:
            next_report += 60.0
            solved, n = accuracy(model, heldout[:250])
            print(f"{trained:.0f} s, step {step}, loss {loss.item():.3f}: held-out {solved}/{n}", flush=True)
    print()
    print("| targets | training s | steps | held-out solved % [95% CI] | training puzzles solved % |")
    print("|---|---|---|---|---|")
    solved, n = accuracy(model, heldout)
    lo, hi = wilson_interval(solved, n)
    solved_train, n_train = accuracy(model, train[:500])
    print(f"| {args.targets} | {trained:.0f} | {step} | {100 * solved / n:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | "
          f"{100 * solved_train / n_train:.1f} |")


if __name__ == "__main__":
    main()
