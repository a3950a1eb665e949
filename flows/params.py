"""The flow's parameters (profile, tasks, overrides) written into the checkout's params.yaml.

The flow runs ``dvc repro`` on single stages, so the parameters must be in
params.yaml before DVC resolves the graph: the flow writes them the way
``dvc exp run -S`` does in the workspace (DVC's own Hydra-override writer,
comments kept), and leaves them there, so ``dvc.lock``, ``dvc params diff``
and ``d1 lineage`` show exactly what ran. Overrides use DVC's syntax with
keys from the top of params.yaml: ``tiny.grpo.lr=2e-4``,
``tiny.tasks=[countdown]``; an unknown key is an error (no silent additions).

Selecting a profile also copies its lists of tasks, generation lengths and
models (``<profile>.eval.tasks``, ``<profile>.eval.gen_lengths``,
``<profile>.report.models``) to the graph's axes at the top
(``pipeline.tasks``, ``pipeline.gen_lengths``, ``pipeline.models`` and
``pipeline.algorithms``, the models but base and sft:
``d1.config.GRAPH_AXES``), which dvc.yaml's matrix read: DVC cannot look a
list up by the profile's name. ``algorithms`` picks the RL algorithms to
train and compare instead (any of ``<profile>.grpo.algorithms``). Without a flow::

    python -m flows.params llada-8b [--tasks gsm8k countdown] [--algorithms d1 wd1 spg espo]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import yaml

from d1.config import get_section, profile_axes, read_params
from d1.errors import ConfigError

PARAMS_FILE = "params.yaml"


def profiles(params: dict) -> list[str]:
    """The profile sections of a params file: its top-level mappings."""
    return sorted(k for k, v in params.items() if isinstance(v, dict))


def flow_overrides(
    params: dict, profile: str, tasks: Sequence[str] | None, overrides: Sequence[str] | None,
    tasks_param: str | None, algorithms: Sequence[str] | None = None,
) -> list[str]:
    """The ``-S``-style overrides that select ``profile`` (and its graph axes, :func:`d1.config.profile_axes`)
    and ``tasks`` and apply ``overrides``.

    ``tasks`` must be a subset of the list at ``tasks_param`` (the profile's tasks: when ``tasks_param``
    is an axis the profile lists, the profile's list).
    """
    known = profiles(params)
    if profile not in known:
        raise ConfigError(f"profile {profile!r}: no such profile in {PARAMS_FILE} (profiles: {', '.join(known) or 'none'})")
    if "profile" not in params:
        raise ConfigError(f"{PARAMS_FILE}: no top-level 'profile' key to select profile {profile!r} with")
    result = [f"profile={profile}"]
    axes = profile_axes(params, profile, PARAMS_FILE)
    if tasks:
        if not tasks_param:
            raise ConfigError(f"tasks {list(tasks)}: {profile}.flow.tasks_param is not set, "
                              "so the flow does not know which params key lists the tasks")
        available = axes[tasks_param] if tasks_param in axes else get_section(params, tasks_param, PARAMS_FILE)
        if not isinstance(available, list):
            raise ConfigError(f"{tasks_param}: expected the list of the profile's tasks, got {available!r}")
        unknown = [t for t in tasks if t not in available]
        if unknown:
            raise ConfigError(f"tasks: {unknown[0]!r} is not one of {tasks_param} = {available}")
        axes.pop(tasks_param, None)
        result.append(f"{tasks_param}={json.dumps(list(tasks))}")
    if algorithms:
        defined = get_section(params, f"{profile}.grpo.algorithms", PARAMS_FILE)
        known = ", ".join(defined) if isinstance(defined, dict) else "none: not a mapping"
        unknown = [a for a in algorithms if not isinstance(defined, dict) or a not in defined]
        if unknown:
            raise ConfigError(f"algorithms: {unknown[0]!r} is not one of {profile}.grpo.algorithms ({known})")
        twice = [a for i, a in enumerate(algorithms) if a in algorithms[:i]]
        if twice:
            raise ConfigError(f"algorithms: {twice[0]!r} is named twice")
        axes["pipeline.algorithms"] = list(algorithms)
        axes["pipeline.models"] = ["base", "sft", *algorithms]
    given = {str(item).partition("=")[0].strip() for item in overrides or []}  # an explicit override wins
    result.extend(f"{key}={json.dumps(value)}" for key, value in axes.items() if key not in given)
    for item in overrides or []:
        key, sep, _ = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. {profile}.grpo.lr=2e-4")
        result.append(str(item))
    return result


def _is_noop(params: dict, item: str) -> bool:
    """Whether a plain ``a.b.c=value`` override leaves ``params`` as they are."""
    key, _, raw = item.partition("=")
    if not key or key[0] in "+~" or "@" in key:  # Hydra's add/delete/package forms: let DVC apply them
        return False
    try:
        value = yaml.safe_load(raw)
        current = get_section(params, key)
    except (yaml.YAMLError, ConfigError):
        return False
    return type(current) is type(value) and current == value


def write_overrides(root: str | Path, overrides: Sequence[str]) -> list[str]:
    """Apply ``overrides`` to ``root/params.yaml`` in place, as ``dvc exp run -S`` does; overrides
    that change nothing are not written (the file keeps its formatting). Returns those written."""
    from dvc.exceptions import DvcException
    from dvc.utils.hydra import apply_overrides

    path = Path(root) / PARAMS_FILE
    params = read_params(path)  # a clear error for a missing or malformed file
    overrides = [o for o in overrides if not _is_noop(params, o)]
    if not overrides:
        return []
    try:
        apply_overrides(str(path), list(overrides))
    except DvcException as exc:
        cause = exc.__cause__
        detail = " ".join(str(cause).split()) if cause is not None else str(exc)
        raise ConfigError(f"overrides {list(overrides)}: {detail}") from None
    return list(overrides)


def apply_flow_params(
    root: str | Path, profile: str, tasks: Sequence[str] | None = None, overrides: Sequence[str] | None = None,
    algorithms: Sequence[str] | None = None,
) -> list[str]:
    """Select ``profile`` (and ``tasks``, through the profile's ``flow.tasks_param``) and apply
    ``overrides`` in ``root/params.yaml``; returns the overrides written."""
    params = read_params(Path(root) / PARAMS_FILE)
    section = params.get(profile)
    flow = section.get("flow") if isinstance(section, dict) else None
    tasks_param = flow.get("tasks_param") if isinstance(flow, dict) else None
    written = flow_overrides(params, profile, tasks, overrides, tasks_param, algorithms)
    write_overrides(root, written)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flows.params PROFILE [--tasks T ...] [--set KEY=VALUE ...]``: what the flow writes, by hand."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m flows.params", description=(
        "Select a profile in ./params.yaml as the d1-full flow does: profile=PROFILE and the profile's tasks "
        "and generation lengths as the graph's axes (pipeline.tasks, pipeline.gen_lengths), written like "
        "`dvc exp run -S` (comments kept). Then run `dvc repro` or `dvc exp run`."))
    parser.add_argument("profile")
    parser.add_argument("--tasks", nargs="+", help="only these of the profile's tasks")
    parser.add_argument("--algorithms", nargs="+", help="train and compare these RL algorithms (of the profile's "
                        "grpo.algorithms: d1 wd1 spg espo) instead of those its report lists")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="more overrides, keys from the top of params.yaml (tiny.grpo.lr=2e-4)")
    args = parser.parse_args(argv)
    try:
        written = apply_flow_params(".", args.profile, args.tasks, args.overrides, args.algorithms)
    except ConfigError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    print(" ".join(written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
