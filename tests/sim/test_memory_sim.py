"""Memory ceilings with many peers sending at once (issue 10): simulated swarm, FakeClock."""

from __future__ import annotations

import random
from pathlib import Path

from helpers import FakeClock
from simnet import KiB, LinkSpec, MiB, SimNet, make_payload, make_torrent, same_files

from minibt.settings import TorrentConfig, TorrentState

PIECE_LEN = 32 * KiB
CACHE_PIECES = 4
SEEDERS = 12


def test_pieces_in_memory_stay_within_the_write_cache_with_many_seeders(
    tmp_path: Path, clock: FakeClock, rng: random.Random
) -> None:
    """Every requested piece takes a whole buffer once its first block arrives: with a dozen seeders
    each asking for its own piece, the requests alone would start 12+ pieces; the cache allows 4."""
    make_payload(tmp_path / "src" / "payload", {"a.bin": 3 * MiB + 777}, seed=3)
    meta = make_torrent(tmp_path / "src" / "payload", PIECE_LEN)
    net = SimNet(clock, rng)
    fast = LinkSpec(up_Bps=32 * MiB, latency_s=0.02)
    for i in range(SEEDERS):
        p = net.add_peer(f"seed{i}", f"127.0.0.{i + 2}", link=fast)
        t = net.add_torrent(p, meta, tmp_path / "src", mode="seed")
        assert net.run_until(lambda t=t: t.state is TorrentState.SEEDING, 1.0)
    leech = net.add_peer("leech", "127.0.1.1")
    cache = CACHE_PIECES * PIECE_LEN
    lt = net.add_torrent(leech, meta, tmp_path / "leech", mode="download",
                         config=TorrentConfig(cache_bytes=cache, max_peers=SEEDERS))
    net.add_peers(leech, [(f"127.0.0.{i + 2}", 6881) for i in range(SEEDERS)])
    most_started = most_conns = 0

    def done() -> bool:
        nonlocal most_started, most_conns
        started = lt.picker.stats()["partial"] + lt.picker.stats()["hashing"]
        most_started = max(most_started, started)
        most_conns = max(most_conns, len(leech.session.conns))
        return lt.complete

    net.must_run_until(done, 60)
    assert same_files(meta, tmp_path / "src", tmp_path / "leech")
    assert lt.storage.stats()["peak_cache_bytes"] <= cache
    assert most_started <= CACHE_PIECES
    assert most_conns >= 2 * CACHE_PIECES  # the cap did not come from having few peers
