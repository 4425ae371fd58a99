"""Piece bitfield shared by wire, picker, session and storage (BEP 3 "bitfield" message).

Bit order is BEP 3's: the high bit of byte 0 is piece 0.  Spare bits at the end of the last byte
are always zero; :meth:`Bitfield.from_bytes` rejects input where they are set, as BEP 3 asks
("Clients should drop the connection if they receive bitfields that are not of the correct size,
or if the bitfield has any of the spare bits set").  Whole-field operations use ``int.from_bytes``
and ``bytes`` methods rather than per-bit Python loops.
"""

from __future__ import annotations

from collections.abc import Iterator

# Bit offsets (0 = high bit) of the set bits of every byte value, for indexes().
_BYTE_BITS: tuple[tuple[int, ...], ...] = tuple(
    tuple(b for b in range(8) if v & (0x80 >> b)) for v in range(256)
)


class Bitfield:
    """A fixed-size set of piece indexes backed by a BEP 3 bitfield."""

    __slots__ = ("_n", "_buf", "_count")

    def __init__(self, n: int, data: bytes | bytearray | memoryview | None = None) -> None:
        """Make an empty bitfield of ``n`` bits, or one holding ``data`` (validated like from_bytes)."""
        if n < 0:
            raise ValueError(f"bitfield size must be >= 0, got {n}")
        self._n = n
        self._count: int | None = None  # set bits, kept by set() and clear() once counted (complete? per piece)
        nbytes = (n + 7) >> 3
        if data is None:
            self._buf = bytearray(nbytes)
            self._count = 0
            return
        if len(data) != nbytes:
            raise ValueError(f"bitfield for {n} pieces must be {nbytes} bytes, got {len(data)}")
        buf = bytearray(data)
        spare = nbytes * 8 - n
        if spare and buf[-1] & ((1 << spare) - 1):
            raise ValueError("bitfield has spare bits set")
        self._buf = buf

    @classmethod
    def from_bytes(cls, n: int, data: bytes | bytearray | memoryview) -> Bitfield:
        """Parse a wire bitfield; ValueError if the length is wrong or spare bits are set."""
        return cls(n, data)

    @classmethod
    def full(cls, n: int) -> Bitfield:
        """A bitfield with all ``n`` bits set (a seed, BEP 6 Have All)."""
        bf = cls(n)
        bf.set_all()
        return bf

    def __len__(self) -> int:
        return self._n

    def _check(self, i: int) -> None:
        if not 0 <= i < self._n:
            raise IndexError(f"piece {i} out of range 0..{self._n - 1}")

    def test(self, i: int) -> bool:
        """``self[i]`` with the range check inline (read once per received block)."""
        if not 0 <= i < self._n:
            raise IndexError(f"piece {i} out of range 0..{self._n - 1}")
        return bool(self._buf[i >> 3] & (0x80 >> (i & 7)))

    __getitem__ = test

    def set(self, i: int) -> None:
        self._check(i)
        b, m = self._buf[i >> 3], 0x80 >> (i & 7)
        if not b & m:
            self._buf[i >> 3] = b | m
            if self._count is not None:
                self._count += 1

    def clear(self, i: int) -> None:
        self._check(i)
        b, m = self._buf[i >> 3], 0x80 >> (i & 7)
        if b & m:
            self._buf[i >> 3] = b & ~m & 0xFF
            if self._count is not None:
                self._count -= 1

    def set_all(self) -> None:
        nbytes = len(self._buf)
        self._count = None
        if not nbytes:
            return
        self._buf[:] = b"\xff" * nbytes
        spare = nbytes * 8 - self._n
        self._buf[-1] &= (0xFF << spare) & 0xFF

    def clear_all(self) -> None:
        self._buf[:] = bytes(len(self._buf))
        self._count = None

    def count(self) -> int:
        """Number of set bits."""
        if self._count is None:
            self._count = int.from_bytes(self._buf, "big").bit_count()
        return self._count

    def all(self) -> bool:
        """True if every bit is set (vacuously True for n == 0)."""
        return self.count() == self._n

    def none(self) -> bool:
        """True if no bit is set."""
        return self._buf.count(0) == len(self._buf)

    def to_bytes(self) -> bytes:
        """The BEP 3 wire form (spare bits are always zero)."""
        return bytes(self._buf)

    def indexes(self) -> Iterator[int]:
        """Set bits in increasing order."""
        table = _BYTE_BITS
        for pos, v in enumerate(self._buf):
            if v:
                base = pos << 3
                for b in table[v]:
                    yield base + b

    def missing(self) -> Iterator[int]:
        """Clear bits in increasing order."""
        n = self._n
        buf = self._buf
        table = _BYTE_BITS
        for pos, v in enumerate(buf):
            if v == 0xFF:
                continue
            base = pos << 3
            for b in table[~v & 0xFF]:
                i = base + b
                if i < n:
                    yield i

    def _combined(self, other: Bitfield, value: int) -> Bitfield:
        if other._n != self._n:
            raise ValueError(f"bitfields of {self._n} and {other._n} pieces")
        bf = Bitfield(0)
        bf._n = self._n
        bf._buf = bytearray(value.to_bytes(len(self._buf), "big"))
        bf._count = None
        return bf

    def __and__(self, other: Bitfield) -> Bitfield:
        return self._combined(other, int.from_bytes(self._buf, "big") & int.from_bytes(other._buf, "big"))

    def __or__(self, other: Bitfield) -> Bitfield:
        return self._combined(other, int.from_bytes(self._buf, "big") | int.from_bytes(other._buf, "big"))

    def __sub__(self, other: Bitfield) -> Bitfield:
        """The bits set here and not in ``other``."""
        return self._combined(other, int.from_bytes(self._buf, "big") & ~int.from_bytes(other._buf, "big"))

    def copy(self) -> Bitfield:
        bf = Bitfield(0)
        bf._n = self._n
        bf._buf = bytearray(self._buf)
        bf._count = self._count
        return bf

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Bitfield):
            return NotImplemented
        return self._n == other._n and self._buf == other._buf

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Bitfield({self._n}, count={self.count()})"
