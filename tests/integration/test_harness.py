"""Smoke tests of the reference-client harness: real clients talk to each other on loopback (no minibt).

Each pairing proves that one client can seed and another leech in this harness, byte-exact, so the
minibt interoperability tests can reuse the same classes.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from clients import (
    Aria2Peer,
    Client,
    LibtorrentPeer,
    MadeTorrent,
    Opentracker,
    TransmissionPeer,
    assert_same_tree,
    listening_addresses,
    make_payload,
    make_torrent,
    running,
    tree_digest,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("reference_clients")]

MIB = 1 << 20
# ~8 MiB over three files with sizes that are not piece multiples, so the last piece is short and pieces
# span file boundaries.
MULTI_FILE = {"a.bin": 3 * MIB + 12345, "sub/b.bin": 5 * MIB - 777, "sub/deeper/c.txt": 1000}
PIECE_LEN = 256 * 1024
TEST_DEADLINE_S = 45.0


def seeded_torrent(tmp_path: Path, trackers: list[str], layout: dict[str, int] = MULTI_FILE,
                   seed: int = 7) -> MadeTorrent:
    payload = make_payload(tmp_path / "seed" / "payload", layout, seed)
    return make_torrent(payload, tmp_path / "t.torrent", trackers, PIECE_LEN)


def assert_loopback_only(*clients: Client) -> None:
    for c in clients:
        addrs = listening_addresses(c.pid)
        assert addrs, f"{c.name} has no listening sockets"
        bad = {a for a in addrs if not (a.startswith("127.") or a == "::1")}
        assert not bad, f"{c.name} listens on non-loopback addresses {bad}"


def seen_peer_ids(lt_peer: LibtorrentPeer, port: int) -> list[str]:
    """Peer ids libtorrent saw at 127.0.0.1:port (from its seen_peers history: it closes seed-to-seed links)."""
    return [str(p.get("peer_id", "")) for p in lt_peer.status()["seen_peers"] if p["port"] == port]


def test_libtorrent_seeds_to_aria2_through_opentracker_http(tmp_path: Path, opentracker: Opentracker) -> None:
    t0 = time.monotonic()
    t = seeded_torrent(tmp_path, [opentracker.announce_url_http])
    assert not opentracker.is_whitelisted(t.info_hash)
    opentracker.whitelist(t.info_hash)  # SIGHUP reload while running
    seeder = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=tmp_path / "seed", seed=True)
    leecher = Aria2Peer(tmp_path / "aria2", torrent_path=t.path, save_dir=tmp_path / "leech", seed=False)
    with running(seeder):
        seeder.wait_complete(timeout_s=20)
        opentracker.wait_seeders(t.info_hash, 1)
        with running(leecher):
            leecher.wait_complete(timeout_s=TEST_DEADLINE_S)
            assert_loopback_only(opentracker, seeder, leecher)
            assert_same_tree(tmp_path / "seed" / t.name, tmp_path / "leech" / t.name)
            seeder.wait_until(lambda: seeder.status()["total_payload_upload"] >= t.total_size, 10,
                              "upload counter covers the payload")
    assert time.monotonic() - t0 < 60


def test_libtorrent_seeds_to_libtorrent_through_opentracker_udp(tmp_path: Path) -> None:
    t0 = time.monotonic()
    tracker = Opentracker(tmp_path / "opentracker")
    with running(tracker):
        t = seeded_torrent(tmp_path, [tracker.announce_url_udp], {"single.bin": 6 * MIB + 1})
        tracker.whitelist(t.info_hash)
        seeder = LibtorrentPeer(tmp_path / "lt-seed", torrent_path=t.path, save_dir=tmp_path / "seed",
                                seed=True)
        leecher = LibtorrentPeer(tmp_path / "lt-leech", torrent_path=t.path, save_dir=tmp_path / "leech",
                                 seed=False)
        with running(seeder):
            seeder.wait_complete(timeout_s=20)
            tracker.wait_seeders(t.info_hash, 1)  # the UDP announce reached the tracker
            with running(leecher):
                leecher.wait_complete(timeout_s=TEST_DEADLINE_S)
                assert_loopback_only(seeder, leecher)
                assert seeder.port != leecher.port
                assert_same_tree(tmp_path / "seed" / t.name, tmp_path / "leech" / t.name)
                assert leecher.status()["total_payload_download"] >= t.total_size
                # No peers were given: the leecher can only have learnt the seeder's port from the tracker.
                assert any(p["port"] == seeder.port for p in leecher.status()["seen_peers"])
    assert time.monotonic() - t0 < 60


def test_transmission_seeds_to_libtorrent_by_direct_connect(tmp_path: Path) -> None:
    t0 = time.monotonic()
    t = seeded_torrent(tmp_path, [])  # no tracker: the only way to meet is libtorrent dialling
    seeder = TransmissionPeer(tmp_path / "tr", torrent_path=t.path, save_dir=tmp_path / "seed", seed=True)
    with running(seeder):
        assert seeder.status()["percentDone"] == 1.0
        leecher = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=tmp_path / "leech", seed=False,
                                 peers=[("127.0.0.1", seeder.port)])
        with running(leecher):
            leecher.wait_complete(timeout_s=TEST_DEADLINE_S)
            assert_loopback_only(seeder, leecher)
            assert_same_tree(tmp_path / "seed" / t.name, tmp_path / "leech" / t.name)
            assert any(pid.startswith("-TR") for pid in seen_peer_ids(leecher, seeder.port))
    assert time.monotonic() - t0 < 60


def test_aria2_seeds_to_libtorrent_by_direct_connect(tmp_path: Path) -> None:
    t0 = time.monotonic()
    t = seeded_torrent(tmp_path, [])
    seeder = Aria2Peer(tmp_path / "aria2", torrent_path=t.path, save_dir=tmp_path / "seed", seed=True)
    with running(seeder):
        leecher = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=tmp_path / "leech", seed=False)
        with running(leecher):
            leecher.connect("127.0.0.1", seeder.port)  # the stdin command path, after start
            leecher.wait_complete(timeout_s=TEST_DEADLINE_S)
            assert_loopback_only(seeder, leecher)
            assert_same_tree(tmp_path / "seed" / t.name, tmp_path / "leech" / t.name)
            assert any(pid.startswith("A2-") for pid in seen_peer_ids(leecher, seeder.port))
    assert time.monotonic() - t0 < 60


def test_libtorrent_seeds_to_transmission_when_libtorrent_dials(tmp_path: Path) -> None:
    # PROTOCOL.md 7.1: Transmission never dials loopback peers, so the seeder dials Transmission's port.
    t0 = time.monotonic()
    t = seeded_torrent(tmp_path, [])
    leecher = TransmissionPeer(tmp_path / "tr", torrent_path=t.path, save_dir=tmp_path / "leech", seed=False)
    seeder = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=tmp_path / "seed", seed=True)
    with running(leecher, seeder):
        seeder.wait_complete(timeout_s=20)
        seeder.connect("127.0.0.1", leecher.port)
        leecher.wait_complete(timeout_s=TEST_DEADLINE_S)
        assert_same_tree(tmp_path / "seed" / t.name, tmp_path / "leech" / t.name)
    assert time.monotonic() - t0 < 60


def test_aria2_leeches_from_peers_given_through_static_tracker(tmp_path: Path) -> None:
    t0 = time.monotonic()
    t = seeded_torrent(tmp_path, ["http://127.0.0.1:9/announce"])  # a dead tracker that aria2 must skip
    seeder = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=tmp_path / "seed", seed=True)
    with running(seeder):
        seeder.wait_complete(timeout_s=20)
        leecher = Aria2Peer(tmp_path / "aria2", torrent_path=t.path, save_dir=tmp_path / "leech", seed=False,
                            peers=[("127.0.0.1", seeder.port)])
        with running(leecher):
            leecher.wait_complete(timeout_s=TEST_DEADLINE_S)
            assert_same_tree(tmp_path / "seed" / t.name, tmp_path / "leech" / t.name)
    assert time.monotonic() - t0 < 60


def test_payload_is_deterministic_and_tree_compare_detects_a_flipped_byte(tmp_path: Path) -> None:
    a = make_payload(tmp_path / "a", {"x/y.bin": 100_000, "z.bin": 3}, seed=1)
    b = make_payload(tmp_path / "b", {"x/y.bin": 100_000, "z.bin": 3}, seed=1)
    c = make_payload(tmp_path / "c", {"x/y.bin": 100_000, "z.bin": 3}, seed=2)
    assert tree_digest(a) == tree_digest(b) != tree_digest(c)
    assert_same_tree(a, b)
    data = bytearray((b / "x" / "y.bin").read_bytes())
    data[54_321] ^= 1
    (b / "x" / "y.bin").write_bytes(bytes(data))
    with pytest.raises(AssertionError, match="y.bin"):
        assert_same_tree(a, b)
    (b / "extra").write_bytes(b"")
    with pytest.raises(AssertionError, match="extra"):
        assert_same_tree(a, b)


def test_made_torrent_describes_payload(tmp_path: Path) -> None:
    t = seeded_torrent(tmp_path, ["udp://127.0.0.1:1/announce"])
    assert t.name == "payload"
    assert t.total_size == sum(MULTI_FILE.values())
    assert t.num_pieces == -(-t.total_size // PIECE_LEN)
    assert len(bytes.fromhex(t.info_hash)) == 20
