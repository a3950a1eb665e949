"""A toy DVC project shaped like the d1 pipeline, with `python toy.py` stages (no torch, seconds).

prepare -> train@a, train@b -> eval@a, eval@b -> report, with a profile section
like params.yaml's (`micro`, so the `d1-full/micro` deployment runs it). Each
stage writes its outputs, the D1_* variables it saw (`env.json`) and a line in
`.toy-runs.log` (which stage ran, untracked). `train` fails with a one-line
d1-style error when `<profile>.train.scale` is not positive; `prepare` crashes
(a traceback) when `<profile>.prepare.crash` is true.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

TOY_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import yaml

    stage, item = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
    params = yaml.safe_load(open("params.yaml"))
    prof = params[params["profile"]]
    with open(".toy-runs.log", "a") as f:
        f.write(f"{stage}{'@' + item if item else ''}\\n")

    def out(path, text):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)

    def env(folder):
        out(f"{folder}/env.json", json.dumps({k: os.environ.get(k) for k in
            ("D1_DVC_STAGE", "D1_FLOW_RUN_ID", "D1_TASK_RUN_ID")}))

    if stage == "prepare":
        if prof["prepare"].get("crash"):
            raise RuntimeError("toy prepare crashed")
        out("out/data/train.txt", str(prof["prepare"]["n"]))
        env("out/data")
    elif stage == "train":
        scale = prof["train"]["scale"]
        if scale <= 0:
            print(f"d1 train: error: {params['profile']}.train.scale: must be positive, got {scale}", file=sys.stderr)
            sys.exit(1)
        n = int(open("out/data/train.txt").read())
        out(f"out/train/{item}/model.txt", str(n * scale))
        env(f"out/train/{item}")
    elif stage == "eval":
        v = int(open(f"out/train/{item}/model.txt").read())
        out(f"out/eval/{item}/metrics.json", json.dumps({item: {"64": {"accuracy": float(v), "correct": v, "total": 100, "n": 100}}}))
        out(f"out/eval/{item}/eval_config.json", json.dumps({"model_name": "d1"}))
        env(f"out/eval/{item}")
    elif stage == "report":
        rows = []
        for name in sorted(os.listdir("out/eval")):
            m = json.load(open(f"out/eval/{name}/metrics.json"))
            rows.append(f"| d1 | {name} | {m[name]['64']['accuracy']:.2f} |")
        out("out/report/results.md", "| model | task | 64 |\\n|---|---|---|\\n" + "\\n".join(rows) + "\\n")
        out("out/report/results.json", json.dumps({"rows": rows}))
        env("out/report")
''')

DVC_YAML = textwrap.dedent('''
    stages:
      prepare:
        cmd: python toy.py prepare
        deps: [toy.py]
        params:
          - ${profile}.prepare
        outs: [out/data]
      train:
        foreach: ${tasks}
        do:
          cmd: python toy.py train ${item}
          deps: [toy.py, out/data]
          params:
            - ${profile}.train
          outs:
            - out/train/${item}
      eval:
        foreach: ${tasks}
        do:
          cmd: python toy.py eval ${item}
          deps:
            - toy.py
            - out/train/${item}
          outs:
            - out/eval/${item}/env.json
            - out/eval/${item}/eval_config.json
          metrics:
            - out/eval/${item}/metrics.json
      report:
        cmd: python toy.py report
        deps: [toy.py, out/eval]
        outs: [out/report]
''')

PARAMS = textwrap.dedent('''
    # toy params: the active profile and the task list the foreach stages expand
    profile: micro
    tasks: [a, b]
    micro:
      prepare: {n: 3, crash: false}
      train: {scale: 2}   # must be positive
      flow: {default_pool: cpu, pools: {eval: gpu}, retries: 0, tasks_param: tasks}
    local:
      prepare: {n: 5, crash: false}
      train: {scale: 1}
      flow: {default_pool: cpu, retries: 1, retry_delay_seconds: 0, tasks_param: tasks}
''')


def _run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)


def make_toy(path: Path, remote: Path, *, with_flows: bool = False) -> Path:
    """Create the toy project at ``path`` (git + DVC, default remote ``remote``); returns ``path``."""
    path.mkdir(parents=True)
    (path / "toy.py").write_text(TOY_SCRIPT)
    (path / "dvc.yaml").write_text(DVC_YAML.lstrip())
    (path / "params.yaml").write_text(PARAMS.lstrip())
    (path / ".gitignore").write_text(".toy-runs.log\n.d1-stack/\n/out/\n")  # as /outputs/ in the real project
    if with_flows:
        shutil.copytree(REPO / "flows", path / "flows", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(REPO / "prefect.yaml", path / "prefect.yaml")
    _run(["git", "init", "-q"], path)
    _run(["git", "config", "user.email", "toy@example.com"], path)
    _run(["git", "config", "user.name", "toy"], path)
    from dvc.repo import Repo

    Repo.init(str(path)).close()
    set_remote(path, remote)
    _run(["git", "add", "-A"], path)
    _run(["git", "commit", "-qm", "toy"], path)
    return path


def set_remote(path: Path, remote: Path) -> None:
    """Point the project's default DVC remote at ``remote`` (a local folder)."""
    (path / ".dvc" / "config").write_text(
        f"[core]\n    remote = local\n    analytics = false\n['remote \"local\"']\n    url = {remote}\n")


def copy_toy(template: Path, path: Path, remote: Path) -> Path:
    """A copy of a toy project made by make_toy (git history included), with its own remote."""
    shutil.copytree(template, path, symlinks=True)
    set_remote(path, remote)
    _run(["git", "commit", "-qam", "remote"], path)
    return path


def clone(src: Path, dest: Path) -> Path:
    """A second checkout of the toy project (same commit, same DVC remote, no data)."""
    _run(["git", "clone", "-q", str(src), str(dest)], src.parent)
    return dest


def runs(path: Path) -> list[str]:
    log = path / ".toy-runs.log"
    return log.read_text().split() if log.is_file() else []
