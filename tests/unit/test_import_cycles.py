"""STYLE.md section 12: imports point down only.  The import graph of minibt/, built from the AST
with type-only imports (``if TYPE_CHECKING:``) and function-level imports included, has no cycle
outside the one known cycle that issue 11 is breaking up."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "minibt"

# The torrent layer still calls back up (parts hold their torrent, the torrent its session).
# Issue 11 breaks this cycle: remove each module from this set as it stops taking part, and never
# add one.  The test fails if a cycle appears outside this set, or if the set names a module that
# is no longer in the cycle (so the list only shrinks).
KNOWN_CYCLE_TO_BREAK_IN_ISSUE_11 = frozenset(
    {
        "candidates",
        "dialer",
        "download",
        "events",
        "exchange",
        "extension",
        "magnetfetch",
        "peer",
        "session",
        "superseeding",
        "torrent",
        "upload",
    }
)


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


def test_no_import_cycle_outside_the_known_one() -> None:
    found = cycles(import_graph(PKG))
    unknown = [sorted(c) for c in found if not c <= KNOWN_CYCLE_TO_BREAK_IN_ISSUE_11]
    assert unknown == [], f"new import cycle(s): {unknown}"


def test_known_cycle_only_shrinks() -> None:
    in_cycles = set().union(*cycles(import_graph(PKG)))
    gone = sorted(KNOWN_CYCLE_TO_BREAK_IN_ISSUE_11 - in_cycles)
    assert gone == [], f"no longer in a cycle, remove from KNOWN_CYCLE_TO_BREAK_IN_ISSUE_11: {gone}"


def test_cycle_finder_sees_type_only_and_nested_imports(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from minibt.b import B\n")
    (tmp_path / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from minibt.c import C\n"
    )
    (tmp_path / "c.py").write_text("def f():\n    from minibt import a\n")
    (tmp_path / "d.py").write_text("from .a import A\n")
    assert cycles(import_graph(tmp_path)) == [{"a", "b", "c"}]
