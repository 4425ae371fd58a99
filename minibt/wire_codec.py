"""Peer wire message codec: BEP 3 messages, BEP 6 fast extension, BEP 5 PORT, BEP 10 framing.

Pure and stateless: frozen message dataclasses, :func:`encode` and :func:`decode` (one complete
frame ``<u32 length><u8 id><payload>``; length 0 is a keep-alive), plus the size table and body
decoder that :class:`minibt.wire.PeerWire` uses on its hot path.  Torrent-dependent checks
(indexes, block bounds, bitfield length/spare bits, message order) live in ``minibt.wire``.
Extension payloads are carried raw as ``Extended(ext_id, payload)``; ext id 0 decodes to
:class:`ExtHandshake` (strict bencode via bencode2).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import bencode2

from minibt import bencode
from minibt.errors import BencodeError, CloseReason, WireError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Message ids.
CHOKE = 0  # BEP 3
UNCHOKE = 1  # BEP 3
INTERESTED = 2  # BEP 3
NOT_INTERESTED = 3  # BEP 3
HAVE = 4  # BEP 3
BITFIELD = 5  # BEP 3
REQUEST = 6  # BEP 3
PIECE = 7  # BEP 3
CANCEL = 8  # BEP 3
PORT = 9  # BEP 5
SUGGEST = 0x0D  # BEP 6
HAVE_ALL = 0x0E  # BEP 6
HAVE_NONE = 0x0F  # BEP 6
REJECT = 0x10  # BEP 6
ALLOWED_FAST = 0x11  # BEP 6
EXTENDED = 20  # BEP 10

BLOCK_LEN = 16 * 1024  # BEP 3: "All current implementations use 2^14 (16 kiB)"
# minibt convention: twice the largest extended message in use (a BEP 9 ut_metadata piece: 16 KiB plus
# its dict); BEP 10 handshakes, ut_pex and ut_holepunch are far smaller.  The receive buffer holds one
# partial frame per connection, so this bounds it (budget.py).  libtorrent closes on frames > 1 MiB.
MAX_EXT_LEN = 32 * 1024
EXT_HANDSHAKE_ID = 0  # BEP 10: extended message id 0 is the handshake
# Convention: a BEP 10 handshake is a shallow dict (libtorrent's has ~40 tokens).  Without a cap a
# peer could hand the session a 2000-level structure that breaks any recursive use (==, repr).
EXT_HANDSHAKE_MAX_DEPTH = 16
EXT_HANDSHAKE_MAX_TOKENS = 10_000

MSG_NAMES: dict[int, str] = {
    CHOKE: "choke",
    UNCHOKE: "unchoke",
    INTERESTED: "interested",
    NOT_INTERESTED: "not_interested",
    HAVE: "have",
    BITFIELD: "bitfield",
    REQUEST: "request",
    PIECE: "piece",
    CANCEL: "cancel",
    PORT: "port",
    SUGGEST: "suggest",
    HAVE_ALL: "have_all",
    HAVE_NONE: "have_none",
    REJECT: "reject",
    ALLOWED_FAST: "allowed_fast",
    EXTENDED: "extended",
}
# Exact length-prefix values (id byte + payload) of the fixed-size messages.
_FIXED_LEN: dict[int, int] = {
    CHOKE: 1,
    UNCHOKE: 1,
    INTERESTED: 1,
    NOT_INTERESTED: 1,
    HAVE: 5,
    REQUEST: 13,
    CANCEL: 13,
    PORT: 3,
    SUGGEST: 5,
    HAVE_ALL: 1,
    HAVE_NONE: 1,
    REJECT: 13,
    ALLOWED_FAST: 5,
}
FAST_IDS = frozenset({SUGGEST, HAVE_ALL, HAVE_NONE, REJECT, ALLOWED_FAST})  # BEP 6
FIRST_IDS = frozenset({BITFIELD, HAVE_ALL, HAVE_NONE})  # BEP 3/6: only as the first message
# Messages that may precede the bitfield without breaking the first-message rule (see PeerWire).
NOT_CORE_IDS = frozenset({EXTENDED, PORT})

_U32 = struct.Struct(">I")
_HDR = struct.Struct(">IB")
_HDR_U16 = struct.Struct(">IBH")
_HDR_U32 = struct.Struct(">IBI")
_HDR_2U32 = struct.Struct(">IBII")
_HDR_3U32 = struct.Struct(">IBIII")
_HDR_U8 = struct.Struct(">IBB")
_2U32 = struct.Struct(">II")
_3U32 = struct.Struct(">III")
KEEPALIVE_BYTES = b"\x00\x00\x00\x00"


def _pack(st: struct.Struct, *args: int) -> bytes:
    try:
        return st.pack(*args)
    except struct.error as e:
        raise ValueError(f"field out of range: {args!r}: {e}") from None


# -- messages ------------------------------------------------------------------------------
# Each message's ``ID`` is a class attribute with no annotation: ``dataclass`` tells a string annotation
# ``ClassVar[int]`` from a field only when ``typing`` is loaded, and minibt does not load it (test_lazy_imports.py).
@dataclass(frozen=True, slots=True)
class KeepAlive:
    """BEP 3: zero-length message."""

    def encode(self) -> bytes:
        return KEEPALIVE_BYTES


@dataclass(frozen=True, slots=True)
class Choke:
    """BEP 3 ``choke``."""

    ID = CHOKE

    def encode(self) -> bytes:
        return _pack(_HDR, 1, self.ID)


@dataclass(frozen=True, slots=True)
class Unchoke:
    """BEP 3 ``unchoke``."""

    ID = UNCHOKE

    def encode(self) -> bytes:
        return _pack(_HDR, 1, self.ID)


@dataclass(frozen=True, slots=True)
class Interested:
    """BEP 3 ``interested``."""

    ID = INTERESTED

    def encode(self) -> bytes:
        return _pack(_HDR, 1, self.ID)


@dataclass(frozen=True, slots=True)
class NotInterested:
    """BEP 3 ``not interested``."""

    ID = NOT_INTERESTED

    def encode(self) -> bytes:
        return _pack(_HDR, 1, self.ID)


@dataclass(frozen=True, slots=True)
class HaveAll:
    """BEP 6 ``have all``."""

    ID = HAVE_ALL

    def encode(self) -> bytes:
        return _pack(_HDR, 1, self.ID)


@dataclass(frozen=True, slots=True)
class HaveNone:
    """BEP 6 ``have none``."""

    ID = HAVE_NONE

    def encode(self) -> bytes:
        return _pack(_HDR, 1, self.ID)


@dataclass(frozen=True, slots=True)
class Have:
    """BEP 3 ``have``."""

    ID = HAVE
    index: int

    def encode(self) -> bytes:
        return _pack(_HDR_U32, 5, self.ID, self.index)


@dataclass(frozen=True, slots=True)
class Suggest:
    """BEP 6 ``suggest piece``."""

    ID = SUGGEST
    index: int

    def encode(self) -> bytes:
        return _pack(_HDR_U32, 5, self.ID, self.index)


@dataclass(frozen=True, slots=True)
class AllowedFast:
    """BEP 6 ``allowed fast``."""

    ID = ALLOWED_FAST
    index: int

    def encode(self) -> bytes:
        return _pack(_HDR_U32, 5, self.ID, self.index)


@dataclass(frozen=True, slots=True)
class BitfieldMsg:
    """BEP 3 bitfield: high bit of byte 0 is piece 0; spare bits zero."""

    ID = BITFIELD
    bits: bytes

    def encode(self) -> bytes:
        return _pack(_HDR, 1 + len(self.bits), self.ID) + self.bits


@dataclass(frozen=True, slots=True)
class Request:
    """BEP 3 ``request``."""

    ID = REQUEST
    index: int
    begin: int
    length: int

    def encode(self) -> bytes:
        return _pack(_HDR_3U32, 13, self.ID, self.index, self.begin, self.length)


@dataclass(frozen=True, slots=True)
class Cancel:
    """BEP 3 ``cancel``."""

    ID = CANCEL
    index: int
    begin: int
    length: int

    def encode(self) -> bytes:
        return _pack(_HDR_3U32, 13, self.ID, self.index, self.begin, self.length)


@dataclass(frozen=True, slots=True)
class Reject:
    """BEP 6 ``reject request``."""

    ID = REJECT
    index: int
    begin: int
    length: int

    def encode(self) -> bytes:
        return _pack(_HDR_3U32, 13, self.ID, self.index, self.begin, self.length)


@dataclass(frozen=True, slots=True)
class Piece:
    """BEP 3 piece (a block).  A received block is a view of the bytes given to ``receive_data``
    (``bytes`` when its frame spanned reads): copy it before that buffer is reused."""

    ID = PIECE
    index: int
    begin: int
    data: bytes | memoryview

    def header(self) -> bytes:
        return _pack(_HDR_2U32, 9 + len(self.data), self.ID, self.index, self.begin)

    def encode(self) -> bytes:
        return self.header() + self.data


@dataclass(frozen=True, slots=True)
class Port:
    """BEP 5: the sender's DHT UDP port."""

    ID = PORT
    port: int

    def encode(self) -> bytes:
        return _pack(_HDR_U16, 3, self.ID, self.port)


@dataclass(frozen=True, slots=True)
class Extended:
    """BEP 10 extended message; ``ext_id`` is the receiver's local id from its ``m`` dict."""

    ID = EXTENDED
    ext_id: int
    payload: bytes

    def encode(self) -> bytes:
        return _pack(_HDR_U8, 2 + len(self.payload), self.ID, self.ext_id) + self.payload


@dataclass(frozen=True, slots=True)
class ExtHandshake:
    """BEP 10 extension handshake (extended id 0): the decoded dict (keys are bytes)."""

    ID = EXTENDED
    data: dict[Any, Any]

    def encode(self) -> bytes:
        try:
            payload = bencode2.bencode(self.data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"extension handshake dict cannot be bencoded: {e}") from None
        return _pack(_HDR_U8, 2 + len(payload), self.ID, EXT_HANDSHAKE_ID) + payload


Message = (
    KeepAlive
    | Choke
    | Unchoke
    | Interested
    | NotInterested
    | Have
    | BitfieldMsg
    | Request
    | Piece
    | Cancel
    | Port
    | Suggest
    | HaveAll
    | HaveNone
    | Reject
    | AllowedFast
    | Extended
    | ExtHandshake
)
Event = Message

_CHOKE = Choke()
_UNCHOKE = Unchoke()
_INTERESTED = Interested()
_NOT_INTERESTED = NotInterested()
_HAVE_ALL = HaveAll()
_HAVE_NONE = HaveNone()
KEEPALIVE = KeepAlive()
_NO_PAYLOAD: dict[int, Message] = {
    CHOKE: _CHOKE,
    UNCHOKE: _UNCHOKE,
    INTERESTED: _INTERESTED,
    NOT_INTERESTED: _NOT_INTERESTED,
    HAVE_ALL: _HAVE_ALL,
    HAVE_NONE: _HAVE_NONE,
}


# -- stateless codec --------------------------------------------------------------------
def encode(msg: Message) -> bytes:
    """Encode one message with its length prefix.  Raises ValueError on out-of-range fields."""
    return msg.encode()


def _malformed(detail: str) -> WireError:
    return WireError(CloseReason.MALFORMED_MESSAGE, detail)


def _too_large(detail: str) -> WireError:
    return WireError(CloseReason.MESSAGE_TOO_LARGE, detail)


def check_size(mid: int, length: int, max_block_len: int, bitfield_len: int | None, max_ext_len: int) -> bool:
    """Check a frame's length prefix for its id; False for unknown ids (skip them)."""
    fixed = _FIXED_LEN.get(mid)
    if fixed is not None:
        if length != fixed:
            raise _malformed(f"{MSG_NAMES[mid]} length prefix {length}, expected {fixed}")
        return True
    if mid == PIECE:
        if length > 9 + max_block_len:
            raise _too_large(f"piece with {length - 9}-byte block > {max_block_len}")
        if length <= 9:
            raise _malformed(f"piece length prefix {length}: no block data")
        return True
    if mid == BITFIELD:
        if bitfield_len is not None and length != 1 + bitfield_len:
            if length > 1 + bitfield_len:
                raise _too_large(f"bitfield of {length - 1} bytes, expected {bitfield_len}")
            raise _malformed(f"bitfield of {length - 1} bytes, expected {bitfield_len}")
        return True
    if mid == EXTENDED:
        if length > 2 + max_ext_len:
            raise _too_large(f"extended message of {length - 2} bytes > {max_ext_len}")
        if length < 2:
            raise _malformed("extended message without an extended id")
        return True
    return False


def _decode_ext_dict(payload: bytes) -> dict[Any, Any]:
    # Takes bytes, never a view of the receive buffer: an exception raised here keeps its frame
    # (and so its arguments) alive in the traceback, and a live view blocks the buffer's resize.
    try:
        d = bencode.decode(payload, max_depth=EXT_HANDSHAKE_MAX_DEPTH, max_tokens=EXT_HANDSHAKE_MAX_TOKENS)
    except BencodeError as e:
        raise _malformed(f"extension handshake is not valid bencode: {e}") from None
    if not isinstance(d, dict):
        raise _malformed(f"extension handshake is a {type(d).__name__}, not a dict")
    return d


def decode_body(mid: int, buf: memoryview, start: int, stop: int) -> Message:
    """Decode a known message whose size was checked; payload is ``buf[start:stop]``."""
    msg = _NO_PAYLOAD.get(mid)
    if msg is not None:
        return msg
    if mid == HAVE:
        return Have(_U32.unpack_from(buf, start)[0])
    if mid == REQUEST:
        return Request(*_3U32.unpack_from(buf, start))
    if mid == PIECE:
        index, begin = _2U32.unpack_from(buf, start)
        return Piece(index, begin, bytes(buf[start + 8 : stop]))
    if mid == CANCEL:
        return Cancel(*_3U32.unpack_from(buf, start))
    if mid == REJECT:
        return Reject(*_3U32.unpack_from(buf, start))
    if mid == BITFIELD:
        return BitfieldMsg(bytes(buf[start:stop]))
    if mid == SUGGEST:
        return Suggest(_U32.unpack_from(buf, start)[0])
    if mid == ALLOWED_FAST:
        return AllowedFast(_U32.unpack_from(buf, start)[0])
    if mid == PORT:
        return Port(int.from_bytes(buf[start:stop], "big"))
    if mid == EXTENDED:
        ext_id = buf[start]
        if ext_id == EXT_HANDSHAKE_ID:
            return ExtHandshake(_decode_ext_dict(bytes(buf[start + 1 : stop])))
        return Extended(ext_id, bytes(buf[start + 1 : stop]))
    raise AssertionError(f"unhandled message id {mid}")  # pragma: no cover - check_size guards


def decode(
    frame: bytes | bytearray | memoryview,
    *,
    max_block_len: int = BLOCK_LEN,
    max_ext_len: int = MAX_EXT_LEN,
) -> Message | None:
    """Decode exactly one complete frame (length prefix included), without torrent context.

    Returns None for an unknown message id.  Extended id 0 decodes to :class:`ExtHandshake`.

    Raises:
        WireError: truncated/oversized frame, wrong payload size, bad extension handshake.
    """
    mv = memoryview(frame).cast("B")
    if len(mv) < 4:
        raise _malformed(f"frame of {len(mv)} bytes has no length prefix")
    length = _U32.unpack_from(mv, 0)[0]
    if len(mv) != 4 + length:
        raise _malformed(f"length prefix {length} but {len(mv) - 4} bytes follow")
    if length == 0:
        return KEEPALIVE
    mid = mv[4]
    if not check_size(mid, length, max_block_len, None, max_ext_len):
        return None
    return decode_body(mid, mv, 5, 4 + length)
