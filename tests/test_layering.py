"""The library ``d1`` imports neither Prefect nor DVC (nor the orchestration in flows/ and infra/)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("prefect", "dvc", "dvclive", "flows", "infra")

# Import every d1 module with the forbidden top-level packages made unimportable.
IMPORT_ALL = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    # None in sys.modules: `import X` raises ImportError, importlib.util.find_spec(X) says "not installed".
    for name in sys.argv[1].split(","):
        sys.modules[name] = None
    import d1
    names = sorted(m.name for m in pkgutil.walk_packages(d1.__path__, "d1."))
    for name in names:
        importlib.import_module(name)
    print(len(names), "modules")
    """
)


def test_every_d1_module_imports_without_prefect_or_dvc():
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL, ",".join(FORBIDDEN)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    count = int(done.stdout.split()[0])
    assert count >= 40, done.stdout  # the walk really found the package's modules


def test_the_refusing_importer_does_refuse():
    # The same harness on a snippet that imports prefect must fail: the check above can fail.
    probe = IMPORT_ALL.replace("import d1\n", "import prefect\nimport d1\n")
    done = subprocess.run([sys.executable, "-c", probe, ",".join(FORBIDDEN)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "import of prefect halted" in done.stderr


def test_no_d1_source_line_imports_them_even_lazily():
    # Function-level imports do not run on import; the source says what they would load.
    pattern = re.compile(r"^\s*(?:import|from)\s+(" + "|".join(FORBIDDEN) + r")\b")
    hits = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
            for path in sorted((REPO / "d1").rglob("*.py"))
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if pattern.match(line)]
    assert hits == []
