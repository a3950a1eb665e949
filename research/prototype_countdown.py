"""The issue's calibration prototype, rebuilt from its description, on the library's parts.

Issue 3 calibrates the learning benchmark against a throwaway prototype: 4 layers x
width 128, character tokens, 3-number Countdown with numbers 1-20, the answer a
bare expression (no reasoning trace, no chat template, no d1 prompt), masked SFT
from scratch. This script rebuilds that setting with the project's own model
class (:class:`d1.models.llada.LLaDAModelLM`), masking and loss
(:mod:`d1.algo.masking`), sampler (:func:`d1.generation.generate`) and puzzle
generator, so its numbers can be set beside ``learning_countdown.py``'s (the real
recipe) on the same puzzles:

    .venv/bin/python research/prototype_countdown.py [--seconds 300] [--targets uniform|expression]
        [--save SFT.pt | --load SFT.pt] [--grpo-seconds 300 --grpo-lr 1e-4 --p-mask-prompt 0.15 ...]

Prompt: the numbers zero-padded to two digits and the target to three
(``07,13,04=087:``), so every digit sits at a fixed position; answer: the
solver's expression without spaces, EOS-padded to 14 characters. Held-out: 500
puzzles generated first; training puzzles exclude them. Evaluation: greedy, one
character per step, solved when the expression uses each number once and hits the
target. Every minute of training it prints the accuracy on the first 250 held-out
puzzles (evaluation time not counted), then the final table.

``--grpo-seconds S`` then runs diffu-GRPO from the SFT model for S seconds, built
from :mod:`d1.algo.grpo`'s pure functions (the prototype's G = 8, mu = 4, lr 1e-4
by default; reward 1 for a valid solution, else 0) and prints the held-out gain
with its paired bootstrap 95% CI. ``--save``/``--load`` keep the SFT model so
several GRPO settings can start from the same checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from d1.algo.grpo import (  # noqa: E402
    completion_mask,
    diffu_grpo_loss,
    draw_mask_seeds,
    group_advantages,
    mask_generator,
    mask_prompt_for_logp,
    per_token_logps,
)
from d1.algo.masking import forward_mask, masked_sft_loss, sample_mask_ratio  # noqa: E402
from d1.generation import generate  # noqa: E402
from d1.models.llada import LLaDAModelLM, initialize_llada_weights, tiny_llada_config  # noqa: E402
from d1.stats import paired_gain, wilson_interval  # noqa: E402
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


def optimizer_step(opt, model, loss) -> None:
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def completion_text(row: list[int]) -> str:
    row = row[:row.index(EOS)] if EOS in row else row
    return "".join(CHARS[i] for i in row if i < PAD)


def solved_list(model, examples) -> list[int]:
    """1/0 per example: greedy, one character per step."""
    model.eval()
    solved = []
    with torch.no_grad():
        for start in range(0, len(examples), 250):
            batch = examples[start:start + 250]
            out = generate(model, torch.tensor([prompt_ids(e) for e in batch]), gen_length=ANSWER_LEN,
                           block_length=ANSWER_LEN, steps=ANSWER_LEN, mask_id=MASK)
            for example, row in zip(batch, out[:, PROMPT_LEN:].tolist()):
                solved.append(int(is_valid_solution(*example.ground_truth, completion_text(row))))
    model.train()
    return solved


def accuracy(model, examples) -> tuple[int, int]:
    solved = solved_list(model, examples)
    return sum(solved), len(solved)


def grpo_phase(model, train, args) -> dict:
    """diffu-GRPO on the library's pure functions for ``args.grpo_seconds`` of wall clock.

    A round: ``grpo_prompts`` training prompts x G rollouts (temperature
    ``grpo_temperature``, one character per step); reward 1 when the expression is a
    valid solution, else 0; advantages r - group mean; ``mu`` optimiser steps, each
    with its own mask seed shared by old, reference and current policy (completion
    fully masked, prompt tokens masked w.p. ``p_mask_prompt``); PPO clip 0.2 and
    beta x k3 KL to the SFT model.
    """
    g = torch.Generator().manual_seed(args.seed + 100)
    # beta 0: no KL term, so no reference model and no reference pass
    ref = copy.deepcopy(model).eval().requires_grad_(False) if args.beta > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=args.grpo_lr, weight_decay=0.0)
    G, mu = args.group, args.mu
    prompts = torch.tensor([prompt_ids(e) for e in train])
    trained, rounds, log = 0.0, 0, []
    while trained < args.grpo_seconds:
        start = time.perf_counter()
        idx = torch.randint(0, len(train), (args.grpo_prompts,), generator=g)
        batch_prompts = prompts[idx].repeat_interleave(G, dim=0)
        model.eval()
        with torch.no_grad():
            ids = generate(model, batch_prompts, gen_length=ANSWER_LEN, block_length=ANSWER_LEN, steps=ANSWER_LEN,
                           temperature=args.grpo_temperature, mask_id=MASK, generator=g)
        completions = ids[:, PROMPT_LEN:]
        keep = completion_mask(completions, EOS)
        rewards = torch.tensor([float(is_valid_solution(*train[int(idx[n // G])].ground_truth, completion_text(row)))
                                for n, row in enumerate(completions.tolist())])
        adv = group_advantages(rewards, G)
        prompt_mask = torch.zeros_like(ids, dtype=torch.bool)
        prompt_mask[:, :PROMPT_LEN] = True
        noisy = [mask_prompt_for_logp(ids, prompt_mask, MASK, args.p_mask_prompt, generator=mask_generator(s))
                 for s in draw_mask_seeds(g, mu)]
        with torch.no_grad():
            old = [per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=args.p_mask_prompt,
                                   noisy_ids=n) for n in noisy]
            refs = [per_token_logps(ref, ids, prompt_mask, mask_id=MASK, p_mask_prompt=args.p_mask_prompt,
                                    noisy_ids=n) if ref is not None else None for n in noisy]
        model.train()
        for j in range(mu):
            logp = per_token_logps(model, ids, prompt_mask, mask_id=MASK, p_mask_prompt=args.p_mask_prompt,
                                   noisy_ids=noisy[j])
            loss, _ = diffu_grpo_loss(logp, old[j] if mu > 1 else None, refs[j], adv, keep,
                                      eps=0.2, beta=args.beta)
            optimizer_step(opt, model, loss)
        rounds += 1
        trained += time.perf_counter() - start
        spread = float((rewards.view(-1, G).std(dim=1) > 0).float().mean())
        log.append((float(rewards.mean()), spread))
        if rounds % 25 == 0:
            recent = log[-25:]
            print(f"grpo {trained:.0f} s, round {rounds}: reward {sum(r for r, _ in recent) / len(recent):.3f}, "
                  f"groups with spread {sum(s for _, s in recent) / len(recent):.2f}", flush=True)
    return {"seconds": trained, "rounds": rounds, "steps": rounds * mu}


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
    ap.add_argument("--save", type=Path, help="write the SFT model's state dict here")
    ap.add_argument("--load", type=Path, help="start from this saved SFT state dict (skips SFT)")
    ap.add_argument("--grpo-seconds", type=float, default=0.0, help="diffu-GRPO budget after SFT (default 0: none)")
    ap.add_argument("--grpo-lr", type=float, default=1e-4)
    ap.add_argument("--grpo-prompts", type=int, default=8, help="prompts per GRPO round")
    ap.add_argument("--grpo-temperature", type=float, default=0.9)
    ap.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    ap.add_argument("--mu", type=int, default=4, help="optimiser steps per round")
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--p-mask-prompt", type=float, default=0.15)
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
    if args.load is not None:
        model.load_state_dict(torch.load(args.load))
        trained = float("inf")
    while trained < args.seconds:
        start = time.perf_counter()
        idx = torch.randint(0, len(rows), (args.batch_size,), generator=g)
        x, maskable = rows[idx], response[idx]
        t = sample_mask_ratio(args.batch_size, generator=g)
        noisy, is_masked = forward_mask(x, maskable, t, MASK, generator=g)
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 20)  # 20 warm-up steps, then constant
        loss = masked_sft_loss(model(noisy).logits, x, is_masked, t, int(maskable.sum()))
        optimizer_step(opt, model, loss)
        step += 1
        trained += time.perf_counter() - start
        if trained >= next_report:
            next_report += 60.0
            solved, n = accuracy(model, heldout[:250])
            print(f"{trained:.0f} s, step {step}, loss {loss.item():.3f}: held-out {solved}/{n}", flush=True)
    if args.save is not None:
        torch.save(model.state_dict(), args.save)
    print()
    print("| targets | stage | training s | steps | held-out solved % [95% CI] | training puzzles solved % |")
    print("|---|---|---|---|---|---|")

    def report(stage: str, seconds: float, steps: int) -> list[int]:
        solved = solved_list(model, heldout)
        lo, hi = wilson_interval(sum(solved), len(solved))
        solved_train, n_train = accuracy(model, train[:500])
        print(f"| {args.targets} | {stage} | {seconds:.0f} | {steps} | {100 * sum(solved) / len(solved):.1f} "
              f"[{100 * lo:.1f}, {100 * hi:.1f}] | {100 * solved_train / n_train:.1f} |", flush=True)
        return solved

    before = report("SFT", trained if args.load is None else 0.0, step)
    if args.grpo_seconds > 0:
        done = grpo_phase(model, train, args)
        after = report("+ diffu-GRPO", done["seconds"], done["steps"])
        gain = paired_gain(before, after, seed=args.seed)
        lo, hi = gain["bootstrap_ci"]
        print(f"\nGRPO gain {100 * gain['gain']:+.1f} points, paired 95% CI [{100 * lo:+.1f}, {100 * hi:+.1f}]; "
              f"{gain['improved']} gained, {gain['worsened']} lost; {done['rounds']} rounds")


if __name__ == "__main__":
    main()
