"""Issue 12: 200 minibt DHT nodes (dht.py) on a simulated datagram network with a fake clock.

Every node bootstraps from one well-known node.  One node announces an info-hash; another, from a
cold start, finds it with an iterative get_peers in a bounded number of queries and a bounded
(simulated) time.  Then a fifth of the nodes leave without a word and the rest heal: lookups still
succeed and the dead nodes drop out of the tables.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random

import pytest

from minibt.dht import QUERY_TIMEOUT_S, DhtNode, PeersFound
from minibt.urls import Addr

LATENCY_S = 0.02  # one way
TICK_S = 0.25  # minibt.loop.TICK_S


class DhtNet:
    """Nodes by address; datagrams delivered after LATENCY_S, in order; dead nodes swallow them."""

    def __init__(self, n: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.nodes: dict[Addr, DhtNode] = {}
        self.dead: set[Addr] = set()
        self._q: list[tuple[float, int, bytes, Addr, Addr]] = []
        self._seq = itertools.count()
        self.sent = 0
        boot: Addr = ("10.0.1.1", 6881)  # the first node
        for i in range(n):
            addr = (f"10.0.{1 + i // 250}.{1 + i % 250}", 6881)
            node_id = hashlib.sha1(f"node {seed} {i}".encode()).digest()
            self.nodes[addr] = DhtNode(node_id=node_id, rng=random.Random(seed * 1000 + i), now=0.0,
                                       bootstrap=() if addr == boot else (boot,))
        self.boot = boot

    def _collect(self, src: Addr) -> None:
        node = self.nodes[src]
        for data, dst in node.datagrams_to_send():
            if src in self.dead:
                continue
            self.sent += 1
            heapq.heappush(self._q, (self.now + LATENCY_S, next(self._seq), data, src, dst))

    def run(self, seconds: float, until: object = None) -> bool:
        end = self.now + seconds
        next_tick = self.now
        for src in self.nodes:  # what commands since the last run queued
            self._collect(src)
        while self.now < end:
            if self._q and self._q[0][0] <= next_tick:
                at, _, data, src, dst = heapq.heappop(self._q)
                self.now = max(self.now, at)
                node = self.nodes.get(dst)
                if node is not None and dst not in self.dead:
                    node.receive(data, src, now=self.now)
                    self._collect(dst)
            else:
                self.now = next_tick
                next_tick += TICK_S
                for addr, node in self.nodes.items():
                    if addr not in self.dead:
                        node.handle_timeout(now=self.now)
                        self._collect(addr)
                if callable(until) and until():
                    return True
        return False


@pytest.fixture(scope="module")
def net() -> DhtNet:
    net = DhtNet(200, seed=5)
    for addr, node in net.nodes.items():
        if addr != net.boot:
            node.bootstrap(now=net.now)
            net.run(0.05)  # nodes join one after the other, 50 ms apart
    net.run(30.0)
    return net


def test_tables_fill_after_bootstrap(net: DhtNet) -> None:
    sizes = sorted(len(n.table) for n in net.nodes.values())
    assert sizes[len(sizes) // 2] >= 16, sizes  # median table: at least two full buckets' worth
    assert sizes[0] >= 8, sizes


def test_a_cold_node_finds_an_announced_peer_in_bounded_queries(net: DhtNet) -> None:
    info_hash = hashlib.sha1(b"the torrent").digest()
    addrs = list(net.nodes)
    seeder, leecher_addr = addrs[17], addrs[123]
    net.nodes[seeder].search(info_hash, now=net.now, announce_port=51413)
    assert net.run(30.0, until=lambda: not net.nodes[seeder].searching(info_hash))
    net.run(1.0)  # the announce_peer queries arrive
    assert sum(len(n.store) for n in net.nodes.values()) >= 4  # the K closest stored it (most of them)

    # a cold node: a fresh id, only the bootstrap node known
    cold = DhtNode(node_id=hashlib.sha1(b"cold").digest(), rng=random.Random(9), now=net.now, bootstrap=(net.boot,))
    net.nodes[("10.9.9.9", 6881)] = cold
    start, sent0 = net.now, net.sent
    cold.bootstrap(now=net.now)
    cold.search(info_hash, now=net.now)
    found: list[PeersFound] = []

    def got_peer() -> bool:
        found.extend(cold.take_found())
        return any(f.peers for f in found)

    assert net.run(20.0, until=got_peer), cold.stats(net.now)
    elapsed = net.now - start
    peers = {p for f in found for p in f.peers}
    assert (seeder[0], 51413) in peers
    assert elapsed < 5.0, elapsed  # a few round trips of 40 ms, not timeouts
    queries = cold.stats(net.now)["queries_out"]
    assert queries <= 60, queries
    assert net.sent - sent0 < 400
    del net.nodes[("10.9.9.9", 6881)]
    _ = leecher_addr


def test_the_swarm_heals_when_a_fifth_of_the_nodes_leave(net: DhtNet) -> None:
    rng = random.Random(3)
    victims = rng.sample([a for a in net.nodes if a != net.boot], 40)
    net.dead.update(victims)
    info_hash = hashlib.sha1(b"after the churn").digest()
    addrs = [a for a in net.nodes if a not in net.dead]
    seeder, leecher = net.nodes[addrs[5]], net.nodes[addrs[150]]
    seeder.search(info_hash, now=net.now, announce_port=6000)
    assert net.run(60.0, until=lambda: not seeder.searching(info_hash))
    net.run(1.0)
    leecher.search(info_hash, now=net.now)
    found: list[PeersFound] = []

    def got() -> bool:
        found.extend(leecher.take_found())
        return any((addrs[5][0], 6000) in f.peers for f in found)

    assert net.run(60.0, until=got)
    # lookups went around the dead: they timed out (QUERY_TIMEOUT_S) and were marked failed
    net.run(10 * QUERY_TIMEOUT_S)
    assert any(n.stats(net.now)["timeouts"] for a, n in net.nodes.items() if a not in net.dead)
