"""BEP 16 super-seeding: which piece to reveal to which peer, and when, and the offers on the wire.

:class:`SuperSeeder` is pure bookkeeping (no wire, no clock): it is fed what peers announce
(bitfield, Have, Have All) and who comes and goes, and answers with an :class:`Offer` for each
piece to reveal.  Peers are opaque hashable keys; random choices come from an injected
``random.Random``.  :class:`minibt.upload.SuperSeeding` is the torrent's part that switches it on and off
and relays between the torrent's peers and the SuperSeeder: it sends a BEP 3 ``have`` for each offer
and, when super-seeding ends (switched off, or it has done its job), every piece a peer was never
shown.  This module loads when super-seeding starts, not for every torrent (issue 15).  Whether
super-seeding may start (a complete torrent that is seeding) is the torrent's call; refused
requests are upload.py's.

The rules (BEP 16; libtorrent's choices where the BEP is silent, marked so):

* A super-seeder "masquerades as a normal client with no data": no bitfield (Have None with
  BEP 6), then one ``have`` per piece it offers.  Each peer holds ``offers_per_peer`` offers
  (default 1; libtorrent keeps 2).
* Which piece: one that no connected peer has and that is not offered to anyone else -- first a
  piece never offered to anyone, then one offered before whose holders have left; random among
  equals (BEP 16: "a piece that was never sent, or if all pieces were already sent, is very
  rare").  A piece some connected peer has, or is being offered, is never offered: the peer can
  fetch it from that peer (soon), and uploading it again is the redundant upload super-seeding
  exists to avoid.  A peer with nothing left to offer waits; a departure can give it one.
* When: a peer's offer is replaced by the next one only once the offered piece has been seen on
  ANOTHER peer (a ``have`` or bitfield from someone else), BEP 16: "the seed will not inform it
  of any other pieces until it has seen the piece it had sent previously present on at least
  one other client".  libtorrent's exception: a peer that is the only one connected moves on
  with its own ``have``, else a lone leecher would wait forever.  An offer the peer turns out
  to have already (its bitfield arrived after our ``have``) is replaced at once.
* Requests are allowed only for pieces revealed to that peer (libtorrent rejects the others).
* End (``finished``): another peer is a seed, or every piece is held by at least
  ``SUPERSEED_END_AVAILABILITY`` connected peers (libtorrent stops at "minimum availability
  > 1").  The torrent then announces every piece and seeds normally.
* Exempt peers (connected before super-seeding was switched on; they have seen our full
  bitfield) count toward availability, get no offers and may request anything.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from itertools import compress

log = logging.getLogger(__name__)

SUPERSEED_OFFERS_PER_PEER = 1  # BEP 16: "inform them that it received a piece" (libtorrent: 2)
SUPERSEED_END_AVAILABILITY = 2  # libtorrent torrent::get_piece_to_super_seed: stop when min availability > 1
_SAMPLE_TRIES = 8  # random probes into a candidate pool before scanning it

_BIN_TO_BYTES = bytes.maketrans(b"01", b"\x00\x01")  # bitfield -> one 0/1 byte per piece, in C

Peer = Hashable

# Candidate pools for pieces no connected peer has and nobody is offered, in order of preference.
_NONE, _FRESH, _STALE = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Offer:
    """Send ``have(index)`` to ``peer``: the piece is now revealed to it."""

    peer: Peer
    index: int


class _Pool:
    """A set of piece indexes with O(1) add, remove and random choice."""

    __slots__ = ("items", "pos")

    def __init__(self, items: Iterable[int] = ()) -> None:
        self.items: list[int] = list(items)
        self.pos: dict[int, int] = {p: k for k, p in enumerate(self.items)}

    def __len__(self) -> int:
        return len(self.items)

    def add(self, p: int) -> None:
        if p not in self.pos:
            self.pos[p] = len(self.items)
            self.items.append(p)

    def remove(self, p: int) -> None:
        k = self.pos.pop(p)
        last = self.items.pop()
        if last != p:
            self.items[k] = last
            self.pos[last] = k


class _PeerState:
    __slots__ = ("bits", "count", "offers", "revealed", "exempt")

    def __init__(self, exempt: bool) -> None:
        self.bits: bytearray | None = None  # one 0/1 byte per piece, allocated on the first have
        self.count = 0
        self.offers: list[int] = []  # current offers, oldest first
        self.revealed: set[int] = set()  # every piece we sent a have for
        self.exempt = exempt


class SuperSeeder:
    """Offer bookkeeping for one torrent we seed in super-seed mode.

    Every input method returns the offers to send now (possibly to other peers than the one the
    input was about).  Misuse (unknown peer, index out of range) raises ``ValueError``: the
    torrent validates remote input (through the wire machine) before it gets here.
    """

    def __init__(
        self,
        num_pieces: int,
        rng: random.Random,
        *,
        offers_per_peer: int = SUPERSEED_OFFERS_PER_PEER,
        end_availability: int = SUPERSEED_END_AVAILABILITY,
    ) -> None:
        if num_pieces <= 0 or offers_per_peer <= 0 or end_availability <= 0:
            raise ValueError("num_pieces, offers_per_peer and end_availability must be positive")
        n = num_pieces
        self._n = n
        self._rng = rng
        self._per_peer = offers_per_peer
        self._end_avail = end_availability
        self._peers: dict[Peer, _PeerState] = {}
        self._avail = [0] * n  # connected peers having each piece
        self._below_end = n  # pieces with availability < end_availability
        self._offered_to: dict[int, set[Peer]] = {}  # piece -> peers it is currently offered to
        self._ever = bytearray(n)  # offered to someone at some time
        self._pool_of = bytearray([_FRESH]) * n
        self._pools = {_FRESH: _Pool(range(n)), _STALE: _Pool()}
        self._finished = False
        self._offers_made = 0
        self._replaced = 0
        self._voided = 0

    # ------------------------------------------------------------------ queries

    @property
    def finished(self) -> bool:
        """Super-seeding has done its job: another seed exists or every piece is replicated."""
        return self._finished

    def may_request(self, peer: Peer, index: int) -> bool:
        """Whether a request from ``peer`` for piece ``index`` may be served."""
        st = self._peers.get(peer)
        if st is None:
            return False
        return self._finished or st.exempt or index in st.revealed

    def offers(self, peer: Peer) -> tuple[int, ...]:
        """The peer's current offers (revealed, not yet seen on another peer)."""
        return tuple(self._state(peer).offers)

    def revealed(self, peer: Peer) -> frozenset[int]:
        return frozenset(self._state(peer).revealed)

    def is_exempt(self, peer: Peer) -> bool:
        return self._state(peer).exempt

    def has(self, peer: Peer, index: int) -> bool:
        self._check_index(index)
        bits = self._state(peer).bits
        return bits is not None and bits[index] == 1

    def unrevealed_missing(self, peer: Peer) -> list[int]:
        """Pieces the peer lacks that we never announced to it (what ending super-seeding must send)."""
        st = self._state(peer)
        if st.exempt:
            return []
        lacks = range(self._n) if st.bits is None else compress(range(self._n), st.bits.translate(_INVERT))
        revealed = st.revealed
        return [i for i in lacks if i not in revealed]

    def availability(self, index: int) -> int:
        self._check_index(index)
        return self._avail[index]

    def stats(self) -> dict[str, int]:
        return {
            "peers": len(self._peers),
            "fresh": len(self._pools[_FRESH]),
            "stale": len(self._pools[_STALE]),
            "offered": len(self._offered_to),
            "below_end": self._below_end,
            "offers_made": self._offers_made,
            "replaced": self._replaced,
            "voided": self._voided,
            "finished": int(self._finished),
        }

    # ------------------------------------------------------------------ inputs

    def add_peer(self, peer: Peer, *, exempt: bool = False, have: Iterable[int] = ()) -> list[Offer]:
        """A peer finished its handshake (``have``: what it is already known to hold)."""
        if peer in self._peers:
            raise ValueError(f"peer {peer!r} already added")
        self._peers[peer] = _PeerState(exempt)
        out: list[Offer] = []
        self._gain(peer, list(have), out)
        if not exempt:
            self._fill(peer, out)
        self._check_end()
        return out

    def remove_peer(self, peer: Peer) -> list[Offer]:
        """The peer disconnected: its pieces are no longer available, its offers are free."""
        st = self._peers.get(peer)
        if st is None:
            return []
        for i in list(st.offers):
            self._unoffer(peer, i)
        del self._peers[peer]
        if st.bits is not None:
            for i in compress(range(self._n), st.bits):
                self._dec(i)
        out: list[Offer] = []
        # Pieces only it had are offerable again: hand them to peers waiting for an offer.
        for p in list(self._peers):
            self._fill(p, out)
        self._lone_check(out)
        return out

    def peer_have(self, peer: Peer, index: int) -> list[Offer]:
        """A BEP 3 ``have`` from ``peer``."""
        self._check_index(index)
        self._state(peer)
        out: list[Offer] = []
        self._gain(peer, [index], out)
        self._lone_check(out)
        self._check_end()
        return out

    def peer_bitfield(self, peer: Peer, bits: bytes) -> list[Offer]:
        """A BEP 3 bitfield (already validated by the wire machine); adds to what we knew."""
        n = self._n
        if len(bits) != (n + 7) // 8:
            raise ValueError(f"bitfield of {len(bits)} bytes for {n} pieces")
        spare = len(bits) * 8 - n
        word = int.from_bytes(bits, "big") >> spare
        arr = format(word, f"0{n}b").encode("ascii").translate(_BIN_TO_BYTES)
        return self._announce(peer, compress(range(n), arr))

    def peer_have_all(self, peer: Peer) -> list[Offer]:
        """BEP 6 Have All."""
        return self._announce(peer, range(self._n))

    # ------------------------------------------------------------------ internals

    def _announce(self, peer: Peer, pieces: Iterable[int]) -> list[Offer]:
        st = self._state(peer)
        out: list[Offer] = []
        held = list(pieces)
        # Offers it already holds (our have went out before its bitfield arrived) were useless.
        held_set = set(held)
        bits = st.bits
        for i in [i for i in st.offers if i in held_set or (bits is not None and bits[i])]:
            self._unoffer(peer, i)
            self._voided += 1
        self._gain(peer, held, out)
        if not st.exempt:
            self._fill(peer, out)
        self._lone_check(out)
        self._check_end()
        return out

    def _gain(self, peer: Peer, pieces: list[int], out: list[Offer]) -> None:
        """``peer`` now holds ``pieces``: count them; offers of them to others are replaced."""
        st = self._peers[peer]
        if not pieces:
            return
        if st.bits is None:
            st.bits = bytearray(self._n)
        bits = st.bits
        new = []
        for i in pieces:  # count everything first, so no replacement offer is one of these
            if not bits[i]:
                bits[i] = 1
                self._inc(i)
                new.append(i)
        st.count += len(new)
        if st.count == self._n:
            self._finished = True  # another seed: the swarm has a full copy besides us
        offered_to = self._offered_to
        for i in new:
            others = offered_to.get(i)
            if others:
                for q in [q for q in others if q != peer]:
                    self._replace(q, i, out)
            if i in st.offers and self._avail[i] > 1:
                self._replace(peer, i, out)  # someone else already had it

    def _replace(self, peer: Peer, index: int, out: list[Offer]) -> None:
        self._unoffer(peer, index)
        self._replaced += 1
        self._fill(peer, out)

    def _lone_check(self, out: list[Offer]) -> None:
        """libtorrent: the only connected peer moves on with its own have."""
        if len(self._peers) != 1:
            return
        (peer, st), = self._peers.items()
        bits = st.bits
        if bits is None or st.exempt:
            return
        for i in [i for i in st.offers if bits[i]]:
            self._replace(peer, i, out)

    def _fill(self, peer: Peer, out: list[Offer]) -> None:
        st = self._peers[peer]
        if st.exempt or self._finished:
            return
        while len(st.offers) < self._per_peer:
            i = self._choose(st)
            if i is None:
                return
            st.offers.append(i)
            st.revealed.add(i)
            self._offered_to.setdefault(i, set()).add(peer)
            self._ever[i] = 1
            self._refile(i)
            self._offers_made += 1
            out.append(Offer(peer, i))

    def _choose(self, st: _PeerState) -> int | None:
        rng = self._rng
        fresh = self._pools[_FRESH]
        if fresh:  # nobody has these and nobody was ever offered them: any will do
            return fresh.items[rng.randrange(len(fresh))]
        items = self._pools[_STALE].items  # the peer may have been offered one of these before
        if not items:
            return None
        for _ in range(_SAMPLE_TRIES):
            i = items[rng.randrange(len(items))]
            if i not in st.revealed:
                return i
        ok = [i for i in items if i not in st.revealed]
        return ok[rng.randrange(len(ok))] if ok else None

    def _unoffer(self, peer: Peer, index: int) -> None:
        self._peers[peer].offers.remove(index)
        holders = self._offered_to.get(index)
        if holders is not None:
            holders.discard(peer)
            if not holders:
                del self._offered_to[index]
        self._refile(index)

    def _inc(self, i: int) -> None:
        a = self._avail[i] = self._avail[i] + 1
        if a == self._end_avail:
            self._below_end -= 1
        if a == 1:
            self._refile(i)

    def _dec(self, i: int) -> None:
        a = self._avail[i] = self._avail[i] - 1
        if a == self._end_avail - 1:
            self._below_end += 1
        if a == 0:
            self._refile(i)

    def _refile(self, i: int) -> None:
        """Put piece ``i`` into the candidate pool its state calls for."""
        if self._avail[i] or i in self._offered_to:
            kind = _NONE
        elif self._ever[i]:
            kind = _STALE
        else:
            kind = _FRESH
        old = self._pool_of[i]
        if old == kind:
            return
        if old != _NONE:
            self._pools[old].remove(i)
        if kind != _NONE:
            self._pools[kind].add(i)
        self._pool_of[i] = kind

    def _check_end(self) -> None:
        if self._finished:
            return
        if self._below_end == 0:
            self._finished = True

    def _state(self, peer: Peer) -> _PeerState:
        st = self._peers.get(peer)
        if st is None:
            raise ValueError(f"unknown peer {peer!r}")
        return st

    def _check_index(self, i: int) -> None:
        if not 0 <= i < self._n:
            raise ValueError(f"piece {i} out of range 0..{self._n - 1}")


_INVERT = bytes.maketrans(b"\x00\x01", b"\x01\x00")
