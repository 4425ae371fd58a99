"""Name lookups on the worker pool (netif.resolve): an ASCII host name goes to ``getaddrinfo`` as bytes, so
Python never loads the ``idna`` codec (with ``stringprep`` and ``unicodedata``: 0.67 MiB of RSS) for names
that need no encoding; a non-ASCII name is still encoded by Python, as before.  Only /etc/hosts names and
recorded calls: no lookup leaves the machine."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from minibt import netif

ROOT = str(Path(__file__).resolve().parents[2])


def test_ascii_names_go_as_bytes_and_others_as_text(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, int, int]] = []

    def record(host: object, port: int, *, type: int) -> list[tuple[object, ...]]:  # noqa: A002
        calls.append((host, port, type))
        return []

    monkeypatch.setattr(socket, "getaddrinfo", record)
    netif.resolve("tracker.example.org", 6969, socket.SOCK_DGRAM)
    netif.resolve("bücher.example", 80, socket.SOCK_STREAM)
    assert calls == [(b"tracker.example.org", 6969, socket.SOCK_DGRAM), ("bücher.example", 80, socket.SOCK_STREAM)]


def test_a_real_lookup_loads_no_idna_codec() -> None:
    code = ("import socket, sys; from minibt.netif import resolve;"
            "infos = resolve('localhost', 6881, socket.SOCK_STREAM);"
            "print(sorted({i[4][0] for i in infos if i[0] == socket.AF_INET}));"
            "print([m for m in ('encodings.idna', 'stringprep', 'unicodedata') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         env={"PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr
    addrs, loaded = out.stdout.splitlines()
    assert "127.0.0.1" in addrs
    assert loaded == "[]"
