"""STYLE.md section 9 invariant 5: the architecture is enforced by an AST scan of minibt/*.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "minibt"

# module name -> the only minibt module allowed to import it
RESTRICTED = {
    "socket": {"loop.py", "netif.py"},  # netif.py: socket options and interface state for the loop
    "selectors": {"loop.py"},
    "select": {"loop.py"},
    "ssl": {"loop.py", "tracker.py"},  # tracker.py uses ssl.MemoryBIO only: no sockets
    "threading": {"hasher.py"},
    "concurrent": {"hasher.py"},
    "_thread": {"hasher.py"},
    "multiprocessing": set(),
    "asyncio": set(),
    "time": {"clock.py"},
}


def imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def module_files() -> list[Path]:
    return sorted(PKG.glob("*.py"))


@pytest.mark.parametrize("path", module_files(), ids=lambda p: p.name)
def test_module_respects_io_layering(path: Path) -> None:
    roots = imported_roots(ast.parse(path.read_text(), str(path)))
    for mod, allowed in RESTRICTED.items():
        if mod in roots:
            assert path.name in allowed, f"{path.name} imports {mod}; only {sorted(allowed)} may"


def test_scan_detects_a_forbidden_import() -> None:
    tree = ast.parse("import socket\nfrom time import monotonic\n")
    assert {"socket", "time"} <= imported_roots(tree)


def test_package_never_imports_tools() -> None:
    for path in module_files():
        roots = imported_roots(ast.parse(path.read_text()))
        assert "tools" not in roots, path.name
