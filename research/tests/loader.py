"""Helpers for the research-script tests: the scripts are files, not a package."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

RESEARCH = Path(__file__).resolve().parents[1]


def load_script(name: str) -> ModuleType:
    """Import ``research/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(name, RESEARCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
