"""The public Peer API over real loopback sockets: two in-process Clients, library code in charge.

The seeding Client runs on a thread of its own (one Client per thread; callbacks run on the loop's
thread); the downloading Client runs in the test's thread with the built-in choker and picker off
(auto_choke/auto_request False) and requests every block itself from event callbacks.
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import AbstractContextManager
from pathlib import Path

from clients import assert_same_tree, make_payload
from inproc import seeding_in_thread

import minibt
from minibt.events import Event
from minibt.events import EventName as N
from minibt.metainfo import create_torrent, parse_metainfo
from minibt.wire_codec import BLOCK_LEN

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
KIB, MIB = 1 << 10, 1 << 20
PIECE_LEN = 64 * KIB
LAYOUT = {"a.bin": 2 * MIB + 777, "d/b.bin": MIB - 5}  # 48 pieces, a file boundary inside one
DEADLINE_S = 30.0  # a 3 MiB loopback transfer takes well under a second; start-up and checking included
EXAMPLE_DEADLINE_S = 90.0


def seeder_thread(torrent: Path, data_dir: Path, events: list[Event]) -> AbstractContextManager[minibt.Client]:
    """A seeding Client whose choker is library code: it unchokes every interested peer."""
    cfg = minibt.SessionConfig(torrent=minibt.TorrentConfig(auto_choke=False))
    client = minibt.Client(bind=LOOPBACK, port=0, config=cfg)
    for name in minibt.EventName:
        client.on(name, events.append)
    client.on(N.PEER_INTERESTED, lambda ev: ev.peer.unchoke() if ev.peer is not None else None)
    return seeding_in_thread(client, torrent, data_dir, DEADLINE_S)


def test_library_code_drives_choking_and_requests_over_loopback(tmp_path: Path) -> None:
    src = make_payload(tmp_path / "seed" / "payload", LAYOUT, seed=5)
    torrent = tmp_path / "p.torrent"
    torrent.write_bytes(create_torrent(str(src), piece_length=PIECE_LEN))
    meta = parse_metainfo(torrent.read_bytes())
    seed_events: list[Event] = []
    leech_events: list[Event] = []
    with seeder_thread(torrent, tmp_path / "seed", seed_events) as seeder:
        cfg = minibt.TorrentConfig(auto_choke=False, auto_request=False)
        with minibt.Client(bind=LOOPBACK, port=0) as leecher:
            asked: set[int] = set()
            errors: list[BaseException] = []

            def top_up(peer: minibt.Peer | None) -> None:
                """Keep three whole pieces requested from ``peer`` (lowest missing first)."""
                if peer is None or not peer.connected or peer.peer_choking:
                    return
                have = t.have
                inflight = {i for i in asked if not have[i]}
                for i in range(meta.num_pieces):
                    if len(inflight) >= 3:
                        break
                    if have[i] or i in inflight:
                        continue
                    size = meta.piece_size(i)
                    try:
                        for begin in range(0, size, BLOCK_LEN):
                            peer.request(i, begin, min(BLOCK_LEN, size - begin))
                    except Exception as e:  # surfaced below: a callback's exception is only logged
                        errors.append(e)
                        raise
                    inflight.add(i)
                    asked.add(i)

            def on_handshake(ev: Event) -> None:
                assert ev.peer is not None
                assert ev.peer in leecher.peers(t) and ev.peer.torrent is t
                # Per-peer callbacks: this connection's unchoke starts our requests.
                ev.peer.on(N.PEER_UNCHOKED_US, lambda e: top_up(e.peer))

            for name in minibt.EventName:
                leecher.on(name, leech_events.append)
            leecher.on(N.HANDSHAKE_DONE, on_handshake)
            t = leecher.add(str(torrent), str(tmp_path / "leech"), peers=[(LOOPBACK, seeder.port)], config=cfg)
            t.on(N.PIECE_VERIFIED, lambda ev: [top_up(p) for p in leecher.peers(t)])
            deadline = leecher.clock.now() + DEADLINE_S
            leecher.run(until=lambda: (t.complete and not leecher.peers()) or leecher.clock.now() > deadline)
            assert t.complete, t.status(leecher.clock.now())
            assert not errors, errors
            assert t.stats.wasted == 0 and t.stats.hash_failures == 0
    assert_same_tree(src, tmp_path / "leech" / "payload")

    names = [e.name for e in leech_events]
    expected = [N.PEER_CONNECTED, N.HANDSHAKE_DONE, N.BITFIELD, N.PEER_UNCHOKED_US, N.PIECE_VERIFIED,
                N.TORRENT_COMPLETE, N.PEER_DISCONNECTED]
    firsts = [names.index(n) for n in expected]
    assert firsts == sorted(firsts), names
    verified = [e.index for e in leech_events if e.name == N.PIECE_VERIFIED]
    assert sorted(verified) == list(range(meta.num_pieces))
    assert names.index(N.TORRENT_COMPLETE) > max(i for i, n in enumerate(names) if n == N.PIECE_VERIFIED)
    gone = [e for e in leech_events if e.name == N.PEER_DISCONNECTED]
    assert [e.reason for e in gone] == [minibt.CloseReason.BOTH_SEEDS], [(e.reason, e.detail) for e in gone]
    assert gone[0].peer is not None and gone[0].peer.close_reason is minibt.CloseReason.BOTH_SEEDS
    assert N.WE_UNCHOKED_PEER not in names  # auto_choke off: the downloader never unchoked anybody

    snames = [e.name for e in seed_events]
    sexpected = [N.PEER_CONNECTED, N.HANDSHAKE_DONE, N.PEER_INTERESTED, N.WE_UNCHOKED_PEER, N.PEER_DISCONNECTED]
    sfirsts = [snames.index(n) for n in sexpected]
    assert sfirsts == sorted(sfirsts), snames
    sgone = [e for e in seed_events if e.name == N.PEER_DISCONNECTED]
    assert sgone and sgone[0].reason is minibt.CloseReason.CLOSED_BY_REMOTE
    assert sgone[0].peer is not None and sgone[0].peer.uploaded == meta.total_length


def test_api_example_script_runs(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "api_example.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=EXAMPLE_DEADLINE_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verified 65/65 pieces; complete: True" in proc.stdout
    assert "BOTH_SEEDS (10)" in proc.stdout and "client: minibt" in proc.stdout
