"""The DHT harness, proven with libtorrent alone: a leecher finds a seed through the DHT only (BEP 5).

Everything runs in one sealed network namespace (tests/integration/dhtnet.py): only ``lo``, one
198.18.x.1 address per process, no way out. libtorrent sessions (tests/integration/lt_peer.py):

- router: DHT on, no bootstrap node at all, no torrent;
- seed: DHT on, bootstrap = router only; no tracker, no peers given. It announces the torrent
  (announce_peer) once its DHT has bootstrapped;
- leecher: DHT on, bootstrap = router only; given nothing but the info-hash.

The leecher must get the seed's address from a get_peers reply (peer source "dht"), fetch the metadata
from it and download byte-exact. Afterwards: the namespace still has ``lo`` only, every route goes
through ``lo``, and the nftables trap counted no packet towards any address outside 198.18.0.0/15 and
loopback, i.e. no session even tried a public bootstrap node.

The second test puts a swarm of libtorrent DHT nodes with complete routing tables between them
(``start_lt_dht_swarm``): the seed and the leecher learn those nodes from the router's replies and the
announce and the lookup are iterative, as on the internet.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from clients import LibtorrentPeer, MadeTorrent, assert_same_tree, make_payload, make_torrent, wait_until
from dhtnet import DHT_PORT, DhtNet, lt_dht_peer, start_lt_dht_swarm

pytestmark = pytest.mark.integration

PAYLOAD_BYTES = 2 << 20
PIECE_BYTES = 64 << 10
# Keeps the transfer long enough (~2 s) for the leecher's status to show the seed connected, with its
# peer source. Session limits apply here: 198.18.0.0/15 is not a local network to libtorrent.
SEED_RATE = 1 << 20  # bytes/s
STEP_TIMEOUT_S = 30.0
TOTAL_BUDGET_S = 60.0  # "well under 2 minutes"; typically ~4 s and ~8 s
SWARM_NODES = 6


@pytest.fixture(autouse=True)
def _need_libtorrent() -> None:
    try:
        import libtorrent  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true" or os.environ.get("MINIBT_REQUIRE_CLIENTS") == "1":
            pytest.fail("python libtorrent bindings missing")
        pytest.skip("python libtorrent bindings missing")


def payload(tmp_path: Path) -> tuple[Path, MadeTorrent]:
    """A 2 MiB file in tmp_path/seed-data and its trackerless .torrent."""
    seed_dir = make_payload(tmp_path / "seed-data", {"dht-payload.bin": PAYLOAD_BYTES}, seed=5)
    return seed_dir, make_torrent(seed_dir / "dht-payload.bin", tmp_path / "payload.torrent", [], PIECE_BYTES)


def announced(peers: list[LibtorrentPeer], info_hash: str, ip: str) -> bool:
    """Some DHT node among ``peers`` stored an announce_peer for info_hash from ip."""
    return any(a["info_hash"] == info_hash and a["ip"] == ip
               for p in peers for a in p.dht_status().get("announces_received", []))


def download_through_dht(net: DhtNet, tmp_path: Path, t: MadeTorrent, seed_dir: Path, seed: LibtorrentPeer,
                         leech: LibtorrentPeer, others: list[LibtorrentPeer]) -> None:
    """Start the leecher, wait until it downloads from the seed (source dht) and completes; check it all."""
    seed_ip, leech_ip = seed.listen_ip, leech.listen_ip
    net.start(leech)

    def downloading_from_seed_found_by_dht() -> bool:
        return any(p["ip"] == seed_ip and p["port"] == DHT_PORT and "dht" in p["sources"]
                   and p["total_download"] > 0 for p in leech.status().get("peers", []))

    wait_until(downloading_from_seed_found_by_dht, STEP_TIMEOUT_S,
               "the leecher to download from the seed it found through the DHT", [leech, seed, *others])
    leech.wait_complete(STEP_TIMEOUT_S)

    assert_same_tree(seed_dir / t.name, leech.save_dir / t.name)
    st = leech.status()
    assert st["info_hash"] == t.info_hash and st["has_metadata"] is True
    # get_peers replies may also hand the leecher its own announce: libtorrent dials it and drops it
    # ("connected to ourselves", PROTOCOL.md 7.3). Any other peer it knew is the seed, learnt from the DHT.
    seen = st["seen_peers"]
    assert {p["ip"] for p in seen} - {leech_ip} == {seed_ip}, f"the leecher knew other peers: {seen}"
    from_seed = [p for p in seen if p["ip"] == seed_ip]
    assert all(p["sources"] == ["dht"] for p in from_seed), from_seed
    assert any(p["total_download"] > 0 for p in from_seed), from_seed  # last value seen before the close
    leech_dht = leech.dht_status()
    assert leech_dht["bootstrapped"] and leech_dht["reply_peers"] >= 1, leech_dht
    # Each process is one host: the seed saw the leecher's connection come from the leecher's address.
    seed_seen = seed.status()["seen_peers"]
    assert any(p["ip"] == leech_ip and p.get("total_upload", 0) > 0 for p in seed_seen), seed_seen


def test_leecher_finds_seed_through_dht_only(dht_netns: DhtNet, tmp_path: Path) -> None:
    net = dht_netns
    t0 = time.monotonic()
    seed_dir, t = payload(tmp_path)
    router = lt_dht_peer(net, tmp_path / "router", 1, [])
    router_ep = (router.listen_ip, DHT_PORT)
    seed = lt_dht_peer(net, tmp_path / "seed", 2, [router_ep], torrent_path=t.path, save_dir=seed_dir, seed=True,
                       extra_settings={"upload_rate_limit": SEED_RATE})
    leech = lt_dht_peer(net, tmp_path / "leech", 3, [router_ep], info_hash=t.info_hash,
                        save_dir=tmp_path / "leech-data")

    net.start(router)
    net.start(seed)
    seed.wait_complete(STEP_TIMEOUT_S)  # data checked, seeding
    wait_until(lambda: announced([router], t.info_hash, seed.listen_ip), STEP_TIMEOUT_S,
               "the router to store the seed's announce_peer", [router, seed])
    download_through_dht(net, tmp_path, t, seed_dir, seed, leech, [router])
    elapsed = time.monotonic() - t0

    announcers = {(a["ip"], a["port"]) for a in router.dht_status()["announces_received"]
                  if a["info_hash"] == t.info_hash}
    assert announcers <= {(seed.listen_ip, DHT_PORT), (leech.listen_ip, DHT_PORT)}, announcers
    net.assert_sealed()
    assert net.counter("inside") > 0  # the counters do see the traffic that flowed
    assert elapsed < TOTAL_BUDGET_S, f"took {elapsed:.1f} s"


def test_leecher_finds_seed_through_a_dht_swarm(dht_netns: DhtNet, tmp_path: Path) -> None:
    net = dht_netns
    t0 = time.monotonic()
    seed_dir, t = payload(tmp_path)
    swarm = start_lt_dht_swarm(net, tmp_path / "swarm", SWARM_NODES)  # hosts 1 .. 1 + SWARM_NODES
    assert [p.dht_status()["nodes"] for p in swarm.all] == [SWARM_NODES] + [SWARM_NODES - 1] * SWARM_NODES

    first = SWARM_NODES + 2
    seed = lt_dht_peer(net, tmp_path / "seed", first, [swarm.router_ep], torrent_path=t.path, save_dir=seed_dir,
                       seed=True, extra_settings={"upload_rate_limit": SEED_RATE})
    leech = lt_dht_peer(net, tmp_path / "leech", first + 1, [swarm.router_ep], info_hash=t.info_hash,
                        save_dir=tmp_path / "leech-data")
    net.start(seed)
    seed.wait_complete(STEP_TIMEOUT_S)
    wait_until(lambda: announced(swarm.nodes, t.info_hash, seed.listen_ip), STEP_TIMEOUT_S,
               "a swarm node (not only the router) to store the seed's announce_peer", [seed, *swarm.all])
    # The seed joined with only the router as bootstrap node and learnt the swarm from its replies.
    wait_until(lambda: seed.dht_status().get("nodes", 0) >= SWARM_NODES // 2, STEP_TIMEOUT_S,
               "the seed's routing table to fill from the router's replies", [seed])
    download_through_dht(net, tmp_path, t, seed_dir, seed, leech, swarm.all)
    elapsed = time.monotonic() - t0

    assert leech.dht_status()["nodes"] >= SWARM_NODES // 2, leech.dht_status()
    net.assert_sealed()
    assert elapsed < TOTAL_BUDGET_S, f"took {elapsed:.1f} s"
