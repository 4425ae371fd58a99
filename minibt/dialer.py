"""Outgoing connections of one torrent: candidate addresses, back-off, and the dial budget.

Pure (STYLE.md): no sockets or clock.  Addresses come from trackers and the user (and peers that
dialled us, once known); a failed dial backs its address off exponentially, and an address that
keeps failing is forgotten unless the user named it.  :meth:`Dialer.connect_more` dials through the
torrent, seen as the narrow :class:`DialHost`, while the peer and half-open budgets allow.
Out of scope: the connection itself (session.py, loop.py) and BEP 40 ordering (candidates.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from minibt.peer import Addr, PeerConnection, PeerSource
from minibt.reputation import Reputation

USER_RETRY_S = 2.0
PEER_RETRY_S = 30.0
MAX_RETRY_S = 1800.0
MAX_CANDIDATES = 1000  # convention: addresses kept per torrent
MAX_FAILS = 5  # convention: a non-user address is forgotten after this many failed dials
DIAL_HOLD_S = 60.0  # no redial while one attempt may still be under way


class DialHost(Protocol):
    """What dialling asks of its torrent (:class:`minibt.torrent.Torrent` implements it)."""

    def dial(self, addr: Addr, source: PeerSource, *, now: float) -> int | None: ...


@dataclass(slots=True)
class DialCandidate:
    source: PeerSource
    fails: int = 0
    retry_at: float = 0.0


class Dialer:
    """The addresses a torrent may dial, and which of them to dial now."""

    def __init__(
        self,
        host: DialHost,
        *,
        peers: dict[int, PeerConnection],
        half_open: set[int],
        reputation: Reputation,
        max_peers: int,
        max_half_open: int,
    ) -> None:
        self._host = host
        self._peers = peers  # the torrent's handshaken connections (shared, not copied)
        self._half_open = half_open  # the torrent's dials before the BT handshake (shared)
        self._reputation = reputation
        self._max_peers = max_peers
        self._max_half_open = max_half_open
        self.candidates: dict[Addr, DialCandidate] = {}

    def add(self, addrs: list[Addr], source: PeerSource, *, own: set[Addr]) -> None:
        """Remember ``addrs`` (not ``own`` addresses, banned IPs or port 0) up to MAX_CANDIDATES."""
        for addr in addrs:
            if addr in own or addr[1] == 0:
                continue  # PROTOCOL.md 7.3: trackers return our own address
            if self._reputation.is_banned(addr[0]) or addr in self.candidates:
                continue
            if len(self.candidates) >= MAX_CANDIDATES:
                break
            self.candidates[addr] = DialCandidate(source)

    def connected(self, addr: Addr) -> None:
        cand = self.candidates.get(addr)
        if cand is not None:
            cand.fails = 0

    def connect_failed(self, addr: Addr, now: float) -> None:
        cand = self.candidates.get(addr)
        if cand is not None:
            cand.fails += 1
            # Peers the user named are retried soon and never forgotten (the other side may still be
            # starting or hash-checking); others back off from 30 s and are dropped after 5 failures.
            base = USER_RETRY_S if cand.source is PeerSource.USER else PEER_RETRY_S
            cand.retry_at = now + min(base * 2 ** (cand.fails - 1), MAX_RETRY_S)
            if cand.fails >= MAX_FAILS and cand.source is not PeerSource.USER:
                del self.candidates[addr]

    def forget_ip(self, ip: str) -> None:
        """A banned IP: never dial it again."""
        for addr in [a for a in self.candidates if a[0] == ip]:
            del self.candidates[addr]

    def wants_more(self) -> bool:
        """There are candidates and room for more connections."""
        return self._max_peers - len(self._peers) - len(self._half_open) > 0 and bool(self.candidates)

    def connect_more(self, now: float, *, seeding: bool, dialing: set[Addr]) -> None:
        """Dial candidates while the budgets allow; ``dialing``: every address the session is dialling."""
        want = self._max_peers - len(self._peers) - len(self._half_open)
        if want <= 0 or not self.candidates:
            return
        peers = self._peers.values()
        # Also skip the listen address of peers that dialled us (known from their BEP 10 'p'):
        # dialling it would only end in a duplicate-peer-id close.
        connected = {p.addr for p in peers} | dialing
        connected |= {(p.ip, p.listen_port) for p in peers if p.listen_port}
        for addr, cand in list(self.candidates.items()):
            if want <= 0 or len(self._half_open) >= self._max_half_open:
                break
            if addr in connected or cand.retry_at > now or self._reputation.is_banned(addr[0]):
                continue
            if seeding and cand.source is PeerSource.TRACKER and cand.fails > 0:
                continue
            cid = self._host.dial(addr, cand.source, now=now)
            if cid is None:
                break
            self._half_open.add(cid)
            cand.retry_at = now + DIAL_HOLD_S  # do not redial while this attempt lasts
            want -= 1
