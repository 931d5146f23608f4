"""Imports point one way: the app factory mounts the API and the console side by side;
neither imports the other, and nothing below them imports either (issue 9, part 6)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "callcenter"

# package or module (dotted, relative to callcenter) -> prefixes it may not import
FORBIDDEN = {
    "console": ("callcenter.api", "callcenter.web.app"),
    "api": ("callcenter.console", "callcenter.web.app"),
    "web.http": ("callcenter.api", "callcenter.console"),
    "web.keys": ("callcenter.api", "callcenter.console"),
    "app": ("callcenter.api", "callcenter.console", "callcenter.web"),
    "events": ("callcenter.api", "callcenter.console", "callcenter.web", "callcenter.app"),
    "service": ("callcenter.api", "callcenter.console", "callcenter.web", "callcenter.app"),
    "cluster": ("callcenter.api", "callcenter.console", "callcenter.web", "callcenter.app", "callcenter.service"),
    "cases": ("callcenter.api", "callcenter.console", "callcenter.web", "callcenter.app", "callcenter.db",
              "callcenter.service"),
}


def _modules(name: str) -> list[Path]:
    path = ROOT.joinpath(*name.split("."))
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("name", sorted(FORBIDDEN))
def test_imports_point_one_way(name: str) -> None:
    modules = _modules(name)
    assert modules and all(m.exists() for m in modules), name
    bad = [f"{m.relative_to(ROOT.parent)} imports {imported}"
           for m in modules for imported in sorted(_imports(m))
           if any(imported == p or imported.startswith(p + ".") for p in FORBIDDEN[name])]
    assert bad == []


def test_only_the_factory_mounts_both() -> None:
    assert {"callcenter.api", "callcenter.console"} <= _imports(ROOT / "web" / "app.py")
