"""One writer at a time: exclusive locks on a stage's output folder and on a checkout, naming the holder.

A lock is ``flock`` on a file under ``.d1-locks/`` (git- and DVC-ignored) in the
working directory; the file holds who took it (pid, host, command, start time,
flow run). The kernel drops the lock when its process dies, so a killed run
never leaves a stale lock behind; the holder's record is only read to name it.

- A stage command takes ``stage-<out_dir>.lock`` while it runs: a second run
  writing the same ``out_dir`` (a second ``dvc repro``, two flows) is refused
  with one line instead of interleaving its files with the first.
- A ``d1-full`` / ``d1-stage`` flow run takes ``checkout.lock`` for its whole
  run: another flow run on the checkout is refused, and so is a stage command
  started by hand meanwhile (one started by that flow run, which carries its
  flow-run id in ``D1_FLOW_RUN_ID``, goes ahead).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from d1.errors import D1Error
from d1.provenance import ENV_FLOW_RUN

LOCK_DIR = ".d1-locks"
CHECKOUT_LOCK = "checkout.lock"


class BusyError(D1Error):
    """What a run needs is held by another run (named in the message)."""


def holder_record(*, flow_run_id: str | None = None) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "flow_run_id": flow_run_id or None}


def describe(holder: Mapping) -> str:
    """``flow run 1f2e... (pid 123 on host, since 2026-12-04T18:00:00Z: d1 sft ...)``."""
    if not holder:
        return "another process (it left no record)"
    who = f"flow run {holder['flow_run_id']} " if holder.get("flow_run_id") else ""
    return (f"{who}(pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started_at')}: "
            f"{holder.get('command')})")


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 65536).decode("utf-8") or "{}")
    except (ValueError, OSError):
        return {}


def lock_path(name: str, root: str | Path = ".") -> Path:
    return Path(root) / LOCK_DIR / name


def stage_lock_name(out_dir: str | Path) -> str:
    return "stage-" + (Path(out_dir).as_posix().strip("/").replace("/", "--") or "out") + ".lock"


@contextlib.contextmanager
def exclusive(path: Path, *, what: str, holder: dict | None = None) -> Iterator[None]:
    """Hold ``path`` exclusively while the block runs; BusyError naming the holder if another has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(f"{what} is in use by {describe(_read_holder(fd))}; wait for it to finish "
                            "or stop it") from None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(holder or holder_record()).encode("utf-8"))
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _busy_holder(path: Path) -> dict | None:
    """The record of whoever holds ``path`` exclusively, or None when nobody does."""
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def check_checkout_free(root: str | Path = ".", env: Mapping[str, str] = os.environ) -> None:
    """BusyError when a flow run holds this checkout and we are not one of its stages."""
    holder = _busy_holder(lock_path(CHECKOUT_LOCK, root))
    if holder is None:
        return
    if holder.get("flow_run_id") and holder.get("flow_run_id") == env.get(ENV_FLOW_RUN):
        return  # a stage of the flow run that holds the checkout
    raise BusyError(f"checkout {Path(root).resolve()} is in use by {describe(holder)}; wait for it "
                    "to finish or stop it")


@contextlib.contextmanager
def stage_run(out_dir: str | Path, *, section: str, root: str | Path = ".",
              env: Mapping[str, str] = os.environ) -> Iterator[None]:
    """What a stage command holds while it runs: the checkout must be free (or ours), ``out_dir`` ours alone."""
    check_checkout_free(root, env)
    with exclusive(lock_path(stage_lock_name(out_dir), root), what=f"{section}.out_dir {out_dir}",
                   holder=holder_record(flow_run_id=env.get(ENV_FLOW_RUN))):
        yield


@contextlib.contextmanager
def checkout_run(root: str | Path, *, flow_run_id: str) -> Iterator[None]:
    """What a flow run holds for its whole run: the checkout (already ours when a d1-full run dispatches a
    stage to a d1-stage run in the same checkout: that one goes ahead under the caller's lock)."""
    holder = _busy_holder(lock_path(CHECKOUT_LOCK, root))
    if holder is not None and flow_run_id and holder.get("flow_run_id") == flow_run_id:
        yield
        return
    with exclusive(lock_path(CHECKOUT_LOCK, root), what=f"checkout {Path(root).resolve()}",
                   holder=holder_record(flow_run_id=flow_run_id)):
        yield
