"""Who produced a stage's outputs: a ``provenance.json`` record per stage run.

Every ``d1 <stage>`` command run writes, after the stage succeeded, one record:
``<out_dir>/provenance.json`` by default; dvc.yaml names a file of its own per
stage (``--provenance outputs/provenance/<stage>.json``, an out of the stage, so
it travels through the DVC cache and remote, while the stage's output folders
keep hashes that only depend on their content). Fields:

``stage``        the DVC stage name: ``$D1_DVC_STAGE`` (set by the Prefect flow),
                 else ``$DVC_STAGE`` (set by ``dvc repro``), else null
``section``      the params section the stage read (``tiny.sft``)
``command``      the d1 command (``sft``)
``git_commit``   ``git rev-parse HEAD`` of the working directory (null outside git)
``git_dirty``    whether tracked files differed from that commit (null outside git)
``flow_run_id``, ``task_run_id``  ``$D1_FLOW_RUN_ID`` / ``$D1_TASK_RUN_ID`` (null when absent)
``started_at``, ``finished_at``  UTC, ISO 8601
``host``, ``d1_version``, ``argv`` (the value of any credential found in the environment, such as
                 ``AWS_SECRET_ACCESS_KEY`` or ``HF_TOKEN``, is replaced by ``<redacted>``)

The record holds no environment variable but the stage and run ids above: credentials never reach it.

``d1 lineage`` combines these records with dvc.lock (see d1.lineage).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

from d1 import __version__
from d1.config import write_json_atomic

PROVENANCE_FILE = "provenance.json"
ENV_STAGE = "D1_DVC_STAGE"
ENV_DVC_STAGE = "DVC_STAGE"
ENV_FLOW_RUN = "D1_FLOW_RUN_ID"
ENV_TASK_RUN = "D1_TASK_RUN_ID"


#: environment variables whose values are credentials (AWS_SECRET_ACCESS_KEY, HF_TOKEN, PREFECT_API_KEY, ...)
SECRET_ENV_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
REDACTED = "<redacted>"


def secret_values(env: Mapping[str, str] = os.environ) -> list[str]:
    """Values of the credential-like variables of ``env`` (8 characters or more), longest first."""
    found = {v for k, v in env.items() if SECRET_ENV_NAME.search(k) and isinstance(v, str) and len(v) >= 8}
    return sorted(found, key=len, reverse=True)


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every occurrence of a value of ``secrets`` replaced by ``<redacted>``."""
    for value in secrets:
        text = text.replace(value, REDACTED)
    return text


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _git(args: Sequence[str], cwd: str | Path | None) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state(cwd: str | Path | None = None) -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` of the git work tree at ``cwd``."""
    head = _git(["rev-parse", "--verify", "HEAD"], cwd)
    if head is None:
        return {"commit": None, "dirty": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return {"commit": head.strip(), "dirty": None if status is None else bool(status.strip())}


def is_main_process(env: Mapping[str, str] = os.environ) -> bool:
    """False in the non-zero ranks of a multi-process (accelerate/torchrun) launch."""
    try:
        return int(env.get("RANK", "0")) == 0
    except ValueError:
        return True


def make_record(
    *, command: str, section: str | None, started_at: str, finished_at: str | None = None,
    argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ, cwd: str | Path | None = None,
) -> dict:
    """The provenance record of one stage run (see the module docstring for the fields)."""
    git = git_state(cwd)
    secrets = secret_values(env)  # a credential typed on the command line stays out of the record
    return {
        "stage": env.get(ENV_STAGE) or env.get(ENV_DVC_STAGE) or None,
        "section": section,
        "command": command,
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "flow_run_id": env.get(ENV_FLOW_RUN) or None,
        "task_run_id": env.get(ENV_TASK_RUN) or None,
        "started_at": started_at,
        "finished_at": finished_at or utc_now(),
        "host": socket.gethostname(),
        "d1_version": __version__,
        "argv": [redact(str(a), secrets) for a in (sys.argv if argv is None else argv)],
    }


def write_provenance(path: str | Path, record: dict) -> Path:
    """Write ``record`` to ``path`` (a ``.json`` file) or to ``<path>/provenance.json`` (atomically)."""
    path = Path(path)
    if path.suffix != ".json":
        path = path / PROVENANCE_FILE
    write_json_atomic(path, record)
    return path


def read_provenance(path: str | Path) -> dict | None:
    """The record in ``path`` (a provenance.json file or the folder holding one); None if absent
    or unreadable (lineage reports what it can)."""
    path = Path(path)
    if path.is_dir():
        path = path / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
