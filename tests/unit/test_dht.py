"""dht.py (the DHT node) and dhtservice.py (the session's schedule) without sockets: KRPC in, KRPC out."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minibt import krpc
from minibt.dht import QUERY_TIMEOUT_S, DhtNode, PeersFound
from minibt.dhtservice import DEFAULT_BOOTSTRAP, DHT_REANNOUNCE_S, DHT_RETRY_S, DhtService, bootstrap_nodes
from minibt.dhtstore import MAX_INFO_HASHES, TOKEN_VALID_S
from minibt.urls import Addr

ME = hashlib.sha1(b"me").digest()
IH = hashlib.sha1(b"a torrent").digest()
A: Addr = ("192.0.2.1", 6881)


def nid(i: int) -> bytes:
    return hashlib.sha1(b"node %d" % i).digest()


def node(**kw: object) -> DhtNode:
    return DhtNode(node_id=ME, rng=random.Random(1), now=0.0, **kw)  # type: ignore[arg-type]


def ask(n: DhtNode, q: krpc.Message, src: Addr = A, now: float = 1.0) -> list[krpc.Message]:
    """Send one message to ``n``; the decoded messages it sends back to ``src``."""
    n.receive(krpc.encode(q), src, now=now)
    return [krpc.decode(d) for d, to in n.datagrams_to_send() if to == src]


def test_ping_is_answered_with_our_id_and_the_querier_joins_the_table() -> None:
    n = node()
    (r,) = ask(n, krpc.Ping(b"aa", nid(1)))
    assert isinstance(r, krpc.Response) and r.tid == b"aa" and r.node_id == ME
    assert n.table.get(nid(1)) is not None


def test_find_node_answers_the_closest_nodes() -> None:
    n = node()
    for i in range(2, 30):
        ask(n, krpc.Ping(b"p%d" % i, nid(i)), (f"192.0.2.{i}", 6881))
    (r,) = ask(n, krpc.FindNode(b"fn", nid(1), nid(5)))
    assert isinstance(r, krpc.Response) and 0 < len(r.nodes) <= 8
    assert r.nodes[0].node_id == nid(5)  # the target itself is known: closest first


def test_get_peers_token_then_announce_then_values() -> None:
    n = node()
    (r,) = ask(n, krpc.GetPeers(b"g1", nid(1), IH))
    assert isinstance(r, krpc.Response) and r.token and r.values == ()
    (ok,) = ask(n, krpc.AnnouncePeer(b"a1", nid(1), IH, 51413, r.token))
    assert isinstance(ok, krpc.Response)
    (r2,) = ask(n, krpc.GetPeers(b"g2", nid(2), IH), ("192.0.2.2", 6881))
    assert isinstance(r2, krpc.Response) and r2.values == (("192.0.2.1", 51413),)
    # implied_port: the UDP source port is announced instead
    (r3,) = ask(n, krpc.GetPeers(b"g3", nid(3), IH), ("192.0.2.3", 7000))
    assert isinstance(r3, krpc.Response) and r3.token is not None
    ask(n, krpc.AnnouncePeer(b"a3", nid(3), IH, 0, r3.token, implied_port=True), ("192.0.2.3", 7000))
    assert ("192.0.2.3", 7000) in n.store.get(IH, random.Random(0), now=2.0)


@pytest.mark.parametrize("late", [False, True])
def test_announce_with_a_bad_or_expired_token_is_refused_with_203(late: bool) -> None:
    n = node()
    (r,) = ask(n, krpc.GetPeers(b"g1", nid(1), IH))
    assert isinstance(r, krpc.Response) and r.token is not None
    token = r.token if late else b"12345678"
    when = 1.0 + TOKEN_VALID_S + 1 if late else 1.0
    (e,) = ask(n, krpc.AnnouncePeer(b"a1", nid(1), IH, 51413, token), now=when)
    assert isinstance(e, krpc.ErrorReply) and e.code == krpc.PROTOCOL_ERROR and e.tid == b"a1"
    assert len(n.store) == 0 and n.stats(when)["bad_tokens"] == 1


def test_a_token_is_bound_to_the_ip_and_the_info_hash() -> None:
    n = node()
    (r,) = ask(n, krpc.GetPeers(b"g1", nid(1), IH))
    assert isinstance(r, krpc.Response) and r.token is not None
    other = hashlib.sha1(b"other").digest()
    (e1,) = ask(n, krpc.AnnouncePeer(b"a1", nid(1), other, 1, r.token))
    (e2,) = ask(n, krpc.AnnouncePeer(b"a2", nid(2), IH, 1, r.token), ("198.51.100.7", 6881))
    assert isinstance(e1, krpc.ErrorReply) and isinstance(e2, krpc.ErrorReply)


def test_unknown_methods_get_204_and_garbage_is_counted_and_dropped() -> None:
    n = node()
    n.receive(b"d1:ad2:id20:" + nid(1) + b"e1:q6:vote_x1:t2:zz1:y1:qe", A, now=1.0)
    (e,) = [krpc.decode(d) for d, _ in n.datagrams_to_send()]
    assert isinstance(e, krpc.ErrorReply) and e.code == krpc.METHOD_UNKNOWN and e.tid == b"zz"
    for junk in (b"", b"d", b"de", b"d1:t2:aa1:y1:qe", b"\xff" * 50, b"li1ee", b"d1:y1:re"):
        n.receive(junk, A, now=1.0)
    assert n.stats(1.0)["dropped"] >= 6


@given(st.binary(max_size=300), st.binary(max_size=40))
def test_receive_never_raises(junk: bytes, prefix: bytes) -> None:
    n = node()
    n.receive(junk, A, now=1.0)
    n.receive(b"d1:ad2:id20:" + nid(1) + prefix + junk, A, now=1.0)
    for data, _ in n.datagrams_to_send():
        krpc.decode(data)  # whatever we send back is well-formed


def test_a_flooding_ip_is_rate_limited() -> None:
    n = node()
    for i in range(500):
        n.receive(krpc.encode(krpc.Ping(b"%d" % i, nid(1))), A, now=1.0)
    answered = len(n.datagrams_to_send())
    assert 0 < answered <= 60 and n.stats(1.0)["limited"] >= 440
    assert ask(n, krpc.Ping(b"ok", nid(2)), ("192.0.2.99", 1)), "another IP is still answered"


def test_storage_stays_under_its_cap_through_the_protocol() -> None:
    n = node()
    now = 1.0
    for i in range(MAX_INFO_HASHES + 500):
        ih = hashlib.sha1(b"fake %d" % i).digest()
        src = (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 6881)
        token = n.tokens.token(src[0], ih, now=now)
        n.receive(krpc.encode(krpc.AnnouncePeer(b"t", nid(i), ih, 1000, token)), src, now=now)
        n.datagrams_to_send()
    assert len(n.store) == MAX_INFO_HASHES and n.stats(now)["announced_in"] == MAX_INFO_HASHES + 500


def test_read_only_answers_nothing() -> None:
    n = node(read_only=True)
    assert ask(n, krpc.Ping(b"aa", nid(1))) == []


def test_a_response_from_another_address_is_ignored() -> None:
    n = node(bootstrap=(A,))
    n.search(IH, now=0.0)
    (q,) = [krpc.decode(d) for d, to in n.datagrams_to_send() if to == A]
    assert isinstance(q, krpc.GetPeers)
    n.receive(krpc.encode(krpc.Response(q.tid, nid(9), values=(("203.0.113.5", 1),))), ("192.0.2.66", 6881), now=0.5)
    assert not any(f.peers for f in n.take_found())
    n.receive(krpc.encode(krpc.Response(q.tid, nid(9), values=(("203.0.113.5", 1),), token=b"tk")), A, now=0.5)
    assert PeersFound(IH, (("203.0.113.5", 1),)) in n.take_found()


def test_a_search_with_silent_nodes_ends_after_the_timeout() -> None:
    n = node(bootstrap=(A,))
    n.search(IH, now=0.0)
    assert n.searching(IH)
    n.handle_timeout(now=QUERY_TIMEOUT_S + 0.1)
    assert not n.searching(IH)
    assert PeersFound(IH, (), done=True) in n.take_found()


def test_bootstrap_list_precedence() -> None:
    given = (("192.0.2.5", 1),)
    assert bootstrap_nodes(given, "10.0.0.1:2") == given
    assert bootstrap_nodes(None, "10.0.0.1:2, router.example:6881") == (("10.0.0.1", 2), ("router.example", 6881))
    assert bootstrap_nodes(None, "") == ()  # tests: no public router, ever
    assert bootstrap_nodes(None, None) == DEFAULT_BOOTSTRAP
    with pytest.raises(ValueError, match="MINIBT_DHT_BOOTSTRAP"):
        bootstrap_nodes(None, "nonsense")


def test_service_resolves_names_off_the_loop_and_keeps_a_saved_id() -> None:
    s = DhtService(rng=random.Random(2), now=0.0, saved=None, bootstrap=(("router.example", 6881), A), read_only=False)
    assert s.take_lookups() == [("router.example", 6881)] and s.take_lookups() == []
    assert any(to == A for _, to in s.datagrams_to_send())  # the numeric one is asked at once
    saved = s.save()
    s2 = DhtService(rng=random.Random(3), now=0.0, saved=saved, bootstrap=(), read_only=False)
    assert s2.node.node_id == s.node.node_id
    s3 = DhtService(rng=random.Random(3), now=0.0, saved=b"garbage", bootstrap=(), read_only=False)
    assert len(s3.node.node_id) == 20


def test_bootstrap_names_are_looked_up_again_while_the_table_is_empty() -> None:
    """At boot a Pi may start before its DNS answers: a failed lookup (or one the busy worker pool never ran) is
    tried again every LOOKUP_RETRY_S while the table is empty, and no more once a node is in it."""
    from minibt.dhtservice import LOOKUP_RETRY_S

    s = DhtService(rng=random.Random(2), now=0.0, saved=None, bootstrap=(("router.example", 6881),), read_only=False)
    assert s.take_lookups() == [("router.example", 6881)]
    s.resolved([], now=1.0)  # the lookup failed
    now = 0.0
    while now < LOOKUP_RETRY_S - 1:
        now += 1.0
        s.tick({}, {}, 6881, now=now)
        assert s.take_lookups() == []
    s.tick({}, {}, 6881, now=LOOKUP_RETRY_S)
    assert s.take_lookups() == [("router.example", 6881)]
    s.node.table.heard_from(bytes([7]) * 20, A, now=LOOKUP_RETRY_S, replied=True)  # a node answered
    assert len(s.node.table)
    s.tick({}, {}, 6881, now=3 * LOOKUP_RETRY_S)
    assert s.take_lookups() == []


class _T:
    """The parts of a Torrent the schedule reads."""

    def __init__(self, ih: bytes, *, private: bool = False, downloading: bool = True, peers: int = 0) -> None:
        from minibt.settings import TorrentState

        self.info_hash = ih
        self.meta = type("M", (), {"private": private})()
        self.state = TorrentState.DOWNLOADING if downloading else TorrentState.SEEDING
        self.peers = dict.fromkeys(range(peers))
        self.added: list[tuple[object, ...]] = []

    def add_candidates(self, addrs: object, source: object, *, now: float) -> None:
        self.added.append((tuple(addrs), source))  # type: ignore[call-overload]


def test_schedule_private_never_eager_every_5_min_else_every_30() -> None:
    s = DhtService(rng=random.Random(2), now=0.0, saved=None, bootstrap=(A,), read_only=False)
    s.datagrams_to_send()
    private, few, many = (_T(hashlib.sha1(b"%d" % i).digest(), private=i == 0, peers=0 if i == 1 else 9)
                          for i in range(3))
    torrents = {t.info_hash: t for t in (private, few, many)}
    searches: list[bytes] = []
    real = s.node.search

    def spy(info_hash: bytes, **kw: object) -> None:
        searches.append(info_hash)
        real(info_hash, **kw)  # type: ignore[arg-type]

    s.node.search = spy  # type: ignore[method-assign]
    for t in (0.0, 1.0, DHT_RETRY_S + 10, DHT_REANNOUNCE_S + 20):
        s.node.handle_timeout(now=t + QUERY_TIMEOUT_S)  # earlier searches end (nobody answers)
        s.tick(torrents, {}, 6881, now=t)  # type: ignore[arg-type]
    assert private.info_hash not in searches
    assert searches.count(few.info_hash) == 3  # at 0, after 5 min, after 30 min
    assert searches.count(many.info_hash) == 2  # at 0 and after 30 min


def test_ipv6_bep32_nodes6_for_v6_requesters_and_want() -> None:
    n = node()
    for i in range(2, 12):
        ask(n, krpc.Ping(b"p%d" % i, nid(i)), (f"192.0.2.{i}", 6881))
        ask(n, krpc.Ping(b"q%d" % i, nid(100 + i)), (f"2001:db8::{i}", 6881))
    v6: Addr = ("2001:db8::99", 6881)
    (r,) = ask(n, krpc.FindNode(b"f6", nid(1), nid(5)), v6)
    assert isinstance(r, krpc.Response) and r.nodes6 and not r.nodes
    assert all(":" in x.addr[0] for x in r.nodes6)
    (both,) = ask(n, krpc.FindNode(b"fb", nid(1), nid(5), want=frozenset({"n4", "n6"})), v6)
    assert isinstance(both, krpc.Response) and both.nodes and both.nodes6


def test_a_search_follows_ipv6_nodes_too() -> None:
    n = node(bootstrap=(A,))
    n.search(IH, now=0.0)
    (q,) = [krpc.decode(d) for d, to in n.datagrams_to_send() if to == A]
    far = krpc.NodeInfo(nid(7), ("2001:db8::7", 6881))
    n.receive(krpc.encode(krpc.Response(q.tid, nid(9), nodes6=(far,), token=b"tk")), A, now=0.1)
    assert any(to == far.addr for _, to in n.datagrams_to_send())


def test_minibt_status_shows_the_table_and_each_torrents_last_search() -> None:
    from minibt.statusfile import format_status

    st = {"mode": "daemon", "pid": 1, "running": True, "listen_port": 6881, "updated_at": 100.0,
          "dht": {"nodes": 37, "good": 30, "store_info_hashes": 4},
          "torrents": [{"name": "x", "state": "downloading", "progress": 0.5, "peers": 3,
                        "dht": {"last_search_at": 90.0, "peers_found": 12, "done": True}},
                       {"name": "y", "state": "seeding", "progress": 1.0, "peers": 0,
                        "dht": {"last_search_at": 99.0, "peers_found": 0, "done": False}}]}
    lines = format_status(st, now_wall=101.0, pid_alive=True)
    assert any("dht: 37 nodes in the table (30 good)" in line for line in lines), lines
    assert any(line.startswith("x:") and "dht: 12 peers found" in line for line in lines), lines
    assert any(line.startswith("y:") and "dht: 0 peers found (searching)" in line for line in lines), lines
