"""uTP (BEP 29) packet codec: header, constants, encode/decode, demux test, timestamps, SACK bitmask.

Pure and stateless; the connection machine is :mod:`minibt.utp`, the multiplexer :mod:`minibt.utp_mux`.
Interop (libtorrent utp_stream.cpp): SACKs of any length are accepted (libtorrent sends (span + 7) // 8
bytes); we send BEP-sized ones.

The named tuples of minibt (this module's :class:`UtpHeader`, :mod:`minibt.utp_mux`, :mod:`minibt.utp`,
:mod:`minibt.picker`) are ``collections.namedtuple`` at run time, typed for mypy under ``TYPE_CHECKING``:
``typing.NamedTuple`` would load ``typing`` (0.47 MiB of RSS, issue 15), and with string annotations
compile each one (the process's first ``compile()`` builds the interpreter's AST types: 0.2 MiB more).
"""

import struct
from collections import namedtuple
from collections.abc import Collection

from minibt.errors import CloseReason, LocalProtocolError, UtpError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple

ST_DATA = 0  # BEP 29 'type'
ST_FIN = 1  # BEP 29
ST_STATE = 2  # BEP 29
ST_RESET = 3  # BEP 29
ST_SYN = 4  # BEP 29
UTP_VERSION = 1  # BEP 29 'version'
HEADER_LEN = 20  # BEP 29 'header format'
EXT_NONE = 0  # BEP 29 'extension'
EXT_SACK = 1  # BEP 29 'Selective ACK'
UTP_FIRST_BYTES = frozenset((t << 4) | UTP_VERSION for t in range(5))  # 0x01 0x11 0x21 0x31 0x41
DATA_V1 = (ST_DATA << 4) | UTP_VERSION  # the first byte of a version-1 ST_DATA packet
SEQ_MASK = 0xFFFF  # BEP 29: seq_nr / ack_nr are 16 bit and wrap
TS_MASK = 0xFFFFFFFF  # BEP 29: 32-bit microsecond timestamps
HALF_SEQ = 0x8000
MIN_PACKET_BYTES = 150  # BEP 29 'packet sizes'
MAX_SACK_BYTES = 32  # minibt convention: our SACKs cover 256 packets past ack_nr + 1

HEADER_STRUCT = struct.Struct(">BBHIIIHH")  # BEP 29 'header format' (type/version byte first)


def seq_before(a: int, b: int) -> bool:
    """True if 16-bit sequence number ``a`` comes before ``b`` (wrap-around)."""
    return ((a - b) & SEQ_MASK) >= HALF_SEQ


def timestamp_us(now: float) -> int:
    """BEP 29 timestamp field from the injected clock."""
    return int(now * 1e6) & TS_MASK


# ---------------------------------------------------------------------------- codec


if TYPE_CHECKING:

    class UtpHeader(NamedTuple):
        type: int
        connection_id: int
        timestamp_us: int
        timestamp_diff_us: int
        wnd_size: int
        seq_nr: int
        ack_nr: int
        version: int = UTP_VERSION
        extension: int = EXT_NONE

else:
    UtpHeader = namedtuple(
        "UtpHeader",
        ("type", "connection_id", "timestamp_us", "timestamp_diff_us", "wnd_size", "seq_nr", "ack_nr", "version",
         "extension"),
        defaults=(UTP_VERSION, EXT_NONE),
    )
UtpHeader.__doc__ = """The 20-byte BEP 29 header; ``extension`` is the first extension type of the chain.

A named tuple (not a frozen dataclass): one is built per received datagram, and a tuple is the
cheapest immutable record Python builds (build it with keywords; the field order is not BEP 29's)."""


_new_header = tuple.__new__  # UtpHeader from a tuple in field order, without the keyword parsing


def encode_packet(header: UtpHeader, sack: bytes | None, payload: bytes = b"") -> bytes:
    """Header (+ SACK extension) + payload.  ``header.extension`` must be 1 exactly when ``sack`` is given."""
    if header.extension != (EXT_SACK if sack is not None else EXT_NONE):
        raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, "header.extension does not match sack")
    if sack is not None and (not sack or len(sack) % 4 or len(sack) > 252):
        raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, "SACK bitmask must be 4..252 bytes, x4")
    hdr = HEADER_STRUCT.pack(
        (header.type << 4) | header.version,
        header.extension,
        header.connection_id,
        header.timestamp_us,
        header.timestamp_diff_us,
        header.wnd_size,
        header.seq_nr,
        header.ack_nr,
    )
    if sack is None:
        return hdr + payload
    return b"".join((hdr, bytes((EXT_NONE, len(sack))), sack, payload))


Payload = bytes | bytearray | memoryview  # a received payload: a slice of the datagram it came in


def decode_packet(data: Payload) -> tuple[UtpHeader, bytes | None, Payload]:
    """Parse one datagram into ``(header, sack bitmask or None, payload)``; raises :class:`UtpError`.

    The payload is a slice of ``data``: a view when ``data`` is one (the loop's receive buffer, reused for
    the next datagram), so a consumer that keeps it copies it."""
    n = len(data)
    if n < HEADER_LEN:
        raise UtpError(CloseReason.MALFORMED_MESSAGE, f"uTP datagram of {n} bytes")
    tv, ext, cid, ts, tsd, wnd, seq, ack = HEADER_STRUCT.unpack_from(data, 0)
    if tv & 0x0F != UTP_VERSION:
        raise UtpError(CloseReason.MALFORMED_MESSAGE, f"uTP version {tv & 0x0F}")
    typ = tv >> 4
    if typ > ST_SYN:
        raise UtpError(CloseReason.MALFORMED_MESSAGE, f"uTP type {typ}")
    if not ext:  # the common case: no extension
        return _new_header(UtpHeader, (typ, cid, ts, tsd, wnd, seq, ack, UTP_VERSION, ext)), None, data[20:]
    off = HEADER_LEN
    sack: bytes | None = None
    nxt = ext
    while nxt != EXT_NONE:  # BEP 29: linked list of (next type, len, body); every hop eats >= 2 bytes
        if off + 2 > n:
            raise UtpError(CloseReason.MALFORMED_MESSAGE, "truncated uTP extension header")
        this, nxt, ln = nxt, data[off], data[off + 1]
        off += 2
        if off + ln > n:
            raise UtpError(CloseReason.MALFORMED_MESSAGE, "truncated uTP extension")
        if this == EXT_SACK and sack is None:
            # BEP 29 says len is a multiple of 4, but libtorrent sends (span + 7) // 8 bytes: accept any
            sack = bytes(data[off : off + ln])
        off += ln  # BEP 29: unknown extensions are skipped (so is a second SACK)
    return _new_header(UtpHeader, (typ, cid, ts, tsd, wnd, seq, ack, UTP_VERSION, ext)), sack, data[off:]


def is_utp_datagram(data: bytes | bytearray | memoryview) -> bool:
    """Cheap demux test for the loop: version-1 uTP type byte and a full header."""
    return len(data) >= HEADER_LEN and data[0] in UTP_FIRST_BYTES


def build_sack(ack_nr: int, received: Collection[int]) -> bytes | None:
    """SACK bitmask for out-of-order ``received`` seq_nrs, or None if none falls in the window.

    BEP 29: bit i (LSB first, byte 0 first) acks ack_nr + 2 + i, i.e. a little-endian integer.
    At most MAX_SACK_BYTES * 8 steps however many packets are held (a sender that keeps a thousand
    out of order and fills one hole a packet would otherwise cost a walk over all of them each time).
    """
    base = (ack_nr + 2) & SEQ_MASK
    mask = 0
    window = MAX_SACK_BYTES * 8
    if len(received) > window:
        for off in range(window):
            if (base + off) & SEQ_MASK in received:
                mask |= 1 << off
    else:
        for seq in received:
            off = (seq - base) & SEQ_MASK
            if off < window:
                mask |= 1 << off
    if not mask:
        return None
    return mask.to_bytes((mask.bit_length() + 31) // 32 * 4, "little")
