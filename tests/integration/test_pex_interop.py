"""ut_pex (BEP 11) against libtorrent on loopback, with minibt in-process (its pool and events visible).

(a) Three libtorrent peers connected to each other; minibt is told only of the first and ends up
    connected to the other two, learned through that peer's PEX messages.
(b) minibt dials two libtorrent peers that were not told of each other; minibt's own PEX messages
    make them connect to each other (libtorrent marks that connection's source "pex").
libtorrent sends its first PEX message about 1 s after the extension handshake, minibt its first as
soon as there is something to say: no interval is lowered, the BEP 11 limits stay as they are.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import pytest
from clients import LOOPBACK, LibtorrentPeer, make_torrent, running
from helpers import run_client_until

from minibt.client import Client
from minibt.events import EventName
from minibt.peer import PeerSource

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("reference_clients")]

MIB = 1 << 20
DEADLINE_S = 120.0
# The seed's upload is throttled (session-wide, loopback included) so every leecher stays a leecher
# for the whole test: libtorrent drops seed-to-seed connections, and PEX lists only live ones.
SLOW_SEED = {"upload_rate_limit": 150_000, "ignore_limits_on_local_network": False}


def payload(root: Path, size: int, seed: int) -> Path:
    root.mkdir(parents=True)
    (root / "data.bin").write_bytes(random.Random(seed).randbytes(size))
    return root


def remote_listen_addrs(c: Client) -> dict[tuple[str, int], str]:
    """Live handshaken connections of minibt by the peer's dialable address -> 'out'/'in'."""
    out = {}
    for conn in c.session.conns.values():
        if conn.wire is None:
            continue
        if conn.outgoing:
            out[conn.addr] = "out"
        elif conn.listen_port:
            out[(conn.ip, conn.listen_port)] = "in"
    return out


def test_minibt_told_of_one_libtorrent_peer_finds_the_other_two_by_pex(tmp_path: Path) -> None:
    src = payload(tmp_path / "seed" / "payload", 16 * MIB, seed=51)
    t = make_torrent(src, tmp_path / "lt.torrent", [], 256 * 1024)
    l1 = LibtorrentPeer(tmp_path / "l1", torrent_path=t.path, save_dir=tmp_path / "seed", seed=True,
                        extra_settings=SLOW_SEED)
    with running(l1):
        l1.wait_complete(timeout_s=30)
        l2 = LibtorrentPeer(tmp_path / "l2", torrent_path=t.path, save_dir=tmp_path / "l2d", seed=False,
                            peers=[(LOOPBACK, l1.port)])
        with running(l2):
            l3 = LibtorrentPeer(tmp_path / "l3", torrent_path=t.path, save_dir=tmp_path / "l3d", seed=False,
                                peers=[(LOOPBACK, l1.port), (LOOPBACK, l2.port)])
            with running(l3):
                l3.wait_peers(2, timeout_s=20)
                l1.wait_peers(2, timeout_s=20)
                others = {(LOOPBACK, l2.port), (LOOPBACK, l3.port)}
                with Client(bind=LOOPBACK, port=0) as c:
                    pex_events: list[tuple[str, int]] = []
                    c.on(EventName.PEX_PEER, lambda ev: pex_events.append((ev.peer.port, ev.addr)))
                    tor = c.add(str(t.path), str(tmp_path / "mb"), peers=[(LOOPBACK, l1.port)])
                    took = run_client_until(c, lambda: others <= set(remote_listen_addrs(c)),
                                            "connections to the two peers minibt was not told of",
                                            time.monotonic() + DEADLINE_S)
                    print(f"(a) connected to both PEX-learned peers after {took:.1f} s; "
                          f"directions {remote_listen_addrs(c)}", file=sys.stderr)
                    directions = remote_listen_addrs(c)
                    for a in others:
                        if directions[a] == "in":
                            # That peer dialled us first: only l1 knew our address, so it learned it from
                            # l1's PEX, and minibt keeps no candidate for a peer already connected.
                            continue
                        cand = tor.candidates.get(a)
                        # Learned from l1, or from the other one once it was connected (both speak PEX).
                        assert cand is not None and cand.source is PeerSource.PEX, cand
                        assert cand.via in ({(LOOPBACK, l1.port)} | others) - {a}, cand
                        assert f"{a[0]}:{a[1]}" in {addr for _, addr in pex_events}  # the `peer` event too
                    assert not tor.complete  # still a leecher: the connections are not seed-to-seed leftovers


def test_two_libtorrent_peers_meet_through_minibts_pex(tmp_path: Path) -> None:
    src = payload(tmp_path / "seed" / "payload", 16 * MIB, seed=52)
    t = make_torrent(src, tmp_path / "lt.torrent", [], 256 * 1024)
    a = LibtorrentPeer(tmp_path / "a", torrent_path=t.path, save_dir=tmp_path / "seed", seed=True,
                       extra_settings=SLOW_SEED)
    b = LibtorrentPeer(tmp_path / "b", torrent_path=t.path, save_dir=tmp_path / "bd", seed=False)
    with running(a, b):
        a.wait_complete(timeout_s=30)
        assert a.status().get("num_peers", 0) == 0 and b.status().get("num_peers", 0) == 0
        with Client(bind=LOOPBACK, port=0) as c:
            tor = c.add(str(t.path), str(tmp_path / "mb"), peers=[(LOOPBACK, a.port), (LOOPBACK, b.port)])

            def met() -> bool:
                for x, y in ((a, b), (b, a)):
                    for p in x.status().get("peers", []):
                        if p["port"] == y.port and p["outgoing"] and "pex" in p["sources"]:
                            return True
                return False

            took = run_client_until(c, met, "libtorrent a and b connected via PEX", time.monotonic() + DEADLINE_S)
            print(f"(b) a and b met through minibt's PEX after {took:.1f} s", file=sys.stderr)

            def sent() -> dict[int, int]:
                out = {}
                for conn in c.session.conns.values():
                    s = tor.extensions.sender(conn.cid) if conn.wire is not None else None
                    if s is not None:
                        out[conn.port] = s.stats()["messages_sent"]
                return out

            # Each side is told of the other: the first-connected one when its idle re-check (10 s) sees the second.
            run_client_until(c, lambda: set(sent()) >= {a.port, b.port} and min(sent().values()) >= 1,
                             "a PEX message to each libtorrent peer", time.monotonic() + 30.0,
                             lambda: f"sent: {sent()}")
            assert max(sent().values()) <= 2  # at most one message per 60 s after the first


def test_magnet_and_one_peer_address_find_the_rest_of_the_swarm(tmp_path: Path) -> None:
    """The issue's headline: fed only a magnet link whose x.pe names one peer, minibt fetches the
    metadata from it and then reaches the other two libtorrent peers through its PEX messages."""
    from minibt.magnet import make_magnet

    src = payload(tmp_path / "seed" / "payload", 16 * MIB, seed=53)
    t = make_torrent(src, tmp_path / "lt.torrent", [], 256 * 1024)
    l1 = LibtorrentPeer(tmp_path / "l1", torrent_path=t.path, save_dir=tmp_path / "seed", seed=True,
                        extra_settings=SLOW_SEED)
    with running(l1):
        l1.wait_complete(timeout_s=30)
        l2 = LibtorrentPeer(tmp_path / "l2", torrent_path=t.path, save_dir=tmp_path / "l2d", seed=False,
                            peers=[(LOOPBACK, l1.port)])
        with running(l2):
            l3 = LibtorrentPeer(tmp_path / "l3", torrent_path=t.path, save_dir=tmp_path / "l3d", seed=False,
                                peers=[(LOOPBACK, l1.port), (LOOPBACK, l2.port)])
            with running(l3):
                l1.wait_peers(2, timeout_s=20)
                others = {(LOOPBACK, l2.port), (LOOPBACK, l3.port)}
                with Client(bind=LOOPBACK, port=0) as c:
                    f = c.add(make_magnet(bytes.fromhex(t.info_hash), peers=[(LOOPBACK, l1.port)]), str(tmp_path / "mb"))
                    took = run_client_until(c, lambda: others <= set(remote_listen_addrs(c)),
                                            "metadata, then connections to the two peers only PEX named",
                                            time.monotonic() + DEADLINE_S)
                    print(f"magnet + one peer -> whole swarm after {took:.1f} s; directions "
                          f"{remote_listen_addrs(c)}", file=sys.stderr)
                    tor = f.torrent  # type: ignore[union-attr]
                    assert tor is not None

                    def learned() -> bool:
                        cands = [tor.candidates.get(a) for a in others]
                        return all(x is not None and x.source is PeerSource.PEX for x in cands)

                    # Either direction counts above (l2/l3 may dial us first: l1 advertises us to
                    # them); minibt's own PEX intake must have named both as well.
                    took2 = run_client_until(c, learned, "both addresses in the pool from PEX", time.monotonic() + DEADLINE_S)
                    print(f"... and learned both from l1's PEX after {took2:.1f} s more", file=sys.stderr)
