"""dht.py: the peers one search collects are capped (MAX_FOUND) against a hostile node."""

from __future__ import annotations

import hashlib
import random

from helpers import FakeClock

from minibt import krpc
from minibt.dht import MAX_FOUND, DhtNode, PeersFound
from minibt.urls import Addr

ME = hashlib.sha1(b"me").digest()
IH = hashlib.sha1(b"a torrent").digest()
BOOT: Addr = ("192.0.2.1", 6881)
VALUES_PER_ANSWER = 200  # ~1.6 KB of compact peers: fits one KRPC datagram


def closer_id(rnd: int, j: int) -> bytes:
    """A node id sharing ``rnd + 1`` leading bytes with IH: each round is closer than the last."""
    p = min(rnd + 1, 18)
    return IH[:p] + bytes([IH[p] ^ 0x80]) + hashlib.sha1(b"%d %d" % (rnd, j)).digest()[: 19 - p]


def test_a_search_stops_collecting_peers_at_max_found_when_a_node_floods_values() -> None:
    clock = FakeClock()
    n = DhtNode(node_id=ME, rng=random.Random(1), now=clock.now(), bootstrap=(BOOT,))
    n.search(IH, now=clock.now())
    sent_values: list[Addr] = []
    ids: dict[Addr, bytes] = {BOOT: hashlib.sha1(b"boot").digest()}  # who answers with which id
    rnd = 0
    while n.searching(IH) and rnd < 200:
        queries = [(krpc.decode(d), to) for d, to in n.datagrams_to_send()]
        gets = [(q, to) for q, to in queries if isinstance(q, krpc.GetPeers)]
        if not gets:
            break
        clock.advance(0.1)
        for q, to in gets:
            # every answer: fresh peer values plus closer (fake) nodes, so the search goes on
            values = tuple((f"198.{18 + (len(sent_values) + i) // 65536}.{(len(sent_values) + i) >> 8 & 255}."
                            f"{(len(sent_values) + i) & 255}", 1000 + i) for i in range(VALUES_PER_ANSWER))
            sent_values.extend(values)
            nodes = tuple(krpc.NodeInfo(closer_id(rnd, j), (f"10.{rnd & 255}.{j}.1", 6881)) for j in range(8))
            ids.update((ni.addr, ni.node_id) for ni in nodes)
            r = krpc.Response(q.tid, ids[to], nodes=nodes, values=values, token=b"tk")
            n.receive(krpc.encode(r), to, now=clock.now())
        rnd += 1
    assert len(sent_values) > 3 * MAX_FOUND, "the hostile node offered far more than the cap"
    found = [f for f in n.take_found() if f.info_hash == IH]
    got = [p for f in found for p in f.peers]
    assert len(got) == MAX_FOUND and len(set(got)) == MAX_FOUND
    # the first peers are still handed on as they arrive, in the order they came
    assert found[0] == PeersFound(IH, tuple(sent_values[:VALUES_PER_ANSWER]))
    assert got == sent_values[:MAX_FOUND]
