"""research/reward_vs_control.py on hand-written GRPO run folders."""

from __future__ import annotations

import json

import pytest

from research.tests.loader import load_script

SAMPLER = {"gen_length": 32, "block_length": 8, "steps": 32, "temperature": 0.9, "remasking": "low_confidence",
           "cfg_scale": 0.0, "cache": "none", "threshold": None}
CONFIG = {"seed": 0, "tasks": ["countdown"], "num_generations": 8, "generation_batch_size": 64,
          "num_iterations": 2, "sampler": SAMPLER, "max_steps": 8, "lr": 3e-4}
# a grpo_config.json written before the sampler section: its settings flat
FLAT = {**{k: v for k, v in CONFIG.items() if k != "sampler"}, "gen_length": 32, "block_length": 8,
        "diffusion_steps": 32, "temperature": 0.9, "cfg_scale": 0.0, "remasking": "low_confidence"}


@pytest.fixture(scope="module")
def script():
    return load_script("reward_vs_control")


def make_run(root, rewards_per_step, *, data_text="a\n", nested=False, base=CONFIG, **config):
    """A GRPO output folder: grpo_config.json, the reward curve, and its training file."""
    run = root / "grpo" if nested else root
    data = root / "data"
    (data / "countdown").mkdir(parents=True, exist_ok=True)
    (data / "countdown" / "train.jsonl").write_text(data_text, encoding="utf-8")
    curve = run / "dvclive" / "plots" / "metrics" / "reward"
    curve.mkdir(parents=True)
    (curve / "mean.tsv").write_text("step\tmean\n" + "".join(f"{i + 1}\t{r}\n" for i, r in enumerate(rewards_per_step)),
                                    encoding="utf-8")
    (run / "grpo_config.json").write_text(json.dumps(dict(base, data_dir=str(data), **config)), encoding="utf-8")
    return root


def test_rounds_are_paired_and_averaged(script, tmp_path):
    # mu = 2: a round's reward is logged on both of its steps; 4 rounds
    run = make_run(tmp_path / "run", [0.5, 0.5, 0.7, 0.7, 0.4, 0.4, 0.9, 0.9], nested=True)
    control = make_run(tmp_path / "ctl", [0.5, 0.5, 0.6, 0.6, 0.5, 0.5, 0.6, 0.6], lr=1e-12)
    result = script.compare(run, control, window=2)
    assert result["rounds"] == 4 and result["prompts_checked"]
    assert [w["rounds"] for w in result["windows"]] == [[1, 2], [3, 4]]
    assert result["windows"][0]["run"] == pytest.approx(0.6) and result["windows"][0]["control"] == pytest.approx(0.55)
    assert result["windows"][1]["run"] == pytest.approx(0.65) and result["windows"][1]["control"] == pytest.approx(0.55)
    diffs = [0.0, 0.1, -0.1, 0.3]
    mean = sum(diffs) / 4
    sd = (sum((d - mean) ** 2 for d in diffs) / 3) ** 0.5
    g = result["gain"]
    assert g["gain"] == pytest.approx(mean)
    assert g["improved"] == 2 and g["worsened"] == 1
    assert g["normal_ci"][1] - g["gain"] == pytest.approx(1.96 * sd / 2, rel=1e-6)
    assert result["lr"] == [3e-4, 1e-12]


def test_from_round_leaves_the_early_rounds_out_of_the_mean(script, tmp_path):
    run = make_run(tmp_path / "run", [0.5, 0.5, 0.7, 0.7, 0.4, 0.4, 0.9, 0.9])
    control = make_run(tmp_path / "ctl", [0.5, 0.5, 0.6, 0.6, 0.5, 0.5, 0.6, 0.6])
    result = script.compare(run, control, window=4, from_round=3)
    assert result["gain"]["gain"] == pytest.approx((-0.1 + 0.3) / 2) and result["gain"]["n"] == 2
    assert result["windows"][0]["run"] == pytest.approx(0.625)  # the table still shows every round
    for bad in (0, 4):
        with pytest.raises(SystemExit, match=f"--from-round must lie in 1..3 .*got {bad}"):
            script.compare(run, control, window=4, from_round=bad)


def test_the_shorter_run_sets_the_rounds(script, tmp_path):
    run = make_run(tmp_path / "run", [0.5, 0.5, 0.7, 0.7, 0.4, 0.4])
    control = make_run(tmp_path / "ctl", [0.5, 0.5, 0.6, 0.6])
    assert script.compare(run, control, window=10)["rounds"] == 2


@pytest.mark.parametrize("change, message", [
    ({"seed": 1}, "seed (0 vs 1)"),
    ({"num_iterations": 4}, "num_iterations"),
    ({"sampler": dict(SAMPLER, temperature=1.2)}, "sampler.temperature (0.9 vs 1.2)"),
    ({"sampler": dict(SAMPLER, threshold=0.9)}, "sampler.threshold (None vs 0.9)"),
    ({"sampler": dict(SAMPLER, steps=None)}, "sampler.steps (32 vs 16)"),
])
def test_runs_with_other_prompts_or_noise_are_refused(script, tmp_path, change, message):
    run = make_run(tmp_path / "run", [0.5] * 4)
    control = make_run(tmp_path / "ctl", [0.5] * 4, **change)
    with pytest.raises(SystemExit, match=message.replace("(", r"\(").replace(")", r"\)")):
        script.compare(run, control, window=2)


def test_other_training_prompts_are_refused(script, tmp_path):
    run = make_run(tmp_path / "run", [0.5] * 4, data_text="a\n")
    control = make_run(tmp_path / "ctl", [0.5] * 4, data_text="b\n")
    with pytest.raises(SystemExit, match="training prompts differ"):
        script.compare(run, control, window=2)


def test_missing_pieces_are_named(script, tmp_path):
    with pytest.raises(SystemExit, match="no grpo_config.json"):
        script.compare(tmp_path, tmp_path, window=2)
    run = make_run(tmp_path / "run", [0.5] * 4)
    (run / "dvclive" / "plots" / "metrics" / "reward" / "mean.tsv").unlink()
    with pytest.raises(SystemExit, match="reward/mean.tsv"):
        script.compare(run, run, window=2)
    sparse = make_run(tmp_path / "sparse", [0.5] * 6)  # steps 1..6, then step 3 (a round start) dropped
    tsv = sparse / "dvclive" / "plots" / "metrics" / "reward" / "mean.tsv"
    tsv.write_text("".join(line for line in tsv.read_text().splitlines(keepends=True) if not line.startswith("3\t")))
    with pytest.raises(SystemExit, match="no value at step 3, the start of a round"):
        script.compare(sparse, sparse, window=2)
    one_round = make_run(tmp_path / "one", [0.5, 0.5])
    with pytest.raises(SystemExit, match="at least 2 rounds"):
        script.compare(one_round, one_round, window=2)


def test_main_prints_the_table(script, tmp_path, capsys):
    run = make_run(tmp_path / "run", [0.5, 0.5, 0.7, 0.7])
    control = make_run(tmp_path / "ctl", [0.5, 0.5, 0.6, 0.6], lr=1e-12)
    script.main([str(run), str(control), "--window", "1"])
    out = capsys.readouterr().out
    assert "| 2-2 | 0.700 | 0.600 | +0.100 |" in out
    assert "run - control, mean over rounds 1-2: +0.050" in out
    with pytest.raises(SystemExit, match="--window must be positive"):
        script.main([str(run), str(control), "--window", "0"])


def test_a_run_from_before_the_sampler_section_compares_by_its_flat_keys(script, tmp_path):
    run = make_run(tmp_path / "run", [0.5] * 4, base=FLAT)
    assert script.compare(run, make_run(tmp_path / "ctl", [0.5] * 4), window=2)["rounds"] == 2
    hot = make_run(tmp_path / "hot", [0.5] * 4, base=dict(FLAT, temperature=1.2))
    with pytest.raises(SystemExit, match=r"sampler\.temperature \(1\.2 vs 0\.9\)"):
        script.compare(hot, run, window=2)
