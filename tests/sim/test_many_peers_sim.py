"""Swarms of many peers under the write cache (issue 15): lean pipelines (download.py ``_update_pipeline``).

Every started piece takes a whole buffer of the write cache, and a pipeline holds a second of its peer's
rate plus 16 blocks.  With many peers the first ones to ask took every block the 3 MiB cache let out, and a
slow peer's blocks kept pieces in it for seconds.  Before the change these swarms gave 1.8 MiB/s of 7.5
(30 peers at 256 KiB/s) and 0.6 MiB/s of 5.9 (one 4 MiB/s peer among 30 at 64 KiB/s).  Simulated network,
FakeClock, the default write cache.
"""

from __future__ import annotations

import random
from pathlib import Path

from helpers import FakeClock
from simnet import KiB, LinkSpec, MiB, SimNet, make_payload, make_torrent, same_files

from minibt.settings import TorrentConfig, TorrentState
from minibt.storage import default_cache_bytes
from minibt.torrent import Torrent

PIECE = 256 * KiB
ONE_WAY_S = 0.05  # 100 ms round trips


def _swarm(tmp_path: Path, clock: FakeClock, rng: random.Random, size: int, seeders: list[float],
           one_way: list[float] | None = None) -> tuple[float, Torrent, dict[str, int]]:
    """Seeders uploading ``seeders[i]`` bytes/s each, 100 ms from the leecher (or ``one_way[i]`` s each way);
    returns once it has every piece: MiB/s from the first dial, the leecher, and the bytes each seeder's
    address delivered."""
    make_payload(tmp_path / "src" / "payload", {"a.bin": size}, seed=3)
    meta = make_torrent(tmp_path / "src" / "payload", PIECE)
    net = SimNet(clock, rng)
    addrs = []
    for i, up in enumerate(seeders):
        ip = f"127.0.{i // 200}.{i % 200 + 2}"
        delay = ONE_WAY_S if one_way is None else one_way[i]
        p = net.add_peer(f"seed{i}", ip, link=LinkSpec(up_Bps=up, latency_s=delay, window=1 * MiB))
        t = net.add_torrent(p, meta, tmp_path / "src", mode="seed")
        assert net.run_until(lambda t=t: t.state is TorrentState.SEEDING, 1.0)
        addrs.append((ip, 6881))
    leech = net.add_peer("leech", "127.0.9.1", link=LinkSpec(latency_s=0.0 if one_way else ONE_WAY_S,
                                                             window=1 * MiB))
    lt = net.add_torrent(leech, meta, tmp_path / "leech", mode="download",
                         config=TorrentConfig(max_peers=len(seeders)))
    t0 = net.now
    net.add_peers(leech, addrs)
    got: dict[str, int] = {}

    def done() -> bool:
        for p in lt.peers.values():
            got[p.ip] = p.down.total
        return lt.state is TorrentState.SEEDING

    net.must_run_until(done, 600)
    assert same_files(meta, tmp_path / "src", tmp_path / "leech")
    # the bound: the write cache, or the reservation's ceiling (pieces started, download.py)
    assert lt.storage.stats()["peak_cache_bytes"] <= max(default_cache_bytes(PIECE), TorrentConfig().cache_reserve_max)
    return size / (net.now - t0) / MiB, lt, got


def test_many_equal_peers_share_the_write_cache(tmp_path: Path, clock: FakeClock, rng: random.Random) -> None:
    """30 peers at 256 KiB/s: the blocks the cache lets out are spread over most of them."""
    size, n, up = 32 * MiB, 30, 256 * KiB
    rate, _, got = _swarm(tmp_path, clock, rng, size, [up] * n)
    assert rate > 0.4 * n * up / MiB, rate  # 5.4 MiB/s of 7.5 here; 4.0 with no room per peer, 1.8 before lean
    assert sum(1 for b in got.values() if b >= size // n // 2) >= 2 * n // 3, sorted(got.values())


def test_slow_peers_do_not_hold_a_fast_one_back(tmp_path: Path, clock: FakeClock, rng: random.Random) -> None:
    """One 4 MiB/s peer among 30 at 64 KiB/s: the slow ones' requests go back to it while the cache is short,
    and from the start it has a piece of room (a newcomer's) while the slow ones hold theirs."""
    size, fast = 32 * MiB, 4 * MiB
    rate, _, got = _swarm(tmp_path, clock, rng, size, [fast] + [64 * KiB] * 30)
    assert rate > 0.7 * fast / MiB, rate  # 3.1 MiB/s here; 2.4 with no room for newcomers, 0.6 before lean
    assert got["127.0.0.2"] > size // 2  # the fast peer sent most of it


def test_very_slow_peers_beside_two_fast_ones(tmp_path: Path, clock: FakeClock, rng: random.Random) -> None:
    """Two 8 MiB/s peers among 20 at 32 KiB/s (a block takes them half a second): the fast ones get the cache."""
    size, fast = 48 * MiB, 8 * MiB
    rate, _, got = _swarm(tmp_path, clock, rng, size, [fast] * 2 + [32 * KiB] * 20)
    assert rate > 0.5 * 2 * fast / MiB, rate  # 9.1 MiB/s here; 7.5 with no room for newcomers, 5.7 before
    assert got["127.0.0.2"] + got["127.0.0.3"] > 0.9 * size


def test_far_peers_as_fast_as_near_ones_are_not_left_out(tmp_path: Path, clock: FakeClock,
                                                         rng: random.Random) -> None:
    """Ten peers at 1 MiB/s, five 20 ms away and five 300 ms away: the far ones' pipelines cover their round
    trip and each delivering peer has a piece's room in the cache, so the far half sends its share."""
    size, n = 48 * MiB, 10
    rate, _, got = _swarm(tmp_path, clock, rng, size, [MiB] * n, one_way=[0.01] * 5 + [0.15] * 5)
    far = sum(b for ip, b in got.items() if int(ip.rsplit(".", 1)[1]) >= 7)
    assert rate > 0.65 * n, rate  # 8.2 MiB/s here; 4.9 when the far peers were left out for their round trip
    assert far > 0.3 * size, far


def test_rate_limited_peers_on_a_lan_each_keep_a_piece_coming(tmp_path: Path, clock: FakeClock,
                                                              rng: random.Random) -> None:
    """Eight seeders at 4 MiB/s each, 1 ms away (a LAN): a token bucket answers the first block of a request at
    once, so the round trip shows nothing of the queue at the seeder, and the 1 MiB cache would start one piece
    per peer, which then idles at each piece's end; with several peers the reservation keeps its floor."""
    size, n = 64 * MiB, 8
    rate, _, _ = _swarm(tmp_path, clock, rng, size, [4 * MiB] * n, one_way=[0.001] * n)
    assert rate > 0.8 * n * 4, rate  # 28.0 MiB/s here; 25.5 with the 1 MiB cache alone
