"""One direction of dependency: `cascades` never imports `iosim`."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cascades_never_imports_iosim():
    offenders = []
    for path in (ROOT / "cascades").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                          if n == "iosim" or n.startswith("iosim.")]
    assert offenders == []
