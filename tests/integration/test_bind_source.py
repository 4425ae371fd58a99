"""``bind``: every outgoing connection leaves from the bound address (issue 10).

An in-process Client bound to 127.0.0.2 dials a recording peer on 127.0.0.1 (TCP, then uTP after the
recorder hangs up), and announces to a recording HTTP tracker and a recording UDP tracker there.
Each recorder keeps the source address of what it received: all of them must be 127.0.0.2.  An
IPv6 tracker must not be contacted at all from an IPv4 bind.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from minibt.client import Client
from minibt.metainfo import create_torrent, load_metainfo

BIND = "127.0.0.2"
TARGET = "127.0.0.1"
DEADLINE_S = 20.0


class Recorder:
    """Non-blocking listeners polled from the client's loop; records (kind, source ip)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.peer_tcp = socket.create_server((TARGET, 0))
        port = self.peer_tcp.getsockname()[1]
        self.peer_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer_udp.bind((TARGET, port))  # uTP goes to the peer's TCP port
        self.http = socket.create_server((TARGET, 0))
        self.udp_tracker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp_tracker.bind((TARGET, 0))
        self.http6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
        self.socks = [self.peer_tcp, self.peer_udp, self.http, self.udp_tracker, self.http6]
        for s in self.socks:
            s.setblocking(False)
        self.peer_port = port

    def poll(self) -> None:
        for kind, s in (("tcp-peer", self.peer_tcp), ("http-tracker", self.http), ("http6-tracker", self.http6)):
            try:
                conn, addr = s.accept()
            except BlockingIOError:
                continue
            self.seen.append((kind, addr[0]))
            conn.close()  # the peer hangs up: minibt falls back to uTP; the tracker announce fails
        for kind, s in (("utp-peer", self.peer_udp), ("udp-tracker", self.udp_tracker)):
            try:
                _, addr = s.recvfrom(2048)
            except BlockingIOError:
                continue
            self.seen.append((kind, addr[0]))

    def kinds(self) -> set[str]:
        return {k for k, _ in self.seen}

    def close(self) -> None:
        for s in self.socks:
            s.close()


def test_every_connection_leaves_from_the_bound_address(tmp_path: Path) -> None:
    rec = Recorder()
    payload = tmp_path / "data.bin"
    payload.write_bytes(os.urandom(64 * 1024))
    trackers = [
        f"http://{TARGET}:{rec.http.getsockname()[1]}/announce",
        f"http://[::1]:{rec.http6.getsockname()[1]}/announce",
        f"udp://{TARGET}:{rec.udp_tracker.getsockname()[1]}/announce",
    ]
    tfile = tmp_path / "t.torrent"
    tfile.write_bytes(create_torrent(str(payload), trackers=trackers))
    meta = load_metainfo(str(tfile))
    client = Client(bind=BIND, port=0, state_dir=str(tmp_path / "state"), transports=("tcp", "utp"))
    try:
        t = client.add(meta, str(tmp_path / "dl"), peers=[(TARGET, rec.peer_port)])
        want = {"tcp-peer", "utp-peer", "http-tracker", "udp-tracker"}
        deadline = time.monotonic() + DEADLINE_S

        def done() -> bool:
            rec.poll()
            return want <= rec.kinds() or time.monotonic() >= deadline

        client.run(until=done)
        assert want <= rec.kinds(), f"not seen: {want - rec.kinds()}; seen {rec.seen}"
        assert {ip for _, ip in rec.seen} == {BIND}, rec.seen
        assert "http6-tracker" not in rec.kinds()
        # The v6 tracker was tried and failed with a reason instead of being reached from elsewhere.
        errors = {tr["url"]: tr["last_error"] for tr in t.announcer.status()}
        assert "not reachable from 127.0.0.2" in str(errors[trackers[1]]), errors
    finally:
        client.close()
        rec.close()
