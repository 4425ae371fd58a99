"""STYLE.md section 12: imports point down only.  The import graph of minibt/, built from the AST
with type-only imports (``if TYPE_CHECKING:``) and function-level imports included, has no cycle;
the torrent layer's parts reach neither the torrent nor the session; no module is over 800 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "minibt"

# The torrent layer's parts: each appends effects to the list its caller passes (effects.py) and
# knows nothing above it, so none may import the torrent or the session (ARCHITECTURE.md).
# The magnet fetch is a part too (STYLE.md section 12), though the session drives it like a torrent.
PARTS = ("checker", "dialer", "download", "extension", "magnetfetch", "superseed", "upload")
# The torrent owns the parts: it returns their effects and never imports the session.
OWNERS = ("torrent",)
MAX_MODULE_LINES = 800  # issue 11: no module over ~800 lines


def import_graph(pkg: Path, package: str = "minibt") -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body (``__init__`` left out)."""
    modules = {p.stem for p in pkg.glob("*.py")} - {"__init__"}
    graph: dict[str, set[str]] = {}
    for mod in sorted(modules):
        path = pkg / f"{mod}.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level == 1:
                    base = package + ("." + base if base else "")
                elif node.level > 1:
                    continue
                if base == package:  # from minibt import wire_codec
                    targets = [f"{package}.{a.name}" for a in node.names]
                else:
                    targets = [base]
            for t in targets:
                parts = t.split(".")
                if parts[0] == package and len(parts) > 1 and parts[1] in modules and parts[1] != mod:
                    deps.add(parts[1])
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: set[str] = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return seen


def test_no_import_cycle() -> None:
    found = cycles(import_graph(PKG))
    assert found == [], f"import cycle(s): {[sorted(c) for c in found]}"


def test_parts_never_reach_the_torrent_or_the_session() -> None:
    graph = import_graph(PKG)
    for part in PARTS:
        assert part in graph, f"{part}.py is gone: update PARTS"
        bad = reaches(graph, part) & {"torrent", "session", "handles", "client", "loop"}
        assert not bad, f"{part}.py imports (perhaps indirectly) {sorted(bad)}: parts return effects instead"
    for owner in OWNERS:
        assert "session" not in reaches(graph, owner), f"{owner}.py reaches session.py: owners return effects"


def test_no_module_is_over_the_line_limit() -> None:
    long = {p.name: n for p in sorted(PKG.glob("*.py")) if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_part_check_sees_an_indirect_import(tmp_path: Path) -> None:
    (tmp_path / "upload.py").write_text("from minibt import helper\n")
    (tmp_path / "helper.py").write_text("from minibt.session import Session\n")
    (tmp_path / "session.py").write_text("")
    assert "session" in reaches(import_graph(tmp_path), "upload")


def test_cycle_finder_sees_type_only_and_nested_imports(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from minibt.b import B\n")
    (tmp_path / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from minibt.c import C\n"
    )
    (tmp_path / "c.py").write_text("def f():\n    from minibt import a\n")
    (tmp_path / "d.py").write_text("from .a import A\n")
    assert cycles(import_graph(tmp_path)) == [{"a", "b", "c"}]
