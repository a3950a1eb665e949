"""Fixtures of the flow tests: toy DVC projects (see toy_project.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.flows.toy_project import copy_toy, make_toy


@pytest.fixture(scope="session")
def toy_template(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("toy-template")
    return make_toy(base / "toy", base / "unused-remote", with_flows=True)


@pytest.fixture
def toy(toy_template: Path, tmp_path: Path) -> Path:
    """A fresh toy DVC project (git + DVC, flows/ and prefect.yaml, a local default remote) in tmp_path/toy."""
    return copy_toy(toy_template, tmp_path / "toy", tmp_path / "remote")
