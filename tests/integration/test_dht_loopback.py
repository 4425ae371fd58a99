"""Issue 12 on loopback: minibt processes find each other through the Mainline DHT (BEP 5) alone.

A DHT "router" (minibt's own DhtNode on a UDP socket, driven by a thread of this test) is the only
bootstrap node.  A minibt seeder announces its torrent to the DHT; a minibt leecher given a magnet
link with nothing but the info-hash (no tracker, no x.pe) finds the seeder through the router,
fetches the metadata and downloads byte-exact.  Then the leecher is restarted with no bootstrap
node at all and rejoins from the dht.dat it saved.  Every address is on 127.0.0.0/8; the test's
conftest leaves MINIBT_DHT_BOOTSTRAP empty, so nothing but the router is ever contacted.
"""

from __future__ import annotations

import hashlib
import random
import re
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import assert_same_tree, make_payload, wait_until
from minibt_proc import MinibtProc

from minibt.dht import DhtNode
from minibt.metainfo import create_torrent, parse_metainfo
from minibt.urls import Addr

ROUTER_IP, SEED_IP, LEECH_IP = "127.0.0.9", "127.0.0.10", "127.0.0.11"
DEADLINE_S = 60.0


class Router:
    """A DhtNode on a loopback UDP socket, run by a thread (the test's bootstrap node)."""

    def __init__(self, ip: str = ROUTER_IP) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, 0))
        self.sock.setblocking(False)
        self.addr: Addr = self.sock.getsockname()[:2]
        self.node = DhtNode(node_id=hashlib.sha1(b"router").digest(), rng=random.Random(1), now=time.monotonic())
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        while not self._stop.is_set():
            sel.select(0.05)
            with self.lock:
                now = time.monotonic()
                while True:
                    try:
                        data, src = self.sock.recvfrom(4096)
                    except BlockingIOError:
                        break
                    self.node.receive(data, src[:2], now=now)
                self.node.handle_timeout(now=now)
                for data, dst in self.node.datagrams_to_send():
                    self.sock.sendto(data, dst)
        sel.close()

    def stored(self, info_hash: bytes) -> int:
        with self.lock:
            return len(self.node.store.get(info_hash, random.Random(0), now=time.monotonic()))

    def table_size(self) -> int:
        with self.lock:
            return len(self.node.table)

    def __enter__(self) -> Router:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def router() -> Iterator[Router]:
    with Router() as r:
        yield r


def test_leecher_finds_the_seeder_through_the_dht_only(router: Router, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_payload(src, {"dht.bin": 3 * (1 << 20) + 4321}, seed=12)
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(create_torrent(str(src / "dht.bin"), piece_length=64 << 10))
    meta = parse_metainfo(torrent.read_bytes())
    boot = ["--dht-bootstrap", f"{router.addr[0]}:{router.addr[1]}"]
    seeder = MinibtProc(tmp_path / "seed", command="seed", torrent=torrent, data_dir=src, bind=SEED_IP,
                        extra_args=boot)
    with seeder:
        # the seeder's first search ends with an announce_peer to the closest node it knows: the router
        wait_until(lambda: router.stored(meta.info_hash) >= 1, DEADLINE_S, "the seeder's announce at the router",
                   [seeder])
        magnet = f"magnet:?xt=urn:btih:{meta.info_hash.hex()}"
        state = tmp_path / "leech-state"
        leecher = MinibtProc(tmp_path / "leech", command="download", torrent=Path(magnet),
                             data_dir=tmp_path / "dl", state_dir=state, bind=LEECH_IP, extra_args=boot,
                             timeout_s=DEADLINE_S)
        with leecher:
            assert leecher.wait_exit(DEADLINE_S + 10) == 0, leecher.log_tail()
        assert_same_tree(src, tmp_path / "dl")
        assert (state / "dht.dat").stat().st_size > 20  # our id and the nodes we knew, for the next start

        # Restart with no bootstrap node at all (MINIBT_DHT_BOOTSTRAP is empty): the table saved in
        # dht.dat (the router, the seeder) is enough to rejoin, search, and find the seeder again --
        # no tracker, no --peer: the connection to it (both seeds, closed at once) came from the DHT.
        again = MinibtProc(tmp_path / "leech2", command="seed", torrent=torrent, data_dir=tmp_path / "dl",
                           state_dir=state, bind=LEECH_IP)
        with again:
            wait_until(lambda: re.search(rf"peer {re.escape(SEED_IP)}:{seeder.port} \(#\d+\) disconnected: BOTH_SEEDS",
                                         again.log_text()), 20, "the restarted node to find the seeder", [again])


def test_bep32_the_same_over_ipv6(tmp_path: Path) -> None:
    """BEP 32: every process on ::1 (its DHT answers carry nodes6 and 18-byte values)."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    src = tmp_path / "src"
    make_payload(src, {"v6.bin": (1 << 20) + 99}, seed=13)
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(create_torrent(str(src / "v6.bin"), piece_length=64 << 10))
    meta = parse_metainfo(torrent.read_bytes())
    with Router("::1") as router:
        boot = ["--dht-bootstrap", f"[::1]:{router.addr[1]}"]
        seeder = MinibtProc(tmp_path / "seed", command="seed", torrent=torrent, data_dir=src, bind="::1",
                            extra_args=boot)
        with seeder:
            wait_until(lambda: router.stored(meta.info_hash) >= 1, DEADLINE_S, "the seeder's announce at the router",
                       [seeder])
            leecher = MinibtProc(tmp_path / "leech", command="download",
                                 torrent=Path(f"magnet:?xt=urn:btih:{meta.info_hash.hex()}"),
                                 data_dir=tmp_path / "dl", bind="::1", extra_args=boot, timeout_s=DEADLINE_S)
            with leecher:
                assert leecher.wait_exit(DEADLINE_S + 10) == 0, leecher.log_tail()
    assert_same_tree(src, tmp_path / "dl")
