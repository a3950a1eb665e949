"""Stage configs: one dataclass per stage, mapped 1:1 to a ``params.yaml`` section.

``load_config(PrepareConfig, "params.yaml")`` reads the ``prepare`` section,
rejects unknown keys and wrongly typed values with a message naming the key
(``prepare.seed: expected int, got 'x'``), then runs the dataclass's own
``validate()``. ``write_resolved`` writes the resolved config next to a
stage's outputs so every artefact records exactly what produced it.

Profiles: a params file may nest the sections per profile
(``tiny: {prepare: ..., sft: ...}``) and name the active one at the top
(``profile: tiny``). A section is then addressed by its dotted path
(``section="tiny.sft"``); without an explicit section, a stage reads
``<profile>.<stage>`` when the file has a ``profile`` key and no top-level
``<stage>`` section. Error messages name the key by its full dotted path
(``tiny.sft.lr: must be a positive number, got -1.0``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, Iterator, TypeVar

import yaml

from d1.errors import ConfigError

C = TypeVar("C")


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _check(value: Any, tp: Any, where: str) -> Any:
    """Coerce/validate ``value`` against annotation ``tp``; ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_check(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _check(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            # PyYAML follows YAML 1.1, where 1e-4 (no dot) is a string, not a float.
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _checked_keys(cls: type, data: dict, where: str) -> dict[str, dataclasses.Field]:
    """The init fields of dataclass ``cls`` by name; ConfigError for a moved key (``MOVED_KEYS``: says
    where it went) or an unknown one in ``data``."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    moved = getattr(cls, "MOVED_KEYS", {})
    for key in sorted(k for k in data if k in moved and k not in fields):
        raise ConfigError(f"{where}.{key}: moved to {where}.{moved[key]}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(fields))})")
    return fields


def from_dict(cls: type[C], data: dict, where: str) -> C:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad types are ConfigErrors.

    A key the class lists in ``MOVED_KEYS`` (old name -> new dotted path inside the
    section) is an error saying where it went (``grpo.diffusion_steps: moved to
    grpo.sampler.steps``). A nested section whose field defaults to a dataclass
    instance (``grpo.sampler``) starts from that default: the keys it names replace
    the default's, the others keep it.
    """
    hints = typing.get_type_hints(cls)
    fields = _checked_keys(cls, data, where)
    kwargs = {k: _check(_over_default(fields[k], v), hints[k], f"{where}.{k}") for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as exc:
            raise ConfigError(_rebase_message(str(exc), getattr(cls, "SECTION", ""), where)) from None
    return obj


def set_fields(obj: Any, values: dict, where: str) -> list[str]:
    """Set fields of the dataclass instance ``obj`` from ``values``, checked as :func:`from_dict` checks a
    section: unknown keys, moved keys and wrong types are ConfigErrors naming ``where.<key>``; a field
    holding a dataclass (``sampler``) takes the keys named over its current value. ``obj.validate()``
    is not run (the caller validates the result). Returns the keys set."""
    cls = type(obj)
    hints = typing.get_type_hints(cls)
    _checked_keys(cls, values, where)
    for key, value in values.items():
        current = getattr(obj, key)
        if isinstance(value, dict) and dataclasses.is_dataclass(current) and not isinstance(current, type):
            init = {g.name for g in dataclasses.fields(current) if g.init}
            value = {**{k: v for k, v in dataclasses.asdict(current).items() if k in init}, **value}
        setattr(obj, key, _check(value, hints[key], f"{where}.{key}"))
    return list(values)


def _over_default(f: dataclasses.Field, value: Any) -> Any:
    """``value`` (a mapping) over the field's default when that default is a dataclass instance."""
    if not isinstance(value, dict) or f.default_factory is dataclasses.MISSING:
        return value
    default = f.default_factory()
    if not dataclasses.is_dataclass(default) or isinstance(default, type):
        return value
    init = {g.name for g in dataclasses.fields(default) if g.init}
    return {**{k: v for k, v in dataclasses.asdict(default).items() if k in init}, **value}


def _rebase_message(message: str, section: str, where: str) -> str:
    """``validate()`` names keys from the class's own section (``sft.lr: ...``); name them from
    where the section was read instead (``tiny.sft.lr: ...``)."""
    if section and where != section:
        for sep in (".", ":"):
            if message.startswith(section + sep):
                return where + message[len(section):]
    return message


def yaml_error_text(exc: yaml.YAMLError) -> str:
    """A YAML parse error on one line: ``line 3, column 5: expected ...`` (PyYAML's own is several)."""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    text = str(problem) if problem else str(exc)
    if mark is not None:
        text = f"line {mark.line + 1}, column {mark.column + 1}: {text}"
    return " ".join(text.split())


def load_yaml_file(path: Path, error: type[Exception], what: str = "YAML") -> Any:
    """The YAML document in ``path`` (safe loader); ``error`` naming the file when it cannot be read:
    not UTF-8 text (e.g. random bytes), invalid YAML, or nested too deeply to parse."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not a {what} file: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{path}: invalid YAML ({yaml_error_text(exc)})") from None
    except RecursionError:
        raise error(f"{path}: invalid YAML (nested too deeply)") from None


def read_params(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file")
    data = load_yaml_file(path, ConfigError, "params") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def apply_overrides(params: dict, overrides: list[str]) -> dict:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML) to a params dict, in place.

    ``sft.lr=1e-4``, ``eval.tasks=[countdown]``, ``prepare.tasks.sudoku.train_size=500``.
    Intermediate mappings are created when missing; a non-mapping on the way is an error.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: expected KEY=VALUE with a dotted KEY")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except (yaml.YAMLError, RecursionError):
            raise ConfigError(f"override {item!r}: value is not valid YAML") from None
        node = params
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: depth + 1])} is not a mapping")
            node = child
        node[parts[-1]] = value
    return params


def default_section(params: dict, stage: str) -> str:
    """``stage`` for a flat params file; ``<profile>.<stage>`` when the file names an active
    ``profile`` and has no top-level ``stage`` section."""
    profile = params.get("profile")
    if stage not in params and isinstance(profile, str) and profile:
        return f"{profile}.{stage}"
    return stage


def get_section(params: dict, section: str, where: str | Path = "params") -> Any:
    """The value at dotted path ``section`` (``tiny.sft``); ConfigError naming the missing part."""
    node: Any = params
    parts = section.split(".")
    if any(not part for part in parts):
        raise ConfigError(f"{where}: bad section name {section!r}")
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            missing = ".".join(parts[: depth + 1])
            extra = "" if missing == section else f" (for section {section!r})"
            raise ConfigError(f"{where}: no {missing!r} section{extra}")
        node = node[part]
    return node


#: The stage graph's axes: the top-level params keys dvc.yaml's foreach/matrix read -> the key of a
#: profile that lists them. DVC cannot look a list up by the profile's name (no nested ``${...}``), so
#: the active profile's lists are copied to the top (flows.params does it when it selects a profile).
#: ``pipeline.models`` (the evaluated models, the report's rows) and ``pipeline.algorithms`` (the RL
#: algorithms trained, one ``grpo@<algorithm>-<task>`` stage each) both come from the profile's
#: ``report.models``: the algorithms are its models other than :data:`STAGE_MODELS`.
GRAPH_AXES = {"pipeline.tasks": "eval.tasks", "pipeline.gen_lengths": "eval.gen_lengths",
              "pipeline.models": "report.models", "pipeline.algorithms": "report.models"}
#: models made by their own stage (base, sft), not by an RL algorithm
STAGE_MODELS = ("base", "sft")


def _axis_values(key: str, values: list) -> list:
    """The axis ``key``'s values from its profile list (``pipeline.algorithms``: the non-stage models)."""
    if key == "pipeline.algorithms":
        return [v for v in values if v not in STAGE_MODELS]
    return list(values)


def profile_axes(params: dict, profile: str, where: str | Path = "params") -> dict[str, list]:
    """{top-level axis key: the profile's list} for each axis of :data:`GRAPH_AXES` the file has at
    the top and the profile lists (``{}`` for a params file without them)."""
    axes = {}
    for key, own in GRAPH_AXES.items():
        try:
            get_section(params, key)
            value = get_section(params, f"{profile}.{own}")
        except ConfigError:
            continue
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}: {profile}.{own}: expected a non-empty list (the profile's {key}), "
                              f"got {value!r}")
        axes[key] = _axis_values(key, value)
    return axes


def check_graph_axes(params: dict, section: str, where: str | Path = "params") -> None:
    """The graph's axes (``pipeline.tasks``, ``pipeline.gen_lengths``) hold only values of the lists of
    the profile ``section`` belongs to (``llada-8b.sft``: ``llada-8b.eval.tasks`` ...); a subset is fine
    (a flow run of some tasks). Catches a profile switched without its lists (``dvc exp run -S
    profile=llada-8b`` alone would train and evaluate the 8B model at tiny's 64 tokens)."""
    profile = section.partition(".")[0]
    if "." not in section or not isinstance(params.get(profile), dict):
        return
    for key, own in profile_axes(params, profile, where).items():
        current = get_section(params, key)
        source = f"{profile}.{GRAPH_AXES[key]}"
        defined = _defined_algorithms(params, profile)
        if key in ("pipeline.models", "pipeline.algorithms") and defined is not None:
            # any algorithm the profile defines may run, not only those its report lists by default
            own = list(STAGE_MODELS) + defined if key == "pipeline.models" else defined
            source = f"{profile}.grpo.algorithms" + (" and base, sft" if key == "pipeline.models" else "")
        if not isinstance(current, list) or any(v not in own for v in current):
            raise ConfigError(f"{where}: {key} {current!r} is not within {source} {own!r} "
                              f"(the profile's own list); select the profile with `python -m flows.params "
                              f"{profile}` (it copies the lists), or set {key}")


def _defined_algorithms(params: dict, profile: str) -> list[str] | None:
    """The names of ``<profile>.grpo.algorithms`` (None when the profile has no such mapping)."""
    try:
        algorithms = get_section(params, f"{profile}.grpo.algorithms")
    except ConfigError:
        return None
    return list(algorithms) if isinstance(algorithms, dict) else None


def scope_overrides(overrides: list[str], section: str, stage: str) -> list[str]:
    """Overrides written from the top of the params file (``tiny.sft.lr=1e-4``) or, shorter, from
    the stage's own section name (``sft.lr=1e-4`` while reading ``tiny.sft``), as full paths.

    An override outside the section being loaded would be silently ignored, so it is an error.
    """
    scoped = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or key.startswith(section + "."):  # malformed items are apply_overrides' to report
            scoped.append(item)
        elif stage and key.startswith(stage + "."):
            scoped.append(section + item[len(stage):])
        else:
            raise ConfigError(f"override {item!r}: not a key of the section being read, {section!r} "
                              f"(write {section}.KEY=VALUE)")
    return scoped


def load_config(
    cls: type[C], params_path: str | Path, section: str | None = None, overrides: list[str] | None = None
) -> C:
    """The ``section`` of a params file as a validated ``cls``, after applying ``overrides``.

    ``section`` is a dotted path (``tiny.sft``); by default :func:`default_section` of
    ``cls.SECTION``. Overrides are ``KEY=VALUE`` (see apply_overrides and scope_overrides).
    """
    stage = getattr(cls, "SECTION", "")
    params = read_params(params_path)
    section = section or default_section(params, stage)
    params = apply_overrides(params, scope_overrides(list(overrides or []), section, stage))
    data = get_section(params, section, params_path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{params_path}: section {section!r} is not a mapping")
    return from_dict(cls, data, section)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` via a temp file in the same folder + rename: never half written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Fill a folder under a temporary name, then rename it to ``target``: a reader (a later stage,
    ``dvc commit``) sees the old folder, no folder, or the whole new one, never a part of it.

    Yields the temporary folder (``.<name>.tmp-<pid>`` beside ``target``), removed if the block fails.
    """
    target = Path(target)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON (sorted keys, trailing newline) via a temp file + rename: never half written."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_resolved(cfg: Any, out_dir: str | Path, name: str | None = None) -> Path:
    """Write the resolved config of a stage as ``<out_dir>/<section>_config.json``."""
    name = name or f"{getattr(cfg, 'SECTION', type(cfg).__name__.lower())}_config.json"
    path = Path(out_dir) / name
    write_json_atomic(path, to_dict(cfg))
    return path
