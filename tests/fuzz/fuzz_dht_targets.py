"""Fuzz target for the DHT as a session runs it: hostile nodes answering its queries and asking their own.

The ``krpc`` target checks the codec alone.  Here the datagrams go through ``Session.on_dht_datagram``
into the DHT service, the node (routing table, searches, tokens, the peer store, the query limiter) and
back out to the torrent that searches: a session with the DHT on (one bootstrap node on loopback) and a
torrent to find peers for.  The fuzzing nodes answer the queries the session sent (from the address each
went to, with its transaction id) with bodies of any shape: node ids that are ours, empty or the wrong
length, ``nodes`` lists of any length naming us, port 0 or the same node twice, ``values`` of any size,
tokens of any kind; or they send errors, queries of every method with good and bad tokens, and raw
datagrams, while the clock moves.  The loop's part is played here: datagrams go nowhere but to the
fuzzing nodes, dials fail.

Contract (STYLE.md section 13): no exception escapes a session call; the session records no contained
fault (a datagram that makes the DHT raise is a bug of ours); the node keeps its bounds (transactions,
searches, routing table, peer store, outbox); every datagram minibt sends decodes as KRPC; no call over
``fuzzkit.TIME_LIMIT_S``.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

from fuzzkit import Target, bvalues, call, check, mutated, register
from hypothesis import strategies as st
from sessionkit import LoopPart, temp_torrent

from minibt import bencode, krpc
from minibt.dht import MAX_DATAGRAMS_OUT, MAX_SEARCHES, MAX_TRANSACTIONS
from minibt.dhtstore import MAX_INFO_HASHES, MAX_PEERS_PER_HASH
from minibt.routing import K
from minibt.settings import Encryption, Mode, SessionConfig
from minibt.urls import Addr

BOOTSTRAP = ("127.0.0.9", 6881)
# The fuzzing nodes' addresses (the bootstrap node first); answers come from where each query went.
NODES = (BOOTSTRAP, ("127.0.0.10", 6881), ("127.0.0.11", 1), ("127.0.0.12", 65535), ("::1", 6881))
OUR_PORT = 6881


META, WORK = temp_torrent("minibt-fuzz-dht.", "dht.bin", hashlib.shake_128(b"minibt dht fuzz").digest(50000), 16384)  # downloaded into WORK: nothing is ever written (no peer is reached)
INFO_HASH = META.info_hash


def _compact_node(node_id: bytes, ip: str, port: int) -> bytes:
    return node_id + bytes(int(x) for x in ip.split(".")) + struct.pack(">H", port)


ids = st.one_of(st.binary(min_size=20, max_size=20), st.binary(min_size=20, max_size=20),
                st.sampled_from((bytes(20), b"\xff" * 20, INFO_HASH, bytes(19), b"", b"x" * 21)))
ips = st.sampled_from(("127.0.0.10", "127.0.0.13", "127.0.0.9", "0.0.0.0", "255.255.255.255", "10.0.0.1", "127.0.0.1"))
ports = st.sampled_from((6881, 6881, 1, 65535, 0))


@st.composite
def nodes_field(draw: st.DrawFn) -> bytes:
    n = draw(st.sampled_from((0, 1, 2, 8, 16, 40)))
    one = st.builds(_compact_node, ids.filter(lambda i: len(i) == 20), ips, ports)
    out = b"".join(draw(st.lists(one, min_size=min(n, 3), max_size=n)))
    if out and draw(st.integers(0, 4)) == 0:
        out += out[:26]  # the same node twice
    if draw(st.integers(0, 6)) == 0:
        out += draw(st.binary(min_size=1, max_size=25))  # a ragged tail
    return out


@st.composite
def values_field(draw: st.DrawFn) -> list[Any]:
    peer = st.builds(lambda ip, port: bytes(int(x) for x in ip.split(".")) + struct.pack(">H", port), ips, ports)
    vals: list[Any] = draw(st.lists(peer, max_size=draw(st.sampled_from((3, 60)))))
    if draw(st.integers(0, 4)) == 0:
        vals.append(draw(st.one_of(st.binary(max_size=20), bvalues)))
    return vals


@st.composite
def response_body(draw: st.DrawFn) -> dict[bytes, Any]:
    r: dict[bytes, Any] = {}
    if draw(st.integers(0, 9)):
        r[b"id"] = draw(ids)
    if draw(st.booleans()):
        r[b"nodes"] = draw(nodes_field())
    if draw(st.booleans()):
        r[b"values"] = draw(values_field())
    if draw(st.booleans()):
        r[b"token"] = draw(st.one_of(st.binary(max_size=20), bvalues))
    if draw(st.integers(0, 6)) == 0:
        r[draw(st.sampled_from((b"nodes6", b"ip", b"samples", b"v", b"p")))] = draw(st.one_of(st.binary(max_size=40), bvalues))
    return r


@st.composite
def query(draw: st.DrawFn) -> tuple[bytes, dict[bytes, Any]]:
    method = draw(st.sampled_from((b"ping", b"find_node", b"get_peers", b"announce_peer", b"announce_peer", b"get",
                                   b"sample_infohashes", b"vote")))
    a: dict[bytes, Any] = {b"id": draw(ids)}
    if method in (b"find_node", b"get"):
        a[b"target"] = draw(ids)
    if method in (b"get_peers", b"announce_peer"):
        a[b"info_hash"] = draw(st.one_of(st.just(INFO_HASH), ids))
    if method == b"announce_peer":
        a[b"port"] = draw(st.sampled_from((6881, 0, 65535, 65536, -1)))
        a[b"token"] = draw(st.one_of(st.just(b"ASK"), st.just(b"ASK"), st.binary(max_size=20)))  # ASK: a token we got
        if draw(st.booleans()):
            a[b"implied_port"] = draw(st.sampled_from((0, 1, 2)))
    if draw(st.integers(0, 6)) == 0:
        a[draw(st.sampled_from((b"id", b"target", b"info_hash", b"port", b"want")))] = draw(bvalues)
    return method, a


# Steps: (0, k, body, cut): the k-th query minibt has out (mod their number) answered with ``body`` (cut:
# the encoded answer truncated to that many bytes, 0 for whole); (1, k, message): an error reply (k) or a
# query from NODES[k % len]; (2, ms): the clock moves and the session ticks; (3, k, bytes): raw datagram;
# (4, k, port, implied): NODES[k % len] asks get_peers for the torrent, then announces with the token it got.
answer = st.tuples(st.just(0), st.integers(0, 30), response_body(), st.sampled_from((0, 0, 0, 0, 0, 0, 5, 30)))
step = st.one_of(
    answer, answer, answer, answer,
    st.tuples(st.just(1), st.integers(0, 30), st.one_of(
        st.builds(lambda m: {b"y": b"q", b"q": m[0], b"a": m[1]}, query()),
        st.builds(lambda e: {b"y": b"e", b"e": e}, st.one_of(st.just([201, b"Generic Error"]), bvalues)))),
    st.tuples(st.just(2), st.sampled_from((10, 10, 1000, 4100, 61000, 301000, 1900000))),
    st.tuples(st.just(2), st.sampled_from((10, 10, 1000, 4100, 61000, 301000, 1900000))),
    st.tuples(st.just(4), st.integers(0, 4), st.sampled_from((6881, 6881, 1, 0, 65536)), st.booleans()),
    st.tuples(st.just(3), st.integers(0, 4), st.one_of(
        st.builds(lambda m: bencode.encode({b"t": b"aa", b"y": b"q", b"q": m[0], b"a": m[1]}), query()).flatmap(mutated),
        st.binary(max_size=60).map(lambda b: b"d" + b))),
)
dht_inputs = st.lists(step, max_size=40)


class _Driver(LoopPart):
    """The event loop's part (sessionkit.py), and the fuzzing nodes' view of what the session sent."""

    def __init__(self) -> None:
        cfg = SessionConfig(encryption=Encryption.NONE, dht=True, dht_bootstrap=(BOOTSTRAP,))
        super().__init__("dht", cfg, seed=11, now=5000.0, resolve_to=BOOTSTRAP)
        self.s.set_listen("127.0.0.1", OUR_PORT)
        self.pending: list[tuple[bytes, tuple[str, int]]] = []  # (transaction id, address) of our queries
        self.tokens: list[tuple[bytes, tuple[str, int]]] = []  # tokens we gave, and to whom (for announce_peer)
        self.call("enable_dht", self.s.enable_dht, saved=None, now=self.now, port=OUR_PORT)
        # Downloading: the DHT searches for it (the directory is never written: no peer is reached)
        self.call("add_torrent", self.s.add_torrent, META, WORK, mode=Mode.DOWNLOAD, resume_path=None, now=self.now)
        self.tick(0)

    def actions(self) -> int:
        most = super().actions()
        check(self.name, "outbox", most <= MAX_DATAGRAMS_OUT, f"{most} datagrams at once")
        return most

    def datagram_out(self, data: bytes, addr: Addr) -> None:
        self._ours(data, addr)

    def _ours(self, data: bytes, addr: tuple[str, int]) -> None:
        """A datagram minibt sends: KRPC, and remembered so that a fuzzing node can answer it."""
        msg, err = call(self.name, "our datagrams", krpc.KrpcError, krpc.decode, data)
        check(self.name, "our datagrams", err is None, f"minibt sent a datagram that is not KRPC: {err!r}")
        if isinstance(msg, krpc.Response):
            if msg.token is not None:
                self.tokens = [*self.tokens[-7:], (msg.token, addr)]
        elif msg is not None and not isinstance(msg, krpc.ErrorReply):  # a query of ours
            self.pending.append((msg.tid, addr))
            del self.pending[:-MAX_TRANSACTIONS]

    def datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        self.call("on_dht_datagram", self.s.on_dht_datagram, data, addr, now=self.now)
        self.actions()
        self.bounds()

    def tick(self, ms: int) -> None:
        self.now += ms / 1000
        self.call("tick", self.s.tick, now=self.now)
        self.actions()
        self.bounds()

    def bounds(self) -> None:
        dht = self.s.dht
        assert dht is not None
        st_ = dht.node.stats(self.now)
        check(self.name, "bounds", st_["transactions"] <= MAX_TRANSACTIONS, f"{st_['transactions']} transactions")
        check(self.name, "bounds", st_["searches"] <= MAX_SEARCHES, f"{st_['searches']} searches")
        check(self.name, "bounds", st_["nodes"] <= K * st_["buckets"] and st_["buckets"] <= 160,
              f"{st_['nodes']} nodes in {st_['buckets']} buckets")
        check(self.name, "bounds", st_.get("store_info_hashes", 0) <= MAX_INFO_HASHES
              and st_.get("store_peers", 0) <= MAX_INFO_HASHES * MAX_PEERS_PER_HASH, f"peer store {st_}")

    def run(self, steps: list[Any]) -> None:
        for s in steps:
            if s[0] == 0 and self.pending:
                tid, addr = self.pending.pop(s[1] % len(self.pending))
                data = bencode.encode({b"t": tid, b"y": b"r", b"r": s[2]})
                self.datagram(data[: s[3]] if s[3] else data, addr)
            elif s[0] == 1:
                msg = dict(s[2])
                if msg.get(b"y") == b"e" and self.pending:
                    tid, addr = self.pending.pop(s[1] % len(self.pending))
                else:
                    tid, addr = b"q%d" % s[1], NODES[s[1] % len(NODES)]
                args = msg.get(b"a")
                if isinstance(args, dict) and args.get(b"token") == b"ASK":  # the last token we gave, from its node
                    token, addr = self.tokens[-1] if self.tokens else (b"", addr)
                    msg[b"a"] = {**args, b"token": token}
                self.datagram(bencode.encode({b"t": tid, **msg}), addr)
            elif s[0] == 2:
                self.tick(s[1])
            elif s[0] == 3:
                self.datagram(s[2], NODES[s[1] % len(NODES)])
            elif s[0] == 4:
                node, a = NODES[s[1] % len(NODES)], {b"id": hashlib.sha1(b"%d" % s[1]).digest(), b"info_hash": INFO_HASH}
                self.datagram(bencode.encode({b"t": b"g%d" % s[1], b"y": b"q", b"q": b"get_peers", b"a": a}), node)
                token = next((t for t, to in reversed(self.tokens) if to == node), b"")
                a = {**a, b"port": s[2], b"token": token, b"implied_port": int(s[3])}
                self.datagram(bencode.encode({b"t": b"a%d" % s[1], b"y": b"q", b"q": b"announce_peer", b"a": a}), node)
        self.call("stop", self.s.stop, now=self.now)
        self.actions()


def _run_dht(steps: list[Any]) -> None:
    _Driver().run(steps)


register(Target("dht", dht_inputs, _run_dht,
                # corpus bytes: one raw datagram from the bootstrap node, then a tick
                from_bytes=lambda d, plan: [(3, 0, d), (2, 1000)], to_bytes=lambda inp: None))
