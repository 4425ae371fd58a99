"""BEP 3 BitTorrent handshake as a pure machine; hands off to :class:`minibt.wire.PeerWire`.

Handshake: ``<pstrlen=19><pstr><8 reserved><20 info-hash><20 peer id>`` (68 bytes).
Reserved bits: BEP 6 fast (``reserved[7] & 0x04``), BEP 10 extension (``reserved[5] & 0x10``),
BEP 5 DHT (``reserved[7] & 0x01``).  MSE/PE and BEP 52 (v2) handshakes are out of scope.

Outgoing (info_hash known): ``start()`` queues our handshake at once; a different remote
info-hash raises ``HandshakeError(INFO_HASH_MISMATCH)``.  Incoming (info_hash None): after
byte 48 the machine emits :class:`InfoHashReceived`; the caller looks the torrent up and calls
``accept(info_hash)`` (queues ours) or drops the connection.  :class:`HandshakeReceived` comes
at byte 68.  Bytes after the 68th are kept for the wire machine: ``leftover()``.

    AWAIT_REMOTE --48 bytes--> (InfoHashReceived) --68 bytes--> (HandshakeReceived)
    done = remote handshake complete and ours queued
"""

from __future__ import annotations

from dataclasses import dataclass

from minibt.errors import CloseReason, HandshakeError, LocalProtocolError

PSTR = b"BitTorrent protocol"  # BEP 3
HANDSHAKE_LEN = 68  # BEP 3: 1 + 19 + 8 + 20 + 20
_PREFIX = bytes([len(PSTR)]) + PSTR  # BEP 3: pstrlen byte (19) + pstr
_RESERVED_AT = 20
_INFO_HASH_AT = 28
_PEER_ID_AT = 48

# Reserved-bit helpers: (byte index, mask).
RESERVED_FAST = (7, 0x04)  # BEP 6: reserved[7] |= 0x04
RESERVED_EXTENSION = (5, 0x10)  # BEP 10: bit 20 from the right, reserved[5] |= 0x10
RESERVED_DHT = (7, 0x01)  # BEP 5: reserved[7] |= 0x01

# Bytes received after the handshake before the caller hands off to PeerWire: one
# maximal extended message (1 MiB, wire.WireConfig.max_ext_len) plus slack.  minibt convention.
MAX_LEFTOVER_BYTES = 1024 * 1024 + 64 * 1024
DEFAULT_TIMEOUT_S = 30.0  # minibt convention (libtorrent handshake_timeout is 10 s)


def make_reserved(fast: bool = True, extension: bool = True, dht: bool = False) -> bytes:
    """Build the 8 reserved bytes announcing the given extensions."""
    res = bytearray(8)
    for on, (idx, mask) in ((fast, RESERVED_FAST), (extension, RESERVED_EXTENSION), (dht, RESERVED_DHT)):
        if on:
            res[idx] |= mask
    return bytes(res)


def _has_bit(reserved: bytes, bit: tuple[int, int]) -> bool:
    if len(reserved) != 8:
        raise ValueError(f"reserved must be 8 bytes, got {len(reserved)}")
    return bool(reserved[bit[0]] & bit[1])


def supports_fast(reserved: bytes) -> bool:
    """True if these reserved bytes announce the BEP 6 fast extension."""
    return _has_bit(reserved, RESERVED_FAST)


def supports_extension(reserved: bytes) -> bool:
    """True if these reserved bytes announce the BEP 10 extension protocol."""
    return _has_bit(reserved, RESERVED_EXTENSION)


def supports_dht(reserved: bytes) -> bool:
    """True if these reserved bytes announce BEP 5 DHT (the peer accepts PORT)."""
    return _has_bit(reserved, RESERVED_DHT)


def _check_len(name: str, value: bytes, n: int) -> None:
    if len(value) != n:
        raise ValueError(f"{name} must be {n} bytes, got {len(value)}")


def encode_handshake(reserved: bytes, info_hash: bytes, peer_id: bytes) -> bytes:
    """Encode the 68-byte BEP 3 handshake.  Raises ValueError on wrong field lengths."""
    _check_len("reserved", reserved, 8)
    _check_len("info_hash", info_hash, 20)
    _check_len("peer_id", peer_id, 20)
    return _PREFIX + bytes(reserved) + bytes(info_hash) + bytes(peer_id)


@dataclass(frozen=True, slots=True)
class InfoHashReceived:
    """The remote's info-hash arrived (byte 48): an incoming side may now accept()."""

    info_hash: bytes


@dataclass(frozen=True, slots=True)
class HandshakeReceived:
    """The remote's full 68-byte handshake arrived."""

    reserved: bytes
    info_hash: bytes
    peer_id: bytes


Event = InfoHashReceived | HandshakeReceived


class Handshake:
    """One side of the BT handshake.  Pure: bytes and ``now`` in, events and bytes out."""

    def __init__(
        self,
        *,
        peer_id: bytes,
        reserved: bytes,
        info_hash: bytes | None,
        now: float,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        _check_len("peer_id", peer_id, 20)
        _check_len("reserved", reserved, 8)
        if info_hash is not None:
            _check_len("info_hash", info_hash, 20)
        self._peer_id = bytes(peer_id)
        self._reserved = bytes(reserved)
        self._info_hash = None if info_hash is None else bytes(info_hash)
        self._outgoing = info_hash is not None
        self._deadline = now + timeout_s
        self._buf = bytearray()  # the remote handshake, at most HANDSHAKE_LEN bytes
        self._leftover = bytearray()
        self._outbox = b""
        self._sent = False  # our handshake has been queued
        self._remote: HandshakeReceived | None = None
        self._remote_info_hash: bytes | None = None
        self._closed = False

    # -- properties -------------------------------------------------------------------
    @property
    def outgoing(self) -> bool:
        return self._outgoing

    @property
    def done(self) -> bool:
        """Remote handshake fully received and ours queued: hand off to PeerWire."""
        return self._remote is not None and self._sent

    @property
    def remote(self) -> HandshakeReceived | None:
        """The remote handshake once complete, else None."""
        return self._remote

    @property
    def info_hash(self) -> bytes | None:
        """Our info-hash (outgoing, or after accept()); None while an incoming one is undecided."""
        return self._info_hash

    # -- commands -----------------------------------------------------------------------
    def start(self) -> None:
        """Outgoing: queue our handshake."""
        self._check_open()
        if not self._outgoing or self._info_hash is None:
            raise LocalProtocolError(
                CloseReason.BAD_HANDSHAKE, "start() on an incoming handshake; use accept()"
            )
        if self._sent:
            raise LocalProtocolError(CloseReason.BAD_HANDSHAKE, "handshake already sent")
        self._queue_ours(self._info_hash)

    def accept(self, info_hash: bytes) -> None:
        """Incoming: answer the remote's info-hash (BEP 3: respond with the same one)."""
        self._check_open()
        if self._outgoing:
            raise LocalProtocolError(
                CloseReason.BAD_HANDSHAKE, "accept() on an outgoing handshake; use start()"
            )
        if self._sent:
            raise LocalProtocolError(CloseReason.BAD_HANDSHAKE, "handshake already sent")
        if self._remote_info_hash is None:
            raise LocalProtocolError(
                CloseReason.BAD_HANDSHAKE, "accept() before the remote info-hash arrived"
            )
        if bytes(info_hash) != self._remote_info_hash:
            raise LocalProtocolError(CloseReason.INFO_HASH_MISMATCH, "accept() with a different info-hash")
        self._info_hash = self._remote_info_hash
        self._queue_ours(self._info_hash)

    def _queue_ours(self, info_hash: bytes) -> None:
        self._outbox += encode_handshake(self._reserved, info_hash, self._peer_id)
        self._sent = True

    # -- inputs -----------------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview, *, now: float) -> list[Event]:
        """Feed bytes from the peer.

        Raises:
            HandshakeError: BAD_HANDSHAKE (wrong pstrlen/pstr), INFO_HASH_MISMATCH (outgoing),
                SELF_CONNECTION (remote peer id equals ours), MESSAGE_TOO_LARGE (leftover cap).
        """
        self._check_open()
        try:
            return self._receive(memoryview(data).cast("B"), now)
        except HandshakeError:
            self._closed = True
            raise

    def _receive(self, data: memoryview, now: float) -> list[Event]:
        events: list[Event] = []
        buf = self._buf
        have = len(buf)
        take = min(HANDSHAKE_LEN - have, len(data))
        if take > 0:
            buf += data[:take]
            new = len(buf)
            # Validate the prefix as soon as any of it is in: fail fast on non-BT streams.
            upto = min(new, len(_PREFIX))
            if have < upto and buf[have:upto] != _PREFIX[have:upto]:
                if have == 0 and buf[0] != len(PSTR):
                    raise HandshakeError(CloseReason.BAD_HANDSHAKE, f"pstrlen {buf[0]} != 19")
                raise HandshakeError(CloseReason.BAD_HANDSHAKE, "pstr is not 'BitTorrent protocol'")
            if have < _PEER_ID_AT <= new:
                remote_hash = bytes(buf[_INFO_HASH_AT:_PEER_ID_AT])
                if self._outgoing and remote_hash != self._info_hash:
                    raise HandshakeError(
                        CloseReason.INFO_HASH_MISMATCH, f"remote info-hash {remote_hash.hex()} is not ours"
                    )
                self._remote_info_hash = remote_hash
                events.append(InfoHashReceived(remote_hash))
            if new == HANDSHAKE_LEN:
                peer_id = bytes(buf[_PEER_ID_AT:])
                if peer_id == self._peer_id:
                    raise HandshakeError(CloseReason.SELF_CONNECTION, "remote peer id equals ours")
                assert self._remote_info_hash is not None
                self._remote = HandshakeReceived(
                    bytes(buf[_RESERVED_AT:_INFO_HASH_AT]), self._remote_info_hash, peer_id
                )
                events.append(self._remote)
        rest = len(data) - take
        if rest > 0:
            if len(self._leftover) + rest > MAX_LEFTOVER_BYTES:
                raise HandshakeError(
                    CloseReason.MESSAGE_TOO_LARGE,
                    f"more than {MAX_LEFTOVER_BYTES} bytes after the handshake before hand-off",
                )
            self._leftover += data[take:]
        return events

    def data_to_send(self) -> bytes:
        """Drain our queued handshake bytes."""
        self._check_open()
        out, self._outbox = self._outbox, b""
        return out

    def next_deadline(self) -> float | None:
        """Absolute handshake deadline; None once done or closed."""
        if self._closed or self._remote is not None:
            return None
        return self._deadline

    def handle_timeout(self, *, now: float) -> list[Event]:
        """Check the handshake deadline.

        Returns an empty list while in time.

        Raises:
            HandshakeError: HANDSHAKE_TIMEOUT when the remote handshake is not complete by the deadline.
        """
        self._check_open()
        if self._remote is None and now >= self._deadline:
            self._closed = True
            raise HandshakeError(
                CloseReason.HANDSHAKE_TIMEOUT, f"{len(self._buf)}/{HANDSHAKE_LEN} handshake bytes at deadline"
            )
        return []

    def leftover(self) -> bytes:
        """Take the bytes received after the 68-byte handshake (to feed PeerWire); clears them."""
        out = bytes(self._leftover)
        self._leftover.clear()
        return out

    def _check_open(self) -> None:
        if self._closed:
            raise LocalProtocolError(CloseReason.BAD_HANDSHAKE, "handshake machine is closed")
