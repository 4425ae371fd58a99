"""Peak memory (issue 15): a command loads only what it uses.

`minibt download` of a .torrent with --no-dht runs in a fresh interpreter (no peer, a short --timeout)
and must not have loaded the DHT node's modules, ssl (only an https tracker needs it), the TOML parser
and config checker (only config files), datetime (only `minibt info` shows dates), tempfile or shutil
(with zlib, bz2 and lzma: resume files are written without them), unicodedata (only for non-ASCII
names on Windows rules), base64 with binascii (only a base32 magnet link needs them), hashlib (its ``_hashlib`` initialises all of OpenSSL: 3.5 MiB; sha1.py calls
nettle's or libcrypto's SHA-1 through ctypes instead), with ``--encryption none`` MSE/PE, or with
``--transport tcp`` the uTP machines and codec, nor ``inspect`` with ``ast`` and ``dis`` (``dataclasses`` imports it
to write docstrings, and the program, ``minibt.__main__.run``, defers it: every minibt dataclass has a
docstring), nor what a real ``traceback`` brings (``logging`` imports it to format exceptions; the program
defers it too), nor ``locale`` (argparse looks its messages up through ``gettext``, which imports it; the program gives
argparse plain ones), nor the ``idna`` codec (a host name to resolve goes to ``getaddrinfo`` as ASCII bytes).  The
same download with the DHT on, the default encryption policy and the default
transports does load the DHT modules, MSE and uTP, and without the program's preparation inspect and
locale, so the check can fail.

Nor may a download call ``compile()``: the first call builds the interpreter's AST types (0.2 MiB of RSS).
``typing.NamedTuple`` compiles every string annotation into a ``typing.ForwardRef``; minibt's named tuples
are ``collections.namedtuple`` at run time (utp_codec.py), and the download must make no ``ForwardRef``.
No download loads ``typing`` at all (0.47 MiB): minibt imports it only under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
import subprocess
import sys
import typing
from pathlib import Path

import minibt
from minibt.metainfo import create_torrent

ROOT = str(Path(__file__).resolve().parents[2])
DHT_MODULES = ("minibt.dht", "minibt.krpc", "minibt.routing", "minibt.dhtstore", "minibt.dhtservice")
# a magnet link's metadata fetch (BEP 9): not for a .torrent, with or without the DHT (0.1 MiB with dhtservice)
MAGNET_MODULES = ("minibt.magnetfetch", "minibt.fetchlink")
# BEP 9's codec and server: loaded by a magnet link or the first ut_metadata message a peer sends (0.1 MiB)
METADATA_MODULES = ("minibt.metadata",)
SUPERSEED_MODULES = ("minibt.superseed",)  # BEP 16's bookkeeping: only once a torrent super-seeds (0.09 MiB)
# sizes, rates and durations on the command line (--timeout, --up-limit, --cache) are read by
# minibt.units, not by the config checker with fractions and decimal (0.8 MiB)
NEVER_FOR_A_DOWNLOAD = ("ssl", "_ssl", "tomllib", "minibt.runner", "minibt.daemon", "minibt.configfile", "fractions",
                        "decimal", "hashlib", "_hashlib", "base64", "binascii")

# Runs the CLI in this interpreter, then prints the modules it loaded.  ``shutil`` is recorded when
# the transfer starts (the first tick); the end-of-run resume save has been written by the end.
DRIVER = r"""
import sys, io, contextlib
if sys.argv[1] == "defer":
    from minibt.__main__ import prepare
    prepare()  # what the program does first
del sys.argv[1]
import minibt.cli as cli
seen = {}
from minibt.client import Client
run = Client.run
def spy(self, *a, **kw):
    seen["at_start"] = sorted(sys.modules)
    import gc
    typing = sys.modules.get("typing")  # not loaded by minibt: then there is no ForwardRef either
    seen["forward_refs"] = 0 if typing is None else sum(type(o) is typing.ForwardRef for o in gc.get_objects())
    return run(self, *a, **kw)
Client.run = spy
code = cli.main(sys.argv[1:])
print("START " + " ".join(seen["at_start"]))
print("FORWARDREFS", seen["forward_refs"])
print("END " + " ".join(sorted(sys.modules)))
print("EXIT", code)
"""


def _download_modules(tmp_path: Path, *extra: str, defer: bool = True) -> tuple[set[str], set[str]]:
    start, end, _ = _download_run(tmp_path, *extra, defer=defer)
    return start, end


def _download_run(tmp_path: Path, *extra: str, defer: bool = True) -> tuple[set[str], set[str], int]:
    """The modules loaded when the transfer started and at the end, and the ForwardRefs made by the start."""
    data = tmp_path / "data.bin"
    data.write_bytes(b"x" * 100_000)
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(create_torrent(str(data), piece_length=16384))
    argv = [sys.executable, "-c", DRIVER, "defer" if defer else "as-is", "download", str(torrent), "--dir", str(tmp_path / "out"),
            "--bind", "127.0.0.1", "--port", "0", "--quiet", "--state-dir", str(tmp_path / "state"),
            "--peer", "127.0.0.1:9", *extra]
    # --timeout 0.3s: the download gives up (exit 1) with no peer to fetch from
    out = subprocess.run([*argv, "--timeout", "0.3"], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": ROOT, "MINIBT_DHT_BOOTSTRAP": ""}, cwd=str(tmp_path))
    lines = {line.split(" ", 1)[0]: line for line in out.stdout.splitlines()}
    assert "START" in lines and "END" in lines, out.stderr[-2000:]
    assert lines["EXIT"] == "EXIT 1", out.stderr[-2000:]
    return set(lines["START"].split()[1:]), set(lines["END"].split()[1:]), int(lines["FORWARDREFS"].split()[1])


PLAINTEXT_NEVER = ("shutil", "tempfile", "zlib", "bz2", "lzma", "datetime", "unicodedata", "minibt.mse",
                   "minibt.rc4", "encodings.idna", "stringprep")
# minibt imports typing only for mypy (under TYPE_CHECKING): 0.47 MiB of RSS, in no download at all
NEVER_AT_ALL = ("typing",)
GETTEXT_CHAIN = ("locale",)  # argparse's message lookups import it; minibt.__main__ gives it plain messages
INSPECT_CHAIN = ("ast", "dis")  # what a real ``inspect`` brings; minibt.__main__ defers it
TRACEBACK_CHAIN = ("linecache", "tokenize", "textwrap")  # what a real ``traceback`` brings; deferred as well
UTP_MODULES = ("minibt.utp", "minibt.utp_mux", "minibt.utp_peers", "minibt.utp_mtu", "minibt.utp_config",
               "minibt.ledbat", "minibt.utp_codec")  # not with --transport tcp


def test_download_without_dht_loads_no_dht_ssl_toml_or_shutil(tmp_path: Path) -> None:
    start, end = _download_modules(tmp_path, "--no-dht", "--encryption", "none", "--up-limit", "500KiB",
                                   "--cache", "3MiB", "--transport", "tcp")
    assert "minibt.client" in start and "minibt.loop" in start  # the spy saw the transfer start
    assert [m for m in DHT_MODULES + MAGNET_MODULES + METADATA_MODULES + SUPERSEED_MODULES + NEVER_FOR_A_DOWNLOAD
            + PLAINTEXT_NEVER + UTP_MODULES + INSPECT_CHAIN + GETTEXT_CHAIN + TRACEBACK_CHAIN + NEVER_AT_ALL
            if m in end] == []
    assert list((tmp_path / "state").glob("*.resume"))  # the resume file was written (without tempfile)


def test_download_with_dht_loads_the_dht_node(tmp_path: Path) -> None:
    start, end, forward_refs = _download_run(tmp_path, defer=False)
    assert forward_refs == 0  # with every default module loaded (uTP's named tuples among them)
    # as-is: dataclasses, argparse, logging load them
    assert [m for m in INSPECT_CHAIN + GETTEXT_CHAIN + TRACEBACK_CHAIN if m not in start] == []
    assert [m for m in DHT_MODULES if m not in start] == []
    assert [m for m in NEVER_FOR_A_DOWNLOAD + NEVER_AT_ALL if m in end] == []
    assert [m for m in ("minibt.fetchlink", *SUPERSEED_MODULES) if m in end] == []  # no magnet link, no BEP 16
    assert "ctypes" in end and "minibt.mse" in end  # the default policy, preferred, probed the RC4 back end
    assert [m for m in UTP_MODULES if m not in start] == []  # uTP is among the default transports


def _own_classes() -> list[tuple[str, type]]:
    """``(qualified name, class)`` for every class defined in a minibt module (not ``__main__``)."""
    out = []
    for info in pkgutil.iter_modules(minibt.__path__):
        if info.name == "__main__":
            continue
        mod = importlib.import_module(f"minibt.{info.name}")
        out += [(f"{mod.__name__}.{name}", obj) for name, obj in vars(mod).items()
                if isinstance(obj, type) and obj.__module__ == mod.__name__]
    return out


def test_every_minibt_dataclass_has_a_docstring() -> None:
    """Else dataclasses writes one with ``inspect.signature`` and the deferred ``inspect`` loads after all."""
    missing = [name for name, cls in _own_classes()
               if dataclasses.is_dataclass(cls) and (cls.__doc__ or "").startswith(f"{cls.__name__}(")]
    assert missing == []


def test_the_deferred_modules_work_once_used() -> None:
    code = ("import sys; from minibt.__main__ import defer_modules; defer_modules(); import dataclasses, logging;"
            "assert 'ast' not in sys.modules and 'linecache' not in sys.modules;"
            "import inspect; print(inspect.signature(lambda a, b=2: 0));"
            "assert sys.modules['inspect'] is not inspect and type(sys.modules['inspect']).__name__ == 'module';"
            "import traceback; print(traceback.format_exception_only(ValueError('v'))[0].strip());"
            "assert type(sys.modules['traceback']).__name__ == 'module' and 'linecache' in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": ROOT})
    assert out.returncode == 0 and out.stdout.split("\n")[:2] == ["(a, b=2)", "ValueError: v"], out.stderr


def test_a_fault_in_the_program_is_logged_with_its_whole_traceback(tmp_path: Path) -> None:
    """With ``traceback`` deferred, a contained fault (faults.py) still logs every frame and its source line."""
    script = tmp_path / "fault.py"
    script.write_text(
        "import sys\n"
        "from minibt.__main__ import prepare\n"
        "prepare()\n"
        "import logging\n"
        "from minibt.faults import FaultKind, Faults\n"
        "logging.basicConfig(level=logging.ERROR, stream=sys.stdout)\n"
        "assert type(sys.modules['traceback']).__name__ == '_Deferred'\n"
        "def handler():\n"
        "    return {}['missing key']\n"
        "try:\n"
        "    handler()\n"
        "except KeyError as e:\n"
        "    Faults().record(FaultKind.PEER, 'peer 127.0.0.2:6881', e)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr
    assert "Traceback (most recent call last)" in out.stdout and "in handler" in out.stdout
    assert "return {}['missing key']" in out.stdout and "KeyError: 'missing key'" in out.stdout


def test_no_named_tuple_of_minibt_has_a_string_annotation() -> None:
    """``class X(NamedTuple)`` in a module with ``from __future__ import annotations`` makes ForwardRefs (above)."""
    found = [(name, cls) for name, cls in _own_classes() if issubclass(cls, tuple) and hasattr(cls, "_fields")]
    for name, cls in found:
        assert not [f for f, t in cls.__annotations__.items() if isinstance(t, (str, typing.ForwardRef))], name
    assert {"minibt.picker.Block", "minibt.utp_codec.UtpHeader", "minibt.utp_mux.OutDatagram",
            "minibt.utp.DataReceived"} <= {name for name, _ in found}


def test_the_program_s_argparse_messages_read_as_the_library_s() -> None:
    """minibt.__main__ gives argparse its messages without gettext: the program's help and errors are
    word for word what cli.main prints in a process whose argparse still looks them up (no locale there)."""
    code = ("import contextlib, io, sys\n"
            "from minibt import cli\n"
            "for argv in (['--help'], ['download', 'x', '--dir'], ['info'], ['bogus'], ['seed', '--help']):\n"
            "    err, out = io.StringIO(), io.StringIO()\n"
            "    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
            "        cli.main(argv)\n"
            "    print(repr(out.getvalue() + err.getvalue()))\n")
    env = {"PYTHONPATH": ROOT, "COLUMNS": "100"}
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    program = subprocess.run([sys.executable, "-c", "from minibt.__main__ import prepare; prepare()\n" + code],
                             capture_output=True, text=True, timeout=60, env=env)
    assert plain.returncode == 0 and program.returncode == 0, plain.stderr + program.stderr
    assert program.stdout == plain.stdout
    assert "usage: minibt" in plain.stdout and "expected one argument" in plain.stdout


def _typing_imports_outside_type_checking(source: str) -> list[int]:
    """Lines that import typing where it runs (not inside an ``if TYPE_CHECKING:`` block)."""
    import ast

    found: list[int] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                for stmt in child.body:
                    visit_stmt(stmt, True)
                for stmt in child.orelse:
                    visit_stmt(stmt, guarded)
            else:
                visit_stmt(child, guarded)

    def visit_stmt(stmt: ast.AST, guarded: bool) -> None:
        if isinstance(stmt, ast.Import) and any(a.name.split(".")[0] == "typing" for a in stmt.names) and not guarded:
            found.append(stmt.lineno)
        elif isinstance(stmt, ast.ImportFrom) and stmt.module == "typing" and not guarded:
            found.append(stmt.lineno)
        visit(stmt, guarded)

    visit(ast.parse(source), False)
    return found


def test_minibt_imports_typing_only_for_the_type_checker() -> None:
    """A run-time ``typing`` import anywhere in minibt would load it into every command; and with typing
    not loaded, ``dataclass`` takes a ``ClassVar`` annotation (a string here) for a field, so none may be used."""
    pkg = Path(minibt.__file__).parent
    bad = {p.name: lines for p in sorted(pkg.glob("*.py")) if (lines := _typing_imports_outside_type_checking(p.read_text()))}
    assert bad == {}
    assert [p.name for p in sorted(pkg.glob("*.py")) if re.search(r":\s*ClassVar\[", p.read_text())] == []


def test_the_typing_scan_sees_a_run_time_import() -> None:
    assert _typing_imports_outside_type_checking("import typing\n") == [1]
    assert _typing_imports_outside_type_checking("def f():\n    from typing import Any\n") == [2]
    assert _typing_imports_outside_type_checking(
        "TYPE_CHECKING = False\nif TYPE_CHECKING:\n    from typing import Any\nelse:\n    from typing import cast\n") == [5]


# What the commands that only read a file need: none of the transfer's machinery (a `minibt status`
# polled by a monitoring script loaded the whole client, 67 minibt modules, through runner.STATUS_NAME;
# and psutil, 15 ms, to see whether the daemon's pid is alive).
TRANSFER_MODULES = ("minibt.runner", "minibt.client", "minibt.session", "minibt.loop", "minibt.torrent",
                    "minibt.peer", "minibt.wire", "minibt.wire_codec", "minibt.handshake", "psutil", "selectors")

SMALL_DRIVER = r"""
import sys
from minibt.__main__ import run
try:
    code = run(sys.argv[1:])
except SystemExit as e:  # --version: argparse exits
    code = e.code or 0
print("MODULES " + " ".join(sorted(sys.modules)))
print("EXIT", code)
"""


def _small_command(tmp_path: Path, *argv: str) -> tuple[set[str], str]:
    out = subprocess.run([sys.executable, "-c", SMALL_DRIVER, *argv], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": ROOT, "MINIBT_DHT_BOOTSTRAP": ""}, cwd=str(tmp_path))
    lines = {line.split(" ", 1)[0]: line for line in out.stdout.splitlines()}
    assert lines.get("EXIT") == "EXIT 0", out.stderr[-2000:]
    return set(lines["MODULES"].split()[1:]), out.stdout


def test_version_info_and_status_load_none_of_the_transfer_machinery(tmp_path: Path) -> None:
    from minibt.statusfile import STATUS_NAME, write_json_atomic

    data = tmp_path / "data.bin"
    data.write_bytes(b"x" * 100_000)
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(create_torrent(str(data), piece_length=16384))
    state = tmp_path / "state"
    state.mkdir()
    config = tmp_path / "minibt.toml"
    config.write_text(f'[client]\nstate_dir = "{state}"\n\n[[torrent]]\nsource = "{torrent}"\ndir = "{tmp_path}"\n'
                      'mode = "seed"\n')
    # a daemon that wrote its status and is gone (pid 2**22 + 1 is above Linux's largest pid)
    write_json_atomic(str(state / STATUS_NAME), {"running": True, "pid": 2**22 + 1, "mode": "daemon",
                                                 "torrents": [{"name": "data.bin", "state": "seeding", "progress": 1.0}]})
    for argv in (["--version"], ["info", str(torrent)], ["status", "-c", str(config)],
                 ["status", "-c", str(config), "--json"]):
        loaded, _ = _small_command(tmp_path, *argv)
        assert [m for m in TRANSFER_MODULES if m in loaded] == [], argv
    assert "not running" in _small_command(tmp_path, "status", "-c", str(config))[1]  # the pid is not alive


def test_a_seeding_runner_without_the_dht_loads_no_magnet_fetch_nor_dht_service(tmp_path: Path) -> None:
    """`minibt run` with .torrent files only: the magnet fetch (with BEP 9's codec) and the DHT service load
    when a magnet link or the DHT needs them, psutil where there is no /proc, subprocess for a completion
    hook and logging's file handler for a log file: not for every daemon (it runs for months on a Pi)."""
    data = tmp_path / "data.bin"
    data.write_bytes(b"x" * 100_000)
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(create_torrent(str(data), piece_length=16384))
    loaded: dict[str, set[str]] = {}
    for dht in ("false", "true"):
        config = tmp_path / f"dht-{dht}.toml"
        config.write_text(f'[client]\nstate_dir = "{tmp_path / dht}"\nlisten_port = 0\nbind = "127.0.0.1"\n'
                          f'dht = {dht}\n\n[[torrent]]\nsource = "{torrent}"\ndir = "{tmp_path}"\nmode = "seed"\n')
        # --once: the check, then seeding only, so the run is over at once (exit 0)
        loaded[dht], _ = _small_command(tmp_path, "run", "-c", str(config), "--once", "--max-time", "5s")
        assert "minibt.runner" in loaded[dht] and "minibt.client" in loaded[dht]
    assert [m for m in MAGNET_MODULES + METADATA_MODULES + ("minibt.dhtservice",) if m in loaded["false"]] == []
    # its status from /proc, not psutil; no completion hook, so no subprocess; no log file, so no file handler
    assert [m for m in ("psutil", "subprocess", "logging.handlers", "pickle") if m in loaded["false"]] == []
    assert "minibt.dhtservice" in loaded["true"]  # the check can fail: with the DHT the service loads
