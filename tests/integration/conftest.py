"""Fixtures for tests with real processes on loopback: no process may outlive its test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import clients  # noqa: E402
import dhtnet  # noqa: E402
import natnet  # noqa: E402

HERE = Path(__file__).parent
REFERENCE_BINARIES = ("transmission-daemon", "aria2c", "opentracker")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def _missing_reference_clients() -> list[str]:
    missing = [b for b in REFERENCE_BINARIES if shutil.which(b) is None]
    try:
        import libtorrent  # noqa: F401
    except ImportError:
        missing.append("python3-libtorrent (pip libtorrent)")
    return missing


@pytest.fixture(scope="session")
def reference_clients() -> None:
    """Skip when the reference clients are not installed, unless MINIBT_REQUIRE_CLIENTS=1 (CI sets it)."""
    missing = _missing_reference_clients()
    if missing:
        msg = f"reference clients missing: {', '.join(missing)}"
        if os.environ.get("MINIBT_REQUIRE_CLIENTS") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


def _kill_leaked(procs: list[subprocess.Popen[bytes]]) -> list[str]:
    out = []
    for p in procs:
        out.append(f"pid {p.pid}: {p.args!s}"[:300])
        p.kill()
        p.wait(timeout=10)
    return out


@pytest.fixture(autouse=True)
def no_leaked_processes_per_test() -> Iterator[None]:
    """Every process a test started must be dead when the test ends (killed here, then reported)."""
    first = len(clients.STARTED)
    yield
    leaked = [p for p in clients.STARTED[first:] if p.poll() is None]
    if leaked:
        pytest.fail("processes left running by the test: " + "; ".join(_kill_leaked(leaked)))


@pytest.fixture(scope="session", autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """At the end of the session, all PIDs the harness ever started are dead."""
    yield
    leaked = clients.leaked_processes()
    if leaked:
        pytest.fail("processes left running at session end: " + "; ".join(_kill_leaked(leaked)))


@pytest.fixture
def dht_netns() -> Iterator[dhtnet.DhtNet]:
    """A sealed network namespace (tests/integration/dhtnet.py), deleted afterwards even on failure.

    Skips without root/iproute2/nftables, fails instead in CI (CI=true).
    """
    dhtnet.need_netns()
    net = dhtnet.DhtNet()
    net.create()
    try:
        yield net
    finally:
        net.destroy()
    assert not net.exists(), f"network namespace {net.name} survived destroy()"


@pytest.fixture
def make_natnet() -> Iterator[Callable[..., natnet.NatNet]]:
    """Factory: ``make_natnet(**kw)`` creates a NatNet (tests/integration/natnet.py) with NatNet's keyword
    arguments (nats, lan_hosts, public_hosts, mapping, udp_timeout_s); all are destroyed afterwards, also
    on failure. Skips without root/iproute2/nftables, fails instead when CI is set."""
    natnet.need_netns()
    made: list[natnet.NatNet] = []

    def make(**kw: Any) -> natnet.NatNet:
        net = natnet.NatNet(**kw)
        made.append(net)
        net.create()
        return net

    try:
        yield make
    finally:
        for net in reversed(made):
            net.destroy()
    for net in made:
        assert not net.existing(), f"namespaces survived destroy(): {net.existing()}"


@pytest.fixture
def nat_net(make_natnet: Callable[..., natnet.NatNet]) -> natnet.NatNet:
    """Two home NATs (a1 behind NAT-A, b1 behind NAT-B) and two public hosts (pub1, pub2): natnet.NatNet()."""
    return make_natnet()


@pytest.fixture
def opentracker(tmp_path: Path, reference_clients: None) -> Iterator[clients.Opentracker]:
    """A running opentracker (HTTP and UDP on one free port) in tmp_path/opentracker."""
    tracker = clients.Opentracker(tmp_path / "opentracker")
    with tracker:
        yield tracker
