"""How fast the tiny LLaDA learns arithmetic facts under three masking schemes.

Every ``a op b = c`` with ``a, b`` in 1..20 and a positive integer ``c`` (the
first line of a 3-number Countdown trace; 1,056 facts), split into training
facts and 200 held-out facts; one row per fact, ``a op b = `` then ``c`` and EOS.
The same model (4 x 128, seeded), optimiser and batches are trained under:

- ``result``: only ``c`` masked, plain cross-entropy (the most direct signal);
- ``d1-sft``: d1's masked SFT objective (``d1.algo.masking``) with ``a op b = `` as
  the never-masked prompt: ``c`` and the EOS masked at a per-row rate ``t``, loss
  weighted by ``1/t``;
- ``d1-pretrain``: the same objective with no prompt (every token masked at rate
  ``t``), which is what a fact inside a reasoning trace or a pre-training
  document gets: the result is learned only when it is masked and its operands
  are not.

The table gives the fraction of training / held-out facts whose ``c`` the model
predicts (argmax, everything else shown) after each number of steps.
research/README.md reads it against the Countdown SFT model's trace probe
(``trace_probe.py``).

    .venv/bin/python research/fact_learning.py [--steps 1500] [--every 250] [--threads 2]
        [--schemes result,d1-sft,d1-pretrain]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from d1.algo.masking import forward_mask, masked_sft_loss, sample_mask_ratio  # noqa: E402

SCHEMES = ("result", "d1-sft", "d1-pretrain")
HELDOUT = 200
BATCH = 64
LR = 1e-3
SIZES = dict(d_model=128, n_layers=4, n_heads=4, mlp_hidden_size=384, max_sequence_length=64)


def first_line_facts(lo: int = 1, hi: int = 20) -> list[tuple[str, str]]:
    """``("a op b = ", "c")`` for every ordered pair of ``lo..hi`` and op with a positive integer ``c``."""
    facts = []
    for a in range(lo, hi + 1):
        for b in range(lo, hi + 1):
            for op, c in (("+", a + b), ("-", a - b), ("*", a * b), ("/", a // b if a % b == 0 else 0)):
                if c > 0:
                    facts.append((f"{a} {op} {b} = ", str(c)))
    return facts


def hi_value(facts: list[tuple[str, str]]) -> int:
    return max(max(int(x) for x in (p.split()[0], p.split()[2], c)) for p, c in facts)


def build(seed: int):
    """(tokenizer, rows [N, L], result positions [N], prompt mask [N, L]) over the shuffled facts."""
    from d1.models.tokenizer import train_tokenizer

    facts = first_line_facts()
    random.Random(seed).shuffle(facts)
    # every number of the facts a whole token, as in the Countdown runs' tokenizer (numbers < 1000)
    numbers = [str(n) for n in range(1, hi_value(facts) + 1)] * 2
    tokenizer = train_tokenizer([p + c for p, c in facts] + numbers, vocab_size=1024, split_words=False,
                                number_digits=3)
    eos = tokenizer.eos_token_id
    encoded = [(tokenizer(p, add_special_tokens=False)["input_ids"], tokenizer(c, add_special_tokens=False)["input_ids"])
               for p, c in facts]
    width = max(len(p) + len(c) for p, c in encoded) + 1
    rows = torch.full((len(facts), width), eos, dtype=torch.long)
    prompt_mask = torch.zeros_like(rows, dtype=torch.bool)
    result_at = torch.zeros(len(facts), dtype=torch.long)
    for i, (p, c) in enumerate(encoded):
        if len(c) != 1:
            raise SystemExit(f"fact {facts[i]}: the result is {len(c)} tokens; the probe expects one")
        rows[i, :len(p) + 1] = torch.tensor(p + c)
        prompt_mask[i, :len(p)] = True
        result_at[i] = len(p)
    return tokenizer, rows, result_at, prompt_mask


@torch.no_grad()
def fact_accuracy(model, rows: torch.Tensor, result_at: torch.Tensor, mask_id: int) -> float:
    shown = rows.clone()
    index = torch.arange(len(rows))
    shown[index, result_at] = mask_id
    logits = model(shown).logits
    return float((logits[index, result_at].argmax(-1) == rows[index, result_at]).float().mean())


def train(scheme: str, steps: int, every: int, seed: int, data) -> list[tuple[int, float, float, float]]:
    from d1.models.llada import LLaDAModelLM, initialize_llada_weights, tiny_llada_config_for_tokenizer

    tokenizer, rows, result_at, prompt_mask = data
    config = tiny_llada_config_for_tokenizer(tokenizer, **SIZES)
    model = LLaDAModelLM(config)
    initialize_llada_weights(model, generator=torch.Generator().manual_seed(seed))
    mask_id = config.mask_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1)
    batches = torch.Generator().manual_seed(seed + 1)  # the same batches for every scheme
    masks = torch.Generator().manual_seed(seed + 2)
    train_idx = torch.arange(HELDOUT, len(rows))
    curve, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        pick = train_idx[torch.randint(len(train_idx), (BATCH,), generator=batches)]
        clean = rows[pick]
        if scheme == "result":
            masked = torch.zeros_like(clean, dtype=torch.bool)
            masked[torch.arange(BATCH), result_at[pick]] = True
            logits = model(clean.masked_fill(masked, mask_id)).logits
            loss = F.cross_entropy(logits[masked], clean[masked])
        else:
            maskable = ~prompt_mask[pick] if scheme == "d1-sft" else torch.ones_like(clean, dtype=torch.bool)
            t = sample_mask_ratio(BATCH, generator=masks)
            noisy, masked = forward_mask(clean, maskable, t, mask_id, generator=masks)
            if not masked.any():
                continue
            loss = masked_sft_loss(model(noisy).logits, clean, masked, t, int(maskable.sum()))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % every == 0 or step == steps:
            model.eval()
            curve.append((step, time.perf_counter() - start,
                          fact_accuracy(model, rows[train_idx], result_at[train_idx], mask_id),
                          fact_accuracy(model, rows[:HELDOUT], result_at[:HELDOUT], mask_id)))
            model.train()
    return curve


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--every", type=int, default=250, help="evaluate every N steps")
    ap.add_argument("--schemes", default=",".join(SCHEMES), help=f"comma-separated, of {', '.join(SCHEMES)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    schemes = [s for s in args.schemes.split(",") if s]
    bad = [s for s in schemes if s not in SCHEMES]
    if bad or not schemes:
        raise SystemExit(f"--schemes: unknown {bad or args.schemes!r}; choose from {', '.join(SCHEMES)}")
    if args.steps < 1 or args.every < 1:
        raise SystemExit(f"--steps and --every must be >= 1, got {args.steps} and {args.every}")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = build(args.seed)
    print(f"{len(data[1]) - HELDOUT} training facts, {HELDOUT} held-out; batch {BATCH}, lr {LR}\n")
    print("| scheme | step | seconds | training facts | held-out facts |")
    print("|---|---|---|---|---|")
    curves = {}
    for scheme in schemes:
        curves[scheme] = train(scheme, args.steps, args.every, args.seed, data)
        for step, seconds, tr, te in curves[scheme]:
            print(f"| {scheme} | {step} | {seconds:.0f} | {100 * tr:.0f}% | {100 * te:.0f}% |", flush=True)
    return curves


if __name__ == "__main__":
    main()
