"""STYLE.md section 12, "one home per name": every name is imported from the module that defines it.

No module re-exports another's names for convenience (``minibt/__init__.py`` alone re-exports the
public API, h11 style), and a public module-level name is defined in one module only.  An AST scan of
minibt/, tests/ and tools/, like test_layering.py.
"""

from __future__ import annotations

import ast
import collections
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "minibt"

# Public names defined in more than one minibt module, each a different thing that only shares a
# name.  Everything else public is defined once; add here only with a reason.
SHARED_NAMES = {
    "Event": "events.Event is the public event record; handshake/wire_codec.Event is each machine's event union",
    "Peer": "handles.Peer is the public peer handle; picker/superseed.Peer is their opaque peer key type",
    "encode": "bencode.encode / wire_codec.encode / krpc.encode: each codec's verb, called module-qualified (STYLE.md 5)",
    "decode": "bencode.decode / wire_codec.decode / krpc.decode: as encode",
    "Message": "wire_codec.Message: the peer-wire message union; krpc.Message: the KRPC (DHT) message union",
    "describe": "metainfo.describe prints a torrent; faults.describe names an exception",
    "IDLE_TIMEOUT_S": "wire: no bytes at all for 180 s; torrent: neither side interested for 180 s",
    "MAX_OUTBOX_BYTES": "wire: the per-connection soft cap; budget: the TorrentConfig default it plans with",
    "MAX_FAILS": "dialer: failed dials before a candidate is forgotten; routing: unanswered DHT queries before a node is bad",
    "MiB": "a unit multiplier, spelled out where sizes are written (budget.py, metainfo.py)",
    "KiB": "a unit multiplier, spelled out where sizes are written (budget.py, utp_config.py)",
    "parse_peer_addr": "pex: IP-literal PEX entries; config: the config file's peers; both call urls.parse_host_port",
    "parse_port": "cli: the argparse type for --port (0 = any); urls: a URL or peer port 1..65535",
    "parse_rate": "cli: the argparse type; it calls units.parse_rate",
    "parse_size": "cli: the argparse type; it calls units.parse_size",
    "TYPE_CHECKING": "typing's constant, spelled `TYPE_CHECKING = False` in each module that guards imports for mypy "
                     "(which reads the name), so that no module loads typing at run time (test_lazy_imports.py)",
}


def py_files() -> list[Path]:
    files = sorted(PKG.glob("*.py"))
    for d in ("tests", "tools"):
        files += sorted((ROOT / d).rglob("*.py"))
    return files


def _top_level(tree: ast.Module) -> Iterator[ast.stmt]:
    """Module-level statements, including those inside top-level ``if``/``try`` blocks."""
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, ast.If):
            todo[:0] = node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo[:0] = node.body + [s for h in node.handlers for s in h.body] + node.orelse + node.finalbody
        else:
            yield node


def defined_names(tree: ast.Module) -> set[str]:
    """Names a module defines itself (not the ones it imports)."""
    names: set[str] = set()
    for node in _top_level(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


@functools.cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


@functools.cache
def _package_defs() -> dict[str, set[str]]:
    return {p.stem: defined_names(_parse(p)) for p in PKG.glob("*.py")}


@functools.cache
def _public_api() -> set[str]:
    for node in _parse(PKG / "__init__.py").body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError("minibt/__init__.py has no __all__")


def misplaced_imports(path: Path, defs: dict[str, set[str]], api: set[str]) -> list[str]:
    """Each ``from minibt.M import Y`` (or ``M.Y`` through ``from minibt import M``) whose Y M does not define."""
    tree = _parse(path)
    in_pkg = path.parent == PKG
    aliases: dict[str, str] = {}  # local name -> minibt module
    bad: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and in_pkg and node.module:
                module = "minibt." + node.module
            elif node.level == 0 and node.module:
                module = node.module
            else:
                continue
            if module == "minibt":
                for a in node.names:
                    if a.name in defs:
                        aliases[a.asname or a.name] = a.name
                    elif a.name not in api and a.name != "__version__":
                        bad.append(f"line {node.lineno}: minibt.{a.name} is not public API")
            elif module.startswith("minibt."):
                stem = module.split(".", 1)[1]
                for a in node.names:
                    if stem in defs and a.name not in defs[stem]:
                        bad.append(f"line {node.lineno}: {a.name} is not defined in {module}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("minibt.") and a.asname:
                    aliases[a.asname] = a.name.split(".", 1)[1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            stem = aliases[node.value.id]
            if node.attr not in defs.get(stem, set()):
                bad.append(f"line {node.lineno}: {node.value.id}.{node.attr} is not defined in minibt.{stem}")
    return bad


def reexport_idioms(path: Path) -> list[str]:
    """``__all__``, ``import X as X`` and a module ``__getattr__``: the ways a module re-exports."""
    bad: list[str] = []
    tree = _parse(path)
    for node in _top_level(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for a in node.names:
                if a.asname is not None and a.asname == a.name.rsplit(".", 1)[-1]:
                    bad.append(f"line {node.lineno}: '{a.name} as {a.asname}' re-exports")
        elif isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            bad.append(f"line {node.lineno}: module __getattr__")
    if "__all__" in defined_names(tree):
        bad.append("__all__ outside minibt/__init__.py")
    return bad


def duplicate_public_names(pkg: Path) -> dict[str, list[str]]:
    where: dict[str, list[str]] = collections.defaultdict(list)
    for path in sorted(pkg.glob("*.py")):
        if path.name != "__init__.py":
            for name in defined_names(_parse(path)):
                if not name.startswith("_") and name != "log":
                    where[name].append(path.stem)
    return {name: mods for name, mods in where.items() if len(mods) > 1}


@pytest.mark.parametrize("path", py_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_names_are_imported_from_their_home(path: Path) -> None:
    assert misplaced_imports(path, _package_defs(), _public_api()) == []


@pytest.mark.parametrize("path", sorted(PKG.glob("*.py")), ids=lambda p: p.name)
def test_no_module_reexports(path: Path) -> None:
    if path.name != "__init__.py":
        assert reexport_idioms(path) == []


def test_public_names_are_defined_once() -> None:
    dups = duplicate_public_names(PKG)
    assert {name: mods for name, mods in dups.items() if name not in SHARED_NAMES} == {}
    assert sorted(set(SHARED_NAMES) - set(dups)) == [], "SHARED_NAMES lists a name that is no longer shared"


def test_checks_catch_a_reexport(tmp_path: Path) -> None:
    (tmp_path / "home.py").write_text("from other import Thing as Thing\nX = 1\n__all__ = ['Thing']\n")
    (tmp_path / "user.py").write_text("from minibt.wire import Interested\nfrom minibt import wire as w\nw.Have\n")
    (tmp_path / "dup.py").write_text("X = 2\n")
    assert len(reexport_idioms(tmp_path / "home.py")) == 2
    defs = _package_defs()
    assert len(misplaced_imports(tmp_path / "user.py", defs, _public_api())) == 2
    assert duplicate_public_names(tmp_path) == {"X": ["dup", "home"]}
