"""The report stage on hand-made evaluation cells: table, paired gains, plots, offline page."""

from __future__ import annotations

import json

import pytest

from d1.config import from_dict
from d1.errors import ConfigError, DataError
from d1.report import ReportConfig, collect_cells, markdown, read_curve, run_report

PNG = b"\x89PNG\r\n\x1a\n"
N = 40


def scores(model: str, task: str, n: int) -> tuple[list[int], list[int]]:
    """Per-item (correct, total): base < sft < d1 by construction; sudoku items have 4 cells."""
    right = {"base": 4, "sft": 12, "d1": 24, "wd1": 20, "spg": 12, "espo": 8}[model] + (2 if n == 128 else 0)
    if task == "sudoku":
        return [4 if i < right else 1 for i in range(N)], [4] * N
    return [1 if i < right else 0 for i in range(N)], [1] * N


def write_cell(root, model, task, n, *, questions=None):
    correct, totals = scores(model, task, n)
    cell = root / model / task / str(n)
    items = [{"question": (questions or [f"q{i}" for i in range(N)])[i], "generations": "...", "ground_truth": 0,
              "correct": c, "total": t} for i, (c, t) in enumerate(zip(correct, totals))]
    (cell / "generations").mkdir(parents=True)
    (cell / "generations" / f"{task}_{model}_{n}_{n // 2}_0_generations.json").write_text(json.dumps({"generations": items}))
    acc = 100 * sum(correct) / sum(totals)
    (cell / "metrics.json").write_text(json.dumps(
        {task: {str(n): {"accuracy": acc, "correct": sum(correct), "total": sum(totals), "n": N}}}))


@pytest.fixture
def eval_dir(tmp_path):
    root = tmp_path / "eval"
    for model in ("base", "sft", "d1"):
        for task in ("countdown", "sudoku"):
            for n in (64, 128):
                write_cell(root, model, task, n)
    return root


def write_reward_log(tmp_path, task):
    log = tmp_path / "dvclive" / task / "plots" / "metrics" / "reward"
    log.mkdir(parents=True)
    (log / "mean.tsv").write_text("step\tmean\n1\t0.1\n2\t0.3\n3\t0.4\n")
    return str(tmp_path / "dvclive" / "{task}")


def cfg_for(tmp_path, eval_dir, **kw):
    values = {"eval_dir": str(eval_dir), "out_dir": str(tmp_path / "report"), "resamples": 500,
              "reward_logs": str(tmp_path / "dvclive" / "{task}")}
    values.update(kw)
    return from_dict(ReportConfig, values, "report")


def test_report_files_and_numbers(tmp_path, eval_dir):
    cfg = cfg_for(tmp_path, eval_dir, reward_logs=write_reward_log(tmp_path, "countdown"))
    summary = run_report(cfg)
    out = tmp_path / "report"
    assert summary["cells"] == 12 and summary["tasks"] == ["countdown", "sudoku"] and summary["gen_lengths"] == [64, 128]
    res = json.loads((out / "results.json").read_text())
    acc = res["accuracy"]
    assert acc["base"]["countdown"]["64"]["accuracy"] == pytest.approx(10.0)
    assert acc["d1"]["countdown"]["128"]["accuracy"] == pytest.approx(65.0)
    lo, hi = acc["d1"]["countdown"]["128"]["ci95"]  # Wilson for 26/40
    assert lo < 65 < hi and acc["d1"]["sudoku"]["64"]["ci95"] is None  # no Wilson for cell-level scores
    gap = res["gaps"]["d1-sft"]["countdown"]["64"]
    assert gap["gain"] == pytest.approx(30.0) and gap["improved"] == 12 and gap["worsened"] == 0
    assert gap["ci95"][0] > 0 and gap["significant"]
    # pooled over lengths: (12 + 12) more right items out of 80 item-lengths
    assert res["gaps"]["d1-sft"]["countdown"]["all"]["gain"] == pytest.approx(30.0)
    assert res["gaps"]["sft-base"]["sudoku"]["64"]["gain"] == pytest.approx(100 * 8 * 3 / 160)
    md = (out / "results.md").read_text()
    assert "| model | countdown 64 | countdown 128 | sudoku 64 | sudoku 128 |" in md
    assert "| d1 | 60.00 | 65.00 |" in md and "| +SFT |" in md and "| base | 10.00 |" in md
    assert "+30.00 [" in md
    assert "not the spread between training runs" in md  # what the intervals leave out
    pngs = sorted(p.name for p in (out / "plots").iterdir())
    assert pngs == ["accuracy_countdown.png", "accuracy_sudoku.png", "reward_countdown.png"]
    for p in (out / "plots").iterdir():
        assert p.read_bytes().startswith(PNG)
    page = (out / "index.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3 and "http" not in page  # nothing to fetch
    assert "<td>d1</td>" in page and (out / "report_config.json").is_file()


def test_report_is_deterministic(tmp_path, eval_dir):
    run_report(cfg_for(tmp_path, eval_dir, out_dir=str(tmp_path / "a")))
    run_report(cfg_for(tmp_path, eval_dir, out_dir=str(tmp_path / "b")))
    for name in ("results.json", "results.md", "index.html", "plots/accuracy_sudoku.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_selected_tasks_and_lengths(tmp_path, eval_dir):
    cells, tasks, lengths = collect_cells(cfg_for(tmp_path, eval_dir, tasks=["sudoku"], gen_lengths=[128]))
    assert (tasks, lengths) == (["sudoku"], [128]) and len(cells) == 3
    # an explicitly requested cell must exist
    with pytest.raises(DataError, match="256/metrics.json: no such file"):
        collect_cells(cfg_for(tmp_path, eval_dir, tasks=["sudoku"], gen_lengths=[256]))


def test_missing_cells_are_dashes_when_discovered(tmp_path, eval_dir):
    import shutil

    shutil.rmtree(eval_dir / "d1" / "sudoku")
    run_report(cfg_for(tmp_path, eval_dir))
    res = json.loads((tmp_path / "report" / "results.json").read_text())
    assert "sudoku" not in res["accuracy"]["d1"] and "sudoku" not in res["gaps"]["d1-sft"]
    assert "| d1 | 60.00 | 65.00 | – | – |" in markdown(res)


def test_unpaired_items_are_an_error(tmp_path, eval_dir):
    import shutil

    shutil.rmtree(eval_dir / "d1" / "countdown" / "64")
    write_cell(eval_dir, "d1", "countdown", 64, questions=[f"other{i}" for i in range(N)])
    with pytest.raises(DataError, match="not evaluated on the same countdown items at length 64"):
        run_report(cfg_for(tmp_path, eval_dir))


def test_bad_cells_are_named(tmp_path, eval_dir):
    (eval_dir / "sft" / "sudoku" / "64" / "metrics.json").write_text("{oops")
    with pytest.raises(DataError, match="sudoku/64/metrics.json: not valid JSON"):
        run_report(cfg_for(tmp_path, eval_dir))
    with pytest.raises(DataError, match="no such folder"):
        run_report(cfg_for(tmp_path, tmp_path / "nothing"))


def test_reward_curve(tmp_path):
    logs = write_reward_log(tmp_path, "sudoku")
    from pathlib import Path

    assert read_curve(Path(logs.replace("{task}", "sudoku")), "reward/mean") == ([1.0, 2.0, 3.0], [0.1, 0.3, 0.4])
    assert read_curve(tmp_path / "none", "reward/mean") is None


@pytest.mark.parametrize("values, message", [
    ({"models": ["base", "base"]}, "report.models: expected distinct"),
    ({"tasks": ["chess"]}, "report.tasks: unknown task 'chess'"),
    ({"gen_lengths": [0]}, "report.gen_lengths: 0"),
    ({"gaps": [["d1", "rl"]]}, "report.gaps: ['d1', 'rl']"),
    ({"resamples": 10}, "report.resamples: must be >= 100"),
])
def test_bad_config(values, message):
    with pytest.raises(ConfigError) as exc:
        from_dict(ReportConfig, values, "report")
    assert message in str(exc.value)


def test_cli_report_takes_the_graph_axes(tmp_path, eval_dir, capsys):
    """dvc.yaml passes the pipeline axes as `--tasks ... --gen_lengths ... --models ... --algorithms ...`
    (DVC dictionary unpacking)."""
    from d1.cli import main

    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"profile": "p", "p": {"report": {
        "eval_dir": str(eval_dir), "out_dir": str(tmp_path / "r"), "resamples": 200}}}))
    assert main(["report", "--params", str(params), "--tasks", "countdown", "--gen_lengths", "64",
                 "--models", "base", "sft", "--algorithms", "sft"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["tasks"] == ["countdown"] and printed["gen_lengths"] == [64] and printed["cells"] == 2
    resolved = json.loads((tmp_path / "r" / "report_config.json").read_text())
    assert resolved["models"] == ["base", "sft"] and resolved["algorithms"] == ["sft"]
    prov = json.loads((tmp_path / "r" / "provenance.json").read_text())
    assert prov["command"] == "report" and prov["section"] == "p.report"


def test_one_row_and_one_gain_per_rl_algorithm(tmp_path, eval_dir):
    """models base, sft and four RL algorithms: a row each, each algorithm's gain over +SFT by default,
    and the reward plot draws one curve per algorithm that has a log."""
    for model in ("wd1", "spg", "espo"):
        for task in ("countdown", "sudoku"):
            for n in (64, 128):
                write_cell(eval_dir, model, task, n)
    for algorithm in ("d1", "espo"):  # wd1 and spg have no reward log here: drawn without them
        log = tmp_path / "dvclive" / algorithm / "countdown" / "plots" / "metrics" / "reward"
        log.mkdir(parents=True)
        (log / "mean.tsv").write_text("step\tmean\n1\t0.1\n2\t0.3\n")
    cfg = cfg_for(tmp_path, eval_dir, models=["base", "sft", "d1", "wd1", "spg", "espo"],
                  reward_logs=str(tmp_path / "dvclive" / "{algorithm}" / "{task}"))
    assert cfg.rl_models() == ["d1", "wd1", "spg", "espo"]
    assert cfg.gap_pairs() == [["sft", "base"], ["d1", "sft"], ["wd1", "sft"], ["spg", "sft"], ["espo", "sft"]]
    summary = run_report(cfg)
    res = json.loads((tmp_path / "report" / "results.json").read_text())
    assert set(res["gaps"]) == {"sft-base", "d1-sft", "wd1-sft", "spg-sft", "espo-sft"}
    assert res["gaps"]["wd1-sft"]["countdown"]["64"]["gain"] == pytest.approx(20.0)
    assert res["gaps"]["spg-sft"]["countdown"]["64"]["gain"] == pytest.approx(0.0)
    assert res["gaps"]["espo-sft"]["countdown"]["64"]["gain"] == pytest.approx(-10.0)
    md = (tmp_path / "report" / "results.md").read_text()
    for row in ("| d1 | 60.00 |", "| wd1 | 50.00 |", "| SPG | 30.00 |", "| ESPO | 20.00 |"):
        assert row in md
    assert "| task | gen length | +SFT − base | d1 − +SFT | wd1 − +SFT | SPG − +SFT | ESPO − +SFT |" in md
    assert str(tmp_path / "report" / "plots" / "reward_countdown.png") in summary["plots"]
    assert not any("reward_sudoku" in p for p in summary["plots"])  # no algorithm has a sudoku log
    # only the algorithms named: the gains of the others are not computed
    only = cfg_for(tmp_path, eval_dir, models=["base", "sft", "wd1"], out_dir=str(tmp_path / "r2"))
    assert only.gap_pairs() == [["sft", "base"], ["wd1", "sft"]]
    with pytest.raises(ConfigError, match=r"report.algorithms: 'espo' is not one of report.models"):
        cfg_for(tmp_path, eval_dir, models=["base", "sft", "d1"], algorithms=["espo"])
