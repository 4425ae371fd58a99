"""A Mainline DHT node (BEP 5, BEP 32 IPv6): serving queries, the routing table, iterative searches.

Pure (STYLE.md): datagrams and ``now`` in, datagrams and found peers out.  The loop hands every UDP
datagram that starts with ``d`` (a bencoded dict, krpc.py) to :meth:`DhtNode.receive`, sends what
:meth:`DhtNode.datagrams_to_send` returns from its one UDP socket (shared with uTP and the UDP
tracker client), and calls :meth:`DhtNode.handle_timeout` on its tick.  Nothing here raises on
outside input: a malformed datagram is counted and dropped (``stats()["dropped"]``).

In scope:
- answering ping, find_node, get_peers (values + token, and the closest nodes) and announce_peer
  (token checked, ``implied_port``), with a per-IP query limit (dhtstore.py);
- the routing table (routing.py): every message from a node updates it; a full bucket's
  questionable node is pinged; buckets unchanged for 15 min are refreshed with a find_node;
- searches (:meth:`DhtNode.search`): iterative get_peers with ALPHA = 3 queries in flight towards
  the closest nodes, until the K closest known nodes have all answered (or failed), then
  announce_peer to them with their tokens when we have a port to announce; found peers come out as
  :class:`PeersFound` (``take_found``);
- bootstrap: from the nodes of a saved table (``dht.dat``) and from bootstrap addresses (find_node
  for our own id), again whenever the table is empty.
Out of scope: sockets, name resolution of bootstrap hosts, writing ``dht.dat`` (the caller does it
with :meth:`DhtNode.save`), deciding which torrents to search for (session.py).
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from dataclasses import dataclass, field

from minibt import krpc
from minibt.dhtstore import PeerStore, QueryLimiter, TokenMint
from minibt.routing import K, RoutingTable, distance
from minibt.urls import Addr

log = logging.getLogger(__name__)

ALPHA = 3  # BEP 5 / Kademlia: queries in flight per search
QUERY_TIMEOUT_S = 4.0  # convention: a KRPC query unanswered this long has failed
MAX_TRANSACTIONS = 256  # convention: queries in flight, all searches together
MAX_SEARCH_QUERIES = 256  # convention: a search gives up after this many queries
MAX_SEARCH_CANDIDATES = 128  # convention: nodes a search keeps to ask, closest first
MAX_SEARCHES = 32  # convention: searches at once (one per torrent; the oldest is dropped)
BOOTSTRAP_RETRY_S = 60.0  # convention: an empty table retries the bootstrap nodes this often
REFRESH_CHECK_S = 60.0  # convention: how often stale buckets (routing.REFRESH_S) are looked for
MAX_DATAGRAMS_OUT = 1024  # convention: outbox bound (a burst of answers is dropped beyond it)
MAX_VALUES = 50  # convention (libtorrent): peers in one get_peers answer
MAX_FOUND = 1000  # convention: peers one search collects; later values are ignored (bounds ``found``)
_TID_BYTES = 2


@dataclass(frozen=True, slots=True)
class PeersFound:
    """Peers for ``info_hash`` from a search; ``done`` on the search's last report (maybe with no peers)."""

    info_hash: bytes
    peers: tuple[Addr, ...]
    done: bool = False


@dataclass(slots=True)
class _Candidate:
    """A node a lookup may query next."""

    addr: Addr
    node_id: bytes | None  # None: a bootstrap address, id unknown until it answers
    state: str = "new"  # new -> asked -> answered | failed
    token: bytes | None = None


@dataclass(slots=True)
class _Search:
    """One iterative lookup (find_node or get_peers) in progress."""

    target: bytes
    peers_wanted: bool  # get_peers (a torrent) or find_node (bootstrap, refresh)
    announce_port: int | None  # announce_peer to the K closest when done (None: do not announce)
    implied_port: bool
    started_at: float
    candidates: dict[object, _Candidate] = field(default_factory=dict)  # node id (or addr) -> candidate
    inflight: int = 0
    queries: int = 0
    found: set[Addr] = field(default_factory=set)
    done: bool = False


@dataclass(slots=True)
class _Txn:
    """A KRPC query sent and not answered yet."""

    addr: Addr
    node_id: bytes | None
    sent_at: float
    method: str
    search: _Search | None = None
    cand_key: object = None


class DhtNode:
    """One DHT node of this client (IPv4 or IPv6, as its socket is)."""

    def __init__(
        self,
        *,
        node_id: bytes,
        rng: random.Random,
        now: float,
        bootstrap: tuple[Addr, ...] = (),
        read_only: bool = False,
    ) -> None:
        if len(node_id) != 20:
            raise ValueError("a DHT node id is 20 bytes")
        self.rng = rng
        self.table = RoutingTable(node_id, rng, now=now)
        self.node_id = node_id
        self.bootstrap_addrs = tuple(bootstrap)
        self.read_only = read_only  # BEP 43: we ask, we never answer
        self.tokens = TokenMint(rng, now=now)
        self.store = PeerStore()
        self.limiter = QueryLimiter()
        self._txns: dict[bytes, _Txn] = {}
        self._next_tid = rng.getrandbits(16)
        self._out: list[tuple[bytes, Addr]] = []
        self._searches: OrderedDict[bytes, _Search] = OrderedDict()
        self._found: list[PeersFound] = []
        self._last_bootstrap = -BOOTSTRAP_RETRY_S
        self._last_expire = now
        self._last_refresh = now
        self._counts = {"received": 0, "dropped": 0, "queries_in": 0, "limited": 0, "queries_out": 0,
                        "responses": 0, "errors_in": 0, "timeouts": 0, "announced_in": 0, "bad_tokens": 0}

    # ------------------------------------------------------------------ outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return out

    def take_found(self) -> list[PeersFound]:
        out, self._found = self._found, []
        return out

    def _send(self, msg: krpc.Message, addr: Addr) -> None:
        if len(self._out) < MAX_DATAGRAMS_OUT:
            self._out.append((krpc.encode(msg, version=krpc.KRPC_VERSION), addr))

    # ------------------------------------------------------------------ commands

    def add_nodes(self, nodes: list[tuple[bytes, Addr]], *, now: float) -> None:
        """Nodes from a saved table: pinged, and they join the table when they answer."""
        for node_id, addr in nodes:
            self._query(krpc.Ping(self._tid(), self.node_id), addr, node_id, now)

    def ping(self, addr: Addr, *, now: float) -> None:
        """A node we heard of (BEP 5 PORT message from a peer): it joins the table if it answers."""
        if len(self._txns) < MAX_TRANSACTIONS:
            self._query(krpc.Ping(self._tid(), self.node_id), addr, None, now)

    def bootstrap(self, *, now: float, addrs: tuple[Addr, ...] | None = None) -> None:
        """Look up our own id from the table's nodes and the bootstrap addresses (fills the table)."""
        if addrs is not None:
            self.bootstrap_addrs = tuple(addrs)
        self._last_bootstrap = now
        self._start(self.node_id, peers_wanted=False, announce_port=None, implied_port=False, now=now)

    def search(self, info_hash: bytes, *, now: float, announce_port: int | None = None,
               implied_port: bool = False) -> None:
        """Find peers for ``info_hash`` (PeersFound follow); with ``announce_port``, announce us to
        the K closest nodes at the end.  A search already running for it is restarted."""
        old = self._searches.pop(info_hash, None)
        if old is not None:
            old.done = True
        self._start(info_hash, peers_wanted=True, announce_port=announce_port, implied_port=implied_port, now=now)

    def searching(self, info_hash: bytes) -> bool:
        s = self._searches.get(info_hash)
        return s is not None and not s.done

    # ------------------------------------------------------------------ input

    def receive(self, data: bytes, addr: Addr, *, now: float) -> None:
        """One datagram from ``addr``; never raises for anything the network sends."""
        self._counts["received"] += 1
        try:
            msg = krpc.decode(data)
        except krpc.KrpcError as e:
            self._counts["dropped"] += 1
            if e.tid is not None and not self.read_only and self.limiter.allow(addr[0], now=now):
                self._send(krpc.ErrorReply(e.tid, e.code, str(e)), addr)
            return
        match msg:
            case krpc.Response():
                self._on_response(msg, addr, now)
            case krpc.ErrorReply():
                self._on_error(msg, addr, now)
            case _:
                self._on_query(msg, addr, now)

    # ------------------------------------------------------------------ serving

    def _on_query(self, q: krpc.Query, addr: Addr, now: float) -> None:
        self._counts["queries_in"] += 1
        if self.read_only:
            return  # BEP 43: a read-only node does not answer
        if not self.limiter.allow(addr[0], now=now):
            self._counts["limited"] += 1
            return
        ping = self.table.heard_from(q.node_id, addr, now=now, replied=False)
        if ping is not None:
            self._ping_node(ping.node_id, ping.addr, now)
        me = self.node_id
        match q:
            case krpc.Ping(tid=tid):
                self._send(krpc.Response(tid, me), addr)
            case krpc.FindNode(tid=tid, target=target, want=want):
                n4, n6 = self._closest(target, addr, want)
                self._send(krpc.Response(tid, me, nodes=n4, nodes6=n6), addr)
            case krpc.GetPeers(tid=tid, info_hash=ih, want=want):
                n4, n6 = self._closest(ih, addr, want)
                values = tuple(self.store.get(ih, self.rng, n=MAX_VALUES, now=now))
                token = self.tokens.token(addr[0], ih, now=now)
                self._send(krpc.Response(tid, me, nodes=n4, nodes6=n6, values=values, token=token), addr)
            case krpc.AnnouncePeer(tid=tid, info_hash=ih, port=port, token=token, implied_port=implied):
                if not self.tokens.valid(token, addr[0], ih, now=now):
                    self._counts["bad_tokens"] += 1
                    self._send(krpc.ErrorReply(tid, krpc.PROTOCOL_ERROR, "bad token"), addr)
                    return
                self.store.add(ih, (addr[0], addr[1] if implied else port), now=now)
                self._counts["announced_in"] += 1
                self._send(krpc.Response(tid, me), addr)
            case krpc.UnknownQuery(tid=tid, method=method):
                self._send(krpc.ErrorReply(tid, krpc.METHOD_UNKNOWN, f"method unknown: {method[:32]}"), addr)

    def _closest(self, target: bytes, requester: Addr, want: frozenset[str]) -> tuple[tuple[krpc.NodeInfo, ...], ...]:
        """The K closest nodes we know, IPv4 in ``nodes``, IPv6 in ``nodes6`` (BEP 32: what ``want``
        asks for, else the requester's own family)."""
        v6_req = ":" in requester[0]
        want4 = "n4" in want or (not want and not v6_req)
        want6 = "n6" in want or (not want and v6_req)
        found = self.table.closest(target, 2 * K)
        n4 = tuple(krpc.NodeInfo(n.node_id, n.addr) for n in found if ":" not in n.addr[0])[:K] if want4 else ()
        n6 = tuple(krpc.NodeInfo(n.node_id, n.addr) for n in found if ":" in n.addr[0])[:K] if want6 else ()
        return n4, n6

    # ------------------------------------------------------------------ asking

    def _tid(self) -> bytes:
        for _ in range(4):
            self._next_tid = (self._next_tid + 1) & 0xFFFF
            tid = self._next_tid.to_bytes(_TID_BYTES, "big")
            if tid not in self._txns:
                return tid
        return self.rng.randbytes(_TID_BYTES + 2)

    def _query(self, q: krpc.Query, addr: Addr, node_id: bytes | None, now: float,
               search: _Search | None = None, cand_key: object = None) -> bool:
        if len(self._txns) >= MAX_TRANSACTIONS:
            return False
        method = type(q).__name__
        self._txns[q.tid] = _Txn(addr, node_id, now, method, search, cand_key)
        self._counts["queries_out"] += 1
        self._send(q, addr)
        return True

    def _ping_node(self, node_id: bytes, addr: Addr, now: float) -> None:
        if not any(t.node_id == node_id and t.method == "Ping" for t in self._txns.values()):
            self._query(krpc.Ping(self._tid(), self.node_id), addr, node_id, now)

    def _on_response(self, r: krpc.Response, addr: Addr, now: float) -> None:
        txn = self._txns.get(r.tid)
        if txn is None or txn.addr != addr or (txn.node_id is not None and txn.node_id != r.node_id):
            self._counts["dropped"] += 1  # unsolicited, late, or from someone else: ignore
            return
        del self._txns[r.tid]
        self._counts["responses"] += 1
        if r.node_id != self.node_id:
            ping = self.table.heard_from(r.node_id, addr, now=now, replied=True)
            if ping is not None:
                self._ping_node(ping.node_id, ping.addr, now)
        s, cand = self._settle(txn)
        if s is None:
            return
        if cand is not None:
            cand.state = "answered"
            cand.token = r.token
            if cand.node_id is None:  # a bootstrap address: key it by its id from now on
                cand.node_id = r.node_id
        for n in (*r.nodes, *r.nodes6):
            self._add_candidate(s, n.node_id, n.addr)
        if s.peers_wanted and r.values:
            self._collect(s, r.values)
        self._step(s, now)

    def _on_error(self, e: krpc.ErrorReply, addr: Addr, now: float) -> None:
        txn = self._txns.get(e.tid)
        if txn is None or txn.addr != addr:
            self._counts["dropped"] += 1
            return
        del self._txns[e.tid]
        self._counts["errors_in"] += 1
        self._txn_failed(txn, now, timed_out=False)

    def _txn_failed(self, txn: _Txn, now: float, *, timed_out: bool) -> None:
        if txn.node_id is not None and timed_out:
            self.table.failed(txn.node_id, now=now)
        s, cand = self._settle(txn)
        if s is None:
            return
        if cand is not None:
            cand.state = "failed"
        self._step(s, now)

    @staticmethod
    def _settle(txn: _Txn) -> tuple[_Search | None, _Candidate | None]:
        """A query of a running search got its answer (or failed): one less in flight; its candidate."""
        s = txn.search
        if s is None or s.done:
            return None, None
        s.inflight -= 1
        return s, s.candidates.get(txn.cand_key)

    # ------------------------------------------------------------------ searches

    def _start(self, target: bytes, *, peers_wanted: bool, announce_port: int | None, implied_port: bool,
               now: float) -> None:
        s = _Search(target, peers_wanted, announce_port, implied_port, now)
        for n in self.table.closest(target, MAX_SEARCH_CANDIDATES):
            self._add_candidate(s, n.node_id, n.addr)
        for addr in self.bootstrap_addrs:
            if not s.candidates or len(self.table) < K:
                s.candidates.setdefault(addr, _Candidate(addr, None))
        if peers_wanted:  # peers announced to us count too (in a small swarm we may be the closest node)
            self._collect(s, self.store.get(target, self.rng, n=MAX_VALUES, now=now))
        self._searches[target] = s
        while len(self._searches) > MAX_SEARCHES:
            _, old = self._searches.popitem(last=False)
            old.done = True
        self._step(s, now)

    def _collect(self, s: _Search, values: tuple[Addr, ...] | list[Addr]) -> None:
        """Hand on the peers not seen yet in this search, up to MAX_FOUND: a hostile node answering
        every get_peers with hundreds of new values must not grow ``found`` without end."""
        new: list[Addr] = []
        for p in values:
            if len(s.found) >= MAX_FOUND:
                break
            if p not in s.found and 0 < p[1] < 65536:
                s.found.add(p)
                new.append(p)
        if new:
            self._found.append(PeersFound(s.target, tuple(new)))

    def _add_candidate(self, s: _Search, node_id: bytes, addr: Addr) -> None:
        if node_id == self.node_id or node_id in s.candidates or not 0 < addr[1] < 65536:
            return
        s.candidates[node_id] = _Candidate(addr, node_id)
        if len(s.candidates) > MAX_SEARCH_CANDIDATES:
            # forget the farthest never-asked candidate
            far = max((k for k, c in s.candidates.items() if c.state == "new" and c.node_id is not None),
                      key=lambda k: distance(s.candidates[k].node_id or b"", s.target), default=None)
            if far is not None:
                del s.candidates[far]

    def _ranked(self, s: _Search) -> list[tuple[object, _Candidate]]:
        """Candidates closest first; bootstrap addresses (no id yet) first of all."""
        return sorted(
            ((k, c) for k, c in s.candidates.items() if c.state != "failed"),
            key=lambda kc: -1 if kc[1].node_id is None else distance(kc[1].node_id, s.target),
        )

    def _step(self, s: _Search, now: float) -> None:
        """Keep ALPHA queries in flight to the closest unasked nodes; finish when the K closest answered."""
        if s.done:
            return
        ranked = self._ranked(s)
        closest = [kc for kc in ranked if kc[1].node_id is not None][:K]
        for key, c in ranked:
            if s.inflight >= ALPHA or s.queries >= MAX_SEARCH_QUERIES:
                break
            if c.state != "new":
                continue
            if c.node_id is not None and closest and (key, c) not in closest and all(
                cc.state == "answered" for _, cc in closest
            ):
                break  # the K closest answered: nothing closer can come from farther nodes
            tid = self._tid()
            q: krpc.Query = (krpc.GetPeers(tid, self.node_id, s.target) if s.peers_wanted
                             else krpc.FindNode(tid, self.node_id, s.target))
            if not self._query(q, c.addr, c.node_id, now, search=s, cand_key=key):
                break
            c.state = "asked"
            s.inflight += 1
            s.queries += 1
        if s.inflight == 0:
            self._finish(s, now)

    def _finish(self, s: _Search, now: float) -> None:
        s.done = True
        if s.announce_port is not None:
            answered = [c for _, c in self._ranked(s) if c.state == "answered" and c.token and c.node_id][:K]
            for c in answered:
                assert c.token is not None and c.node_id is not None
                q = krpc.AnnouncePeer(self._tid(), self.node_id, s.target, s.announce_port or 1, c.token,
                                      implied_port=s.implied_port)
                self._query(q, c.addr, c.node_id, now)
        if s.peers_wanted:
            self._found.append(PeersFound(s.target, (), done=True))
        if self._searches.get(s.target) is s:
            del self._searches[s.target]

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        return min((t.sent_at + QUERY_TIMEOUT_S for t in self._txns.values()), default=None)

    def timers_at(self) -> float:
        """When handle_timeout next has work: a query timing out, the bucket-refresh check, the store's
        expiry, or (while the table is empty) the bootstrap retry."""
        at = min(self._last_refresh + REFRESH_CHECK_S, self._last_expire + 60.0)
        q = self.next_deadline()
        if q is not None and q < at:
            at = q
        if len(self.table) == 0 and self.bootstrap_addrs:
            at = min(at, self._last_bootstrap + BOOTSTRAP_RETRY_S)
        return at

    def handle_timeout(self, *, now: float) -> None:
        for tid, txn in list(self._txns.items()):
            if now - txn.sent_at >= QUERY_TIMEOUT_S:
                del self._txns[tid]
                self._counts["timeouts"] += 1
                self._txn_failed(txn, now, timed_out=True)
        if len(self.table) == 0 and self.bootstrap_addrs and now - self._last_bootstrap >= BOOTSTRAP_RETRY_S:
            self.bootstrap(now=now)
        if now - self._last_refresh >= REFRESH_CHECK_S:
            self._last_refresh = now
            for target in self.table.stale_buckets(now):
                if len(self._searches) < MAX_SEARCHES // 2:
                    self._start(target, peers_wanted=False, announce_port=None, implied_port=False, now=now)
        if now - self._last_expire >= 60.0:
            self._last_expire = now
            self.store.expire(now)

    # ------------------------------------------------------------------ state

    def save(self) -> bytes:
        """What ``dht.dat`` holds: our id and the table's nodes (routing.py)."""
        return self.table.to_bytes()

    def stats(self, now: float) -> dict[str, int]:
        return {**self._counts, **self.table.stats(now), "transactions": len(self._txns),
                "searches": len(self._searches), **{f"store_{k}": v for k, v in self.store.stats().items()}}
