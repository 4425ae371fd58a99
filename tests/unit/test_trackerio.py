"""TrackerIO on real loopback sockets, without an EventLoop: the calls the loop makes, and what
reaches ``on_announce_result`` (results, error strings, contained faults)."""

from __future__ import annotations

import random
import selectors
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from minibt.faults import Faults, describe
from minibt.netif import Source
from minibt.tracker import AnnounceJob, AnnounceParams, AnnounceResult
from minibt.trackerio import TrackerIO
from minibt.workers import InlineHasher

LOOPBACK = "127.0.0.1"
INFO_HASH = b"i" * 20


@dataclass
class Recorder:
    """What TrackerIO uses of the Session: ``on_announce_result``, ``faults`` and ``rng``."""

    rng: random.Random = field(default_factory=lambda: random.Random(5))
    faults: Faults = field(default_factory=Faults)
    results: list[tuple[str, AnnounceResult | None, str | None]] = field(default_factory=list)

    def on_announce_result(
        self, info_hash: bytes, job: AnnounceJob, result: AnnounceResult | None, error: str | None, *, now: float
    ) -> None:
        assert info_hash == INFO_HASH
        self.results.append((job.url, result, error))


@dataclass
class Rig:
    io: TrackerIO
    session: Recorder
    sel: selectors.BaseSelector
    paused: list[str | None]

    def announce(self, url: str, now: float = 0.0, event: str = "started") -> None:
        params = AnnounceParams(INFO_HASH, b"p" * 20, 6881, 0, 0, 0, event, key=1)
        self.io.announce(INFO_HASH, AnnounceJob(url, event), params, now)

    def http_tids(self) -> list[int]:
        return [k.data[1] for k in self.sel.get_map().values() if k.data[0] == "http"]

    def pump_http(self, until: Any, n: int = 50) -> None:
        """Hand the selector's HTTP readiness to TrackerIO, as the loop does, until ``until()``."""
        for _ in range(n):
            for key, mask in self.sel.select(2.0):
                self.io.http_event(key.data[1], mask, 0.0)
            if until():
                return
        raise AssertionError("no result")


@pytest.fixture
def rig() -> Iterator[Rig]:
    sel = selectors.DefaultSelector()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((LOOPBACK, 0))
    session = Recorder()
    paused: list[str | None] = [None]
    io = TrackerIO(
        session,  # type: ignore[arg-type]
        sel=sel, hasher=InlineHasher(), source=Source.from_bind(LOOPBACK), bind=LOOPBACK,  # type: ignore[arg-type]
        paused_reason=lambda: paused[0], udp_socket=lambda: udp, udp_addr=lambda a: a,
        udp_reaches=lambda ip: ":" not in ip,
    )
    try:
        yield Rig(io, session, sel, paused)
    finally:
        io.close()
        udp.close()
        sel.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind((LOOPBACK, 0))
    srv.listen(4)
    srv.settimeout(2.0)
    try:
        yield srv
    finally:
        srv.close()


def test_announce_refused_while_paused_and_for_other_schemes(rig: Rig) -> None:
    rig.paused[0] = "interface wg0 is down"
    rig.announce("http://127.0.0.1:1/announce")
    rig.paused[0] = None
    rig.announce("wss://tracker.example/announce")
    rig.announce("udp://[::1]:6969")  # the UDP socket is IPv4
    assert rig.session.results == [
        ("http://127.0.0.1:1/announce", None, "paused: interface wg0 is down"),
        ("wss://tracker.example/announce", None, "unsupported tracker scheme"),
        ("udp://[::1]:6969", None, f"::1 is not reachable from the UDP socket on {LOOPBACK}"),
    ]
    assert not rig.io.busy and rig.http_tids() == []


def test_udp_announce_round_trip(rig: Rig) -> None:
    trk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    trk.bind((LOOPBACK, 0))
    trk.settimeout(2.0)
    src = trk.getsockname()
    url = f"udp://{LOOPBACK}:{src[1]}"
    try:
        rig.announce(url)
        assert rig.io.busy
        req, client = trk.recvfrom(2048)
        assert len(req) == 16  # BEP 15 connect request
        reply = b"\0\0\0\0" + req[12:16] + (0x1122334455667788).to_bytes(8, "big")
        assert not rig.io.receive_datagram(memoryview(reply), (LOOPBACK, 1), 0.0)  # not from the tracker
        assert rig.io.receive_datagram(memoryview(reply), src, 0.0)
        ann, _ = trk.recvfrom(2048)
        assert len(ann) == 98 and ann[8:12] == b"\0\0\0\x01"
        peers = socket.inet_aton("10.1.2.3") + (6881).to_bytes(2, "big")
        body = b"\0\0\0\x01" + ann[12:16] + (1800).to_bytes(4, "big") + (5).to_bytes(4, "big") + (2).to_bytes(4, "big")
        assert rig.io.receive_datagram(memoryview(body + peers), src, 0.0)
    finally:
        trk.close()
    [(got_url, result, error)] = rig.session.results
    assert got_url == url and error is None and result is not None and result.peers == (("10.1.2.3", 6881),)
    assert not rig.io.busy
    assert not rig.io.receive_datagram(memoryview(body + peers), src, 0.0)  # nothing waits for it now


@pytest.mark.parametrize(("event", "timeout_s"), [("started", 30.0), ("stopped", 5.0)])
def test_http_announce_times_out_on_tick(rig: Rig, listener: socket.socket, event: str, timeout_s: float) -> None:
    url = f"http://{LOOPBACK}:{listener.getsockname()[1]}/announce"
    rig.announce(url, now=100.0, event=event)
    assert rig.io.busy and len(rig.http_tids()) == 1
    rig.io.tick(100.0 + timeout_s - 0.5)
    assert rig.session.results == []
    rig.io.tick(100.0 + timeout_s)
    assert rig.session.results == [(url, None, "timed out")]
    assert not rig.io.busy and rig.http_tids() == []


def test_http_fault_fail_all_and_close(rig: Rig, listener: socket.socket) -> None:
    url = f"http://{LOOPBACK}:{listener.getsockname()[1]}/announce"
    rig.announce(url)
    [tid] = rig.http_tids()
    exc = RuntimeError("boom")
    rig.io.fault(tid, exc, 0.0)  # what the loop does when http_event raised (STYLE.md section 13)
    assert rig.session.results == [(url, None, describe(exc))]
    assert rig.session.faults.stats()["tracker"] == 1
    rig.announce(url)
    rig.io.fault(999, exc, 0.0)  # no such transaction: counted, nothing else happens
    assert rig.session.faults.stats()["tracker"] == 2 and len(rig.session.results) == 1
    rig.io.fail_all("interface wg0 is gone", 0.0)
    assert rig.session.results[1:] == [(url, None, "interface wg0 is gone")]
    rig.announce(url)
    rig.io.close()
    assert len(rig.session.results) == 2 and not rig.io.busy and rig.http_tids() == []


@pytest.mark.parametrize(
    ("head", "body", "error"),
    [
        (b"HTTP/1.1 200 OK", b"d8:intervali1800e5:peers6:\x0a\x01\x02\x03\x1a\xe1e", None),
        (b"HTTP/1.1 404 Not Found", b"", "HTTP status 404"),
    ],
)
def test_http_announce_result(
    rig: Rig, listener: socket.socket, head: bytes, body: bytes, error: str | None
) -> None:
    url = f"http://{LOOPBACK}:{listener.getsockname()[1]}/announce"
    rig.announce(url)
    conn, _ = listener.accept()
    conn.settimeout(2.0)
    try:
        request = b""
        while b"\r\n\r\n" not in request:
            rig.pump_http(lambda: True, n=1)
            request += conn.recv(4096)
        assert request.startswith(b"GET /announce?info_hash=" + b"i" * 20)
        conn.sendall(head + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        rig.pump_http(lambda: rig.session.results)
    finally:
        conn.close()
    [(got_url, result, got_error)] = rig.session.results
    assert got_url == url and got_error == error
    if error is None:
        assert result is not None and result.peers == (("10.1.2.3", 6881),)
    assert not rig.io.busy and rig.http_tids() == []
