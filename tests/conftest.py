"""Shared test fixtures. Tests run on CPU, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO / "reference" / "llada-8b-instruct-generations"


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"published generations not found at {REFERENCE_DIR}")
    return REFERENCE_DIR
