"""The resolved DVC stage graph of a checkout, as plain data.

The stages are whatever DVC resolves from dvc.yaml and params.yaml
(``foreach``/``matrix`` stages expanded, ``${...}`` interpolated): nothing
here names a stage. ``read_stages`` returns them in a dependency order
(every stage after the stages producing its deps), ties broken by dvc.yaml's
order so the order is stable from run to run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from d1.errors import ConfigError


@dataclass(frozen=True)
class Out:
    path: str  # relative to the checkout root, as written in dvc.yaml
    metric: bool = False
    plot: bool = False
    cache: bool = True


@dataclass(frozen=True)
class StageInfo:
    name: str  # DVC's address: ``prepare``, ``grpo@d1-countdown``, ``eval@d1-countdown-64``
    cmd: str
    deps: tuple[str, ...] = ()
    outs: tuple[Out, ...] = ()
    upstream: tuple[str, ...] = ()  # stages producing a dep of this one
    params: tuple[str, ...] = field(default=())  # params keys the stage depends on

    @property
    def family(self) -> str:
        """``grpo`` for ``grpo@d1-countdown``: the dvc.yaml entry the stage was generated from."""
        return self.name.split("@", 1)[0]


def _is_params(dep) -> bool:
    from dvc.dependency.param import ParamsDependency

    return isinstance(dep, ParamsDependency)


def _params_keys(stage) -> tuple[str, ...]:
    return tuple(str(p) for dep in stage.deps if _is_params(dep) for p in (dep.params or []))


def _address(stage, root: Path) -> str:
    """The stage's DVC address from the checkout root: ``name`` for the root dvc.yaml, else
    ``sub/dvc.yaml:name`` (DVC's own ``addressing`` is relative to the current directory)."""
    import os

    dvcfile = os.path.relpath(stage.path, root)
    return stage.name if dvcfile == "dvc.yaml" else f"{Path(dvcfile).as_posix()}:{stage.name}"


def read_stages(root: str | Path = ".") -> list[StageInfo]:
    """Every pipeline stage of the DVC project at ``root``, in dependency order.

    A dvc.yaml or params.yaml that DVC cannot resolve is a ConfigError with DVC's message.
    """
    import networkx as nx
    from dvc.exceptions import DvcException

    from flows.dvc_ops import open_repo

    root = Path(root).resolve()
    if not (root / "dvc.yaml").is_file():
        raise ConfigError(f"{root}: no dvc.yaml (not a DVC pipeline checkout)")
    try:
        with open_repo(root) as repo:
            stages = [s for s in repo.index.stages if s.cmd]
            graph = repo.index.graph
            address = {s: _address(s, Path.cwd()) for s in stages}
            order = {address[s]: i for i, s in enumerate(stages)}
            infos = {}
            for s in stages:
                upstream = sorted({address[u] for u in graph.successors(s) if u.cmd}, key=order.get)
                infos[address[s]] = StageInfo(
                    name=address[s],
                    cmd=s.cmd if isinstance(s.cmd, str) else " && ".join(s.cmd),
                    deps=tuple(d.def_path for d in s.deps if not _is_params(d)),
                    outs=tuple(Out(o.def_path, bool(o.metric), bool(o.plot), bool(o.use_cache)) for o in s.outs),
                    upstream=tuple(upstream),
                    params=_params_keys(s),
                )
            # stage -> dependency edges: reverse them so a topological sort puts producers first
            dag = nx.DiGraph()
            dag.add_nodes_from(infos)
            dag.add_edges_from((u, name) for name, info in infos.items() for u in info.upstream)
            ordered = list(nx.lexicographical_topological_sort(dag, key=order.get))
    except DvcException as exc:
        raise ConfigError(f"{root}: DVC cannot resolve the pipeline: {_one_line(exc)}") from None
    return [infos[n] for n in ordered]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f": {' '.join(str(cause).split())}"
    return text


def by_name(stages: list[StageInfo]) -> dict[str, StageInfo]:
    return {s.name: s for s in stages}


def upstream_closure(stages: list[StageInfo], name: str) -> list[str]:
    """Every stage ``name`` depends on, directly or not, in dependency order."""
    index = by_name(stages)
    seen: set[str] = set()
    todo = list(index[name].upstream)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(index[n].upstream)
    return [s.name for s in stages if s.name in seen]


def downstream_closure(stages: list[StageInfo], names: set[str]) -> set[str]:
    """Every stage that depends, directly or not, on one of ``names`` (``names`` excluded)."""
    found: set[str] = set()
    for s in stages:  # dependency order: upstream stages are decided first
        if any(u in names or u in found for u in s.upstream):
            found.add(s.name)
    return found
