"""Fast sampling, measured side by side: block-wise KV cache (none / prefix / dual) x confidence threshold.

    .venv/bin/python benchmarks/sampler_speed.py [--model outputs/sft/model --data data]
        [--lengths 64 128 256] [--limit 64] [--threshold 0.9] [--threads 2] [--skip-accuracy] [--skip-rollouts]
        [--speed-models FOLDER ...]

Every row of a table is measured in this one run, on this machine, under the same load.

1. **Speed at the acceptance setting** (gen 256, block 32, steps 256: one token per step
   without a threshold): tokens/s and forward passes per answer token, batch 1, for
   (a) a 4-layer width-256 LLaDA with random weights (d1's architecture; its
   confidences are near uniform, so a threshold cannot unmask several tokens at once)
   and (b) the pipeline's SFT model (``--model``) on a Countdown test prompt, (c) any
   ``--speed-models`` (e.g. a trained width-256 tiny model).
2. **Held-out accuracy** of the SFT model on the tiny Countdown and Sudoku test splits
   (first ``--limit`` items of ``--data``), greedy, the pipeline's evaluation protocol
   (training prompt, block 32, steps = gen length / 2) at each ``--lengths``, for every
   cache mode with and without ``--threshold``: accuracy, paired difference to
   ``none`` with its 95% interval, tokens/s, passes per token.
3. **A tiny diffu-GRPO round's rollouts** (the ``tiny`` profile's grpo sampler settings:
   8 prompts x 8 completions, temperature 0.9, gen 64, block 32, steps 32) on Countdown
   and Sudoku training prompts: seconds and the share of solved rollouts per setting.
4. With CUDA (``--gpu``, default when a GPU exists): tokens/s of an LLaDA-8B-shaped
   model (our class, the 8B config, random weights, bf16) at batch 1 and 16, gen 256
   and 512, steps = gen / 2, per cache mode. ``--gpu-config tiny`` runs the same code on
   a small config (what the CPU test does).

The SFT model and data come from the tiny pipeline: run ``bash scripts/main.sh`` (or
``dvc repro sft``) first.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from d1.eval import build_prompt, decode_completion  # noqa: E402
from d1.generation import CACHE_MODES, generate, left_pad  # noqa: E402
from d1.stats import paired_gain  # noqa: E402
from d1.tasks import get_task  # noqa: E402


class PassCounter:
    """Counts the forward calls of a model (full and window passes alike)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.count = 0
        model.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.count += 1


def settings(threshold: float) -> list[tuple[str, float | None]]:
    return [(cache, thr) for thr in (None, threshold) for cache in CACHE_MODES]


def label(cache: str, threshold: float | None) -> str:
    return cache if threshold is None else f"{cache} + threshold {threshold:g}"


def timed_generate(model, counter: PassCounter, ids, mask, **kwargs) -> tuple[torch.Tensor, float, int]:
    counter.count = 0
    start = time.perf_counter()
    out = generate(model, ids, attention_mask=mask, **kwargs)
    if ids.device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start, counter.count


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    sys.stdout.flush()


def speed_rows(model, prompts: list[list[int]], pad_id: int, mask_id: int, threshold: float,
               gen_length: int = 256, block_length: int = 32, steps: int = 256) -> list[list[str]]:
    counter = PassCounter(model)
    ids, mask = left_pad(prompts, pad_id)
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    rows, base_tps = [], None
    for cache, thr in settings(threshold):
        _, seconds, passes = timed_generate(model, counter, ids, mask, gen_length=gen_length,
                                            block_length=block_length, steps=steps, mask_id=mask_id,
                                            cache=cache, threshold=thr)
        tokens = gen_length * ids.shape[0]
        tps = tokens / seconds
        base_tps = base_tps or tps
        rows.append([label(cache, thr), f"{tps:,.0f}", f"{passes / gen_length:.3f}", f"{tps / base_tps:.1f}x"])
    return rows


def random_llada(d_model: int, n_layers: int, n_heads: int, vocab: int, seed: int = 0,
                 dtype: torch.dtype = torch.float32, device: str = "cpu", **overrides):
    from d1.models.llada import LLaDAModelLM, initialize_llada_weights, tiny_llada_config

    config = tiny_llada_config(vocab, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                               mlp_hidden_size=3 * d_model, **overrides)
    with torch.device(device):
        model = LLaDAModelLM(config)
    initialize_llada_weights(model, generator=torch.Generator(device=device).manual_seed(seed))
    return model.to(dtype).eval()


def encode(tokenizer, task, examples, *, add_reasoning: bool = False) -> list[list[int]]:
    return [tokenizer(build_prompt(task, ex, tokenizer, add_reasoning=add_reasoning, for_eval=False),
                      add_special_tokens=False)["input_ids"] for ex in examples]


def solved(task, tokenizer, seqs: torch.Tensor, prompt_width: int, examples, eos_id: int) -> list[tuple[int, int]]:
    out = []
    for row, ex in enumerate(examples):
        text = decode_completion(tokenizer, seqs[row, prompt_width:].tolist(), eos_id)
        s = task.score_training_format(text, ex)
        out.append((s.correct, s.total))
    return out


def accuracy_rows(model, tokenizer, ids, data_dir: str, lengths: list[int], limit: int, threshold: float,
                  batch_size: int) -> list[list[str]]:
    from d1.prepare import read_split

    counter = PassCounter(model)
    rows = []
    for name in ("countdown", "sudoku"):
        task = get_task(name)
        examples = read_split(data_dir, name, "test")[:limit]
        encoded = encode(tokenizer, task, examples)
        for gen_length in lengths:
            base_scores = None
            base_tps = None
            for cache, thr in settings(threshold):
                scores, seconds, passes = [], 0.0, 0
                for lo in range(0, len(encoded), batch_size):
                    batch_ids, batch_mask = left_pad(encoded[lo:lo + batch_size], ids.pad_id)
                    seqs, sec, n = timed_generate(model, counter, batch_ids, batch_mask, gen_length=gen_length,
                                                  block_length=32, steps=gen_length // 2, mask_id=ids.mask_id,
                                                  cache=cache, threshold=thr)
                    seconds += sec
                    passes += n
                    scores += solved(task, tokenizer, seqs, batch_ids.shape[1], examples[lo:lo + batch_size],
                                     ids.eos_id)
                correct = [c for c, _ in scores]
                totals = [t for _, t in scores]
                acc = 100.0 * sum(correct) / sum(totals)
                tps = gen_length * len(examples) / seconds
                if base_scores is None:
                    base_scores, base_tps, diff = correct, tps, "-"
                else:
                    g = paired_gain(base_scores, correct, totals=totals, seed=0, resamples=2000)
                    lo_ci, hi_ci = g["bootstrap_ci"]
                    diff = f"{100 * g['gain']:+.1f} [{100 * lo_ci:+.1f}, {100 * hi_ci:+.1f}]"
                batches = -(-len(examples) // batch_size)
                rows.append([name, str(gen_length), label(cache, thr), f"{acc:.2f}", diff, f"{tps:,.0f}",
                             f"{tps / base_tps:.1f}x", f"{passes / (gen_length * batches):.3f}"])
                print(f"  {name} gen {gen_length} {label(cache, thr)}: {acc:.2f} ({seconds:.1f} s)", flush=True)
    return rows


def rollout_rows(model, tokenizer, ids, data_dir: str, threshold: float) -> list[list[str]]:
    """One tiny diffu-GRPO round's sampling: 8 prompts x 8 completions (params tiny.grpo)."""
    from d1.config import get_section, read_params
    from d1.prepare import read_split

    grpo = get_section(read_params(REPO / "params.yaml"), "tiny.grpo")
    sampler = grpo.get("sampler", grpo)
    gen_length, block_length = sampler["gen_length"], sampler["block_length"]
    steps = sampler.get("steps") or sampler.get("diffusion_steps") or gen_length // 2
    temperature, G = sampler["temperature"], grpo["num_generations"]
    counter = PassCounter(model)
    rows = []
    for name in ("countdown", "sudoku"):
        task = get_task(name)
        examples = read_split(data_dir, name, "train")[:8]
        encoded = [p for p in encode(tokenizer, task, examples) for _ in range(G)]
        batch_ids, batch_mask = left_pad(encoded, ids.pad_id)
        base = None
        for cache, thr in settings(threshold):
            gen = torch.Generator().manual_seed(0)
            seqs, seconds, passes = timed_generate(model, counter, batch_ids, batch_mask, gen_length=gen_length,
                                                   block_length=block_length, steps=steps, mask_id=ids.mask_id,
                                                   temperature=temperature, generator=gen, cache=cache,
                                                   threshold=thr)
            scores = solved(task, tokenizer, seqs, batch_ids.shape[1], [ex for ex in examples for _ in range(G)],
                            ids.eos_id)
            rate = 100.0 * sum(c for c, _ in scores) / sum(t for _, t in scores)
            base = base or seconds
            rows.append([name, label(cache, thr), f"{seconds:.2f}", f"{base / seconds:.1f}x", f"{passes}",
                         f"{rate:.1f}"])
    return rows


def gpu_rows(config_name: str, threshold: float, lengths: list[int], batches: list[int]) -> list[list[str]]:
    from d1.models.llada import LLaDAConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if config_name == "8b":
        c = LLaDAConfig()
        model = random_llada(c.d_model, c.n_layers, c.n_heads, c.vocab_size, dtype=torch.bfloat16, device=device,
                             mlp_hidden_size=c.mlp_hidden_size, rope_theta=c.rope_theta)
    else:
        model = random_llada(64, 2, 4, 512, device=device)
    mask_id = model.config.mask_token_id
    counter = PassCounter(model)
    g = torch.Generator().manual_seed(0)
    rows = []
    for batch in batches:
        prompt = torch.randint(0, mask_id - 1, (batch, 64), generator=g).to(device)
        for gen_length in lengths:
            base = None
            for cache, thr in [(c, None) for c in CACHE_MODES] + [("dual", threshold)]:
                _, seconds, passes = timed_generate(model, counter, prompt, None, gen_length=gen_length,
                                                    block_length=32, steps=gen_length // 2, mask_id=mask_id,
                                                    cache=cache, threshold=thr)
                tps = batch * gen_length / seconds
                base = base or tps
                peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
                rows.append([str(batch), str(gen_length), label(cache, thr), f"{tps:,.1f}", f"{tps / base:.1f}x",
                             f"{passes / gen_length:.3f}", f"{peak:.1f}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="outputs/sft/model")
    ap.add_argument("--data", default="data")
    ap.add_argument("--speed-models", nargs="*", default=[], metavar="FOLDER",
                    help="more trained model folders for the speed table (same tokenizer family, e.g. a width-256 "
                         "tiny model: `d1 base --set base.pretrain.d_model=256 ...`)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--limit", type=int, default=64, help="test items per task for the accuracy table")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-rollouts", action="store_true")
    ap.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=torch.cuda.is_available())
    ap.add_argument("--gpu-config", choices=("8b", "tiny"), default="8b")
    ap.add_argument("--gpu-lengths", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--gpu-batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--skip-cpu", action="store_true", help="only the GPU table")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, threshold {args.threshold:g}")

    if not args.skip_cpu:
        from d1.models.loading import load_for_inference, token_ids
        from d1.prepare import read_split

        with torch.no_grad():
            speed_random = speed_rows(random_llada(256, 4, 4, 1024), [list(range(1, 65))], pad_id=0,
                                      mask_id=1023, threshold=args.threshold)
        print_table("Speed, 4-layer width-256 LLaDA, random weights (gen 256, block 32, steps 256, batch 1, "
                    "64-token prompt)", ["setting", "tokens/s", "passes / token", "vs none"], speed_random)
        model, tokenizer = load_for_inference(args.model, dtype=torch.float32)
        model.eval()
        ids = token_ids(model, tokenizer)
        task = get_task("countdown")
        prompt = encode(tokenizer, task, read_split(args.data, "countdown", "test")[:1])
        speed_sft = speed_rows(model, prompt, ids.pad_id, ids.mask_id, args.threshold)
        print_table(f"Speed, the SFT model {args.model} (gen 256, block 32, steps 256, batch 1, a Countdown "
                    "test prompt)", ["setting", "tokens/s", "passes / token", "vs none"], speed_sft)
        for extra in args.speed_models:
            other, other_tok = load_for_inference(extra, dtype=torch.float32)
            other_ids = token_ids(other, other_tok)
            rows = speed_rows(other.eval(), encode(other_tok, task, read_split(args.data, "countdown", "test")[:1]),
                              other_ids.pad_id, other_ids.mask_id, args.threshold)
            c = other.config
            print_table(f"Speed, {extra} ({c.n_layers} layers, width {c.d_model}; gen 256, block 32, steps 256, "
                        "batch 1, a Countdown test prompt)", ["setting", "tokens/s", "passes / token", "vs none"], rows)
        if not args.skip_accuracy:
            rows = accuracy_rows(model, tokenizer, ids, args.data, args.lengths, args.limit, args.threshold,
                                 args.batch_size)
            print_table(f"Held-out accuracy of the SFT model, first {args.limit} test items, greedy, block 32, "
                        "steps = gen / 2", ["task", "gen", "setting", "accuracy %", "vs none (95% CI)",
                                            "tokens/s", "speed-up", "passes / token / batch"], rows)
        if not args.skip_rollouts:
            rows = rollout_rows(model, tokenizer, ids, args.data, args.threshold)
            print_table("A tiny diffu-GRPO round's rollouts (8 prompts x 8 completions, params tiny.grpo sampler)",
                        ["task", "setting", "seconds", "speed-up", "passes", "solved %"], rows)
    if args.gpu:
        with torch.no_grad():
            rows = gpu_rows(args.gpu_config, args.threshold, args.gpu_lengths, args.gpu_batches)
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
        print_table(f"LLaDA-{args.gpu_config} shaped, random weights, {name} (block 32, steps = gen / 2)",
                    ["batch", "gen", "setting", "tokens/s", "vs none", "passes / token", "peak GiB"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
