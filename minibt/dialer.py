"""Outgoing connections of one torrent: whom to dial, and when.

Pure (STYLE.md): no sockets or clock.  In scope: :func:`peer_priority` (BEP 40, CRC32-C) and
:class:`CandidatePool`, which keeps the addresses we may dial -- from trackers, the user, PEX
(BEP 11) and peers that dialled us -- with their source and BEP 11 flags, de-duplicated by
(ip, port), bounded in total and per PEX source (BEP 11 security: "avoid taking all its connection
candidates from a single PEX source"), never holding our own address, with retry back-off after
failed dials.  :meth:`CandidatePool.select` hands out the next dials: user-given addresses first,
then by BEP 40 priority, one per subnet before a second from the same subnet, skipping seeds when
we seed.  :class:`Dialer` owns the pool and turns the peer and half-open budgets into
:class:`~minibt.effects.DialPeer` effects; the session opens the connections (session.py, loop.py).
A new peer source (DHT, LSD, holepunch) feeds :meth:`Dialer.add` with its own PeerSource.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Container, Iterable
from dataclasses import dataclass

from minibt.effects import DialPeer, Effect
from minibt.errors import CloseReason, LocalProtocolError
from minibt.peer import PeerConnection, PeerSource
from minibt.pex import PEX_MAX_PEERS_PER_SOURCE, PexFlag, PexReceived, canonical_ip
from minibt.reputation import Reputation
from minibt.settings import DEFAULT_MAX_CANDIDATES
from minibt.urls import Addr

PEX_SOURCE_SHARE = 4  # convention: one PEX source may fill at most 1/4 of the pool
RETRY_S = 30.0  # convention (torrent.py PEER_RETRY_S): first back-off after a failed dial
USER_RETRY_S = 2.0  # convention (torrent.py USER_RETRY_S): user-given peers are retried soon
MAX_RETRY_S = 1800.0  # convention (torrent.py MAX_RETRY_S)
MAX_FAILS = 5  # convention (torrent.py): forget a non-user candidate after 5 failed dials
DIAL_HOLD_S = 60.0  # convention (torrent.py): no redial while one attempt may still be under way


def _crc32c_table() -> tuple[int, ...]:
    poly = 0x82F63B78  # CRC-32C (Castagnoli) polynomial 0x1EDC6F41, bit-reflected
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (RFC 3720) of ``data``; BEP 40 inputs are at most 32 bytes, so a table loop will do."""
    crc = 0xFFFFFFFF
    table = _CRC32C
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF


def _packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def peer_priority(a: Addr, b: Addr) -> int:
    """BEP 40 canonical priority of the connection between ``a`` and ``b`` (symmetric).

    ``crc32-c(sort(masked_a, masked_b))``; same IP: ``crc32-c(sort(port_a, port_b))`` (16-bit
    big-endian).  IPv4 mask FF.FF.55.55, FF.FF.FF.55 within a /16, all of it within a /24.
    IPv6 per the BEP text: FFFF:FFFF:FFFF:5555:..., one more FF byte for each further shared
    byte after the /48 (libtorrent masks only the upper 64 bits for IPv6; we follow the BEP).
    A mixed IPv4/IPv6 pair compares the IPv4-mapped form (the BEP leaves it undefined).
    Raises ValueError if an IP is not an IP literal.
    """
    ra, rb = _packed(a[0]), _packed(b[0])
    if len(ra) != len(rb):
        ra, rb = (b"\0" * 10 + b"\xff\xff" + r if len(r) == 4 else r for r in (ra, rb))
    if ra == rb:
        pa, pb = a[1].to_bytes(2, "big"), b[1].to_bytes(2, "big")
        return crc32c(min(pa, pb) + max(pa, pb))
    first_diff = next(i for i, (x, y) in enumerate(zip(ra, rb, strict=True)) if x != y)
    full = max(2 if len(ra) == 4 else 6, first_diff + 1)
    mask = b"\xff" * full + b"\x55" * (len(ra) - full)
    ma = bytes(x & m for x, m in zip(ra, mask, strict=True))
    mb = bytes(x & m for x, m in zip(rb, mask, strict=True))
    return crc32c(min(ma, mb) + max(ma, mb))


@dataclass(frozen=True, slots=True)
class CandidateConfig:
    """Limits on the peer addresses a torrent keeps to dial."""

    max_candidates: int = DEFAULT_MAX_CANDIDATES
    max_per_pex_source: int | None = None  # None: min(50, max_candidates // PEX_SOURCE_SHARE)
    # BEP 11 security: ignore a PEX address whose IP we already hold with another port.  Loopback
    # is exempt: local test swarms run many peers on 127.0.0.1, and loopback cannot aim dials at a
    # remote victim.
    one_port_per_ip: bool = True
    retry_s: float = RETRY_S
    user_retry_s: float = USER_RETRY_S
    max_retry_s: float = MAX_RETRY_S
    max_fails: int = MAX_FAILS
    dial_hold_s: float = DIAL_HOLD_S

    def __post_init__(self) -> None:
        if self.max_candidates < 1 or (self.max_per_pex_source is not None and self.max_per_pex_source < 1):
            raise ValueError("candidate limits must be >= 1")
        if self.max_fails < 1:
            raise ValueError("max_fails must be >= 1")

    def per_source_cap(self) -> int:
        if self.max_per_pex_source is not None:
            return self.max_per_pex_source
        return max(1, min(PEX_MAX_PEERS_PER_SOURCE, self.max_candidates // PEX_SOURCE_SHARE))


@dataclass(frozen=True, slots=True)
class Candidate:
    """A snapshot of one pool entry."""

    addr: Addr
    source: PeerSource
    flags: int
    via: Addr | None  # PEX: the peer that told us about it
    priority: int  # BEP 40, against our client address
    fails: int


class _Entry:
    __slots__ = ("source", "flags", "via", "priority", "fails", "retry_at", "seq", "subnet")

    def __init__(self, source: PeerSource, flags: int, via: Addr | None, seq: int, subnet: bytes | str) -> None:
        self.source = source
        self.flags = flags
        self.via = via
        self.priority = 0
        self.fails = 0
        self.retry_at = 0.0
        self.seq = seq
        self.subnet = subnet


def _subnet(ip: str) -> bytes | str:
    """The batch-spreading key: the /16 of an IPv4 address, the /32 of an IPv6 one."""
    try:
        raw = _packed(ip)
    except ValueError:
        return ip  # a host name (magnet x.pe): its own subnet
    return raw[:2] if len(raw) == 4 else raw[:4]


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


class CandidatePool:
    """Addresses we may dial for one torrent (pure; the session does the dialling)."""

    def __init__(
        self,
        *,
        own_addrs: Iterable[Addr] = (),
        client_addr: Addr | None = None,
        config: CandidateConfig | None = None,
    ) -> None:
        self._cfg = config or CandidateConfig()
        self._per_source_cap = self._cfg.per_source_cap()
        self._own: set[Addr] = set()
        self._client: Addr | None = None
        self._entries: dict[Addr, _Entry] = {}
        self._by_via: dict[Addr | None, dict[Addr, None]] = {}  # PEX entries per source, oldest first
        self._ips: dict[str, int] = {}
        self._seq = 0
        self._counts = {
            "added": 0,
            "rejected_own": 0,
            "rejected_duplicate_ip": 0,
            "rejected_source_cap": 0,
            "rejected_full": 0,
            "evicted": 0,
            "forgotten": 0,
        }
        for a in own_addrs:
            self.add_own_addr(a)
        if client_addr is not None:
            self.set_client_addr(client_addr)

    # -- configuration

    def add_own_addr(self, addr: Addr) -> None:
        """Never hold (or hand out) ``addr``: one of our own listen addresses."""
        key = _key(addr)
        self._own.add(key)
        self.discard(key)

    def set_client_addr(self, addr: Addr) -> None:
        """Our address as peers see it (BEP 40 input); recomputes every priority."""
        self._client = _key(addr)
        for a, e in self._entries.items():
            e.priority = self._priority(a)

    def _priority(self, addr: Addr) -> int:
        client = self._client
        if client is None:
            client = ("::" if ":" in addr[0] else "0.0.0.0", 0)
        try:
            return peer_priority(client, addr)
        except ValueError:
            return 0  # a host name: no BEP 40 priority

    # -- adding and removing

    def add(self, addr: Addr, *, source: PeerSource, flags: int = 0, via: Addr | None = None) -> bool:
        """Add a candidate; False if it is ours, already held, or refused by a limit."""
        key = _key(addr)
        if not 0 < key[1] <= 0xFFFF:
            return False
        if key in self._own:
            self._counts["rejected_own"] += 1
            return False
        old = self._entries.get(key)
        if old is not None:
            if source is PeerSource.PEX and old.source is PeerSource.PEX:
                old.flags = flags & 0xFF  # the latest word on seed/uTP/... from PEX
            return False
        pex = source is PeerSource.PEX
        via = None if via is None or not pex else _key(via)
        if pex:
            if len(self._by_via.get(via, ())) >= self._per_source_cap:
                self._counts["rejected_source_cap"] += 1
                return False
            if self._cfg.one_port_per_ip and key[0] in self._ips and not _is_loopback(key[0]):
                self._counts["rejected_duplicate_ip"] += 1
                return False
        if len(self._entries) >= self._cfg.max_candidates and (pex or not self._evict_one()):
            self._counts["rejected_full"] += 1
            return False
        self._seq += 1
        entry = _Entry(source, flags & 0xFF, via, self._seq, _subnet(key[0]))
        entry.priority = self._priority(key)
        self._entries[key] = entry
        self._ips[key[0]] = self._ips.get(key[0], 0) + 1
        if pex:
            self._by_via.setdefault(via, {})[key] = None
        self._counts["added"] += 1
        return True

    def _evict_one(self) -> bool:
        """Make room for a non-PEX candidate: drop the oldest entry of the largest PEX source."""
        if not self._by_via:
            return False
        via = max(self._by_via, key=lambda v: len(self._by_via[v]))
        self.discard(next(iter(self._by_via[via])))
        self._counts["evicted"] += 1
        return True

    def add_pex(self, received: PexReceived, *, via: Addr) -> int:
        """Take what ``via`` told us; its ``dropped`` entries are forgotten if only it knew them
        and we have not tried them yet.  Returns the number of new candidates."""
        via = _key(via)
        n = 0
        for p in received.all_added():
            n += self.add(p.addr, source=PeerSource.PEX, flags=p.flags, via=via)
        for addr in received.all_dropped():
            key = _key(addr)
            e = self._entries.get(key)
            if e is not None and e.source is PeerSource.PEX and e.via == via and e.retry_at == 0.0:
                self.discard(key)
        return n

    def discard(self, addr: Addr) -> bool:
        key = _key(addr)
        e = self._entries.pop(key, None)
        if e is None:
            return False
        left = self._ips[key[0]] - 1
        if left:
            self._ips[key[0]] = left
        else:
            del self._ips[key[0]]
        if e.source is PeerSource.PEX:
            bucket = self._by_via[e.via]
            del bucket[key]
            if not bucket:
                del self._by_via[e.via]
        return True

    def discard_ip(self, ip: str) -> int:
        """Forget every candidate on ``ip`` (a ban); returns how many."""
        try:
            ip = canonical_ip(ip)
        except ValueError:
            pass
        doomed = [a for a in self._entries if a[0] == ip]
        for a in doomed:
            self.discard(a)
        return len(doomed)

    # -- dialling

    def select(
        self,
        n: int,
        *,
        now: float,
        we_are_seed: bool = False,
        exclude: Container[Addr] = (),
        skip_failed: Container[PeerSource] = (),
    ) -> list[Candidate]:
        """Up to ``n`` candidates to dial now, best first; they are held back for ``dial_hold_s``.

        Order: user-given peers, then BEP 40 priority (highest first); a batch takes one address
        per subnet (/16, IPv6 /32) before a second one from the same subnet.  Candidates in back-off,
        in ``exclude`` (connected or being dialled), and -- when ``we_are_seed`` -- PEX-flagged
        seeds are skipped, and so are candidates from a ``skip_failed`` source that failed before.
        """
        if n <= 0:
            return []
        eligible = [
            (a, e)
            for a, e in self._entries.items()
            if e.retry_at <= now
            and a not in exclude
            and not (we_are_seed and e.flags & PexFlag.SEED)
            and not (e.fails and e.source in skip_failed)
        ]
        eligible.sort(key=lambda ae: (ae[1].source is not PeerSource.USER, -ae[1].priority, ae[1].seq))
        picked: list[tuple[Addr, _Entry]] = []
        subnets: set[bytes | str] = set()
        rest: list[tuple[Addr, _Entry]] = []
        for a, e in eligible:
            if len(picked) >= n:
                break
            if e.subnet in subnets:
                rest.append((a, e))
            else:
                subnets.add(e.subnet)
                picked.append((a, e))
        picked.extend(rest[: n - len(picked)])
        for _, e in picked:
            e.retry_at = now + self._cfg.dial_hold_s
        return [self._snapshot(a, e) for a, e in picked]

    def release(self, addr: Addr) -> None:
        """A selected candidate was not dialled after all: lift its dial hold."""
        e = self._entries.get(_key(addr))
        if e is not None:
            e.retry_at = 0.0  # it was eligible when selected, so it may be dialled now

    def retry_at(self, addr: Addr) -> float | None:
        """When ``addr`` may be dialled again (0.0: now; None: not held)."""
        e = self._entries.get(_key(addr))
        return None if e is None else e.retry_at

    def connect_failed(self, addr: Addr, *, now: float) -> None:
        """A dial failed: back off exponentially; forget a non-user candidate after ``max_fails``."""
        key = _key(addr)
        e = self._entries.get(key)
        if e is None:
            return
        e.fails += 1
        user = e.source is PeerSource.USER
        if e.fails >= self._cfg.max_fails and not user:
            self.discard(key)
            self._counts["forgotten"] += 1
            return
        base = self._cfg.user_retry_s if user else self._cfg.retry_s
        e.retry_at = now + min(base * 2 ** (e.fails - 1), self._cfg.max_retry_s)

    def connect_succeeded(self, addr: Addr) -> None:
        """A dial worked: clear the failure count (the entry stays for a later redial)."""
        e = self._entries.get(_key(addr))
        if e is not None:
            e.fails = 0

    def next_retry_at(self) -> float | None:
        """The earliest moment a held-back candidate becomes eligible again (None: none held)."""
        return min((e.retry_at for e in self._entries.values() if e.retry_at > 0.0), default=None)

    # -- inspection

    def _snapshot(self, addr: Addr, e: _Entry) -> Candidate:
        return Candidate(addr, e.source, e.flags, e.via, e.priority, e.fails)

    def get(self, addr: Addr) -> Candidate | None:
        key = _key(addr)
        e = self._entries.get(key)
        return None if e is None else self._snapshot(key, e)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, addr: object) -> bool:
        if not (isinstance(addr, tuple) and len(addr) == 2 and isinstance(addr[0], str) and isinstance(addr[1], int)):
            return False
        return _key(addr) in self._entries

    def stats(self) -> dict[str, int]:
        return {
            **self._counts,
            "candidates": len(self._entries),
            "pex_sources": len(self._by_via),
            "max_per_pex_source": self._per_source_cap,
        }


def _key(addr: Addr) -> Addr:
    """Canonical (ip, port); host names (magnet x.pe) are kept as given, lower-cased."""
    ip, port = addr
    if type(port) is not int:
        raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, f"bad port in {addr!r}")
    try:
        return (canonical_ip(ip), port)
    except ValueError:
        return (ip.lower(), port)


class Dialer:
    """The addresses a torrent may dial, and which of them to dial now."""

    def __init__(
        self,
        *,
        peers: dict[int, PeerConnection],
        half_open: set[int],
        reputation: Reputation,
        max_peers: int,
        max_half_open: int,
        client_addr: Addr | None = None,
        max_candidates: int = DEFAULT_MAX_CANDIDATES,
    ) -> None:
        """``client_addr``: our address as peers see it, for BEP 40 priorities (None: unknown yet)."""
        self._peers = peers  # the torrent's handshaken connections (shared, not copied)
        self._half_open = half_open  # the torrent's dials before the BT handshake (shared)
        self._reputation = reputation
        self._max_peers = max_peers
        self._max_half_open = max_half_open
        self.candidates = CandidatePool(client_addr=client_addr, config=CandidateConfig(max_candidates=max_candidates))
        self._client_known = client_addr is not None

    def peer_saw_us_as(self, ip: str, port: int) -> None:
        """A peer's BEP 10 'yourip': use it for BEP 40 priorities unless our address is known."""
        if not self._client_known:
            self._client_known = True
            self.candidates.set_client_addr((ip, port))

    def add(self, addrs: list[Addr], source: PeerSource, *, own: set[Addr]) -> None:
        """Remember ``addrs`` (not ``own`` addresses, banned IPs or port 0) up to the pool's cap."""
        pool = self.candidates
        for a in own:
            pool.add_own_addr(a)  # PROTOCOL.md 7.3: trackers return our own address
        for addr in addrs:
            if self._reputation.is_banned(addr[0]):
                continue
            pool.add(addr, source=source)

    def add_pex(self, received: PexReceived, *, via: Addr, own: set[Addr]) -> int:
        """What a PEX source told us (flags kept, capped per source); returns new candidates."""
        pool = self.candidates
        for a in own:
            pool.add_own_addr(a)
        n = 0
        for p in received.all_added():
            if not self._reputation.is_banned(p.ip):
                n += pool.add(p.addr, source=PeerSource.PEX, flags=p.flags, via=via)
        if received.all_dropped():
            pool.add_pex(PexReceived((), received.dropped, (), received.dropped6), via=via)
        return n

    def connected(self, addr: Addr) -> None:
        self.candidates.connect_succeeded(addr)

    def connect_failed(self, addr: Addr, now: float) -> None:
        # Peers the user named are retried soon and never forgotten (the other side may still be
        # starting or hash-checking); others back off from 30 s and are dropped after 5 failures.
        self.candidates.connect_failed(addr, now=now)

    def forget_ip(self, ip: str) -> None:
        """A banned IP: never dial it again."""
        self.candidates.discard_ip(ip)

    def dial_started(self, cid: int) -> None:
        """The session opened connection ``cid`` for one of our DialPeer effects."""
        self._half_open.add(cid)

    def wants_more(self) -> bool:
        """There are candidates and room for more connections."""
        return self._max_peers - len(self._peers) - len(self._half_open) > 0 and len(self.candidates) > 0

    def connect_more(self, now: float, *, seeding: bool, dialing: set[Addr], slots: int, out: list[Effect]) -> None:
        """Dial candidates while the budgets allow: ``slots`` more connections the session may open,
        ``dialing`` every address the session is dialling."""
        want = min(
            self._max_peers - len(self._peers) - len(self._half_open), self._max_half_open - len(self._half_open), slots
        )
        if want <= 0 or not len(self.candidates):
            return
        peers = self._peers.values()
        # Also skip the listen address of peers that dialled us (known from their BEP 10 'p'):
        # dialling it would only end in a duplicate-peer-id close.
        connected = {p.addr for p in peers} | dialing
        connected |= {(p.ip, p.listen_port) for p in peers if p.listen_port}
        # A seed does not retry tracker peers that failed once (they are likely gone or seeds too).
        skip_failed = (PeerSource.TRACKER,) if seeding else ()
        picked = self.candidates.select(
            want, now=now, we_are_seed=seeding, exclude=connected, skip_failed=skip_failed
        )
        for cand in picked:
            if self._reputation.is_banned(cand.addr[0]):
                self.candidates.release(cand.addr)
                continue
            out.append(DialPeer(cand.addr, cand.source, cand.flags))
