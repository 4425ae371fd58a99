"""BEP 3/6/10 peer wire machine (post-handshake): :class:`PeerWire` and :class:`WireConfig`.

Pure: ``receive_data(data, now=)`` returns the received messages as events (the message IS the
event; with ``runs=True`` consecutive blocks come as one :class:`BlocksReceived`, consecutive requests
as one :class:`RequestsReceived`); commands queue encoded bytes that the loop drains with
``data_to_send()`` or, unjoined, ``parts_to_send()``.  In scope: frame limits checked before a
body is buffered, per-torrent validation (indexes, block bounds, bitfield length and spare bits),
first-message rules, choke/interest state, keep-alive and idle timers, counters.  Out of scope:
request queues, allowed-fast sets and unsolicited-piece detection (the session's job) and extension
payloads.  The codec lives in :mod:`minibt.wire_codec`.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import bencode2

from minibt.errors import CloseReason, LocalProtocolError, RemoteProtocolError, WireError
from minibt.ratelimit import TokenBucket
from minibt.wire_codec import (
    ALLOWED_FAST,
    BITFIELD,
    BLOCK_LEN,
    CANCEL,
    CHOKE,
    EXT_HANDSHAKE_ID,
    EXTENDED,
    FAST_IDS,
    FIRST_IDS,
    HAVE,
    HAVE_ALL,
    HAVE_NONE,
    INTERESTED,
    KEEPALIVE,
    KEEPALIVE_BYTES,
    MAX_EXT_LEN,
    MSG_NAMES,
    NOT_CORE_IDS,
    NOT_INTERESTED,
    PIECE,
    PORT,
    REJECT,
    REQUEST,
    SUGGEST,
    UNCHOKE,
    AllowedFast,
    BitfieldMsg,
    Cancel,
    Event,
    Have,
    Message,
    Piece,
    Reject,
    Request,
    Suggest,
    check_size,
    decode_body,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

KEEPALIVE_INTERVAL_S = 120.0  # BEP 3: keep-alives "generally sent once every two minutes"
IDLE_TIMEOUT_S = 180.0  # minibt convention (libtorrent inactivity_timeout is 600 s)
MAX_OUTBOX_BYTES = 1024 * 1024 + 64 * 1024  # minibt convention: soft cap for can_send()
# minibt convention: the hard cap is the soft one plus our bitfield plus this.  Blocks wait for can_send(), and
# so do ut_metadata pieces (extension.py answers with a reject meanwhile); what else is queued is small (haves,
# PEX, rejects).  A peer that keeps asking while it reads none of it finds that much queued for it and is closed
# at its next bytes (each request it sends queues an answer: without a cap, our memory grew as fast as it sent).
OUTBOX_HARD_SLACK = 256 * 1024
# minibt convention: choke, unchoke, interested and not interested each make us work over every peer (a rechoke)
# or every request outstanding (released, picked and asked again): TOGGLE_BURST at once and TOGGLE_PER_S a
# second on average, far more than a client that means them sends (libtorrent rechokes every 15 s).
TOGGLE_BURST = 64
TOGGLE_PER_S = 4.0

_U32 = struct.Struct(">I")
_HDR = struct.Struct(">IB")
_HDR_U16 = struct.Struct(">IBH")
_HDR_U32 = struct.Struct(">IBI")
_HDR_2U32 = struct.Struct(">IBII")
_HDR_3U32 = struct.Struct(">IBIII")
_HDR_U8 = struct.Struct(">IBB")
_2U32 = struct.Struct(">II")
_3U32 = struct.Struct(">III")
_BARE = {mid: _HDR.pack(1, mid) for mid in (CHOKE, UNCHOKE, INTERESTED, NOT_INTERESTED, HAVE_ALL, HAVE_NONE)}


def _malformed(detail: str) -> WireError:
    return WireError(CloseReason.MALFORMED_MESSAGE, detail)


def _too_large(detail: str) -> WireError:
    return WireError(CloseReason.MESSAGE_TOO_LARGE, detail)


def _violation(detail: str) -> WireError:
    return WireError(CloseReason.PROTOCOL_VIOLATION, detail)


@dataclass(frozen=True, slots=True)
class BlocksReceived:
    """The Piece messages that came one after another in one read (``receive_data(..., runs=True)``):
    ``(index, begin, data)`` per block, in order, each checked as a :class:`Piece` is.  ``data`` is a
    view of the read's buffer (``bytes`` when its frame spanned reads): copy it before the buffer is
    reused.  The per-block hot path: one event per run rather than one per block (tools/bench_block_rx.py)."""

    blocks: tuple[tuple[int, int, bytes | memoryview], ...]


@dataclass(frozen=True, slots=True)
class RequestsReceived:
    """The Request messages that came one after another in one read (``runs=True``): ``(index, begin,
    length)`` per request, in order, each checked as a :class:`Request` is.  One event per run, so a
    seeder queues a read's requests and then serves them in one go (upload.py)."""

    requests: tuple[tuple[int, int, int], ...]


class _Requests(list):  # type: ignore[type-arg]
    """A run of request tuples while ``_parse`` collects it (plain lists are runs of blocks)."""

    __slots__ = ()


def runs_of(events: list[Any]) -> list[Event | BlocksReceived | RequestsReceived]:
    """``_parse``'s output in runs mode: each list of block tuples becomes one BlocksReceived, each
    run of request tuples one RequestsReceived."""
    return [
        BlocksReceived(tuple(ev)) if type(ev) is list else RequestsReceived(tuple(ev)) if type(ev) is _Requests else ev
        for ev in events
    ]


# -- machine ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WireConfig:
    """Limits of a peer connection's wire machine."""

    max_block_len: int = BLOCK_LEN  # BEP 3: close on larger requests
    max_ext_len: int = MAX_EXT_LEN  # largest extended payload (after the extended id)
    keepalive_interval_s: float = KEEPALIVE_INTERVAL_S  # send a keep-alive after this long silent
    idle_timeout_s: float = IDLE_TIMEOUT_S  # nothing received this long -> KEEPALIVE_TIMEOUT
    max_outbox_bytes: int = MAX_OUTBOX_BYTES  # soft cap: can_send() is False above it

    def __post_init__(self) -> None:
        if self.max_block_len <= 0 or self.max_ext_len <= 0 or self.max_outbox_bytes <= 0:
            raise ValueError("WireConfig sizes must be positive")
        if self.keepalive_interval_s <= 0 or self.idle_timeout_s <= 0:
            raise ValueError("WireConfig intervals must be positive")


class PeerWire:
    """Per-connection peer-wire machine, created after the handshake.

    ``fast``/``extension`` mean both sides set that reserved bit.  Receive rules: a bitfield,
    have_all or have_none is allowed only once and before any other BEP 3/6 message (extended
    and port messages may precede it: Transmission sends its BEP 10 handshake first); fast
    messages without ``fast`` and extended messages without ``extension`` are violations (BEP 6
    MUST close).  Error reasons: MESSAGE_TOO_LARGE (length prefix over the cap for its id),
    MALFORMED_MESSAGE (wrong payload size, bitfield spare bits, bad extension handshake),
    PROTOCOL_VIOLATION (not negotiated, order, index or block out of range).  After a
    RemoteProtocolError the machine is closed and later calls raise LocalProtocolError.
    """

    def __init__(
        self,
        *,
        num_pieces: int,
        piece_length: int,
        total_length: int,
        fast: bool,
        extension: bool,
        now: float,
        config: WireConfig = WireConfig(),  # noqa: B008 - frozen, immutable default
    ) -> None:
        if num_pieces <= 0 or piece_length <= 0 or total_length <= 0:
            raise ValueError("num_pieces, piece_length and total_length must be positive")
        if num_pieces != -(-total_length // piece_length):
            raise ValueError(f"{num_pieces} pieces do not cover {total_length} bytes of {piece_length}")
        self._n = num_pieces
        self._piece_length = piece_length
        self._last_index = num_pieces - 1
        self._last_size = total_length - piece_length * (num_pieces - 1)
        self._bitfield_len = (num_pieces + 7) // 8
        self._spare_mask = (1 << (self._bitfield_len * 8 - num_pieces)) - 1
        self._fast = fast
        self._extension = extension
        self._cfg = config
        self._max_block = config.max_block_len
        self._max_frame = max(9 + config.max_block_len, 1 + self._bitfield_len, 2 + config.max_ext_len)

        self._am_choking = True
        self._am_interested = False
        self._peer_choking = True
        self._peer_interested = False

        self._rbuf = bytearray()
        self._skip = 0  # bytes of an unknown message's payload still to discard
        self._got_first = False  # a core message was received (Have None no longer allowed)
        self._toggles = TokenBucket(TOGGLE_PER_S, burst_bytes=TOGGLE_BURST, now=now)  # choke, unchoke, (not) interested
        self._sent_first = False
        self._outbox: deque[bytes | memoryview] = deque()
        self._outbox_len = 0
        self._hard_outbox = config.max_outbox_bytes + self._bitfield_len + OUTBOX_HARD_SLACK
        self._last_recv = now
        self._last_send = now
        self._closed = False
        self._in_counts = [0] * 256
        self._out_counts = [0] * 256
        self._in_keepalive = 0
        self._out_keepalive = 0
        self._in_unknown = 0
        self._bytes_in = 0
        self._bytes_out = 0

    # -- properties ---------------------------------------------------------------------
    @property
    def am_choking(self) -> bool:
        """We are choking the peer (BEP 3: connections start choked)."""
        return self._am_choking

    @property
    def am_interested(self) -> bool:
        return self._am_interested

    @property
    def peer_choking(self) -> bool:
        """The peer is choking us."""
        return self._peer_choking

    @property
    def peer_interested(self) -> bool:
        return self._peer_interested

    @property
    def fast(self) -> bool:
        return self._fast

    @property
    def extension(self) -> bool:
        return self._extension

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def outbox_len(self) -> int:
        return self._outbox_len

    @property
    def wants_write(self) -> bool:
        return self._outbox_len > 0

    def can_send(self) -> bool:
        """False while the outbox is above the soft cap (backpressure for the session)."""
        return self._outbox_len < self._cfg.max_outbox_bytes

    def piece_size(self, index: int) -> int:
        return self._last_size if index == self._last_index else self._piece_length

    # -- input ------------------------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview, *, now: float,
                     runs: bool = False) -> list[Event | BlocksReceived | RequestsReceived]:
        """Parse bytes from the peer; returns the complete messages received, in order.  With ``runs``
        each run of consecutive Piece messages comes as one :class:`BlocksReceived` instead, and each
        run of Request messages as one :class:`RequestsReceived`.

        Raises:
            WireError: see the class docstring; the machine is closed afterwards.
        """
        self._check_open()
        if not data:
            return []
        self._last_recv = now
        if self._outbox_len > self._hard_outbox:
            self._closed = True
            raise WireError(CloseReason.PROTOCOL_VIOLATION,
                            f"reads nothing of what it asks for: {self._outbox_len} bytes queued for it")
        try:
            events = self._receive(data, runs)
        except RemoteProtocolError:
            self._closed = True
            raise
        return runs_of(events) if runs else events

    def _receive(self, data: bytes | bytearray | memoryview, runs: bool) -> list[Any]:
        mv = data if isinstance(data, memoryview) and data.format == "B" else memoryview(data).cast("B")
        n = mv.nbytes
        self._bytes_in += n
        pos = 0
        events: list[Any] = []
        rb = self._rbuf
        while pos < n:
            if self._skip:  # the rest of an unknown message
                k = min(self._skip, n - pos)
                self._skip -= k
                pos += k
                continue
            if not rb:
                # Parsed where it lies: piece blocks are views of ``data`` (no copy).
                done = self._parse(data, mv, pos, n, events, copy=False, runs=runs)
                if done < n:
                    rb += mv[done:n]
                break
            # A frame begun in an earlier read: complete it in our buffer, a header first, then its body.
            have = len(rb)
            if have < 5:
                need = 5 - have
            else:
                length = _U32.unpack_from(rb)[0]
                if length > self._max_frame:
                    raise _too_large(f"length prefix {length} > {self._max_frame}")
                need = 4 + length - have
            take = need if need < n - pos else n - pos
            rb += mv[pos : pos + take]
            pos += take
            rmv = memoryview(rb)
            try:
                done = self._parse(rb, rmv, 0, len(rb), events, copy=True, runs=runs)
            finally:
                rmv.release()
            del rb[:done]
        return events

    def _parse(  # noqa: C901 - one loop over the frame kinds, the per-block hot path
        self, buf: Any, mv: memoryview, pos: int, end: int, events: list[Any], *, copy: bool, runs: bool
    ) -> int:
        """Decode the whole frames in ``buf[pos:end]`` into ``events``; returns where the first
        incomplete frame starts (``end`` when the tail of an unknown message is being skipped).
        With ``runs`` a block goes into the list of ``(index, begin, data)`` that ends ``events``
        (a new one after any other message), for :func:`runs_of`.

        Piece blocks are ``bytes`` with ``copy``, else views of ``buf``: valid as long as the
        caller's buffer is unchanged, so a consumer copies a block before the next read.
        """
        in_counts = self._in_counts
        unpack_hdr = _HDR.unpack_from
        unpack_piece = _HDR_2U32.unpack_from
        unpack_2u32 = _2U32.unpack_from
        unpack_3u32 = _3U32.unpack_from
        max_frame = self._max_frame
        n_pieces, last_index, last_size, plen = self._n, self._last_index, self._last_size, self._piece_length
        max_piece, plen9 = 9 + self._max_block, 9 + plen  # the largest Piece length prefix; a block's end + 9
        run: list[Any] | None = None  # the list of block tuples at the end of ``events`` (runs mode)
        blocks = 0
        while end - pos >= 4:
            if runs and end - pos >= 13:
                # The per-block hot path: a whole Piece frame, its header read in one call; the block is not copied.
                length, mid, index, begin = unpack_piece(buf, pos)
                stop = pos + 4 + length
                if mid == PIECE and 9 < length <= max_piece and stop <= end:
                    if not (index < last_index and begin + length <= plen9) and (
                            index >= n_pieces or begin + length - 9 > (last_size if index == last_index else plen)):
                        self._check_block("piece", index, begin, length - 9)  # raises, naming the reason
                    if run is None:
                        run = []
                        events.append(run)
                        self._got_first = True
                    run.append((index, begin, bytes(mv[pos + 13 : stop]) if copy else mv[pos + 13 : stop]))
                    blocks += 1
                    pos = stop
                    continue
            run = None  # any other frame: a later block starts a new run
            if end - pos < 5:
                length = _U32.unpack_from(buf, pos)[0]
                if length != 0:
                    if length > max_frame:
                        raise _too_large(f"length prefix {length} > {max_frame}")
                    break
                events.append(KEEPALIVE)
                self._in_keepalive += 1
                pos += 4
                continue
            length, mid = unpack_hdr(buf, pos)
            if length == 0:
                events.append(KEEPALIVE)
                self._in_keepalive += 1
                pos += 4
                continue
            if length > max_frame:
                raise _too_large(f"length prefix {length} > {max_frame}")
            if mid == PIECE:
                # The plain mode's block (runs mode took every whole, well-formed one above): checked from the
                # header, not copied.
                if length > 9 + self._max_block:
                    raise _too_large(f"piece with {length - 9}-byte block > {self._max_block}")
                if length <= 9:
                    raise _malformed(f"piece length prefix {length}: no block data")
                stop = pos + 4 + length
                if stop > end:
                    break
                index, begin = unpack_2u32(buf, pos + 5)
                if index >= n_pieces or begin + length - 9 > (last_size if index == last_index else plen):
                    self._check_block("piece", index, begin, length - 9)  # raises, naming the reason
                if not self._got_first:
                    self._got_first = True
                events.append(Piece(index, begin, bytes(mv[pos + 13 : stop]) if copy else mv[pos + 13 : stop]))
                in_counts[PIECE] += 1
                pos = stop
                continue
            if mid == REQUEST and runs and length == 13:  # a seeder's hot path: a run of requests, no objects
                stop = pos + 17
                if stop > end:
                    break
                index, begin, blen = unpack_3u32(buf, pos + 5)
                if index >= n_pieces or not 0 < blen <= self._max_block or (
                        begin + blen > (last_size if index == last_index else plen)):
                    self._check_block("request", index, begin, blen)  # raises, naming the reason
                self._got_first = True
                if events and type(events[-1]) is _Requests:
                    events[-1].append((index, begin, blen))
                else:
                    events.append(_Requests(((index, begin, blen),)))
                in_counts[REQUEST] += 1
                pos = stop
                continue
            if mid in FAST_IDS and not self._fast:
                raise _violation(f"{MSG_NAMES[mid]} without the fast extension (BEP 6)")
            if mid == EXTENDED and not self._extension:
                raise _violation("extended message without the extension protocol (BEP 10)")
            stop = pos + 4 + length
            if not check_size(mid, length, self._max_block, self._bitfield_len, self._cfg.max_ext_len):
                # Unknown id: skip it for forward compatibility, without buffering its body.
                self._in_unknown += 1
                if stop > end:
                    self._skip = stop - end
                    pos = end
                    break
                pos = stop
                continue
            if stop > end:
                break
            msg = decode_body(mid, mv, pos + 5, stop)
            self._apply(mid, msg)
            in_counts[mid] += 1
            events.append(msg)
            pos = stop
        if blocks:
            in_counts[PIECE] += blocks
        return pos

    def _toggle(self) -> None:
        """Choke / unchoke / interested / not interested: TOGGLE_BURST at once, TOGGLE_PER_S a second."""
        if not self._toggles.consume(1, now=self._last_recv):
            raise _violation(f"choke, unchoke, interested or not interested over {TOGGLE_PER_S:g} a second")

    def _apply(self, mid: int, msg: Message) -> None:
        """Validate a received non-piece message against torrent and connection state."""
        if mid in FIRST_IDS:
            # aria2 1.36 sends Bitfield (or Have All once complete) again mid-connection instead of
            # Have messages whenever that is shorter; libtorrent takes a later one as a replacement,
            # and so do we (the picker replaces the peer's set).  A late Have None has no such use.
            # A replacement walks every piece (availability): a bitfield's cost is in proportion to its size, and
            # a Have All from a peer that has every piece already costs nothing (picker.peer_have_all).  Not rate
            # limited: aria2 sends a Bitfield whenever 20 pieces came in since its last message, many a second.
            if self._got_first and mid == HAVE_NONE:
                raise _violation(f"{MSG_NAMES[mid]} not as the first message (BEP 6)")
            self._got_first = True
            if isinstance(msg, BitfieldMsg) and self._spare_mask and msg.bits[-1] & self._spare_mask:
                raise _malformed("bitfield spare bits are not zero (BEP 3)")
            return
        if mid not in NOT_CORE_IDS:
            self._got_first = True
        if mid <= NOT_INTERESTED:
            self._toggle()
        if isinstance(msg, (Request, Cancel, Reject)):
            self._check_block(MSG_NAMES[mid], msg.index, msg.begin, msg.length)
        elif isinstance(msg, (Have, Suggest, AllowedFast)):
            if msg.index >= self._n:
                raise _violation(f"{MSG_NAMES[mid]} index {msg.index} >= {self._n} pieces")
        elif mid == CHOKE:
            self._peer_choking = True
        elif mid == UNCHOKE:
            self._peer_choking = False
        elif mid == INTERESTED:
            self._peer_interested = True
        elif mid == NOT_INTERESTED:
            self._peer_interested = False

    def _check_block(self, what: str, index: int, begin: int, length: int) -> None:
        if index >= self._n:
            raise _violation(f"{what} index {index} >= {self._n} pieces")
        if length == 0 or length > self._max_block:
            raise _violation(f"{what} length {length} not in 1..{self._max_block}")
        size = self._last_size if index == self._last_index else self._piece_length
        if begin + length > size:
            raise _violation(f"{what} {index}:{begin}+{length} beyond piece size {size}")

    # -- timers -----------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """The earlier of the keep-alive and idle deadlines; None once closed."""
        if self._closed:
            return None
        return min(
            self._last_send + self._cfg.keepalive_interval_s, self._last_recv + self._cfg.idle_timeout_s
        )

    def handle_timeout(self, *, now: float) -> list[Event]:
        """Queue a keep-alive when we were silent for keepalive_interval_s.  Returns [].

        Raises:
            WireError: KEEPALIVE_TIMEOUT when nothing was received for idle_timeout_s.
        """
        self._check_open()
        if now >= self._last_recv + self._cfg.idle_timeout_s:
            self._closed = True
            raise WireError(
                CloseReason.KEEPALIVE_TIMEOUT, f"nothing received for {now - self._last_recv:.1f} s"
            )
        if now >= self._last_send + self._cfg.keepalive_interval_s:
            if not self._outbox:
                self._queue_keepalive()
            # Queued bytes go out soon; restart the interval either way.
            self._last_send = now
        return []

    # -- output -----------------------------------------------------------------------------
    def data_to_send(self, limit: int | None = None, *, now: float | None = None) -> bytes:
        """Drain up to ``limit`` bytes (all if None).  Pass ``now`` to restart the keep-alive timer."""
        return b"".join(self.parts_to_send(limit, now=now))

    def parts_to_send(
        self, limit: int | None = None, *, now: float | None = None
    ) -> list[bytes | memoryview]:
        """:meth:`data_to_send` as the queued buffers themselves, not joined (a gathering send takes
        them as they are; the blocks among them are views of read buffers: don't mutate them)."""
        self._check_open()
        if not self._outbox_len or (limit is not None and limit <= 0):
            return []
        outbox = self._outbox
        if limit is None or limit >= self._outbox_len:
            parts = list(outbox)
            outbox.clear()
            size = self._outbox_len
        else:
            parts = []
            need = size = limit
            while need:
                chunk = outbox[0]
                n = len(chunk)
                if n <= need:
                    parts.append(chunk)
                    outbox.popleft()
                    need -= n
                else:
                    view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
                    parts.append(view[:need])
                    outbox[0] = view[need:]
                    need = 0
        self._outbox_len -= size
        self._bytes_out += size
        if now is not None:
            self._last_send = now
        return parts

    # -- commands ---------------------------------------------------------------------------
    def _queue(self, mid: int, chunk: bytes) -> None:
        self._check_open()
        if not self._sent_first:
            if mid in FIRST_IDS:
                self._sent_first = True
            elif mid not in NOT_CORE_IDS:
                if self._fast:
                    raise LocalProtocolError(
                        CloseReason.PROTOCOL_VIOLATION,
                        f"{MSG_NAMES[mid]} before bitfield/have_all/have_none with fast (BEP 6)",
                    )
                self._sent_first = True
        elif mid in FIRST_IDS:
            raise LocalProtocolError(
                CloseReason.PROTOCOL_VIOLATION, f"{MSG_NAMES[mid]} only as the first message"
            )
        self._outbox.append(chunk)
        self._outbox_len += len(chunk)
        self._out_counts[mid] += 1

    def _queue_keepalive(self) -> None:
        self._outbox.append(KEEPALIVE_BYTES)
        self._outbox_len += 4
        self._out_keepalive += 1

    def _need_fast(self, what: str) -> None:
        if not self._fast:
            raise LocalProtocolError(
                CloseReason.PROTOCOL_VIOLATION, f"{what} needs the fast extension (BEP 6)"
            )

    def _local_index(self, what: str, index: int) -> None:
        if not 0 <= index < self._n:
            raise LocalProtocolError(
                CloseReason.PROTOCOL_VIOLATION, f"{what} index {index} not in 0..{self._n - 1}"
            )

    def _local_block(self, what: str, index: int, begin: int, length: int) -> None:
        self._local_index(what, index)
        if begin < 0 or not 0 < length <= self._max_block:
            raise LocalProtocolError(
                CloseReason.PROTOCOL_VIOLATION,
                f"{what} begin {begin} length {length} (max {self._max_block})",
            )
        if begin + length > self.piece_size(index):
            raise LocalProtocolError(
                CloseReason.PROTOCOL_VIOLATION, f"{what} {index}:{begin}+{length} beyond the piece"
            )

    def send_bitfield(self, bits: bytes) -> None:
        """Queue our bitfield (only as the first message)."""
        if len(bits) != self._bitfield_len:
            raise LocalProtocolError(
                CloseReason.MALFORMED_MESSAGE, f"bitfield of {len(bits)} bytes, expected {self._bitfield_len}"
            )
        if self._spare_mask and bits[-1] & self._spare_mask:
            raise LocalProtocolError(CloseReason.MALFORMED_MESSAGE, "bitfield spare bits are not zero")
        self._queue(BITFIELD, _HDR.pack(1 + len(bits), BITFIELD) + bytes(bits))

    def send_have_all(self) -> None:
        self._need_fast("have_all")
        self._queue(HAVE_ALL, _BARE[HAVE_ALL])

    def send_have_none(self) -> None:
        self._need_fast("have_none")
        self._queue(HAVE_NONE, _BARE[HAVE_NONE])

    def have(self, index: int) -> None:
        self._local_index("have", index)
        self._queue(HAVE, _HDR_U32.pack(5, HAVE, index))

    def choke(self) -> None:
        """Choke the peer; no-op if already choking."""
        if self._am_choking:
            self._check_open()
            return
        self._queue(CHOKE, _BARE[CHOKE])
        self._am_choking = True

    def unchoke(self) -> None:
        if not self._am_choking:
            self._check_open()
            return
        self._queue(UNCHOKE, _BARE[UNCHOKE])
        self._am_choking = False

    def interested(self) -> None:
        if self._am_interested:
            self._check_open()
            return
        self._queue(INTERESTED, _BARE[INTERESTED])
        self._am_interested = True

    def not_interested(self) -> None:
        if not self._am_interested:
            self._check_open()
            return
        self._queue(NOT_INTERESTED, _BARE[NOT_INTERESTED])
        self._am_interested = False

    def request(self, index: int, begin: int, length: int) -> None:
        self._local_block("request", index, begin, length)
        self._queue(REQUEST, _HDR_3U32.pack(13, REQUEST, index, begin, length))

    def request_many(self, blocks: Iterable[tuple[int, int, int]]) -> None:
        """:meth:`request` for each ``(index, begin, length)`` (a picker.Block is one), queued as one chunk (a
        pipeline top-up)."""
        parts: list[bytes] = []
        pack = _HDR_3U32.pack
        n, maxb, last, plen, lsize = self._n, self._max_block, self._last_index, self._piece_length, self._last_size
        for index, begin, length in blocks:  # unpacked, not three attribute lookups on a named tuple
            if not (0 <= index < n and begin >= 0 and 0 < length <= maxb
                    and begin + length <= (lsize if index == last else plen)):
                self._local_block("request", index, begin, length)  # raises with the reason
            parts.append(pack(13, REQUEST, index, begin, length))
        if parts:
            self._queue(REQUEST, b"".join(parts))
            self._out_counts[REQUEST] += len(parts) - 1

    def cancel(self, index: int, begin: int, length: int) -> None:
        self._local_block("cancel", index, begin, length)
        self._queue(CANCEL, _HDR_3U32.pack(13, CANCEL, index, begin, length))

    def reject(self, index: int, begin: int, length: int) -> None:
        self._need_fast("reject")
        self._local_block("reject", index, begin, length)
        self._queue(REJECT, _HDR_3U32.pack(13, REJECT, index, begin, length))

    def piece(self, index: int, begin: int, data: bytes | memoryview) -> None:
        """Queue a block without copying it (the outbox keeps a reference: don't mutate ``data``)."""
        self._local_block("piece", index, begin, len(data))
        self._queue(PIECE, _HDR_2U32.pack(9 + len(data), PIECE, index, begin))
        self._outbox.append(data)
        self._outbox_len += len(data)

    def allowed_fast(self, index: int) -> None:
        self._need_fast("allowed_fast")
        self._local_index("allowed_fast", index)
        self._queue(ALLOWED_FAST, _HDR_U32.pack(5, ALLOWED_FAST, index))

    def suggest(self, index: int) -> None:
        self._need_fast("suggest")
        self._local_index("suggest", index)
        self._queue(SUGGEST, _HDR_U32.pack(5, SUGGEST, index))

    def ext_handshake(self, d: dict[Any, Any]) -> None:
        """Queue a BEP 10 extension handshake (bencoded ``d``)."""
        try:
            payload = bencode2.bencode(d)
        except (TypeError, ValueError) as e:
            raise LocalProtocolError(CloseReason.MALFORMED_MESSAGE, f"cannot bencode: {e}") from None
        self.extended(EXT_HANDSHAKE_ID, payload)

    def extended(self, ext_id: int, payload: bytes) -> None:
        """Queue a BEP 10 extended message with the peer's local ``ext_id``."""
        if not self._extension:
            raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, "extended needs the extension protocol")
        if not 0 <= ext_id <= 255:
            raise LocalProtocolError(CloseReason.MALFORMED_MESSAGE, f"extended id {ext_id} not in 0..255")
        if len(payload) > self._cfg.max_ext_len:
            raise LocalProtocolError(
                CloseReason.MESSAGE_TOO_LARGE, f"extended payload {len(payload)} > {self._cfg.max_ext_len}"
            )
        self._queue(EXTENDED, _HDR_U8.pack(2 + len(payload), EXTENDED, ext_id) + payload)

    def keepalive(self) -> None:
        self._check_open()
        self._queue_keepalive()

    def port(self, port: int) -> None:
        """Queue a BEP 5 PORT message (our DHT UDP port)."""
        if not 0 <= port <= 0xFFFF:
            raise LocalProtocolError(CloseReason.MALFORMED_MESSAGE, f"port {port} not in 0..65535")
        self._queue(PORT, _HDR_U16.pack(3, PORT, port))

    # -- introspection ----------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Counters: ``in_<msg>``/``out_<msg>`` per message type, keep-alives, unknown ids, bytes,
        and ``rx_buffered`` (bytes of an incomplete frame held in the receive buffer)."""
        out: dict[str, int] = {}
        for mid, name in MSG_NAMES.items():
            out[f"in_{name}"] = self._in_counts[mid]
            out[f"out_{name}"] = self._out_counts[mid]
        out["in_keepalive"] = self._in_keepalive
        out["out_keepalive"] = self._out_keepalive
        out["in_unknown"] = self._in_unknown
        out["bytes_in"] = self._bytes_in
        out["bytes_out"] = self._bytes_out
        out["rx_buffered"] = len(self._rbuf)
        return out

    def _check_open(self) -> None:
        if self._closed:
            raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, "peer wire is closed")
