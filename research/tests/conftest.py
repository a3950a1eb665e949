"""Tests of the research scripts: CPU, offline, as the main suite (tests/conftest.py is not loaded here).

Not part of the default run (pyproject's testpaths is tests/): ``.venv/bin/python -m pytest research/tests -q``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
