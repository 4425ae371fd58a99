"""Downloads over a long path (issue 15): the write cache's reservation follows rate x round trip.

Every started piece counts as a whole write-cache buffer, so the cache (3 MiB then, 1 MiB now) bounded
the requests in flight: 30 MiB/s at most from a peer 100 ms away, however fast its link.  download.py
now lets the pieces started grow to twice what the peers deliver in their round trips (each peer's round
trip timed from a request sent to an idle pipeline), up to ``TorrentConfig.cache_reserve_max``, and to
3 MiB at once from a far peer's first round trip; a cache size the user set stays a hard bound.
Simulated network, FakeClock.
"""

from __future__ import annotations

import random
from pathlib import Path

from helpers import FakeClock
from simnet import KiB, LinkSpec, MiB, SimNet, make_payload, make_torrent, same_files

from minibt.settings import TorrentConfig, TorrentState
from minibt.storage import default_cache_bytes

PIECE = 256 * KiB
SIZE = 160 * MiB + 777
ONE_WAY_S = 0.05  # a 100 ms round trip
LINK = 64 * MiB  # the seeder's upload: far more than 3 MiB per round trip
RAMP = 32 * MiB  # the pipeline grows with the measured rate first (its 5 s average); rates after this


def _download(tmp_path: Path, clock: FakeClock, rng: random.Random, name: str, *, one_way_s: float,
              config: TorrentConfig) -> tuple[float, int, dict[str, int], float]:
    """(MiB/s after the first RAMP bytes, most pieces started at once, storage stats, the leecher's
    min_latency of the seeder)."""
    src = tmp_path / "src"
    if not (src / "payload").exists():
        make_payload(src / "payload", {"a.bin": SIZE}, seed=5)
    meta = make_torrent(src / "payload", PIECE)
    net = SimNet(clock, rng)
    big = 16 * MiB  # socket buffers as large as a tuned long-path TCP: the requests are the limit
    seed = net.add_peer("seed", "127.0.0.2", link=LinkSpec(up_Bps=LINK, latency_s=one_way_s, window=big))
    st = net.add_torrent(seed, meta, src, mode="seed")
    assert net.run_until(lambda: st.state is TorrentState.SEEDING, 1.0)
    leech = net.add_peer("leech", "127.0.0.3", link=LinkSpec(latency_s=one_way_s, window=big))
    lt = net.add_torrent(leech, meta, tmp_path / name, mode="download", config=config)
    net.add_peers(leech, [("127.0.0.2", 6881)])
    t_ramp = 0.0
    most = 0
    latency = float("inf")

    def done() -> bool:
        nonlocal most, latency, t_ramp
        if not t_ramp and lt.stats.downloaded >= RAMP:
            t_ramp = net.now
        s = lt.picker.stats()
        most = max(most, s["partial"] + s["hashing"])
        latency = min([latency, *(p.min_latency for p in lt.peers.values())])
        return lt.state is TorrentState.SEEDING

    net.must_run_until(done, 120)
    assert same_files(meta, src, tmp_path / name)
    return (SIZE - RAMP) / (net.now - t_ramp) / MiB, most, lt.storage.stats(), latency


def test_a_long_path_starts_more_pieces_than_the_cache_holds_and_downloads_faster(
        tmp_path: Path, clock: FakeClock, rng: random.Random) -> None:
    cache = default_cache_bytes(PIECE)
    assert cache == 1 * MiB
    fixed_rate, fixed_most, fixed_stats, _ = _download(tmp_path, clock, rng, "fixed", one_way_s=ONE_WAY_S,
                                                   config=TorrentConfig(cache_bytes=cache))
    auto_rate, auto_most, auto_stats, latency = _download(tmp_path, clock, rng, "auto", one_way_s=ONE_WAY_S,
                                                      config=TorrentConfig())
    # the cache size set by hand bounds the pieces started, and with them the requests in flight
    assert fixed_most <= cache // PIECE and fixed_stats["peak_cache_bytes"] <= cache
    assert fixed_rate <= cache / (2 * ONE_WAY_S) / MiB  # at most one cache per round trip: 10 MiB/s
    # the default cache's reservation grew past it, within cache_reserve_max
    assert 0.1 <= latency < 0.12  # a round trip plus sending the first block
    reserve_max = TorrentConfig().cache_reserve_max
    assert cache // PIECE < auto_most <= reserve_max // PIECE
    assert auto_stats["peak_cache_bytes"] <= reserve_max
    assert auto_rate > 0.75 * LINK / MiB > 1.5 * fixed_rate, (auto_rate, fixed_rate)


def test_a_short_path_keeps_the_write_cache_as_the_bound(tmp_path: Path, clock: FakeClock,
                                                         rng: random.Random) -> None:
    """2 ms each way (a LAN): twice rate x round trip stays under the cache, which alone bounds it."""
    cache = default_cache_bytes(PIECE)
    _, most, stats, latency = _download(tmp_path, clock, rng, "lan", one_way_s=0.002, config=TorrentConfig())
    assert latency < 0.01
    assert most <= cache // PIECE and stats["peak_cache_bytes"] <= cache


def test_many_far_seeders_stay_within_the_reservation_ceiling(tmp_path: Path, clock: FakeClock,
                                                              rng: random.Random) -> None:
    """A dozen seeders 100 ms away, each answering its own pieces: the reservation grows to its ceiling
    and no further; the pieces in memory and the pieces started stay within it."""
    make_payload(tmp_path / "src" / "payload", {"a.bin": 24 * MiB + 333}, seed=9)
    meta = make_torrent(tmp_path / "src" / "payload", PIECE)
    net = SimNet(clock, rng)
    seeders = 12
    far = LinkSpec(up_Bps=4 * MiB, latency_s=ONE_WAY_S, window=8 * MiB)
    for i in range(seeders):
        p = net.add_peer(f"seed{i}", f"127.0.0.{i + 2}", link=far)
        t = net.add_torrent(p, meta, tmp_path / "src", mode="seed")
        assert net.run_until(lambda t=t: t.state is TorrentState.SEEDING, 1.0)
    leech = net.add_peer("leech", "127.0.1.1", link=LinkSpec(latency_s=ONE_WAY_S, window=8 * MiB))
    lt = net.add_torrent(leech, meta, tmp_path / "leech", mode="download", config=TorrentConfig(max_peers=seeders))
    net.add_peers(leech, [(f"127.0.0.{i + 2}", 6881) for i in range(seeders)])
    ceiling = TorrentConfig().cache_reserve_max
    most = 0

    def done() -> bool:
        nonlocal most
        s = lt.picker.stats()
        most = max(most, s["partial"] + s["hashing"])
        return lt.state is TorrentState.SEEDING

    net.must_run_until(done, 120)
    assert same_files(meta, tmp_path / "src", tmp_path / "leech")
    assert default_cache_bytes(PIECE) // PIECE < most <= ceiling // PIECE  # it grew, to the ceiling at most
    assert lt.storage.stats()["peak_cache_bytes"] <= ceiling
