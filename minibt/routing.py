"""BEP 5 DHT routing table: K-buckets over the 160-bit id space, split around our own id.

A pure data structure in the STYLE.md sense: no sockets, no clock (every time is an injected
``now``), randomness from an injected ``random.Random``, bounded memory.  It decides *what* to do
with the nodes we hear from; the DHT machine (dht.py) sends the pings and lookups it asks for.

BEP 5 "Routing Table", as implemented here:

* The table starts as one bucket covering ``[0, 2**160)``.  A node with id N lives in the bucket
  with ``lo <= N < hi``.  A bucket holds at most K nodes.
* A node is GOOD if it answered one of our queries within the last 15 minutes, or if it has
  answered at least once and sent us a query within the last 15 minutes.  It turns BAD after
  MAX_FAILS unanswered queries in a row; every other node is QUESTIONABLE.
* A new node for a full bucket first takes the place of a BAD node.  Failing that, a full bucket
  that holds our own id is split in two and the insert is tried again.  Otherwise the node waits in
  the bucket's replacement cache and the least recently seen QUESTIONABLE node is handed to the
  caller to ping; when a pinged node fails MAX_FAILS times in a row it is replaced from the cache.
* Each bucket keeps a "last changed" time (a node added or replaced, or a node answering us);
  a bucket unchanged for REFRESH_S is refreshed with a lookup of a random id in its range.

Persistence (dht.dat) is ``to_bytes`` / ``from_bytes``: a bencoded dict with our id and the
non-bad nodes in compact form (BEP 5 ``nodes``: 26 bytes each, BEP 32 ``nodes6``: 38 bytes each).
Writing the file, atomically, is the caller's job.
"""

from __future__ import annotations

import bisect
import enum
import ipaddress
import random
from dataclasses import dataclass, field

import bencode2

from minibt import bencode
from minibt.errors import BencodeError
from minibt.urls import MAX_PORT, Addr

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

K = 8  # BEP 5: "Each bucket can only hold K nodes, currently eight"
GOOD_FOR_S = 15 * 60  # BEP 5: good = answered (or queried us, having answered before) within 15 min
REFRESH_S = 15 * 60  # BEP 5: "Buckets that have not been changed in 15 minutes should be refreshed"
MAX_FAILS = 2  # convention: BEP 5 says bad after failing "multiple queries in a row" and "try once more"
REPLACEMENTS = K  # convention: replacement cache per bucket (libtorrent keeps a cache of similar size)

_ID_BYTES = 20  # BEP 5: node ids are 160-bit, like info-hashes
_ID_BITS = _ID_BYTES * 8
_COMPACT4 = _ID_BYTES + 4 + 2  # BEP 5 compact node info: id + IPv4 + big-endian port
_COMPACT6 = _ID_BYTES + 16 + 2  # BEP 32 nodes6 entry: id + IPv6 + big-endian port
# Convention: the most a saved table can hold (160 buckets of K nodes plus their caches); a
# dht.dat with more is not one we wrote.
_MAX_SAVED_NODES = _ID_BITS * (K + REPLACEMENTS)
_MAX_DAT_BYTES = 2 * _MAX_SAVED_NODES * _COMPACT6 + 1024
_DAT_MAX_DEPTH = 4  # a dht.dat is one flat dict; a little room for future keys
_DAT_MAX_TOKENS = 64


class NodeState(enum.Enum):
    """BEP 5 node states."""

    GOOD = enum.auto()
    QUESTIONABLE = enum.auto()
    BAD = enum.auto()


def distance(a: bytes, b: bytes) -> int:
    """The Kademlia XOR metric (BEP 5): ``a XOR b`` read as an unsigned big-endian integer."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def random_id_in_bucket(lo: int, hi: int, rng: random.Random) -> bytes:
    """A random 20-byte id N with ``lo <= N < hi`` (a bucket's range), for a refresh lookup."""
    if not 0 <= lo < hi <= 1 << _ID_BITS:
        raise ValueError(f"bad bucket range [{lo:#x}, {hi:#x})")
    return rng.randrange(lo, hi).to_bytes(_ID_BYTES, "big")


@dataclass(slots=True)
class Node:
    """One DHT node we know: times are the injected clock's, ``last_reply`` None = never answered."""

    node_id: bytes
    addr: Addr
    last_seen: float  # the last message of any kind from it
    last_reply: float | None  # the last answer to one of our queries
    fails: int = 0  # our queries it left unanswered in a row

    def state(self, now: float) -> NodeState:
        """GOOD, QUESTIONABLE or BAD at ``now`` (BEP 5).

        A node that has just left a query unanswered (``fails > 0``) is no longer *known* good: it
        is QUESTIONABLE until it answers again or fails MAX_FAILS times in a row (BEP 5 suggests
        trying a node that failed "once more before discarding" it).  "Within 15 minutes" is
        strict: at exactly GOOD_FOR_S a node becomes QUESTIONABLE.
        """
        if self.fails >= MAX_FAILS:
            return NodeState.BAD
        if self.fails == 0 and self.last_reply is not None:
            if now - self.last_reply < GOOD_FOR_S or now - self.last_seen < GOOD_FOR_S:
                return NodeState.GOOD
        return NodeState.QUESTIONABLE


@dataclass(slots=True)
class _Bucket:
    """A k-bucket of the BEP 5 routing table."""

    lo: int  # inclusive
    hi: int  # exclusive; hi - lo is a power of two and lo a multiple of it
    last_changed: float
    nodes: list[Node] = field(default_factory=list)  # least recently seen first
    cache: list[Node] = field(default_factory=list)  # replacement cache, oldest first

    def find(self, node_id: bytes) -> Node | None:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        return None

    def take_replacement(self) -> Node | None:
        """Remove and return the best cache entry: the most recent one that has answered us, else the most recent."""
        if not self.cache:
            return None
        pick = len(self.cache) - 1
        for i in range(len(self.cache) - 1, -1, -1):
            if self.cache[i].last_reply is not None:
                pick = i
                break
        return self.cache.pop(pick)


def _canonical_addr(addr: Addr) -> Addr | None:
    """``addr`` with its IP literal in canonical text, or None if it is no usable node address.

    Accepted: an IPv4 or IPv6 literal (IPv4-mapped IPv6 becomes plain IPv4) and a port 1..65535.
    Refused: host names, zone ids, unspecified, multicast, IPv4 ``0.0.0.0/8`` and ``240.0.0.0/4``
    (reserved, with broadcast).  Loopback and private addresses are accepted ("routable-looking"
    read loosely) so a LAN or a loopback test network can run a DHT.
    """
    try:
        host, port = addr
    except (TypeError, ValueError):
        return None
    if not isinstance(host, str) or not isinstance(port, int) or isinstance(port, bool):
        return None
    if not 0 < port <= MAX_PORT or "%" in host:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        return None
    if isinstance(ip, ipaddress.IPv4Address) and (ip.is_reserved or ip.packed[0] == 0):
        return None
    return str(ip), port


class RoutingTable:
    """The BEP 5 routing table of one DHT node (see the module docstring for the rules)."""

    def __init__(self, own_id: bytes, rng: random.Random, *, now: float, k: int = K) -> None:
        if not isinstance(own_id, bytes) or len(own_id) != _ID_BYTES:
            raise ValueError(f"own id must be {_ID_BYTES} bytes")
        if k < 1:
            raise ValueError("k must be at least 1")
        self.own_id = own_id
        self._own = int.from_bytes(own_id, "big")
        self._rng = rng
        self._k = k
        self._now = now  # the latest time we were given (closest(good_only=True) has no `now`)
        self._buckets: list[_Bucket] = [_Bucket(0, 1 << _ID_BITS, now)]

    # ------------------------------------------------------------------------------------ inputs

    def heard_from(self, node_id: bytes, addr: Addr, *, now: float, replied: bool) -> Node | None:
        """A message from ``node_id`` at ``addr`` (``replied=True``: an answer to our query).

        Inserts the node or refreshes it.  Returns a node for the caller to ping, or None:
        the return value is not None only when the node's bucket is full and cannot take it
        (no BAD node to replace, and the bucket does not hold our own id so it cannot split).
        Then the node is kept in the bucket's replacement cache and the least recently seen
        QUESTIONABLE node of the bucket is returned (None when all its nodes are GOOD).  The same
        node may be returned again by later calls until it answers or fails: the caller should
        not ping a node it already has a query outstanding to.

        A known id arriving from a different address is ignored (not re-pointed: an attacker
        could otherwise hijack a good node's entry); so are our own id, ids that are not 20 bytes,
        and addresses that are not usable (see ``_canonical_addr``).  An answer resets the node's
        failure count; a query from it does not.
        """
        self._tick(now)
        if not isinstance(node_id, bytes) or len(node_id) != _ID_BYTES or node_id == self.own_id:
            return None
        bucket = self._bucket_for(node_id)
        known = bucket.find(node_id)
        # Most messages come from known nodes: an address equal to the stored (canonical) one
        # needs no parsing.
        canon = addr if known is not None and known.addr == addr else _canonical_addr(addr)
        if canon is None:
            return None
        if known is not None:
            if known.addr != canon:
                return None
            self._touch(known, now, replied)
            bucket.nodes.remove(known)
            bucket.nodes.append(known)
            if replied:
                bucket.last_changed = now
            return None
        node: Node | None = None
        for i, c in enumerate(bucket.cache):
            if c.node_id == node_id:
                if c.addr != canon:
                    return None
                node = bucket.cache.pop(i)
                self._touch(node, now, replied)
                break
        if node is None:
            node = Node(node_id, canon, now, now if replied else None)
        return self._insert(node, now)

    def failed(self, node_id: bytes, *, now: float) -> None:
        """A query to ``node_id`` timed out.  A node that is BAD now is replaced from its bucket's
        replacement cache if the cache has a node (else it stays until a new node takes its place);
        a cached node that turns BAD is dropped from the cache."""
        self._tick(now)
        if not isinstance(node_id, bytes) or len(node_id) != _ID_BYTES:
            return
        bucket = self._bucket_for(node_id)
        node = bucket.find(node_id)
        if node is not None:
            node.fails += 1
            if node.fails >= MAX_FAILS:
                spare = bucket.take_replacement()
                if spare is not None:
                    bucket.nodes.remove(node)
                    bucket.nodes.append(spare)
                    bucket.last_changed = now
            return
        for i, c in enumerate(bucket.cache):
            if c.node_id == node_id:
                c.fails += 1
                if c.fails >= MAX_FAILS:
                    del bucket.cache[i]
                return

    # ----------------------------------------------------------------------------------- queries

    def closest(self, target: bytes, n: int = K, *, good_only: bool = False) -> list[Node]:
        """Up to ``n`` nodes closest to ``target`` by XOR distance, closest first.

        BAD nodes are never returned.  ``good_only=True`` returns GOOD nodes only, judged at the
        latest ``now`` the table has been given (this method takes no ``now``).  Replacement-cache
        nodes are not returned.
        """
        if not isinstance(target, bytes) or len(target) != _ID_BYTES:
            raise ValueError(f"target must be {_ID_BYTES} bytes")
        t = int.from_bytes(target, "big")
        # Buckets are aligned power-of-two ranges, so XOR maps each onto a disjoint aligned range
        # of distances: walking buckets by their smallest distance visits nodes in distance order.
        order = sorted(self._buckets, key=lambda b: (b.lo ^ t) & ~(b.hi - b.lo - 1))
        out: list[Node] = []
        for b in order:
            if len(out) >= n:
                break
            keep = [
                x
                for x in b.nodes
                if x.fails < MAX_FAILS and (not good_only or x.state(self._now) is NodeState.GOOD)
            ]
            keep.sort(key=lambda x: int.from_bytes(x.node_id, "big") ^ t)
            out.extend(keep)
        return out[: max(n, 0)]

    def get(self, node_id: bytes) -> Node | None:
        """The node with this id if it is in a bucket (replacement-cache nodes are not returned)."""
        if not isinstance(node_id, bytes) or len(node_id) != _ID_BYTES:
            return None
        return self._bucket_for(node_id).find(node_id)

    def stale_buckets(self, now: float) -> list[bytes]:
        """One random target id in each bucket unchanged for REFRESH_S, for a refresh lookup.

        Handing out a target counts as the start of that bucket's refresh: its "last changed"
        time restarts at ``now``, so a bucket whose lookup finds nobody (an empty far bucket) is
        reported again only after another REFRESH_S, not on every call.
        """
        self._tick(now)
        targets: list[bytes] = []
        for b in self._buckets:
            if now - b.last_changed >= REFRESH_S:
                targets.append(random_id_in_bucket(b.lo, b.hi, self._rng))
                b.last_changed = now
        return targets

    def bucket_ranges(self) -> list[tuple[int, int]]:
        """The ``[lo, hi)`` id range of every bucket, in id order (diagnostics and tests)."""
        return [(b.lo, b.hi) for b in self._buckets]

    def __len__(self) -> int:
        return sum(len(b.nodes) for b in self._buckets)

    def nodes(self) -> list[Node]:
        """Every node in a bucket (not the replacement caches), in id-range order of their buckets."""
        return [n for b in self._buckets for n in b.nodes]

    def stats(self, now: float) -> dict[str, int]:
        """Counts for status output: buckets, nodes, good, questionable, bad, replacements."""
        states = [n.state(now) for b in self._buckets for n in b.nodes]
        return {
            "buckets": len(self._buckets),
            "nodes": len(states),
            "good": states.count(NodeState.GOOD),
            "questionable": states.count(NodeState.QUESTIONABLE),
            "bad": states.count(NodeState.BAD),
            "replacements": sum(len(b.cache) for b in self._buckets),
        }

    # ------------------------------------------------------------------------------- persistence

    def to_bytes(self) -> bytes:
        """dht.dat contents: bencoded ``{"id": own_id, "nodes": ..., "nodes6": ...}``.

        ``nodes`` holds the IPv4 nodes as 26-byte compact node infos, ``nodes6`` the IPv6 ones as
        38-byte entries; BAD nodes and replacement-cache nodes are left out.
        """
        v4: list[bytes] = []
        v6: list[bytes] = []
        for n in self.nodes():
            if n.fails >= MAX_FAILS:
                continue
            ip = ipaddress.ip_address(n.addr[0])  # canonical IP literal since heard_from()
            entry = n.node_id + ip.packed + n.addr[1].to_bytes(2, "big")
            (v4 if ip.version == 4 else v6).append(entry)
        return bytes(bencode2.bencode({b"id": self.own_id, b"nodes": b"".join(v4), b"nodes6": b"".join(v6)}))

    @classmethod
    def from_bytes(cls, data: bytes, rng: random.Random, *, now: float) -> tuple[bytes, list[tuple[bytes, Addr]]]:
        """(own id, nodes to contact) from a saved table; raises ValueError on anything malformed.

        Malformed: not bencode, not a dict, no 20-byte ``id``, ``nodes`` / ``nodes6`` not strings
        whose lengths are multiples of 26 / 38, more entries than a table can hold, or oversized
        input.  Missing ``nodes`` / ``nodes6`` keys read as empty and unknown keys are ignored.
        Well-formed entries that are unusable (port 0, an unusable address, our own id, a
        repeated id) are skipped.  The nodes come back in a random order (``rng``) so that a
        caller that contacts only the first few spreads its startup load.  ``now`` is unused: a
        saved node is not trusted as GOOD; it must answer again (pass it to heard_from then).
        """
        del now
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ValueError("dht.dat data must be bytes")
        if len(data) > _MAX_DAT_BYTES:
            raise ValueError(f"dht.dat is larger than {_MAX_DAT_BYTES} bytes")
        try:
            d: Any = bencode.decode(data, max_depth=_DAT_MAX_DEPTH, max_tokens=_DAT_MAX_TOKENS)
        except BencodeError as e:
            raise ValueError(f"dht.dat is not valid bencode: {e}") from None
        if not isinstance(d, dict):
            raise ValueError("dht.dat is not a bencoded dict")
        own = d.get(b"id")
        if not isinstance(own, bytes) or len(own) != _ID_BYTES:
            raise ValueError(f"dht.dat 'id' is not a {_ID_BYTES}-byte string")
        out: list[tuple[bytes, Addr]] = []
        seen: set[bytes] = {own}
        for key, size in ((b"nodes", _COMPACT4), (b"nodes6", _COMPACT6)):
            blob = d.get(key, b"")
            if not isinstance(blob, bytes) or len(blob) % size:
                raise ValueError(f"dht.dat {key.decode()!r} is not a string of {size}-byte entries")
            if len(blob) // size > _MAX_SAVED_NODES:
                raise ValueError(f"dht.dat {key.decode()!r} has more than {_MAX_SAVED_NODES} entries")
            for off in range(0, len(blob), size):
                node_id = blob[off : off + _ID_BYTES]
                ip = ipaddress.ip_address(blob[off + _ID_BYTES : off + size - 2])
                addr = _canonical_addr((str(ip), int.from_bytes(blob[off + size - 2 : off + size], "big")))
                if addr is None or node_id in seen:
                    continue
                seen.add(node_id)
                out.append((node_id, addr))
        rng.shuffle(out)
        return own, out

    # ---------------------------------------------------------------------------------- internals

    def _tick(self, now: float) -> None:
        if now > self._now:
            self._now = now

    @staticmethod
    def _touch(node: Node, now: float, replied: bool) -> None:
        node.last_seen = now
        if replied:
            node.last_reply = now
            node.fails = 0

    def _index_for(self, node_id: bytes) -> int:
        return bisect.bisect_right(self._buckets, int.from_bytes(node_id, "big"), key=lambda b: b.lo) - 1

    def _bucket_for(self, node_id: bytes) -> _Bucket:
        return self._buckets[self._index_for(node_id)]

    def _insert(self, node: Node, now: float) -> Node | None:
        """Put a node that is in no bucket into its bucket (see heard_from for the return value)."""
        while True:
            i = self._index_for(node.node_id)
            bucket = self._buckets[i]
            if len(bucket.nodes) < self._k:
                bucket.nodes.append(node)
                bucket.last_changed = now
                return None
            for j, old in enumerate(bucket.nodes):
                if old.fails >= MAX_FAILS:
                    del bucket.nodes[j]
                    bucket.nodes.append(node)
                    bucket.last_changed = now
                    return None
            if bucket.lo <= self._own < bucket.hi and bucket.hi - bucket.lo > 1 and len(self._buckets) < _ID_BITS:
                self._split(i)
                continue
            bucket.cache.append(node)
            if len(bucket.cache) > REPLACEMENTS:
                del bucket.cache[0]
            questionable = [old for old in bucket.nodes if old.state(now) is NodeState.QUESTIONABLE]
            return min(questionable, key=lambda old: old.last_seen, default=None)

    def _split(self, i: int) -> None:
        """Replace bucket ``i`` with its two halves; each half refills from its own cache."""
        b = self._buckets[i]
        mid = (b.lo + b.hi) // 2
        halves = (_Bucket(b.lo, mid, b.last_changed), _Bucket(mid, b.hi, b.last_changed))
        for n in b.nodes:
            halves[int.from_bytes(n.node_id, "big") >= mid].nodes.append(n)
        for n in b.cache:
            halves[int.from_bytes(n.node_id, "big") >= mid].cache.append(n)
        for h in halves:
            while len(h.nodes) < self._k:
                spare = h.take_replacement()
                if spare is None:
                    break
                h.nodes.append(spare)
        self._buckets[i : i + 1] = list(halves)
