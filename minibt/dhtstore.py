"""What a DHT node keeps to serve others (BEP 5): announce tokens, announced peers, per-IP query limits.

``TokenMint`` hands out the ``token`` of a ``get_peers`` answer and checks the one an ``announce_peer``
brings back; ``PeerStore`` keeps the peers announced to us and answers ``get_peers`` with a sample;
``QueryLimiter`` is a token bucket per source IP that ``dht.py`` asks before it answers a query.
Out of scope: KRPC encoding (krpc.py), the routing table (routing.py), BEP 32 address-family filtering
(``get`` returns IPv4 and IPv6 peers mixed; the caller picks).  Pure: ``now`` (seconds on the injected
monotonic clock, never decreasing) and a ``random.Random`` come from the caller; every table is bounded.
"""

from __future__ import annotations

import ipaddress
import math
import random

# the constant-time compare hmac.compare_digest is where hmac has no OpenSSL one; importing hmac
# would load _hashlib (3.5 MiB of RSS, sha1.py)
from _operator import _compare_digest as compare_digest
from collections import OrderedDict

from minibt.sha1 import sha1
from minibt.urls import MAX_PORT, Addr

TOKEN_ROTATE_S = 300.0  # BEP 5 reference implementation: a new secret every 5 min
TOKEN_VALID_S = 600.0  # BEP 5 reference implementation: tokens up to 10 min old are accepted
PEER_TTL_S = 30 * 60  # convention (BEP 5 sets no lifetime): a peer is forgotten 30 min after its last announce
# Convention: both caps (issue 12: under a Pi's memory budget); BEP 5 sets none.  Both full (IPv6 peers):
# 2.37 MiB measured with tracemalloc, memory_bytes() 4.77 MiB; budget.py charges DHT_BYTES for the whole node.
MAX_INFO_HASHES = 500
MAX_PEERS_PER_HASH = 50  # convention (libtorrent keeps up to 100 per info-hash)

_TOKEN_BYTES = 8  # SHA-1 truncated: 64 bits are plenty against guessing within 10 min
_SECRET_BYTES = 16

# memory_bytes() terms, upper bounds measured with tracemalloc on CPython 3.11 (64-bit) by
# tests/unit/test_dhtstore.py.  A peer: its compact address as a bytes key (an IPv6 one is 51 B), its float
# time (24 B), and its share of a dict table that re-announces have churned (up to ~110 B per entry).
_PEER_BYTES = 192
# An info-hash: its 20-byte bytes key (53 B), an OrderedDict node and table share (~110 B), the peer dict
# object with its smallest table (~220 B).
_HASH_BYTES = 400
_STORE_BYTES = 2048  # the PeerStore object and its empty OrderedDict


class TokenMint:
    """Announce tokens: SHA-1(ip + info_hash + secret)[:8], the secret rotated every TOKEN_ROTATE_S.

    A token is checked against the current and the previous secret, so it is accepted for at least
    TOKEN_ROTATE_S and never at or after TOKEN_VALID_S from the moment it was handed out (how long in
    between depends on where in the rotation period it was minted: the BEP 5 reference scheme).
    Rotation is lazy: any call at ``now`` first moves the secrets forward; after a gap of two periods or
    more both secrets are fresh.  Hardening (not BEP 5, bittorrent.org#47): the info-hash is hashed in
    too, so a token from ``get_peers`` for one torrent can't announce another.  A NUL byte separates the
    IP text from the info-hash, so the hashed bytes can't be read two ways.

    The secrets come from ``rng``: in production pass an unpredictable generator (``random.SystemRandom``
    or one seeded from ``secrets``), not the Mersenne Twister whose other outputs (transaction ids)
    remote nodes see.
    """

    __slots__ = ("_rng", "_secret", "_previous", "_rotated_at")

    def __init__(self, rng: random.Random, *, now: float) -> None:
        self._rng = rng
        self._secret = rng.randbytes(_SECRET_BYTES)
        self._previous: bytes | None = None
        self._rotated_at = now

    def _advance(self, now: float) -> None:
        periods = math.floor((now - self._rotated_at) / TOKEN_ROTATE_S)
        if periods < 1:
            return
        # One period: the current secret becomes the previous one.  More: no token was minted with the
        # secret that would now be "previous" (we never saw its period), so there is none.
        self._previous = self._secret if periods == 1 else None
        self._secret = self._rng.randbytes(_SECRET_BYTES)
        self._rotated_at += periods * TOKEN_ROTATE_S  # keep the rotation grid: init + k * TOKEN_ROTATE_S

    @staticmethod
    def _digest(secret: bytes, ip: str, info_hash: bytes) -> bytes:
        return sha1(ip.encode("utf-8", "surrogatepass") + b"\0" + info_hash + secret).digest()[:_TOKEN_BYTES]

    def token(self, ip: str, info_hash: bytes, *, now: float) -> bytes:
        """The token to send ``ip`` in a ``get_peers`` answer for ``info_hash``."""
        self._advance(now)
        return self._digest(self._secret, ip, info_hash)

    def valid(self, token: bytes, ip: str, info_hash: bytes, *, now: float) -> bool:
        """Whether ``token`` was minted for this ip and info-hash by the current or the previous secret.

        Anything that is not bytes of the token length is refused without hashing.
        """
        self._advance(now)
        if not isinstance(token, bytes) or len(token) != _TOKEN_BYTES:
            return False
        ok = compare_digest(token, self._digest(self._secret, ip, info_hash))
        if self._previous is not None:
            ok |= compare_digest(token, self._digest(self._previous, ip, info_hash))
        return ok


def _pack(addr: Addr) -> bytes | None:
    """An address as its BEP 23/32 compact form (4 or 16 bytes + port); None if it has none.

    IPv4-mapped IPv6 addresses (from a dual-stack socket) are stored as the IPv4 address.
    """
    host, port = addr
    if not isinstance(port, int) or not 1 <= port <= MAX_PORT:
        return None
    try:
        if ":" not in host:
            return ipaddress.IPv4Address(host).packed + port.to_bytes(2, "big")
        ip6 = ipaddress.IPv6Address(host)
    except ValueError:
        return None
    ip = ip6 if ip6.ipv4_mapped is None else ip6.ipv4_mapped
    return ip.packed + port.to_bytes(2, "big")


def _unpack(packed: bytes) -> Addr:
    port = int.from_bytes(packed[-2:], "big")
    if len(packed) == 6:
        return f"{packed[0]}.{packed[1]}.{packed[2]}.{packed[3]}", port
    return ipaddress.IPv6Address(packed[:16]).compressed, port


class PeerStore:
    """Peers announced to us, per info-hash, each with the time of its last announce.

    Bounded: at ``max_info_hashes`` a new info-hash pushes out the least recently announced one; at
    ``max_peers`` a new peer pushes out the peer of that info-hash whose last announce is oldest.  A
    peer is live for PEER_TTL_S after its last announce; ``get`` returns live peers only, ``expire``
    drops the rest.  Peers are kept in compact form (BEP 23/32: what a ``get_peers`` answer carries), so
    an address that has no compact form (not an IP literal, or a port outside 1..65535) is ignored by
    ``add``, and ``get`` returns IP text in canonical form (IPv6 compressed, IPv4-mapped as IPv4).
    """

    __slots__ = ("_max_hashes", "_max_peers", "_hashes", "_peers")

    def __init__(self, *, max_info_hashes: int = MAX_INFO_HASHES, max_peers: int = MAX_PEERS_PER_HASH) -> None:
        if max_info_hashes < 1 or max_peers < 1:
            raise ValueError(f"PeerStore caps must be >= 1, got {max_info_hashes} hashes, {max_peers} peers")
        self._max_hashes = max_info_hashes
        self._max_peers = max_peers
        # info-hash -> {compact addr: last announce}; both in announce order, least recent first.  The
        # inner tables are plain dicts (a re-announce moves a key by pop + insert): a churned OrderedDict
        # costs ~50 % more per peer.
        self._hashes: OrderedDict[bytes, dict[bytes, float]] = OrderedDict()
        self._peers = 0

    def add(self, info_hash: bytes, addr: Addr, *, now: float) -> None:
        """Record an announce of ``addr`` for ``info_hash`` (a re-announce refreshes the peer's time)."""
        key = _pack(addr)
        if key is None:
            return
        peers = self._hashes.get(info_hash)
        if peers is None:
            if len(self._hashes) >= self._max_hashes:
                _, dropped = self._hashes.popitem(last=False)
                self._peers -= len(dropped)
            peers = self._hashes[info_hash] = {}
        else:
            self._hashes.move_to_end(info_hash)
        if peers.pop(key, None) is None:
            if len(peers) >= self._max_peers:
                del peers[next(iter(peers))]
            else:
                self._peers += 1
        peers[key] = now

    def get(self, info_hash: bytes, rng: random.Random, *, n: int = 50, now: float) -> list[Addr]:
        """A random sample (drawn with ``rng``) of at most ``n`` live peers of ``info_hash``; [] if none."""
        peers = self._hashes.get(info_hash)
        if not peers or n <= 0:
            return []
        live = [key for key, t in peers.items() if now - t < PEER_TTL_S]
        return [_unpack(key) for key in rng.sample(live, min(n, len(live)))]

    def expire(self, now: float) -> None:
        """Drop peers whose last announce is PEER_TTL_S or more before ``now``, then empty info-hashes."""
        for info_hash, peers in list(self._hashes.items()):
            if now - next(iter(peers.values())) < PEER_TTL_S:
                continue  # its oldest peer is live, so all are
            live = {key: t for key, t in peers.items() if now - t < PEER_TTL_S}
            self._peers -= len(peers) - len(live)
            if live:
                self._hashes[info_hash] = live  # a fresh dict: also gives back a churned table's slack
            else:
                del self._hashes[info_hash]

    def __len__(self) -> int:
        return len(self._hashes)

    def stats(self) -> dict[str, int]:
        return {"info_hashes": len(self._hashes), "peers": self._peers}

    def memory_bytes(self) -> int:
        """An upper estimate of the bytes the store holds at its current size (for the memory budget).

        Worst case per item (IPv6 keys, tables churned by re-announces); see test_dhtstore.py for the
        tracemalloc measurements it is checked against.
        """
        return _STORE_BYTES + len(self._hashes) * _HASH_BYTES + self._peers * _PEER_BYTES


class QueryLimiter:
    """A token bucket per source IP (``rate_per_s`` refill, ``burst`` capacity), for incoming queries.

    The table of IPs is LRU-bounded at ``max_ips``: every query (allowed or not) makes its IP the most
    recent, and a new IP beyond the bound pushes out the least recent one.  A forgotten IP comes back
    with a full bucket: an attacker cycling through more than ``max_ips`` addresses gets ``burst``
    queries from each, which is acceptable (the bound is memory, not fairness).
    """

    __slots__ = ("_rate", "_burst", "_max_ips", "_buckets", "_allowed", "_refused")

    def __init__(self, *, rate_per_s: float = 10.0, burst: int = 50, max_ips: int = 4096) -> None:
        if not (rate_per_s > 0 and math.isfinite(rate_per_s)) or burst < 1 or max_ips < 1:
            raise ValueError(f"QueryLimiter needs rate_per_s > 0, burst >= 1, max_ips >= 1; "
                             f"got {rate_per_s!r}, {burst!r}, {max_ips!r}")
        self._rate = float(rate_per_s)
        self._burst = float(burst)
        self._max_ips = max_ips
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # ip -> (tokens, at)
        self._allowed = 0
        self._refused = 0

    def allow(self, ip: str, *, now: float) -> bool:
        """Take one token from ``ip``'s bucket: True if there was one (answer the query), else False."""
        bucket = self._buckets.get(ip)
        if bucket is None:
            if len(self._buckets) >= self._max_ips:
                self._buckets.popitem(last=False)
            tokens, at = self._burst, now
        else:
            self._buckets.move_to_end(ip)
            at = max(now, bucket[1])  # a clock that stepped back refills nothing
            tokens = min(self._burst, bucket[0] + (at - bucket[1]) * self._rate)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
            self._allowed += 1
        else:
            self._refused += 1
        self._buckets[ip] = (tokens, at)
        return ok

    def __len__(self) -> int:
        """IPs in the table."""
        return len(self._buckets)

    def stats(self) -> dict[str, int]:
        return {"ips": len(self._buckets), "allowed": self._allowed, "refused": self._refused}
