"""Piece and block picker (BEP 3 "piece downloading strategy", BEP 6 allowed-fast).

Pure bookkeeping, no I/O and no clock: which pieces we have, which peer has which piece
(availability), and which blocks are requested from whom.  Peers are opaque hashable keys;
randomness comes from an injected ``random.Random``.  Requests, timeouts and the wire are the
session's business; this module only answers "what should I ask this peer for next?".

Order of picks for one peer:
  1. free blocks of partial pieces: the pieces this peer already works on, then other partials;
  2. a new piece: random while fewer than ``random_first`` pieces are complete, then rarest first;
  3. end game (no un-requested block left anywhere): blocks requested from *other* peers,
     fewest requesters first, at most ``endgame_dup_limit`` requesters per block.

Piece life cycle::

    FRESH --pick / unsolicited block--> PARTIAL --piece_hashing--> HASHING --piece_passed--> HAVE
      ^                                                               |
      +------------------------- piece_failed ------------------------+

Availability and the rarest-first order of the FRESH pieces are a :class:`RarityOrder`
(rarity.py, bucketed as in libtorrent's piece_picker); this module keeps the rest: our pieces,
each peer's pieces and requests, partial pieces block by block, and end game.  "Have all" peers
are a plain counter here, not availability.
"""

from __future__ import annotations

import random
from collections import namedtuple
from collections.abc import Callable, Collection, Hashable, Sequence, Sized
from itertools import compress

from minibt.wire_codec import BLOCK_LEN

from .errors import CloseReason, WireError
from .rarity import RarityOrder

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple

    Block = NamedTuple("Block", [("index", int), ("begin", int), ("length", int)])  # noqa: UP014 - index shadows tuple.index
else:  # collections.namedtuple at run time: typing is not loaded (see utp_codec.py)
    Block = namedtuple("Block", ("index", "begin", "length"))

RANDOM_FIRST = 4  # convention (mainline/libtorrent): random pieces until a few are complete
ENDGAME_DUP_LIMIT = 2  # convention: each block requested from at most 2 peers in end game

# b"0"/b"1" -> 0/1, to expand a bitfield through its binary string representation in C.
_BIN_TO_BYTES = bytes.maketrans(b"01", b"\x00\x01")
_BYTES_TO_BIN = bytes.maketrans(b"\x00\x01", b"01")  # the reverse, for peer_pieces()

Peer = Hashable


Block.__doc__ = """One request unit: ``length`` bytes at offset ``begin`` of piece ``index`` (a tuple: made per
block requested, twice as fast to build as a frozen dataclass).  ``index`` shadows ``tuple.index``,
which nothing here uses."""


class _PeerState:
    """What one peer has and what we asked it for."""

    __slots__ = ("seed", "bits", "count", "interest", "fresh", "out", "pieces")

    def __init__(self) -> None:
        self.seed = False  # "have all": counted in PiecePicker._num_seeds, bits unused
        self.bits = bytearray()  # one byte (0/1) per piece when not a seed
        self.count = 0  # pieces it has (non-seed)
        self.interest = 0  # pieces it has that we need (wanted and missing)
        self.fresh = 0  # pieces it has that are FRESH (in the availability order)
        self.out: dict[int, None] = {}  # outstanding block keys, in request order
        self.pieces: dict[int, int] = {}  # piece -> number of outstanding blocks in it


class _Partial:
    """Block states of one started piece."""

    __slots__ = ("nb", "recv", "requested", "free", "received", "hint")

    def __init__(self, nb: int) -> None:
        self.nb = nb
        self.recv = bytearray(nb)  # 1 = block received
        self.requested: dict[int, list[Peer]] = {}  # block -> requesters (not received)
        self.free = nb  # neither received nor requested
        self.received = 0
        self.hint = 0  # every block below hint is received or requested


class PiecePicker:
    """Chooses blocks to request; tracks our pieces, peer availability and outstanding requests.

    Args:
        num_pieces, piece_length, total_length: torrent geometry (last piece may be short).
        rng: source of every random choice (seed it in tests).
        block_len: request size; the last block of the last piece may be shorter.
        random_first: pick random pieces while fewer than this many pieces are complete.
        endgame_dup_limit: most peers a block may be requested from in end game.

    Remote-derived input (bitfields, have indexes) raises :class:`WireError` when malformed;
    misuse of the API by the session raises ``ValueError``.
    """

    def __init__(self, num_pieces: int, piece_length: int, total_length: int, rng: random.Random, *,
                 block_len: int = BLOCK_LEN, random_first: int = RANDOM_FIRST,
                 endgame_dup_limit: int = ENDGAME_DUP_LIMIT) -> None:
        if num_pieces <= 0 or piece_length <= 0 or block_len <= 0:
            raise ValueError("num_pieces, piece_length and block_len must be positive")
        if total_length <= piece_length * (num_pieces - 1) or total_length > piece_length * num_pieces:
            raise ValueError("total_length does not match num_pieces * piece_length")
        n = num_pieces
        self._n = n
        self._piece_length = piece_length
        self._last_size = total_length - piece_length * (n - 1)
        self._block_len = block_len
        self._bpp = -(-piece_length // block_len)  # blocks per full piece; block key = p * bpp + j
        self._rng = rng
        self._random_first = random_first
        self._dup_limit = endgame_dup_limit
        self._have = bytearray(n)
        self._num_have = 0
        self._wanted = bytearray(b"\x01") * n
        self._need = bytearray(b"\x01") * n  # wanted and not had
        self._missing = n
        self._num_seeds = 0
        self._rarity = RarityOrder(n, rng)  # availability (non-seed peers) and the FRESH order
        self._partials: dict[int, _Partial] = {}
        self._open: dict[int, None] = {}  # wanted partial pieces with free blocks, oldest first
        self._hashing: set[int] = set()
        self._peers: dict[Peer, _PeerState] = {}
        self._nonseed: dict[Peer, _PeerState] = {}
        self._blocks_received = 0
        self._blocks_unexpected = 0
        self._endgame_requests = 0

    # ------------------------------------------------------------------ geometry

    @property
    def num_pieces(self) -> int:
        return self._n

    def piece_size(self, i: int) -> int:
        """Length in bytes of piece ``i``."""
        return self._last_size if i == self._n - 1 else self._piece_length

    def blocks_in_piece(self, i: int) -> int:
        return -(-self.piece_size(i) // self._block_len)

    # ------------------------------------------------------------------ our pieces

    def set_have(self, i: int) -> None:
        """Record that we have piece ``i`` (resume data or a verified piece)."""
        self._check_index(i)
        if self._have[i]:
            return
        if i in self._partials:
            self._drop_partial(i)
        elif self._rarity.fresh[i]:
            self._drop_fresh(i)
        self._hashing.discard(i)
        self._have[i] = 1
        self._num_have += 1
        if self._need[i]:
            self._set_need(i, 0)

    def have(self, i: int) -> bool:
        return bool(self._have[i])

    @property
    def num_have(self) -> int:
        return self._num_have

    @property
    def complete(self) -> bool:
        """True when every wanted piece is had (all pieces, without a wanted mask)."""
        return self._missing == 0

    def missing(self) -> int:
        """Number of wanted pieces we don't have yet."""
        return self._missing

    def set_wanted(self, mask: bytes | None) -> None:
        """Restrict picking to wanted pieces: one byte per piece, nonzero = wanted; None = all."""
        n = self._n
        if mask is None:
            new = bytearray(b"\x01") * n
        else:
            if len(mask) != n:
                raise ValueError(f"wanted mask has {len(mask)} bytes, expected {n}")
            new = bytearray(1 if b else 0 for b in mask)
        old = self._wanted
        rarity = self._rarity
        for p in range(n):
            if new[p] == old[p]:
                continue
            old[p] = new[p]
            if self._have[p]:
                continue
            if new[p]:
                self._need[p] = 1
                self._missing += 1
                pp = self._partials.get(p)
                if pp is not None:
                    if pp.free:
                        self._open[p] = None
                elif p not in self._hashing:
                    rarity.insert(p)
            else:
                self._need[p] = 0
                self._missing -= 1
                self._open.pop(p, None)
                if rarity.fresh[p]:
                    rarity.remove(p)
        # peers' interest and fresh counts, in bulk
        need = int.from_bytes(self._need, "big")
        fresh = int.from_bytes(rarity.fresh, "big")
        for st in self._nonseed.values():
            bits = int.from_bytes(st.bits, "big")
            st.interest = (bits & need).bit_count()
            st.fresh = (bits & fresh).bit_count()

    # ------------------------------------------------------------------ availability

    def peer_bitfield(self, peer: Peer, bits: bytes) -> None:
        """A peer's BEP 3 bitfield (high bit of byte 0 = piece 0); replaces what we knew.

        Like Have All / Have None, a repeated bitfield keeps the peer's outstanding requests,
        but nothing more is picked from pieces it no longer has.
        """
        n = self._n
        if len(bits) != (n + 7) // 8:
            raise WireError(CloseReason.MALFORMED_MESSAGE, f"bitfield of {len(bits)} bytes for {n} pieces")
        spare = len(bits) * 8 - n
        if spare and bits[-1] & ((1 << spare) - 1):
            # BEP 3: "Spare bits at the end are set to zero."
            raise WireError(CloseReason.MALFORMED_MESSAGE, "bitfield spare bits set")
        st = self._reset_peer(peer)
        word = int.from_bytes(bits, "big") >> spare
        count = word.bit_count()
        if count == n:
            self._make_seed(peer, st)
            return
        arr = bytearray(format(word, f"0{n}b").encode("ascii").translate(_BIN_TO_BYTES))
        st.bits = arr
        st.count = count
        self._rarity.inc_many(compress(range(n), arr))
        mine = int.from_bytes(arr, "big")  # one 0/1 byte per piece, like _need and rarity.fresh
        st.interest = (mine & int.from_bytes(self._need, "big")).bit_count()
        st.fresh = (mine & int.from_bytes(self._rarity.fresh, "big")).bit_count()

    def peer_have(self, peer: Peer, i: int) -> None:
        """A BEP 3 ``have`` message."""
        if not 0 <= i < self._n:
            raise WireError(CloseReason.MALFORMED_MESSAGE, f"have index {i} out of range")
        st = self._peers.get(peer) or self._reset_peer(peer)
        if st.seed or st.bits[i]:
            return
        st.bits[i] = 1
        st.count += 1
        rarity = self._rarity
        rarity.inc_many((i,))
        if self._need[i]:
            st.interest += 1
        if rarity.fresh[i]:
            st.fresh += 1
        if st.count == self._n:
            self._make_seed(peer, st)

    def peer_have_all(self, peer: Peer) -> None:
        """BEP 6 Have All: O(1), a seed is only a counter (a peer that is one already: nothing to do)."""
        st = self._peers.get(peer)
        if st is None or not st.seed:
            self._make_seed(peer, self._reset_peer(peer))

    def peer_have_none(self, peer: Peer) -> None:
        """BEP 6 Have None."""
        self._reset_peer(peer)

    def peer_gone(self, peer: Peer) -> list[Block]:
        """Forget a peer: its availability and its outstanding requests (returned to the pool)."""
        st = self._peers.get(peer)
        if st is None:
            return []
        released = self._release_all(peer, st)
        self._remove_availability(st)
        del self._peers[peer]
        self._nonseed.pop(peer, None)
        return released

    def peer_has(self, peer: Peer, i: int) -> bool:
        st = self._peers.get(peer)
        return st is not None and 0 <= i < self._n and (st.seed or bool(st.bits[i]))

    def peer_is_seed(self, peer: Peer) -> bool:
        """Whether the peer has every piece (Have All, a full bitfield, or all pieces by Have)."""
        st = self._peers.get(peer)
        return st is not None and st.seed

    def is_requested(self, peer: Peer, block: Block) -> bool:
        """Whether ``block`` is outstanding from ``peer``."""
        st = self._peers.get(peer)
        j = self._slot(block)
        return st is not None and j is not None and block.index * self._bpp + j in st.out

    def is_interesting(self, peer: Peer) -> bool:
        """Whether the peer has a piece we want and don't have (O(1))."""
        st = self._peers.get(peer)
        return st is not None and (self._missing > 0 if st.seed else st.interest > 0)

    def availability(self, i: int) -> int:
        """Number of known peers that have piece ``i``."""
        return self._rarity.avail[i] + self._num_seeds

    # ------------------------------------------------------------------ picking

    def pick(
        self,
        peer: Peer,
        count: int,
        *,
        allowed: Collection[int] | None = None,
        can_start: Callable[[int], bool] | None = None,
    ) -> list[Block]:
        """Up to ``count`` blocks to request from ``peer``; they are marked requested by it.

        Args:
            allowed: when the peer chokes us, its BEP 6 allowed-fast pieces (only these are used).
            can_start: asked before a NEW piece is started; False stops starting new pieces in
                this call (e.g. the write cache is full), partial pieces are still served.
        """
        st = self._peers.get(peer)
        out: list[Block] = []
        if st is None or count <= 0:
            return out
        if self._open:  # started pieces with blocks nobody has requested (none: steps 1a and 1b have nothing)
            # (1a) pieces it is working on (still has: a later bitfield / Have None may take one away)
            for p in list(st.pieces):
                if p in self._open and (allowed is None or p in allowed) and (st.seed or st.bits[p]):
                    self._take_free(peer, st, p, count - len(out), out)
                    if len(out) >= count:
                        return out
            # (1b) other partial pieces it has
            for p in list(self._open):
                if (allowed is None or p in allowed) and (st.seed or st.bits[p]) and p in self._open:
                    self._take_free(peer, st, p, count - len(out), out)
                    if len(out) >= count:
                        return out
        # (2) new pieces
        while len(out) < count:
            new = self._choose_fresh(st, allowed)
            if new is None or (can_start is not None and not can_start(new)):
                break
            self._start(new)
            self._take_free(peer, st, new, count - len(out), out)
        # (3) end game
        if len(out) < count and self.endgame:
            self._pick_endgame(peer, st, count - len(out), allowed, out)
        return out

    @property
    def endgame(self) -> bool:
        """True when every missing wanted block is requested (or received) already."""
        if self._rarity.order or self._open:
            return False
        wanted = self._wanted
        return any(pp.received < pp.nb and wanted[p] for p, pp in self._partials.items())

    # ------------------------------------------------------------------ responses

    def block_received(self, peer: Peer, block: Block) -> tuple[bool, list[Peer]]:
        """Record a received block.

        Returns ``(was_expected, other_peers_to_cancel)``: whether ``peer`` had this block
        requested, and the other peers that still had it requested (end game: send them a cancel).
        A block nobody requested is still recorded if its piece is missing and not being hashed.
        """
        j = self._slot(block)
        if j is None:
            self._blocks_unexpected += 1
            return False, []
        p = block.index
        pp = self._partials.get(p)
        if pp is None:
            if self._have[p] or p in self._hashing:
                self._blocks_unexpected += 1
                return False, []
            pp = self._start(p)
        if pp.recv[j]:
            self._blocks_unexpected += 1
            return False, []
        reqs = pp.requested.pop(j, None)
        expected = False
        others: list[Peer] = []
        if reqs is None:
            pp.free -= 1
            if not pp.free:
                self._open.pop(p, None)
        else:
            key = p * self._bpp + j
            for r in reqs:
                rs = self._peers[r]
                del rs.out[key]
                self._dec_piece(rs, p)
                if r == peer:
                    expected = True
                else:
                    others.append(r)
        pp.recv[j] = 1
        pp.received += 1
        self._blocks_received += 1
        if not expected:
            self._blocks_unexpected += 1
        return expected, others

    def take_blocks(self, peer: Peer, blocks: Sequence[tuple[int, int, Sized]]) -> list[list[Peer] | None]:
        """The per-block hot path, a read's run of blocks ``(index, begin, data)`` at once: per block None (nothing
        recorded) unless ``peer`` has it outstanding, else :meth:`is_requested` and :meth:`block_received` in one
        step: the block is recorded as received and the other peers that had it requested come back (to cancel)."""
        st = self._peers.get(peer)
        if st is None:
            return [None] * len(blocks)
        res: list[list[Peer] | None] = []
        bl, bpp, n, out, pieces, peers = self._block_len, self._bpp, self._n, st.out, st.pieces, self._peers
        at = size = base = -1
        took = 0
        pp: _Partial | None = None
        for index, begin, data in blocks:
            if index != at:  # a run's blocks mostly share one piece: its state is looked up once
                at, pp, base = index, self._partials.get(index), index * bpp
                size = (self._last_size if index == n - 1 else self._piece_length) if 0 <= index < n else 0
            length, j = len(data), begin // bl
            if (begin < 0 or begin % bl or begin >= size or length != (bl if size - begin > bl else size - begin)
                    or (key := base + j) not in out):
                res.append(None)
                continue
            if pp is None or (others := pp.requested.get(j)) is None or peer not in others:  # outstanding: partial
                expected, rest = self.block_received(peer, Block(index, begin, length))
                res.append(rest if expected else None)
                at = -1  # look the piece up again: that may have started it
                continue
            del pp.requested[j]
            del out[key]
            if c := pieces[index] - 1:  # _dec_piece, inline
                pieces[index] = c
            else:
                del pieces[index]
            if len(others) > 1:
                others.remove(peer)
                for r in others:
                    rs = peers[r]
                    del rs.out[key]
                    self._dec_piece(rs, index)
            else:
                others.clear()
            pp.recv[j] = 1
            pp.received += 1
            took += 1
            res.append(others)
        self._blocks_received += took
        return res

    def take_late(self, peer: Peer, block: Block) -> list[Peer] | None:
        """A block cancelled from ``peer`` that came anyway (it was on its way): recorded as received only
        while its piece is started and the block missing, else None; returns the peers to cancel it at."""
        j = self._slot(block)
        pp = None if j is None else self._partials.get(block.index)
        return None if pp is None or pp.recv[j] else self.block_received(peer, block)[1]  # type: ignore[index]

    def has_free_blocks(self) -> bool:
        """Some started piece has blocks nobody has requested (``pick`` serves them before new pieces)."""
        return bool(self._open)

    def partial_pieces(self) -> Collection[int]:
        """The started pieces (some block requested or received), not yet hashing; a read-only view."""
        return self._partials.keys()

    def piece_complete(self, i: int) -> bool:
        """True when piece ``i`` is started, every block is in, and it isn't hashing yet."""
        pp = self._partials.get(i)
        return pp is not None and pp.received == pp.nb

    def request_failed(self, peer: Peer, block: Block) -> None:
        """A reject or a request timeout: the block goes back to the pool."""
        st = self._peers.get(peer)
        j = self._slot(block)
        if st is None or j is None:
            return
        key = block.index * self._bpp + j
        if key in st.out:
            self._release(peer, st, key)

    def peer_choked(self, peer: Peer) -> list[Block]:
        """Return every block requested from ``peer`` to the pool (a choke without BEP 6)."""
        st = self._peers.get(peer)
        return [] if st is None else self._release_all(peer, st)

    def outstanding(self, peer: Peer) -> list[Block]:
        """Blocks requested from ``peer`` and not yet received, in request order."""
        st = self._peers.get(peer)
        return [] if st is None else [self._block_of(k) for k in st.out]

    def num_outstanding(self, peer: Peer) -> int:
        st = self._peers.get(peer)
        return 0 if st is None else len(st.out)

    # ------------------------------------------------------------------ user-driven requests (minibt.Peer)

    def mark_requested(self, peer: Peer, block: Block) -> None:
        """Record that ``block`` was requested from ``peer`` outside :meth:`pick` (``Peer.request()``).

        Raises ``ValueError`` when the block is malformed, we have the piece or are hashing it, the
        peer lacks the piece, or the block is already received or already requested from ``peer``.
        Asking for a block requested from another peer is allowed (as in end game).
        """
        j = self._slot(block)
        if j is None:
            raise ValueError(f"block {block.index}:{block.begin}+{block.length} is not a block of this torrent")
        p = block.index
        if self._have[p] or p in self._hashing:
            raise ValueError(f"piece {p} is already had or being hashed")
        st = self._peers.get(peer)
        if st is None or not (st.seed or st.bits[p]):
            raise ValueError(f"the peer does not have piece {p}")
        pp = self._partials.get(p)
        if pp is None:
            pp = self._start(p)
        if pp.recv[j]:
            raise ValueError(f"block {p}:{block.begin} is already received")
        key = p * self._bpp + j
        if key in st.out:
            raise ValueError(f"block {p}:{block.begin} is already requested from this peer")
        reqs = pp.requested.get(j)
        if reqs is None:
            pp.requested[j] = [peer]
            pp.free -= 1
            if not pp.free:
                self._open.pop(p, None)
        else:
            reqs.append(peer)
        st.out[key] = None
        st.pieces[p] = st.pieces.get(p, 0) + 1

    def peer_pieces(self, peer: Peer) -> bytes:
        """The peer's pieces as a BEP 3 bitfield (high bit of byte 0 = piece 0); zeros if unknown."""
        n, st = self._n, self._peers.get(peer)
        nbytes = (n + 7) // 8
        if st is None or (not st.seed and (st.count == 0 or len(st.bits) != n)):
            return bytes(nbytes)
        digits = b"1" * n if st.seed else bytes(st.bits).translate(_BYTES_TO_BIN)
        return int(digits + b"0" * (nbytes * 8 - n), 2).to_bytes(nbytes, "big")

    # ------------------------------------------------------------------ hashing

    def piece_passed(self, i: int) -> None:
        """The piece's hash checked out: same as :meth:`set_have`."""
        self.set_have(i)

    def piece_failed(self, i: int) -> None:
        """The piece's hash failed: all its blocks are un-requested again."""
        self._check_index(i)
        if self._have[i]:
            return
        if i in self._partials:
            self._drop_partial(i)
        self._hashing.discard(i)
        if self._wanted[i] and not self._rarity.fresh[i]:
            self._add_fresh(i)

    def piece_hashing(self, i: int) -> None:
        """All blocks are in and the hash is being checked: not pickable meanwhile."""
        self._check_index(i)
        if self._have[i] or i in self._hashing:
            return
        if i in self._partials:
            self._drop_partial(i)
        elif self._rarity.fresh[i]:
            self._drop_fresh(i)
        self._hashing.add(i)

    def stats(self) -> dict[str, int]:
        """Read-only counters for tests and status output."""
        return {
            "pieces": self._n, "have": self._num_have, "missing": self._missing, "fresh": len(self._rarity.order),
            "partial": len(self._partials), "open": len(self._open), "hashing": len(self._hashing),
            "peers": len(self._peers), "seeds": self._num_seeds,
            "outstanding": sum(len(st.out) for st in self._peers.values()),
            "endgame": int(self.endgame), "endgame_requests": self._endgame_requests,
            "blocks_received": self._blocks_received, "blocks_unexpected": self._blocks_unexpected,
        }

    # ------------------------------------------------------------------ internals: peers

    def _check_index(self, i: int) -> None:
        if not 0 <= i < self._n:
            raise ValueError(f"piece index {i} out of range")

    def _reset_peer(self, peer: Peer) -> _PeerState:
        """The peer's state with no pieces (created if new); outstanding requests are kept."""
        st = self._peers.get(peer)
        if st is None:
            st = _PeerState()
            self._peers[peer] = st
        else:
            self._remove_availability(st)
        st.seed = False
        st.bits = bytearray(self._n)
        st.count = st.interest = st.fresh = 0
        self._nonseed[peer] = st
        # availability of a piece never exceeds the number of non-seed peers: keep a bucket for it
        self._rarity.reserve(len(self._nonseed))
        return st

    def _make_seed(self, peer: Peer, st: _PeerState) -> None:
        self._remove_availability(st)
        st.seed = True
        st.bits = bytearray()
        st.count = st.interest = st.fresh = 0
        self._nonseed.pop(peer, None)
        self._num_seeds += 1

    def _remove_availability(self, st: _PeerState) -> None:
        if st.seed:
            self._num_seeds -= 1
            st.seed = False
            return
        self._rarity.dec_many(compress(range(self._n), st.bits))
        st.bits = bytearray(self._n)
        st.count = st.interest = st.fresh = 0

    def _set_need(self, p: int, v: int) -> None:
        self._need[p] = v
        d = 1 if v else -1
        self._missing += d
        for st in self._nonseed.values():
            if st.bits[p]:
                st.interest += d

    # ------------------------------------------------------------------ internals: fresh pieces

    def _add_fresh(self, p: int) -> None:
        """Piece ``p`` becomes FRESH again (a failed hash): into the order, and peers' counts."""
        self._rarity.insert(p)
        for st in self._nonseed.values():
            if st.bits[p]:
                st.fresh += 1

    def _drop_fresh(self, p: int) -> None:
        """Piece ``p`` stops being FRESH (started, hashing or had): out of the order, and peers' counts."""
        self._rarity.remove(p)
        for st in self._nonseed.values():
            if st.bits[p]:
                st.fresh -= 1

    def _choose_fresh(self, st: _PeerState, allowed: Collection[int] | None) -> int | None:
        """A FRESH piece the peer has: random in the random-first phase, else rarest first."""
        rarity = self._rarity
        n_order = len(rarity.order)
        if not n_order or (not st.seed and not st.fresh):
            return None
        random_phase = self._num_have < self._random_first
        # a peer with few FRESH pieces among many: listing them beats scanning the order
        if allowed is not None or (not st.seed and st.count < n_order // st.fresh):
            return rarity.choose_among(self._candidates(st, allowed), random_phase)
        if st.seed:
            return rarity.choose_any(random_phase)
        return rarity.choose_in(st.bits, random_phase)

    def _candidates(self, st: _PeerState, allowed: Collection[int] | None) -> list[int]:
        fresh = self._rarity.fresh
        n = self._n
        if allowed is not None:
            return sorted({p for p in allowed if 0 <= p < n and fresh[p] and (st.seed or st.bits[p])})
        bits = st.bits
        out: list[int] = []
        i = bits.find(1)
        while i >= 0:
            if fresh[i]:
                out.append(i)
            i = bits.find(1, i + 1)
        return out

    # ------------------------------------------------------------------ internals: blocks

    def _start(self, p: int) -> _Partial:
        if self._rarity.fresh[p]:
            self._drop_fresh(p)
        pp = _Partial(self.blocks_in_piece(p))
        self._partials[p] = pp
        if self._wanted[p]:
            self._open[p] = None
        return pp

    def _take_free(self, peer: Peer, st: _PeerState, p: int, n: int, out: list[Block]) -> None:
        pp = self._partials[p]
        recv, req, free, j = pp.recv, pp.requested, pp.free, pp.hint
        bl, size, base = self._block_len, self.piece_size(p), p * self._bpp
        sout, append, new = st.out, out.append, tuple.__new__  # new(Block, ...): no Python-level __new__ frame
        taken = 0
        while taken < n and free:
            while recv[j] or j in req:
                j += 1
            req[j] = [peer]
            free -= 1
            sout[base + j] = None
            begin = j * bl
            append(new(Block, (p, begin, bl if size - begin > bl else size - begin)))
            taken += 1
            j += 1
        pp.free, pp.hint = free, j
        if taken:
            st.pieces[p] = st.pieces.get(p, 0) + taken
        if not pp.free:
            self._open.pop(p, None)

    def _pick_endgame(
        self, peer: Peer, st: _PeerState, n: int, allowed: Collection[int] | None, out: list[Block]
    ) -> None:
        limit = self._dup_limit
        if limit < 2:
            return
        by_count: list[list[tuple[int, int]]] = [[] for _ in range(limit)]
        wanted = self._wanted
        for p, pp in self._partials.items():
            if not wanted[p] or (allowed is not None and p not in allowed) or not (st.seed or st.bits[p]):
                continue
            for j, reqs in pp.requested.items():
                k = len(reqs)
                if k < limit and peer not in reqs:
                    by_count[k].append((p, j))
            if len(by_count[1]) >= n:  # nothing can beat one requester (zero means not end game)
                break
        bl = self._block_len
        for group in by_count:
            for p, j in group:
                if n <= 0:
                    return
                self._partials[p].requested[j].append(peer)
                st.out[p * self._bpp + j] = None
                st.pieces[p] = st.pieces.get(p, 0) + 1
                begin = j * bl
                out.append(Block(p, begin, min(bl, self.piece_size(p) - begin)))
                self._endgame_requests += 1
                n -= 1

    def _slot(self, block: Block) -> int | None:
        """Block number of a well-formed block of this torrent, else None."""
        p, begin, bl = block.index, block.begin, self._block_len
        if not 0 <= p < self._n or begin < 0 or begin % bl:
            return None
        size = self.piece_size(p)
        if begin >= size or block.length != min(bl, size - begin):
            return None
        return begin // bl

    def _block_of(self, key: int) -> Block:
        p, j = divmod(key, self._bpp)
        begin = j * self._block_len
        return Block(p, begin, min(self._block_len, self.piece_size(p) - begin))

    def _dec_piece(self, st: _PeerState, p: int) -> None:
        c = st.pieces[p] - 1
        if c:
            st.pieces[p] = c
        else:
            del st.pieces[p]

    def _release(self, peer: Peer, st: _PeerState, key: int) -> None:
        """Drop one outstanding request; the block becomes free if nobody else asked for it."""
        del st.out[key]
        p, j = divmod(key, self._bpp)
        self._dec_piece(st, p)
        pp = self._partials[p]  # invariant: outstanding blocks belong to partial pieces
        reqs = pp.requested[j]
        reqs.remove(peer)
        if not reqs:
            del pp.requested[j]
            pp.free += 1
            if j < pp.hint:
                pp.hint = j
            if pp.free == 1 and self._wanted[p]:
                self._open[p] = None

    def _release_all(self, peer: Peer, st: _PeerState) -> list[Block]:
        keys = list(st.out)
        for key in keys:
            self._release(peer, st, key)
        return [self._block_of(k) for k in keys]

    def _drop_partial(self, p: int) -> None:
        """Forget a started piece and every request for it."""
        pp = self._partials.pop(p)
        self._open.pop(p, None)
        base = p * self._bpp
        for j, reqs in pp.requested.items():
            for r in reqs:
                rs = self._peers[r]
                del rs.out[base + j]
                self._dec_piece(rs, p)
