"""DVC operations on one stage of a checkout: status, pull, repro, push, lock entries.

DVC alone decides what is up to date: a stage is skipped when ``dvc status``
reports no change for it, and run with ``dvc repro --single-item`` otherwise
(which may still restore it from DVC's run cache instead of running it).
``repro`` runs DVC in a subprocess so the stage's output can be streamed line
by line and its environment set (the ``D1_*`` provenance variables).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Mapping

import yaml

from d1.errors import ConfigError, D1Error

LOCK_FILE = "dvc.lock"
#: the one-line error of a ``d1`` command (d1.cli): ``d1 sft: error: tiny.sft.lr: must be ...``
D1_ERROR_RE = re.compile(r"^d1 [\w-]+: error: .+")
_DVC_ERROR_RE = re.compile(r"^ERROR: (.+)")
_NOISE_RE = re.compile(r"^(ERROR: |WARNING: |Running stage |> |\s*$|Traceback |  File |    )")
#: what ``dvc repro`` says for a person at a terminal, not for a flow's log: blank lines and its git and
#: push hints (the flow pushes, and the checkout's dvc.lock is the flow's business)
_HINT_RE = re.compile(r"^(\s*|To track the changes with git, run:|git add dvc\.lock|To enable auto staging, run:|"
                      r"dvc config core\.autostage true|Use `dvc push` to send your updates to remote storage\.)$")


class StageFailed(D1Error):
    """A stage's command failed. ``retryable`` is False for a one-line d1 error (bad params or
    data: running it again gives the same error), True for crashes and DVC-level failures."""

    def __init__(self, stage: str, detail: str, *, retryable: bool) -> None:
        super().__init__(f"stage {stage!r} failed: {detail}")
        self.stage = stage
        self.detail = detail
        self.retryable = retryable


@contextmanager
def open_repo(root: str | Path):
    """DVC's Repo for ``root``, with the working directory moved there while it is open (parts of
    DVC resolve paths against the current directory)."""
    from dvc.repo import Repo

    before = os.getcwd()
    os.chdir(root)
    try:
        with Repo(".") as repo:
            yield repo
    finally:
        os.chdir(before)


def _dvc_error(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    if exc.__cause__ is not None and str(exc.__cause__):
        text += f": {' '.join(str(exc.__cause__).split())}"
    return text


def status(root: str | Path, stage: str) -> dict:
    """DVC's changes for ``stage`` alone (its upstream not checked); ``{}`` when up to date."""
    from dvc.exceptions import DvcException

    try:
        with open_repo(root) as repo:
            changes = repo.status(targets=[stage])
    except DvcException as exc:
        raise ConfigError(f"dvc status {stage}: {_dvc_error(exc)}") from None
    return {k: v for k, v in changes.items() if v}


def pull(root: str | Path, stages: Iterable[str], *, log: Callable[[str], None] | None = None,
         force: bool = False) -> dict:
    """Fetch and check out the outputs of ``stages`` recorded in dvc.lock from the default remote.

    ``force``: replace what is in the workspace at those outputs (for the stage about to run: what a
    killed run of it left there is no result of anyone's, and must not block the pull).

    Outputs missing from the remote are skipped (those stages will simply not be up to date). DVC
    warns about them ("Missing cache files"), which on a first run is no problem at all: the
    warning is replaced by one ``log`` line counting them.
    """
    from dvc.exceptions import DvcException

    targets = list(stages)
    if not targets:
        return {}
    try:
        with _missing_cache_files() as missing, open_repo(root) as repo:
            result = repo.pull(targets=targets, allow_missing=True, force=force)
    except DvcException as exc:
        raise ConfigError(f"dvc pull {' '.join(targets)}: {_dvc_error(exc)}") from None
    if missing and log is not None:
        log(f"dvc pull: {len(missing)} output(s) of {', '.join(targets)} in neither the cache nor the remote "
            "(not produced yet; the stages that make them will run)")
    return result


class _MissingCacheFilter(logging.Filter):
    """Drops DVC's "Missing cache files" warning, keeping the hashes it lists."""

    PREFIX = "Some of the cache files do not exist"

    def __init__(self) -> None:
        super().__init__()
        self.missing: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.PREFIX):
            return True
        self.missing.extend(line.split(":", 1)[1].strip() for line in message.splitlines()
                            if line.startswith("md5:"))
        return False


@contextmanager
def _missing_cache_files():
    """The hashes DVC reports missing while the block runs (its warning suppressed)."""
    fetch_logger = logging.getLogger("dvc_data.index.fetch")
    dropper = _MissingCacheFilter()
    fetch_logger.addFilter(dropper)
    try:
        yield dropper.missing
    finally:
        fetch_logger.removeFilter(dropper)


def push(root: str | Path, stages: Iterable[str]) -> int:
    """Upload the cached outputs of ``stages`` to the default remote; returns the count pushed."""
    from dvc.exceptions import DvcException

    targets = list(stages)
    try:
        with open_repo(root) as repo:
            return int(repo.push(targets=targets) or 0)
    except DvcException as exc:
        raise ConfigError(f"dvc push {' '.join(targets)}: {_dvc_error(exc)} "
                          "(configure a default remote, or run the flow with push=False)") from None


def _stage_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a stage command: ours plus ``env``, with this interpreter's bin folder
    first on PATH so ``d1`` and ``dvc`` are the ones installed next to it."""
    merged = dict(os.environ)
    merged.update(env)
    bindir = str(Path(sys.executable).parent)
    merged["PATH"] = bindir + os.pathsep + merged.get("PATH", "")
    return merged


def failure_detail(lines: Iterable[str]) -> tuple[str, bool]:
    """The message of a failed ``dvc repro`` from its output: the stage's one-line d1 error if
    there is one (not retryable), else the last error-looking line (retryable)."""
    lines = [line.rstrip("\n") for line in lines]
    for line in reversed(lines):
        if D1_ERROR_RE.match(line):
            return line, False
    for line in reversed(lines):  # an exception's last line: "RuntimeError: CUDA out of memory"
        if not _NOISE_RE.match(line) and ("Error" in line or "error" in line or "Exception" in line):
            return line.strip(), True
    for line in reversed(lines):
        m = _DVC_ERROR_RE.match(line)
        if m:
            return m.group(1).strip(), True
    tail = [line.strip() for line in lines if line.strip()]
    return (tail[-1] if tail else "no output"), True


def repro(
    root: str | Path, stage: str, *, env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None, force: bool = False,
) -> list[str]:
    """``dvc repro --single-item STAGE`` in ``root``; each output line goes to ``on_line`` as it
    comes (but blank lines and DVC's git/push hints). Returns the output lines; raises StageFailed
    with the stage's error message."""
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    if force:
        cmd.append("--force")
    tail: deque[str] = deque(maxlen=400)
    proc = subprocess.Popen(
        cmd, cwd=str(root), env=_stage_env(env or {}), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, bufsize=1, errors="replace",
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line)
            if on_line is not None and not _HINT_RE.match(line.strip()):
                on_line(line.rstrip("\n"))
        rc = proc.wait()
    except BaseException:  # cancelled or interrupted: do not leave the stage running
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        detail, retryable = failure_detail(tail)
        raise StageFailed(stage, detail, retryable=retryable)
    return list(tail)


def read_lock(root: str | Path) -> dict[str, dict]:
    """``{stage: entry}`` of ``root/dvc.lock``; ``{}`` when there is none yet."""
    path = Path(root) / LOCK_FILE
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    stages = data.get("stages") if isinstance(data, dict) else None
    return dict(stages) if isinstance(stages, dict) else {}


def merge_lock(root: str | Path, entries: Mapping[str, dict]) -> None:
    """Write ``entries`` (stage -> dvc.lock entry, from the checkout that ran those stages) into
    ``root/dvc.lock``, keeping the other stages' entries."""
    from dvc.utils.serialize import modify_yaml

    if not entries:
        return
    path = Path(root) / LOCK_FILE
    if not path.is_file():
        path.write_text("schema: '2.0'\nstages: {}\n", encoding="utf-8")
    with modify_yaml(str(path)) as data:
        data.setdefault("schema", "2.0")
        if not isinstance(data.get("stages"), dict):
            data["stages"] = {}
        for name, entry in entries.items():
            data["stages"][name] = entry


def out_hashes(lock: Mapping[str, dict], stage: str) -> dict[str, str]:
    """``{out path: md5}`` of ``stage`` in a dvc.lock mapping."""
    entry = lock.get(stage) or {}
    return {o["path"]: o.get("md5") or o.get("etag") or o.get("checksum") or ""
            for o in entry.get("outs") or [] if isinstance(o, dict) and "path" in o}


def dep_hashes(lock: Mapping[str, dict], stage: str) -> dict[str, str]:
    """``{dep path: md5}`` of ``stage`` in a dvc.lock mapping."""
    entry = lock.get(stage) or {}
    return {d["path"]: d.get("md5") or d.get("etag") or d.get("checksum") or ""
            for d in entry.get("deps") or [] if isinstance(d, dict) and "path" in d}
