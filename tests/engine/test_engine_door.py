"""The server reaches the engine through its one door, ``shoal.engine``: no module of
``shoal.server`` imports a module under it, and none reads the engine's parts."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import shoal.engine

SERVER = Path(__file__).resolve().parents[2] / "src" / "shoal" / "server"


def test_the_server_imports_only_the_engines_door() -> None:
    bad = []
    for path in sorted(SERVER.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "shoal.engine."):
                bad.append(f"{path.name}:{node.lineno} from {node.module}")
            if isinstance(node, ast.Import):
                bad += [f"{path.name}:{node.lineno} import {a.name}" for a in node.names
                        if a.name.startswith("shoal.engine.")]
    assert bad == []


def test_the_server_reads_none_of_the_engines_parts() -> None:
    parts = ("auth", "names", "transactions", "catalog", "memory", "health", "lifecycle",
             "quotas", "registry", "_registry", "disk", "lease", "store")
    found = [f"{path.name}: engine.{m.group(1)}" for path in sorted(SERVER.glob("*.py"))
             for m in re.finditer(r"\bengine\.(\w+)\b", path.read_text())
             if m.group(1) in parts]
    assert found == []


def test_the_door_exports_what_it_names() -> None:
    assert all(hasattr(shoal.engine, name) for name in shoal.engine.__all__)
