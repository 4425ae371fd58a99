"""Outgoing connections of one torrent: the candidate pool and the dial budget.

Pure (STYLE.md): no sockets or clock.  Addresses come from trackers, the user, PEX (BEP 11) and
peers that dialled us; they live in a :class:`~minibt.candidates.CandidatePool` (BEP 40 priority,
subnet spreading, per-PEX-source caps, back-off after failed dials, our own address refused).
:meth:`Dialer.connect_more` dials through the torrent, seen as the narrow :class:`DialHost`,
while the peer and half-open budgets allow.  Out of scope: the connection itself (session.py, loop.py).
"""

from __future__ import annotations

from typing import Protocol

from minibt.candidates import CandidateConfig, CandidatePool
from minibt.peer import PeerConnection, PeerSource
from minibt.pex import PexReceived
from minibt.reputation import Reputation
from minibt.settings import DEFAULT_MAX_CANDIDATES
from minibt.urls import Addr


class DialHost(Protocol):
    """What dialling asks of its torrent (:class:`minibt.torrent.Torrent` implements it)."""

    def dial(self, addr: Addr, source: PeerSource, *, now: float) -> int | None: ...


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
        client_addr: Addr | None = None,
        max_candidates: int = DEFAULT_MAX_CANDIDATES,
    ) -> None:
        """``client_addr``: our address as peers see it, for BEP 40 priorities (None: unknown yet)."""
        self._host = host
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

    def wants_more(self) -> bool:
        """There are candidates and room for more connections."""
        return self._max_peers - len(self._peers) - len(self._half_open) > 0 and len(self.candidates) > 0

    def connect_more(self, now: float, *, seeding: bool, dialing: set[Addr]) -> None:
        """Dial candidates while the budgets allow; ``dialing``: every address the session is dialling."""
        want = min(self._max_peers - len(self._peers) - len(self._half_open), self._max_half_open - len(self._half_open))
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
        for i, cand in enumerate(picked):
            if self._reputation.is_banned(cand.addr[0]):
                self.candidates.release(cand.addr)
                continue
            cid = self._host.dial(cand.addr, cand.source, now=now)
            if cid is None:
                for rest in picked[i:]:
                    self.candidates.release(rest.addr)  # not tried: no dial hold
                break
            self._half_open.add(cid)
