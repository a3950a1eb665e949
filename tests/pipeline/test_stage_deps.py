"""dvc.yaml lists, for every stage, exactly the d1 modules its command runs.

A stage's modules are the import closure (read from the source, so imports
inside functions count) of what ``d1 <stage>`` runs: ``d1/cli.py``, what it
imports at module level and in its stage runner ``_cmd_stage``, and the
stage's config class and runner modules from ``d1.cli.STAGES``. A package ``__init__``'s
``__getattr__`` (a lazy re-export, run only when that name is looked up) does
not count. Complete: every module reached is a dependency (a file, or a folder
holding it). Precise: every ``d1/`` dependency is reached (a folder only when
every module in it is), so editing the GRPO trainer does not re-run SFT.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from d1.cli import STAGES

REPO = Path(__file__).resolve().parents[2]


def module_file(name: str) -> Path | None:
    path = REPO / Path(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def d1_imports(path: Path, name: str) -> set[str]:
    """Names of the d1 modules (and module attributes) ``path`` imports anywhere but in ``__getattr__``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    lazy = {id(node) for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef) and fn.name == "__getattr__"
            for node in ast.walk(fn)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in lazy:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in found if n.split(".")[0] == "d1"}


def import_closure(entries: list[str]) -> set[str]:
    """Repository-relative files of every d1 module importing ``entries`` runs (parent packages included)."""
    seen: dict[str, Path] = {}
    todo = list(entries)
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            path = module_file(name)
            if path is None or name in seen:
                continue
            seen[name] = path
            todo.extend(d1_imports(path, name))
    return {path.relative_to(REPO).as_posix() for path in seen.values()}


def stage_runner_imports() -> list[str]:
    """What d1/cli.py imports at module level and in ``_cmd_stage`` (the code every stage command runs)."""
    path = REPO / "d1" / "cli.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    runner = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_cmd_stage")
    nodes = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))] + list(ast.walk(runner))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("d1"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("d1"))
    return sorted(found)


def stage_modules(command: str) -> set[str]:
    config_ref, runner_ref, _, _ = STAGES[command]
    entries = [*stage_runner_imports(), config_ref.partition(":")[0], runner_ref.partition(":")[0]]
    return import_closure(entries) | {"d1/cli.py"}


def dependency_problems(stage: dict, modules: set[str]) -> list[str]:
    """What is wrong with a stage's d1 dependencies: modules it runs but does not list, and deps it does not run."""
    deps = [d for d in stage.get("deps", []) if isinstance(d, str) and d.startswith("d1/")]
    problems = []
    for module in sorted(modules):
        if not any(module == d or module.startswith(d.rstrip("/") + "/") for d in deps):
            problems.append(f"runs {module}, not a dependency")
    for dep in deps:
        path = REPO / dep
        if path.is_file():
            if dep.endswith(".py") and dep not in modules:
                problems.append(f"depends on {dep}, never runs it")
            if path.stat().st_size == 0:  # DVC warns "is empty" on every run that checks it
                problems.append(f"depends on {dep}, an empty file")
        elif path.is_dir():
            unused = sorted(p.relative_to(REPO).as_posix() for p in path.rglob("*.py")) 
            unused = [p for p in unused if p not in modules]
            if unused:
                problems.append(f"depends on folder {dep}, never runs {', '.join(unused)}")
        else:
            problems.append(f"depends on {dep}, which does not exist")
    return problems


def dvc_stages() -> dict[str, dict]:
    """The stages of dvc.yaml (a foreach/matrix stage's template), keyed by the ``d1`` command they run."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    by_command = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        command = body["cmd"].split()[1]
        by_command[command] = body
    return by_command


@pytest.mark.parametrize("command", sorted(dvc_stages()))
def test_each_stage_depends_on_exactly_the_modules_it_runs(command):
    assert dependency_problems(dvc_stages()[command], stage_modules(command)) == []


def test_training_stages_do_not_depend_on_each_others_trainers():
    deps = {command: stage_modules(command) for command in ("base", "sft", "grpo")}
    assert "d1/train/grpo.py" not in deps["base"] | deps["sft"]
    assert "d1/algo/grpo.py" not in deps["base"] | deps["sft"]
    assert "d1/train/grpo_config.py" not in deps["base"] | deps["sft"]
    assert "d1/train/sft_config.py" not in deps["base"] | deps["grpo"]
    assert "d1/train/sft.py" not in deps["base"] | deps["grpo"]
    assert "d1/train/pretrain.py" not in deps["sft"] | deps["grpo"]
    assert "d1/train/grpo.py" in deps["grpo"] and "d1/generation/sampler.py" in deps["grpo"]


def test_the_check_finds_a_missing_and_a_superfluous_dependency():
    stage = dict(dvc_stages()["sft"])
    modules = stage_modules("sft")
    missing = dict(stage, deps=[d for d in stage["deps"] if d != "d1/train/sft.py"])
    assert dependency_problems(missing, modules) == ["runs d1/train/sft.py, not a dependency"]
    extra = dict(stage, deps=[*stage["deps"], "d1/train/grpo.py", "d1/train"])
    problems = dependency_problems(extra, modules)
    assert "depends on d1/train/grpo.py, never runs it" in problems
    assert any(p.startswith("depends on folder d1/train, never runs") and "d1/train/grpo.py" in p for p in problems)


def test_the_stage_runner_imports_are_read_from_the_cli():
    assert {"d1.config", "d1.provenance", "d1.locks", "d1.progress", "d1.errors"} <= set(stage_runner_imports())


def test_import_closure_follows_function_level_imports_but_not_lazy_reexports():
    # d1/base.py imports the pre-training module inside run_base; d1/train/__init__ re-exports run_grpo lazily.
    closure = import_closure(["d1.base"])
    assert "d1/train/pretrain.py" in closure and "d1/train/__init__.py" in closure
    assert "d1/train/grpo.py" not in closure
