"""ut_pex (BEP 11) against WebTorrent's ``ut_pex`` on ``bittorrent-protocol`` (Node, npm), loopback only.

minibt runs in-process.  An honest Node peer (node/pex_peer.mjs honest) is dialled by minibt:
minibt sends it one message through the public API (``peer.send_pex``) with an IPv4 and an IPv6
entry, which the Node side reports as ``peer`` events; the Node side sends its own IPv4 + IPv6
entries after ut_pex's 65 s interval, which minibt reports as a ``pex`` event and keeps in its
candidate pool (source PEX, flags kept).  Meanwhile three attacking Node peers, each from its own
loopback address, flood PEX / send an oversized message / send a malformed one: minibt closes
each of them, penalises its IP, and keeps the honest connection.
The npm packages come from tests/integration/node/package.json (``.ci/run`` installs them; the
fixture below runs ``npm install`` when they are missing).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clients import LOOPBACK, START_TIMEOUT_S, Client, running

from minibt.client import Client as MinibtClient
from minibt.errors import CloseReason, LocalProtocolError
from minibt.events import EventName
from minibt.handles import Peer
from minibt.metainfo import create_torrent, parse_metainfo
from minibt.peer import PeerSource
from minibt.pex import PexFlag

pytestmark = pytest.mark.integration

NODE_DIR = Path(__file__).parent / "node"
SCRIPT = NODE_DIR / "pex_peer.mjs"
UT_PEX_INTERVAL_S = 65.0  # WebTorrent ut_pex PEX_INTERVAL
DEADLINE_S = UT_PEX_INTERVAL_S + 45.0


@pytest.fixture(scope="module")
def node_modules() -> None:
    """Node and the npm packages, or fail (MINIBT_REQUIRE_CLIENTS=1) / skip."""
    problem = None
    if shutil.which("node") is None:
        problem = "node is not installed"
    elif not (NODE_DIR / "node_modules" / "ut_pex").is_dir() or not (NODE_DIR / "node_modules" / "bittorrent-protocol").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            problem = "npm is not installed (needed for ut_pex, bittorrent-protocol)"
        else:
            r = subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True,
                               timeout=300, check=False)
            if r.returncode != 0:
                problem = f"npm install failed: {r.stderr.decode(errors='replace')[-500:]}"
    if problem:
        if os.environ.get("MINIBT_REQUIRE_CLIENTS") == "1":
            pytest.fail(problem)
        pytest.skip(problem)


class NodePexPeer(Client):
    """``node pex_peer.mjs ...``: JSON lines on stdout go to the log file; ``events()`` parses them."""

    def __init__(self, workdir: Path, args: list[str], label: str) -> None:
        self.name = label
        super().__init__(workdir)
        self.args = args

    def _launch(self) -> None:
        self._spawn(["node", str(SCRIPT), *self.args], stdin=subprocess.PIPE)

    def _wait_ready(self) -> None:
        if self.args[0] == "honest":
            self.wait_until(lambda: self.port_or_none() is not None, START_TIMEOUT_S, "listening")

    def events(self) -> list[dict[str, object]]:
        out = []
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError:
            return []
        for line in text.splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def port_or_none(self) -> int | None:
        for e in self.events():
            if e.get("type") == "listening":
                return int(e["port"])  # type: ignore[call-overload]
        return None

    @property
    def port(self) -> int:
        p = self.port_or_none()
        if p is None:
            raise RuntimeError("node peer not listening")
        return p

    def has(self, **kv: object) -> bool:
        return any(all(e.get(k) == v for k, v in kv.items()) for e in self.events())


@pytest.fixture
def meta(tmp_path: Path) -> object:
    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(256 * 1024))
    return parse_metainfo(create_torrent(str(src), piece_length=32 * 1024))


def test_pex_both_ways_with_webtorrent_and_flood_protection(tmp_path: Path, node_modules: None,
                                                             meta: object) -> None:
    from minibt.metainfo import Metainfo

    assert isinstance(meta, Metainfo)
    ih = meta.info_hash.hex()
    honest = NodePexPeer(tmp_path / "node-honest", ["honest", ih, "127.0.0.9:7009", "[::1]:7010"], "node-honest")
    with running(honest), MinibtClient(bind=LOOPBACK, port=0) as c:
        pex_events = []
        c.on(EventName.PEX, lambda ev: pex_events.append(ev) if ev.peer is not None and ev.peer.ip == LOOPBACK else None)
        t0 = time.monotonic()
        tor = c.add(meta, str(tmp_path / "mb"), peers=[(LOOPBACK, honest.port)])

        def node_conn() -> object:
            for conn in c.session.conns.values():
                if conn.port == honest.port and conn.wire is not None and tor.extensions.sender(conn.cid) is not None:
                    return conn
            return None

        deadline = time.monotonic() + 20
        c.run(until=lambda: node_conn() is not None or time.monotonic() > deadline)
        conn = node_conn()
        assert conn is not None, f"no ut_pex connection to the Node peer\n{honest.log_tail()}"
        peer = Peer.of(conn, c.session)  # type: ignore[arg-type]
        # minibt -> WebTorrent, through the public API: one IPv4 and one IPv6 entry (with flags).
        peer.send_pex(added=[("127.0.0.11", 7011)], added6=[{"ip": "::1", "port": 7012, "flags": PexFlag.REACHABLE}])
        with pytest.raises(LocalProtocolError, match="at most one per minute"):
            peer.send_pex(added=[("127.0.0.12", 7012)])  # BEP 11: the second one would be too soon

        attackers = [
            NodePexPeer(tmp_path / f"node-{kind}", ["attack", ih, LOOPBACK, str(c.port), ip, kind], f"node-{kind}")
            for kind, ip in (("flood", "127.0.0.3"), ("oversize", "127.0.0.4"), ("malformed", "127.0.0.5"))
        ]
        with running(*attackers):

            def done() -> bool:
                return bool(pex_events) and all(a.has(type="closed") for a in attackers) and honest.has(
                    type="peer", peer="[::1]:7012")

            deadline = time.monotonic() + DEADLINE_S
            c.run(until=lambda: done() or time.monotonic() > deadline)
            took = time.monotonic() - t0
            closed = {a[0]: (r, d) for _, a, r, d in c.session.closed_log}
            reps = {ip: c.session.reputation.score(ip) for ip in ("127.0.0.3", "127.0.0.4", "127.0.0.5", LOOPBACK)}
            still = node_conn() is conn and not conn.closing  # type: ignore[attr-defined]
            logs = "\n".join(a.log_tail() for a in [honest, *attackers])
    print(f"(c) WebTorrent PEX exchange + flood defence took {took:.1f} s", file=sys.stderr)
    # WebTorrent -> minibt: IPv4 and IPv6 entries with their flags, into the pool as PEX candidates.
    assert pex_events, f"no pex event from the Node peer\n{logs}"
    ev = pex_events[0]
    assert ev.peer is not None and ev.peer.port == honest.port
    assert [(p.ip, p.port, p.flags) for p in ev.added] == [("127.0.0.9", 7009, PexFlag.SEED | PexFlag.UTP)]
    assert [(p.ip, p.port, p.flags) for p in ev.added6] == [("::1", 7010, PexFlag.REACHABLE)]
    cand = tor.candidates.get(("127.0.0.9", 7009))
    assert cand is not None and cand.source is PeerSource.PEX and cand.flags == PexFlag.SEED | PexFlag.UTP
    # minibt -> WebTorrent: both entries arrived as 'peer' events (flags decoded by ut_pex).
    got = {e["peer"]: e["flags"] for e in honest.events() if e.get("type") == "peer"}
    assert set(got) == {"127.0.0.11:7011", "[::1]:7012"}, got
    assert got["[::1]:7012"]["isReachable"] is True  # type: ignore[index]
    assert not honest.has(type="warning"), "WebTorrent complained (e.g. minibt sent PEX too often)"
    assert still, "the honest connection did not survive"
    # The attackers were disconnected by minibt for the reason matching their misbehaviour.
    assert closed.get("127.0.0.3", (None,))[0] is CloseReason.PROTOCOL_VIOLATION, closed
    assert "ut_pex" in closed["127.0.0.3"][1]
    assert closed.get("127.0.0.4", (None,))[0] is CloseReason.MESSAGE_TOO_LARGE, closed
    assert closed.get("127.0.0.5", (None,))[0] is CloseReason.MALFORMED_MESSAGE, closed
    assert all(reps[ip] < 100 for ip in ("127.0.0.3", "127.0.0.4", "127.0.0.5")) and reps[LOOPBACK] == 100, reps
    for a in attackers:
        assert a.has(type="sent"), a.log_tail()
