"""A throwaway git copy of the working tree, for the end-to-end pipeline tests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

GIT = ["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci"]


def working_tree_copy(repo_root: Path, dst: Path, edit: Callable[[Path], None] | None = None) -> Path:
    """Copy the tracked and new (not ignored) files of ``repo_root`` to ``dst`` without
    dvc.lock, apply ``edit(dst)``, and commit them in a fresh git repository there."""
    if shutil.which("git") is None or not (repo_root / ".git").exists():
        pytest.skip("needs git and a git checkout")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo_root,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = repo_root / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    (dst / "dvc.lock").unlink(missing_ok=True)
    if edit is not None:
        edit(dst)
    subprocess.run(GIT + ["init", "-q"], cwd=dst, check=True)
    subprocess.run(GIT + ["add", "-A"], cwd=dst, check=True)
    subprocess.run(GIT + ["commit", "-qm", "copy of the working tree"], cwd=dst, check=True)
    return dst
