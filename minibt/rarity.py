"""Availability order of the fresh pieces: the rarest-first index behind picker.py.

A fresh piece is one nobody has started yet (not had, not partial, not hashing, wanted).  Fresh
pieces live in one list sorted by availability and cut into buckets, one per availability value
(libtorrent's piece_picker idea): bucket ``a`` is ``order[bstart[a]:bstart[a + 1]]``.  An
availability change moves a fresh piece across one bucket edge with one swap, and a rarest-first
pick looks at the lowest non-empty buckets only.  Availability counts non-seed peers only; the
picker keeps "have all" peers as a plain counter.  No peers here: a peer is a 0/1 byte per piece.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Iterable


class RarityOrder:
    """Availability of every piece and the bucketed availability order of the fresh ones.

    Args:
        num_pieces: pieces in the torrent; all start fresh, with availability 0.
        rng: source of every random choice (the picker passes its own).

    Attributes (read-only outside this class):
        avail: availability of each piece (non-seed peers that have it).
        fresh: one byte per piece, 1 when the piece is in the order (for bulk int arithmetic).
        order: the fresh pieces, least available first.
    """

    __slots__ = ("avail", "fresh", "order", "_pos", "_bstart", "_rng")

    def __init__(self, num_pieces: int, rng: random.Random) -> None:
        n = num_pieces
        # C arrays, not lists: a list holds an 8-byte pointer per piece plus a 28-byte int object for
        # every value above 256, 5.6 MiB for these three at 65536 pieces (16 GiB in 256 KiB pieces).
        # Two bytes a value while they fit, one for ``avail`` while at most 255 non-seed peers could have
        # a piece (a connection limit of 50 by default): 320 KiB there (with one byte of ``fresh``), not 832.
        # ``avail`` widens to two bytes, then four, as more non-seed peers come (:meth:`reserve`).
        index = "H" if n <= 0x10000 else "i"  # piece numbers and positions are 0..n-1
        self.avail = array("B", [0]) * n
        self.fresh = bytearray(b"\x01") * n
        self.order = array(index, range(n))
        self._pos = array(index, range(n))  # index in order; meaningful only where fresh[p]
        self._bstart = [0, n]
        self._rng = rng

    # ------------------------------------------------------------------ structure

    def reserve(self, max_avail: int) -> None:
        """Keep a bucket for every availability up to ``max_avail`` (the number of non-seed peers)."""
        if max_avail > 0xFF and self.avail.typecode == "B":
            self.avail = array("H", self.avail)
        if max_avail > 0xFFFF and self.avail.typecode == "H":
            self.avail = array("i", self.avail)
        bs = self._bstart
        while len(bs) - 1 <= max_avail:
            bs.append(len(self.order))

    def inc_many(self, pieces: Iterable[int]) -> None:
        """Availability +1 for each piece: one swap moves a fresh piece up one bucket.

        The new availability must have a bucket (:meth:`reserve`).
        """
        avail, pos, order, bs, fresh = self.avail, self._pos, self.order, self._bstart, self.fresh
        for p in pieces:
            a = avail[p]
            avail[p] = a + 1
            if fresh[p]:
                i = pos[p]
                j = bs[a + 1] - 1
                if i != j:
                    q = order[j]
                    order[i] = q
                    order[j] = p
                    pos[q] = i
                    pos[p] = j
                bs[a + 1] = j

    def dec_many(self, pieces: Iterable[int]) -> None:
        """Availability -1 for each piece (the mirror of :meth:`inc_many`)."""
        avail, pos, order, bs, fresh = self.avail, self._pos, self.order, self._bstart, self.fresh
        for p in pieces:
            a = avail[p]
            avail[p] = a - 1
            if fresh[p]:
                i = pos[p]
                j = bs[a]
                if i != j:
                    q = order[j]
                    order[i] = q
                    order[j] = p
                    pos[q] = i
                    pos[p] = j
                bs[a] = j + 1

    def insert(self, p: int) -> None:
        """Make piece ``p`` fresh: append it, then bubble it down bucket by bucket to its own."""
        order, pos, bs = self.order, self._pos, self._bstart
        i = len(order)
        order.append(p)
        pos[p] = i
        top = len(bs) - 1
        bs[top] = len(order)
        for b in range(top - 1, self.avail[p], -1):
            j = bs[b]
            if i != j:
                q = order[j]
                order[i] = q
                order[j] = p
                pos[q] = i
                pos[p] = j
            bs[b] = j + 1
            i = j
        self.fresh[p] = 1

    def remove(self, p: int) -> None:
        """Take fresh piece ``p`` out: bubble it up to the end of the list, then pop it."""
        order, pos, bs = self.order, self._pos, self._bstart
        i = pos[p]
        for b in range(self.avail[p], len(bs) - 1):
            j = bs[b + 1] - 1
            if i != j:
                q = order[j]
                order[i] = q
                order[j] = p
                pos[q] = i
                pos[p] = j
            bs[b + 1] = j
            i = j
        order.pop()
        self.fresh[p] = 0

    # ------------------------------------------------------------------ choosing

    def choose_any(self, random_phase: bool) -> int | None:
        """A fresh piece for a peer that has them all: any in the random phase, else a rarest one."""
        order = self.order
        if not order:
            return None
        rng = self._rng
        if random_phase:
            return order[rng.randrange(len(order))]
        bs = self._bstart
        for b in range(len(bs) - 1):
            lo, hi = bs[b], bs[b + 1]
            if lo < hi:
                return order[lo + rng.randrange(hi - lo)]
        return None

    def choose_in(self, bits: bytearray, random_phase: bool) -> int | None:
        """A fresh piece ``p`` with ``bits[p]`` set: any in the random phase, else a rarest one.

        ``bits`` must be a non-seed peer's pieces, counted in :attr:`avail`: bucket 0 (pieces no
        non-seed peer has) is skipped.  Scans from a random slot, so it suits a peer that has
        many of the fresh pieces; for one with few, list them and use :meth:`choose_among`.
        """
        order = self.order
        if not order:
            return None
        rng = self._rng
        if random_phase:
            return self._scan(bits, 0, len(order), rng)
        bs = self._bstart
        for b in range(1, len(bs) - 1):
            lo, hi = bs[b], bs[b + 1]
            if lo < hi:
                p = self._scan(bits, lo, hi, rng)
                if p is not None:
                    return p
        return None

    def choose_among(self, cands: list[int], random_phase: bool) -> int | None:
        """One of ``cands``: any in the random phase, else one of the least available."""
        if not cands:
            return None
        if random_phase:
            return cands[self._rng.randrange(len(cands))]
        avail = self.avail
        low = min(avail[p] for p in cands)
        rarest = [p for p in cands if avail[p] == low]
        return rarest[self._rng.randrange(len(rarest))]

    def _scan(self, bits: bytearray, lo: int, hi: int, rng: random.Random) -> int | None:
        """First piece in order[lo:hi] with its bit set, starting at a random slot and wrapping."""
        order = self.order
        start = lo + rng.randrange(hi - lo)
        for k in range(start, hi):
            if bits[order[k]]:
                return order[k]
        for k in range(lo, start):
            if bits[order[k]]:
                return order[k]
        return None
