"""The report stage: the d1 results table, paired gains with 95% intervals, plots, an offline page.

Reads every evaluation cell ``<eval_dir>/<model>/<task>/<gen_length>/``
(``metrics.json`` and the cell's generations file, which carries each test
item's score) and writes to ``out_dir``:

- ``results.md`` / ``results.json``: accuracy (%) with rows base / +SFT / one per RL
  algorithm (d1, wd1, SPG, ESPO: ``models``) and columns task x gen length, as in the
  d1 paper's table; for each comparison in ``gaps`` (default +SFT - base and each RL
  model - +SFT) and each task, the gain in
  percentage points per length and pooled over lengths, with a paired 95%
  interval (bootstrap over the same test items, see d1.stats.paired_gain; pooled
  gains resample whole items, all lengths of an item together).
- ``plots/accuracy_<task>.png`` (accuracy vs gen length, one line per model) and
  ``plots/reward_<task>.png`` (the RL reward curves of the task, one line per
  algorithm, from their dvclive logs), drawn with matplotlib's Agg backend.
- ``index.html``: the tables and the plots (embedded as base64), readable offline.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from d1.config import write_bytes_atomic, write_json_atomic, write_resolved, write_text_atomic
from d1.errors import ConfigError, DataError
from d1.stats import paired_gain, wilson_interval
from d1.tasks import available_tasks

DEFAULT_LABELS = {"base": "base", "sft": "+SFT", "d1": "d1", "wd1": "wd1", "spg": "SPG", "espo": "ESPO"}
STAGE_MODELS = ("base", "sft")  # the models the other rows are compared with; the rest are RL algorithms


@dataclass
class ReportConfig:
    """Settings of the report stage (params section ``report``)."""

    SECTION: ClassVar[str] = "report"

    eval_dir: str = "outputs/eval"  # <eval_dir>/<model>/<task>/<gen_length>/metrics.json
    reward_logs: str = "outputs/dvclive/{algorithm}/{task}"  # dvclive folder of each RL run
    reward_metric: str = "reward/mean"
    out_dir: str = "outputs/report"
    models: list[str] = field(default_factory=lambda: ["base", "sft", "d1"])  # table rows, in order
    algorithms: list[str] = field(default_factory=list)  # RL runs with reward curves; empty: models but base, sft
    labels: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_LABELS))  # row names
    tasks: list[str] = field(default_factory=list)  # empty: every task found under eval_dir
    gen_lengths: list[int] = field(default_factory=list)  # empty: every length found
    gaps: list[list[str]] = field(default_factory=list)  # [after, before]; empty: +SFT - base, each RL model - +SFT
    resamples: int = 10_000
    seed: int = 42

    def validate(self) -> None:
        if not self.models or len(set(self.models)) != len(self.models):
            raise ConfigError(f"report.models: expected distinct model labels, got {self.models}")
        for name in self.tasks:
            if name not in available_tasks():
                raise ConfigError(f"report.tasks: unknown task {name!r}; available: {', '.join(available_tasks())}")
        for n in self.gen_lengths:
            if n <= 0:
                raise ConfigError(f"report.gen_lengths: {n} is not a positive length")
        for name in self.algorithms:
            if name not in self.models:
                raise ConfigError(f"report.algorithms: {name!r} is not one of report.models {self.models}")
        for pair in self.gaps:
            if len(pair) != 2 or any(m not in self.models for m in pair) or pair[0] == pair[1]:
                raise ConfigError(f"report.gaps: {pair} is not [after, before] with two of {self.models}")
        if self.resamples < 100:
            raise ConfigError(f"report.resamples: must be >= 100, got {self.resamples}")

    def label(self, model: str) -> str:
        return self.labels.get(model, model)

    def rl_models(self) -> list[str]:
        """The RL algorithms' models: ``algorithms``, or every model but base and sft."""
        return list(self.algorithms) or [m for m in self.models if m not in STAGE_MODELS]

    def gap_pairs(self) -> list[list[str]]:
        """``gaps``, or by default +SFT - base and every RL model - +SFT (those whose models are listed)."""
        if self.gaps:
            return [list(pair) for pair in self.gaps]
        pairs = [["sft", "base"]] if {"sft", "base"} <= set(self.models) else []
        return pairs + ([[m, "sft"] for m in self.rl_models()] if "sft" in self.models else [])


# ----------------------------------------------------------------------------- reading the cells


@dataclass
class Cell:
    """One evaluation cell: accuracy and the per-item scores of its generations file."""

    model: str
    task: str
    gen_length: int
    accuracy: float
    correct: list[float]
    totals: list[float]
    questions: list[str]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def read_cell(cell_dir: Path, model: str, task: str, gen_length: int) -> Cell:
    """Read ``cell_dir`` (metrics.json + one ``{task}_*_{gen_length}_*_generations.json``)."""
    metrics_path = cell_dir / "metrics.json"
    if not metrics_path.is_file():
        raise DataError(f"{metrics_path}: no such file (evaluation cell {model}/{task}/{gen_length})")
    m = _read_json(metrics_path).get(task, {}).get(str(gen_length))
    if not isinstance(m, dict) or "accuracy" not in m:
        raise DataError(f"{metrics_path}: no {task} accuracy at gen length {gen_length}")
    files = sorted(cell_dir.rglob(f"{task}_*_{gen_length}_*_generations.json"))
    if len(files) != 1:
        raise DataError(f"{cell_dir}: expected one {task} generations file for length {gen_length}, found {len(files)}")
    items = _read_json(files[0]).get("generations")
    if not isinstance(items, list) or not items:
        raise DataError(f"{files[0]}: no generations")
    try:
        correct = [float(it["correct"]) for it in items]
        totals = [float(it["total"]) for it in items]
        questions = [str(it["question"]) for it in items]
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{files[0]}: items lack per-item 'correct'/'total'/'question' (written by `d1 eval`)") from None
    return Cell(model, task, gen_length, float(m["accuracy"]), correct, totals, questions)


def _subdirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


def collect_cells(cfg: ReportConfig) -> tuple[dict[tuple[str, str, int], Cell], list[str], list[int]]:
    """Every cell of ``cfg.models`` x tasks x gen lengths; tasks/lengths found under eval_dir when not set.
    A cell that was asked for explicitly must exist."""
    root = Path(cfg.eval_dir)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (run the eval stage first)")
    tasks = list(cfg.tasks) or sorted({t for m in cfg.models for t in _subdirs(root / m) if t in available_tasks()})
    if cfg.gen_lengths:
        lengths = list(cfg.gen_lengths)
    else:
        lengths = sorted({int(n) for m in cfg.models for t in tasks for n in _subdirs(root / m / t) if n.isdigit()})
    if not tasks or not lengths:
        raise DataError(f"{root}: no evaluation cells (<model>/<task>/<gen_length>/metrics.json) found")
    explicit = bool(cfg.tasks) and bool(cfg.gen_lengths)
    cells = {}
    for model in cfg.models:
        for task in tasks:
            for n in lengths:
                cell_dir = root / model / task / str(n)
                if cell_dir.is_dir() or explicit:
                    cells[(model, task, n)] = read_cell(cell_dir, model, task, n)
    return cells, tasks, lengths


# ----------------------------------------------------------------------------- gains


def _pair_check(before: Cell, after: Cell) -> None:
    if before.questions != after.questions or before.totals != after.totals:
        raise DataError(f"{after.model} and {before.model} were not evaluated on the same {after.task} items at "
                        f"length {after.gen_length}; paired gains need the same test items in the same order")


# The gains' intervals resample test items of one run; a short RL stage moves scores by about as
# much from one seed to the next (docs/results.md, GRPO seed spread), which they do not include.
SEED_NOTE = ("The interval covers the test items of this run, not the spread between training runs "
             "(e.g. GRPO seeds: docs/results.md).")


def compute_gaps(cfg: ReportConfig, cells: dict, tasks: list[str], lengths: list[int]) -> dict:
    """``{"<after>-<before>": {task: {"<len>" | "all": gain record}}}`` in percentage points."""
    out: dict[str, dict] = {}
    for after_m, before_m in cfg.gap_pairs():
        per_task: dict[str, dict] = {}
        for task in tasks:
            pairs = [(cells[(before_m, task, n)], cells[(after_m, task, n)]) for n in lengths
                     if (before_m, task, n) in cells and (after_m, task, n) in cells]
            if not pairs:
                continue
            rec: dict[str, dict] = {}
            for b, a in pairs:
                _pair_check(b, a)
                rec[str(a.gen_length)] = _points(paired_gain(b.correct, a.correct, totals=a.totals, seed=cfg.seed,
                                                             resamples=cfg.resamples))
            # Pooled over lengths: one entry per item, its scores summed over the lengths.
            n_items = len(pairs[0][0].correct)
            if all(len(b.correct) == n_items for b, _ in pairs):
                b_sum = [sum(b.correct[i] for b, _ in pairs) for i in range(n_items)]
                a_sum = [sum(a.correct[i] for _, a in pairs) for i in range(n_items)]
                t_sum = [sum(a.totals[i] for _, a in pairs) for i in range(n_items)]
                rec["all"] = _points(paired_gain(b_sum, a_sum, totals=t_sum, seed=cfg.seed, resamples=cfg.resamples))
            per_task[task] = rec
        out[f"{after_m}-{before_m}"] = per_task
    return out


def _points(g: dict) -> dict:
    """A paired_gain record in percentage points, with ``significant`` = the 95% bootstrap CI excludes 0."""
    lo, hi = (100 * x for x in g["bootstrap_ci"])
    return {"gain": 100 * g["gain"], "ci95": [lo, hi], "normal_ci95": [100 * x for x in g["normal_ci"]],
            "before": 100 * g["before"], "after": 100 * g["after"], "improved": g["improved"],
            "worsened": g["worsened"], "n": g["n"], "significant": lo > 0 or hi < 0}


# ----------------------------------------------------------------------------- tables


def build_results(cfg: ReportConfig, cells: dict, tasks: list[str], lengths: list[int]) -> dict:
    accuracy: dict[str, dict] = {}
    for (model, task, n), c in cells.items():
        k, t = sum(c.correct), sum(c.totals)
        unit = all(x == 1 for x in c.totals)  # Wilson only for one-score-per-item tasks
        ci = [100 * x for x in wilson_interval(int(k), int(t))] if unit else None
        accuracy.setdefault(model, {}).setdefault(task, {})[str(n)] = {
            "accuracy": c.accuracy, "correct": k, "total": t, "n": len(c.correct), "ci95": ci}
    return {"models": list(cfg.models), "labels": {m: cfg.label(m) for m in cfg.models}, "tasks": tasks,
            "gen_lengths": lengths, "accuracy": accuracy, "gaps": compute_gaps(cfg, cells, tasks, lengths),
            "resamples": cfg.resamples, "seed": cfg.seed}


def _fmt_gain(g: dict | None) -> str:
    if g is None:
        return "–"
    lo, hi = g["ci95"]
    return f"{g['gain']:+.2f} [{lo:+.2f}, {hi:+.2f}]{' *' if g['significant'] else ''}"


def table_rows(results: dict) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """(accuracy header, accuracy rows, gains header, gains rows) as text cells."""
    tasks, lengths = results["tasks"], results["gen_lengths"]
    head = ["model"] + [f"{t} {n}" for t in tasks for n in lengths]
    rows = []
    for m in results["models"]:
        acc = results["accuracy"].get(m, {})
        rows.append([results["labels"][m]] + [
            f"{acc[t][str(n)]['accuracy']:.2f}" if str(n) in acc.get(t, {}) else "–" for t in tasks for n in lengths])
    gap_names = list(results["gaps"])
    ghead = ["task", "gen length"] + [" − ".join(results["labels"][m] for m in name.split("-", 1)) for name in gap_names]
    grows = []
    for t in tasks:
        for n in [str(x) for x in lengths] + ["all"]:
            grows.append([t, n] + [_fmt_gain(results["gaps"][g].get(t, {}).get(n)) for g in gap_names])
    return head, rows, ghead, grows


def markdown(results: dict) -> str:
    head, rows, ghead, grows = table_rows(results)

    def md(h, rs):
        return "\n".join(["| " + " | ".join(h) + " |", "|" + "---|" * len(h)] + ["| " + " | ".join(r) + " |" for r in rs])

    return (f"# Results\n\nAccuracy (%) on the held-out test sets, by task and generation length.\n\n{md(head, rows)}\n\n"
            f"## Gains\n\nPercentage points, with the 95% paired bootstrap interval over the same test items "
            f"({results['resamples']} resamples, seed {results['seed']}; `all` pools the lengths, resampling whole "
            f"items); `*`: the interval excludes 0. {SEED_NOTE}\n\n{md(ghead, grows)}\n")


# ----------------------------------------------------------------------------- plots and page


def read_curve(log_dir: Path, metric: str) -> tuple[list[float], list[float]] | None:
    """(steps, values) of a dvclive metric (``<log_dir>/plots/metrics/<metric>.tsv``); None if absent."""
    path = log_dir / "plots" / "metrics" / f"{metric}.tsv"
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    col = metric.rsplit("/", 1)[-1]
    try:
        return [float(r["step"]) for r in rows], [float(r[col]) for r in rows]
    except (KeyError, ValueError):
        raise DataError(f"{path}: expected columns 'step' and {col!r}") from None


def draw_plots(cfg: ReportConfig, results: dict, plot_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    for old in plot_dir.glob("*.png"):  # plots of tasks no longer reported
        old.unlink()
    written = []
    for task in results["tasks"]:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for m in results["models"]:
            acc = results["accuracy"].get(m, {}).get(task, {})
            xs = [n for n in results["gen_lengths"] if str(n) in acc]
            ax.plot(xs, [acc[str(n)]["accuracy"] for n in xs], marker="o", label=results["labels"][m])
        ax.set(title=f"{task}: accuracy vs generation length", xlabel="generation length", ylabel="accuracy (%)")
        ax.set_xticks(results["gen_lengths"])
        ax.legend()
        fig.tight_layout()
        written.append(_save(fig, plot_dir / f"accuracy_{task}.png"))
        curves = {}
        for algorithm in cfg.rl_models():
            folder = cfg.reward_logs.replace("{algorithm}", algorithm).replace("{task}", task)
            curve = read_curve(Path(folder), cfg.reward_metric)
            if curve is not None:
                curves[algorithm] = curve
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for algorithm, curve in curves.items():
            ax.plot(*curve, label=cfg.label(algorithm))
        ax.set(title=f"{task}: RL {cfg.reward_metric}", xlabel="optimiser step", ylabel=cfg.reward_metric)
        ax.legend()
        fig.tight_layout()
        written.append(_save(fig, plot_dir / f"reward_{task}.png"))
    return written


def _save(fig, path: Path) -> Path:
    """Save a figure as PNG (atomically, no software tag: identical inputs give identical bytes)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return path


def html_page(results: dict, plots: list[Path]) -> str:
    head, rows, ghead, grows = table_rows(results)

    def table(h, rs):
        th = "".join(f"<th>{html.escape(c)}</th>" for c in h)
        trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rs)
        return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"

    imgs = "".join(f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
                   f'{base64.b64encode(p.read_bytes()).decode("ascii")}"><figcaption>{html.escape(p.stem)}'
                   f"</figcaption></figure>" for p in plots)
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #999;padding:4px 8px;text-align:right}figure{display:inline-block;margin:.5em}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>d1 results</title><style>{style}</style>"
            f"</head><body><h1>d1 results</h1><p>Accuracy (%) on the held-out test sets.</p>{table(head, rows)}"
            f"<h2>Gains</h2><p>Percentage points with the 95% paired bootstrap interval ({results['resamples']} "
            f"resamples); * = the interval excludes 0. {SEED_NOTE}</p>{table(ghead, grows)}<h2>Plots</h2>{imgs}</body></html>\n")


def run_report(cfg: ReportConfig) -> dict:
    """Run the report stage; returns a summary (the full results are in ``results.json``)."""
    cells, tasks, lengths = collect_cells(cfg)
    results = build_results(cfg, cells, tasks, lengths)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = draw_plots(cfg, results, out / "plots")
    write_text_atomic(out / "results.md", markdown(results))
    write_text_atomic(out / "index.html", html_page(results, plots))
    write_resolved(cfg, out)
    write_json_atomic(out / "results.json", results)
    return {"out_dir": cfg.out_dir, "cells": len(cells), "tasks": tasks, "gen_lengths": lengths,
            "plots": [str(p) for p in plots]}
