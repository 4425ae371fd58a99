"""Issue 12: minibt's DHT (BEP 5) against libtorrent's, both directions, in a sealed network namespace.

The namespace (tests/integration/dhtnet.py) has only ``lo`` and one 198.18.x.1 address per process;
an nftables trap counts any packet towards an address outside it (there must be none: no public
bootstrap node is ever contacted).  A libtorrent DHT node is the only bootstrap node of everyone.

1. A libtorrent seed announces a trackerless torrent to the DHT; minibt, given a magnet link with
   nothing but ``xt``, finds it through the DHT, fetches the metadata and downloads byte-exact.
2. A minibt seed announces the torrent to the DHT; a libtorrent leecher given only the info-hash
   finds it (peer source ``dht``) and downloads byte-exact.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from clients import LibtorrentPeer, MadeTorrent, assert_same_tree, make_payload, make_torrent, wait_until
from dhtnet import DHT_PORT, DhtNet, lt_dht_peer
from minibt_proc import MinibtProc

pytestmark = pytest.mark.integration

PAYLOAD_BYTES = 2 << 20
PIECE_BYTES = 64 << 10
STEP_TIMEOUT_S = 45.0
# ~2 s for the payload: long enough for libtorrent's periodic peer list to show the transfer and the
# peer's source (198.18.0.0/15 is not a local network to libtorrent, so its limits apply).
SEED_RATE = 1 << 20


@pytest.fixture(autouse=True)
def _need_libtorrent() -> None:
    try:
        import libtorrent  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true" or os.environ.get("MINIBT_REQUIRE_CLIENTS") == "1":
            pytest.fail("python libtorrent bindings missing")
        pytest.skip("python libtorrent bindings missing")


class MinibtInNs(MinibtProc):
    """A minibt CLI process inside the namespace (``ip netns exec`` execs it: the PID is minibt's)."""

    def __init__(self, net: DhtNet, *args: object, **kw: object) -> None:
        self.net = net
        super().__init__(*args, **kw)  # type: ignore[arg-type]

    def _spawn(self, argv: Sequence[str], **kw: object):  # type: ignore[no-untyped-def]
        return super()._spawn(self.net.exec_argv(argv), **kw)  # type: ignore[arg-type]


def payload(tmp_path: Path) -> tuple[Path, MadeTorrent]:
    seed_dir = make_payload(tmp_path / "seed-data", {"dht-interop.bin": PAYLOAD_BYTES}, seed=8)
    return seed_dir, make_torrent(seed_dir / "dht-interop.bin", tmp_path / "payload.torrent", [], PIECE_BYTES)


def announced(node: LibtorrentPeer, info_hash: str, ip: str) -> bool:
    return any(a["info_hash"] == info_hash and a["ip"] == ip for a in node.dht_status().get("announces_received", []))


def test_minibt_finds_a_libtorrent_seed_through_the_dht(dht_netns: DhtNet, tmp_path: Path) -> None:
    net = dht_netns
    seed_dir, t = payload(tmp_path)
    router = net.start(lt_dht_peer(net, tmp_path / "router", 1, []))
    assert isinstance(router, LibtorrentPeer)
    boot = (router.listen_ip, DHT_PORT)
    seed = lt_dht_peer(net, tmp_path / "seed", 2, [boot], torrent_path=t.path, save_dir=seed_dir, seed=True,
                       extra_settings={"upload_rate_limit": SEED_RATE})
    net.start(seed)
    seed.wait_complete(STEP_TIMEOUT_S)
    wait_until(lambda: announced(router, t.info_hash, seed.listen_ip), STEP_TIMEOUT_S,
               "the libtorrent seed's announce_peer at the router", [router, seed])

    me = net.host(3)
    mb = MinibtInNs(net, tmp_path / "mb", command="download", torrent=Path(f"magnet:?xt=urn:btih:{t.info_hash}"),
                    data_dir=tmp_path / "mb-data", bind=me, timeout_s=STEP_TIMEOUT_S,
                    extra_args=["--dht-bootstrap", f"{boot[0]}:{boot[1]}"])
    net.adopt(mb)
    with mb:
        assert mb.wait_exit(STEP_TIMEOUT_S + 15) == 0, mb.log_tail()
    assert_same_tree(seed_dir, tmp_path / "mb-data")
    # The only way minibt could know the seed: no tracker, no x.pe, no --peer -- a get_peers reply.
    wait_until(lambda: any(p["ip"] == me and p.get("total_upload", 0) > 0 for p in seed.status()["seen_peers"]),
               STEP_TIMEOUT_S, "the seed's status to show the upload to minibt", [seed])
    net.assert_sealed()


def test_libtorrent_finds_a_minibt_seed_through_the_dht(dht_netns: DhtNet, tmp_path: Path) -> None:
    net = dht_netns
    seed_dir, t = payload(tmp_path)
    router = net.start(lt_dht_peer(net, tmp_path / "router", 1, []))
    assert isinstance(router, LibtorrentPeer)
    boot = (router.listen_ip, DHT_PORT)
    me = net.host(2)
    mb = MinibtInNs(net, tmp_path / "mb", command="seed", torrent=t.path, data_dir=seed_dir, bind=me,
                    extra_args=["--dht-bootstrap", f"{boot[0]}:{boot[1]}", "--up-limit", str(SEED_RATE)])
    net.adopt(mb)
    with mb:
        wait_until(lambda: announced(router, t.info_hash, me), STEP_TIMEOUT_S,
                   "minibt's announce_peer at the libtorrent router", [router, mb])
        leech = lt_dht_peer(net, tmp_path / "leech", 3, [boot], info_hash=t.info_hash, save_dir=tmp_path / "lt-data")
        net.start(leech)
        wait_until(lambda: any(p["ip"] == me and p.get("sources") == ["dht"] and p.get("total_download", 0) > 0
                               for p in leech.status()["seen_peers"]),
                   STEP_TIMEOUT_S, "the leecher to download from minibt, found through the DHT", [leech, mb])
        leech.wait_complete(STEP_TIMEOUT_S)
        from_me = [p for p in leech.status()["seen_peers"] if p["ip"] == me]
        assert all(p.get("sources", ["dht"]) == ["dht"] for p in from_me), from_me
    assert_same_tree(seed_dir / t.name, tmp_path / "lt-data" / t.name)
    net.assert_sealed()
