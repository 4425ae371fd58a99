"""STYLE.md section 9 invariant 5: the architecture is enforced by an AST scan of minibt/*.py.

:func:`layering_violations` takes a directory, so the self-tests at the bottom can plant each kind
of violation in a temporary module and show that the scan fails on it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "minibt"

# module name -> the only minibt modules allowed to import it
RESTRICTED: dict[str, set[str]] = {
    "socket": {
        "loop.py",
        "netif.py",  # netif.py: socket options and interface state for the loop
        "trackerio.py",  # trackerio.py: the loop's tracker transactions (HTTP sockets, UDP sends, DNS)
        "udpio.py",  # udpio.py: the loop's UDP reads and sends (GRO/GSO socket options, recvmsg/sendmsg)
        "mmsg.py",  # mmsg.py: udpio's batched reads (recvmmsg), the socket's family and address decoding
    },
    "selectors": {"loop.py", "trackerio.py"},  # trackerio.py: its HTTP sockets in the loop's selector
    "select": {"loop.py"},
    "ssl": {
        "trackerio.py",  # trackerio.py: the default context for HTTPS trackers
        "tracker.py",  # tracker.py uses ssl.MemoryBIO only: no sockets
    },
    "threading": {"workers.py"},
    "concurrent": {"workers.py"},
    "_thread": {"workers.py"},
    "multiprocessing": set(),
    "asyncio": set(),
    "time": {"clock.py"},
    "importlib": set(),  # every import is static, so this scan sees it
    # Processes, signals and the OS's process state: the runner (runner.py, daemon.py) and the CLI own the process.
    "subprocess": {"runner.py"},  # runner.py: the on-complete hook
    "signal": {"daemon.py", "cli.py"},  # SIGINT/SIGTERM/SIGHUP handlers of `run` and `download`/`seed`
    "fcntl": {
        "statusfile.py",  # RunLock: flock() on the state directory's lock file
        "netif.py",  # SIOCGIFFLAGS ioctl: is the bound interface up
    },
    "psutil": {"runner.py", "cli.py"},  # runner: its own RSS; cli `status`: is the runner's pid alive
    "resource": {"procmem.py"},
    "hashlib": {"sha1.py"},  # its fallback; everyone else hashes through sha1.py
    "_hashlib": set(),
    "ctypes": {
        "sha1.py",  # SHA-1 from nettle or libcrypto without initialising OpenSSL (hashlib does: 3.5 MiB)
        "rc4.py",  # RC4 from the same library (MSE/PE)
        "mmsg.py",  # recvmmsg(2): many datagrams per system call while uTP is on
        "procmem.py",  # malloc_trim(3): a torrent's set-up leaves freed heap pages resident
    },
}

# Calls that read the wall or monotonic clock; only clock.py makes them (STYLE.md section 4).
CLOCK_READS = {
    "time.time",
    "time.time_ns",
    "time.monotonic",
    "time.monotonic_ns",
    "time.perf_counter",
    "time.localtime",
    "datetime.datetime.now",
    "datetime.datetime.today",
    "datetime.datetime.utcnow",
    "datetime.date.today",
}
CLOCK_MODULE = "clock.py"


def _module_of(node: ast.ImportFrom, package: str) -> str | None:
    """The absolute module a ``from ... import`` names (relative imports resolved inside the package)."""
    if node.level == 0:
        return node.module
    if node.level == 1:
        return package + ("." + node.module if node.module else "")
    return None


def imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def outside_bindings(tree: ast.AST, package: str = "minibt") -> dict[str, str]:
    """Local name -> dotted name, for every name a module binds by importing from outside the package."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] != package:
                    bound[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            module = _module_of(node, package)
            if module and module.split(".")[0] != package:
                for a in node.names:
                    bound[a.asname or a.name] = f"{module}.{a.name}"
    return bound


def _dotted(node: ast.expr) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _package_aliases(tree: ast.AST, package: str) -> dict[str, str]:
    """Local name -> module inside the package (``import minibt.clock as c``, ``from minibt import clock``)."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == package:
                    aliases[a.asname or package] = a.name if a.asname else package
        elif isinstance(node, ast.ImportFrom) and _module_of(node, package) == package:
            for a in node.names:
                aliases[a.asname or a.name] = f"{package}.{a.name}"
    return aliases


def file_violations(path: Path, outside: dict[str, dict[str, str]], package: str = "minibt") -> list[str]:
    """What one module does against the layering rules; ``outside``: each package module's outside_bindings."""
    tree = ast.parse(path.read_text(), str(path))
    name = path.name
    bad: list[str] = []
    for mod in sorted(imported_roots(tree)):
        if mod in RESTRICTED and name not in RESTRICTED[mod]:
            bad.append(f"{name} imports {mod}; only {sorted(RESTRICTED[mod])} may")
    local = outside_bindings(tree, package)
    aliases = _package_aliases(tree, package)
    for node in ast.walk(tree):
        # __import__("socket") / builtins.__import__: a dynamic import this scan could not see
        if (isinstance(node, ast.Name) and node.id == "__import__") or (
            isinstance(node, ast.Attribute) and node.attr == "__import__"
        ):
            bad.append(f"{name}:{node.lineno} uses __import__")
        # from minibt.loop import socket: an outside module reached through a package module
        if isinstance(node, ast.ImportFrom):
            module = _module_of(node, package)
            if module and module.startswith(package + "."):
                via = outside.get(module.split(".")[1], {})
                for a in node.names:
                    if a.name in via:
                        bad.append(f"{name}:{node.lineno} takes {via[a.name]} from {module}")
        if isinstance(node, ast.Attribute):
            parts = _dotted(node)
            if parts is None:
                continue
            # minibt.clock.time / clock.time: the same, through an attribute
            head = aliases.get(parts[0])
            if head is not None:
                dotted = head.split(".") + parts[1:]
                if len(dotted) >= 3 and dotted[2] in outside.get(dotted[1], {}):
                    bad.append(f"{name}:{node.lineno} reaches {outside[dotted[1]][dotted[2]]} through {package}.{dotted[1]}")
            # datetime.now() / time.time() outside clock.py
            elif name != CLOCK_MODULE and parts[0] in local:
                full = ".".join([local[parts[0]], *parts[1:]])
                if full in CLOCK_READS:
                    bad.append(f"{name}:{node.lineno} reads the clock ({full}); only {CLOCK_MODULE} may")
        elif isinstance(node, ast.Name) and name != CLOCK_MODULE and local.get(node.id) in CLOCK_READS:
            bad.append(f"{name}:{node.lineno} reads the clock ({local[node.id]}); only {CLOCK_MODULE} may")
    return bad


def layering_violations(pkg: Path, package: str = "minibt") -> list[str]:
    """Every layering violation in the modules of directory ``pkg`` (imported as ``package``)."""
    files = sorted(pkg.glob("*.py"))
    trees = {p.stem: ast.parse(p.read_text(), str(p)) for p in files}
    outside = {stem: outside_bindings(tree, package) for stem, tree in trees.items()}
    bad: list[str] = []
    for path in files:
        bad += file_violations(path, outside, package)
    return bad


def module_files() -> list[Path]:
    return sorted(PKG.glob("*.py"))


def test_package_respects_layering() -> None:
    assert layering_violations(PKG) == []


def test_scan_detects_a_forbidden_import() -> None:
    tree = ast.parse("import socket\nfrom time import monotonic\n")
    assert {"socket", "time"} <= imported_roots(tree)


def test_package_never_imports_tools() -> None:
    for path in module_files():
        roots = imported_roots(ast.parse(path.read_text()))
        assert "tools" not in roots, path.name


# A module of the package that legitimately imports what the planted modules then try to reach.
_LOOP = "import socket\nimport selectors\n"
_CLOCK = "import time\nimport datetime\n"

PLANTED = {
    "import_socket": "import socket\n",
    "from_time": "from time import monotonic\n",
    "importlib": "import importlib\nm = importlib.import_module('socket')\n",
    "from_importlib": "from importlib import import_module\n",
    "dunder_import": "m = __import__('socket')\n",
    "builtins_import": "import builtins\nm = builtins.__import__('socket')\n",
    "via_from": "from minibt.loop import socket\n",
    "via_relative": "from .loop import selectors\n",
    "via_attribute": "import minibt.clock\nt = minibt.clock.time.monotonic()\n",
    "via_module_alias": "from minibt import clock\nt = clock.time.monotonic()\n",
    "datetime_now": "import datetime\nt = datetime.datetime.now()\n",
    "datetime_today": "from datetime import date\nt = date.today()\n",
    "datetime_alias": "from datetime import datetime as dt\nt = dt.now()\n",
    "time_time_name": "from time import time\nt = time()\n",
    "subprocess": "import subprocess\n",
    "signal": "from signal import SIGTERM\n",
    "fcntl": "import fcntl\n",
    "psutil": "def f():\n    import psutil\n    return psutil\n",
    "resource": "import resource\n",
}


@pytest.mark.parametrize("planted", sorted(PLANTED))
def test_scan_fails_on_a_planted_violation(tmp_path: Path, planted: str) -> None:
    (tmp_path / "loop.py").write_text(_LOOP)
    (tmp_path / "clock.py").write_text(_CLOCK)
    assert layering_violations(tmp_path) == []
    (tmp_path / f"{planted}.py").write_text(PLANTED[planted])
    found = layering_violations(tmp_path)
    assert found and all(v.startswith(f"{planted}.py") for v in found), found


def test_scan_allows_the_listed_modules(tmp_path: Path) -> None:
    (tmp_path / "statusfile.py").write_text("import fcntl\n")
    (tmp_path / "runner.py").write_text("import subprocess\nimport psutil\n")
    (tmp_path / "daemon.py").write_text("import signal\n")
    (tmp_path / "clock.py").write_text("import time\nimport datetime\nt = time.time()\nd = datetime.datetime.now()\n")
    (tmp_path / "metainfo.py").write_text("import datetime\nd = datetime.datetime.fromtimestamp(0)\n")
    assert layering_violations(tmp_path) == []
