"""Durable copies of a run's checkpoints: a folder or ``s3://bucket/prefix`` that outlives the machine.

``checkpoint_store`` (params) names it; each checkpoint is copied there right
after it is written, ``complete.json`` last, so a copy cut short is never
taken as complete. A run that finds no local checkpoint newer than the
store's newest (a fresh machine after a preemption) downloads that one first
and resumes from it. The layout mirrors the local one:
``<store>/<out_dir as one name>/<fingerprint>/step-N/...``. S3 goes through
s3fs with the ``AWS_*`` environment variables (``d1.data.io.s3_filesystem``);
credentials are never written anywhere.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from d1.errors import ConfigError

COMPLETE = "complete.json"
STEP_PREFIX = "step-"


class CheckpointStore:
    """The store's folder for one run (``run_path``: ``<out_dir name>/<fingerprint>``)."""

    def __init__(self, url: str, run_path: str):
        if url.startswith("s3://"):
            from d1.data.io import s3_filesystem

            self.fs = s3_filesystem()
            self.base = f"{url[len('s3://'):].rstrip('/')}/{run_path}"
        elif "://" in url:
            raise ConfigError(f"checkpoint_store {url!r}: expected a folder or s3://bucket/prefix")
        else:
            import fsspec

            self.fs = fsspec.filesystem("file")
            self.base = f"{Path(url).resolve().as_posix()}/{run_path}"
        self.url = url

    def _step_dir(self, step: int) -> str:
        return f"{self.base}/{STEP_PREFIX}{step}"

    def steps(self) -> list[int]:
        """Steps with a complete copy in the store, ascending."""
        try:
            entries = self.fs.ls(self.base, detail=False)
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(STEP_PREFIX) and name[len(STEP_PREFIX):].isdigit():
                if self.fs.exists(f"{entry.rstrip('/')}/{COMPLETE}"):
                    found.append(int(name[len(STEP_PREFIX):]))
        return sorted(found)

    def upload(self, step: int, folder: Path) -> None:
        """Copy a complete local checkpoint; its ``complete.json`` goes last."""
        target = self._step_dir(step)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        for path in sorted(files, key=lambda p: p.name == COMPLETE):
            remote = f"{target}/{path.relative_to(folder).as_posix()}"
            self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(path), remote)

    def download(self, step: int, root: Path) -> Path:
        """Fetch the store's ``step-N`` into ``root`` (under a temporary name, then renamed)."""
        source = self._step_dir(step)
        final = root / f"{STEP_PREFIX}{step}"
        tmp = root / f".{STEP_PREFIX}{step}.download"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for remote in self.fs.find(source):
            rel = remote[len(source.rstrip("/")) + 1:] if remote.startswith(source) else remote.split(
                f"{STEP_PREFIX}{step}/", 1)[-1]
            local = tmp / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(remote, str(local))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        return final

    def prune(self, keep: set[int]) -> None:
        """Remove the store's copies of steps no longer kept locally."""
        for step in self.steps():
            if step not in keep:
                self.fs.rm(self._step_dir(step), recursive=True)
