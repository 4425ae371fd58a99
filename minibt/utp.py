"""uTorrent transport protocol (BEP 29): the per-connection machine (config, events, states).

The packet codec is :mod:`minibt.utp_codec`, the multiplexer :mod:`minibt.utp_mux`, the settings :mod:`minibt.utp_config`.

Pure: datagrams, commands and ``now`` in; events, datagrams and deadlines out (aioquic shape).
The loop owns the UDP socket: it hands the datagrams of each read to ``mux.receive_run``; after draining
the socket ``mux.socket_drained`` (ACKs coalesce, libtorrent); then sends ``mux.datagrams_to_send``.
Congestion control: :mod:`minibt.ledbat`; packet sizes (MTU probes): :mod:`minibt.utp_mtu`.  Out of
scope: the close-reason extension.
Interop (libtorrent utp_stream.cpp): ST_STATE carries the sender's next seq_nr unconsumed; SACKs of
any length are accepted (libtorrent sends (span + 7) // 8 bytes); we send BEP-sized ones.

    connect() --> SYN_SENT --ST_STATE acking our SYN--------------------> CONNECTED
    SYN --> accept() --> SYN_RECV --initiator's first ST_DATA (acks us)--> CONNECTED
    CONNECTED --close(): FIN after queued data--> FIN_SENT
    CONNECTED/FIN_SENT --our FIN acked + their FIN reached, linger--> CLOSED
    any --ST_RESET / reset() / timeout--> CLOSED
"""

from __future__ import annotations

import enum
import random
import struct
from collections import deque, namedtuple
from collections.abc import Sequence
from dataclasses import dataclass

from minibt.errors import CloseReason, LocalProtocolError
from minibt.ledbat import Ledbat
from minibt.urls import Addr
from minibt.utp_codec import (
    DATA_V1,
    EXT_NONE,
    EXT_SACK,
    HALF_SEQ,
    HEADER_LEN,
    HEADER_STRUCT,
    SEQ_MASK,
    ST_DATA,
    ST_FIN,
    ST_RESET,
    ST_STATE,
    ST_SYN,
    TS_MASK,
    UTP_VERSION,
    Payload,
    UtpHeader,
    build_sack,
    seq_before,
    timestamp_us,
)
from minibt.utp_config import UtpConfig
from minibt.utp_mtu import MTU_PROBE_AFTER_BYTES, MtuSearch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple

    class DataReceived(NamedTuple):
        data: Payload
else:  # one per received packet: a tuple is the cheapest immutable record (collections', see utp_codec.py)
    DataReceived = namedtuple("DataReceived", ("data",))

DUP_ACK_LIMIT = 3  # BEP 29 'packet loss': 3 duplicate ACKs / 3 packets SACKed past the hole
MAX_OUTSTANDING_PACKETS = 1024  # minibt convention: bounds the send window in packets (< HALF_SEQ)
MAX_REORDER_DISTANCE = 2048  # minibt convention: packets further than this past ack_nr are dropped
# minibt convention: out-of-order packets held per reorder_buffer_bytes // this.  Each one also costs ~70 bytes of dict
# entry and bytes header: 1-byte packets would hold 2048 x 70 bytes whatever the buffer (budget.py, test_budget_accounting.py).
REORDER_MIN_AVG_PAYLOAD = 256
MAX_RTO_S = 60.0  # minibt convention: cap of the doubled retransmission timeout

ConnKey = tuple[Addr, int]  # (remote address, our receive connection id)

# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Connected:
    """The handshake completed (initiator: SYN acked; acceptor: first ST_DATA arrived)."""


DataReceived.__doc__ = """In-order payload from the peer.  A lone datagram's payload is a view of the loop's buffer,
valid during the call only."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer's FIN was reached: every byte before it has been delivered."""

    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionReset:
    """ST_RESET received."""


@dataclass(frozen=True, slots=True)
class ConnectionTimedOut:
    """Connect timeout or too many consecutive retransmission timeouts."""


@dataclass(frozen=True, slots=True)
class IncomingConnection:
    """A SYN created an acceptor connection (emitted by :class:`UtpMux`)."""

    conn: UtpConnection


UtpEvent = Connected | DataReceived | ConnectionClosed | ConnectionReset | ConnectionTimedOut | IncomingConnection
MuxEvent = tuple[ConnKey, UtpEvent]


class UtpState(enum.Enum):  # names after BEP 29 / libutp CS_*
    SYN_SENT = enum.auto()
    SYN_RECV = enum.auto()
    CONNECTED = enum.auto()
    FIN_SENT = enum.auto()
    CLOSED = enum.auto()


# Module constants for the per-packet paths: an Enum member read through its class costs ~10x a global.
_CONNECTED, _CLOSED = UtpState.CONNECTED, UtpState.CLOSED
_OPEN = (UtpState.CONNECTED, UtpState.FIN_SENT)  # may send data
_new_data = tuple.__new__  # DataReceived without its generated __new__ (a Python call per packet)
_RUN_FIELDS = struct.Struct(">I4xI4xI")  # take_run: type, version, extension and connection id; delay; seq_nr and ack_nr


class _Sent:
    """One packet in the send window (mutable, private)."""

    __slots__ = ("seq", "type", "payload", "size", "sent_at", "tx", "in_flight", "sacked", "probe")

    def __init__(self, seq: int, typ: int, payload: bytes | bytearray) -> None:
        self.seq = seq
        self.type = typ
        self.payload = payload
        self.size = len(payload)
        self.sent_at = 0.0
        self.tx = 0
        self.in_flight = False
        self.sacked = False
        self.probe = False  # an MTU probe whose fate is not known yet (utp_mtu)


# ---------------------------------------------------------------------------- connection


class UtpConnection:
    """One uTP connection (BEP 29) as a pure state machine; build with :meth:`connect` / :meth:`accept`."""

    def __init__(self, state: UtpState, recv_id: int, send_id: int, seq_nr: int, ack_nr: int, now: float,
                 config: UtpConfig) -> None:
        self._cfg = config
        self._state = state
        self.recv_id, self.send_id = recv_id, send_id  # read-only for others; packets to us carry recv_id
        self._cc = Ledbat(config.ledbat, now=now)
        # send side
        self._seq_nr = seq_nr  # next sequence number to use
        self._acked = (seq_nr - 1) & SEQ_MASK  # last sequence number cumulatively acked by the peer
        self._out: dict[int, _Sent] = {}
        self._tx_queue: deque[int] = deque()  # sequence numbers waiting for a (re)transmission
        self._inflight, self._unacked_bytes = 0, 0
        self._send_buf = bytearray()
        self._peer_wnd = config.reorder_buffer_bytes
        self._fast_resend_seq, self._dup_acks = seq_nr, 0
        self._rtt, self._rtt_var, self._have_rtt = 0.0, 0.0, False
        self._rto = config.initial_timeout_s
        self._rto_at: float | None = None
        self._consec_timeouts = 0
        self._fin_requested = False
        self._fin_seq: int | None = None
        self._fin_acked = False
        # receive side
        self._ack_nr = ack_nr  # last sequence number received in order
        self._reorder: dict[int, bytes] = {}
        self._reorder_bytes = 0
        # In-order bytes the application took but holds back (a download rate limit, utp_peers.py):
        # they count against the window we advertise, and past a window's worth new data is dropped.
        self.held_bytes = 0
        # Where in-order payload goes: None, a DataReceived event per packet; a bytearray (the owner's,
        # utp_peers.py), appended to instead, no event (the owner takes it after each receive batch).
        self.received: bytearray | None = None
        self._sack: bytes | None = None
        self._sack_dirty = False
        self._eof_seq: int | None = None
        self._fin_reached = False
        self._reply_micro, self._ack_pending = 0, False
        self._ack_due: float | None = None
        # timers
        self._connect_deadline: float | None = None
        self._syn_resend_at: float | None = None
        self._close_at: float | None = None
        self._last_send = now
        self._outbox: list[bytes] = []
        self._mtu = MtuSearch(config.payload_bytes, config.max_payload_bytes)
        self._probe_seq: int | None = None
        self._probe_dgram: bytes | None = None  # the probe's first transmission: sent with don't-fragment
        # counters
        self._n = dict.fromkeys(("packets_sent packets_received bytes_sent bytes_received acks_sent retransmits "
                                 "fast_retransmits timeouts dup_acks dup_packets reorder_drops window_drops "
                                 "invalid_acks ignored keepalives mtu_probes mtu_probes_lost").split(), 0)

    @classmethod
    def connect(cls, rng: random.Random, *, now: float, config: UtpConfig | None = None,
                recv_id: int | None = None) -> UtpConnection:
        """Initiator: pick ``recv_id`` at random, send on ``recv_id + 1``; the SYN carries ``recv_id``."""
        cfg = config or UtpConfig()
        rid = rng.randrange(0x10000) if recv_id is None else recv_id & SEQ_MASK
        conn = cls(UtpState.SYN_SENT, rid, (rid + 1) & SEQ_MASK, 1, 0, now, cfg)  # BEP 29: c.seq_nr = 1
        syn = _Sent(1, ST_SYN, b"")
        conn._out[1] = syn
        conn._seq_nr = 2
        conn._connect_deadline = now + cfg.connect_timeout_s
        conn._syn_resend_at = now + cfg.connect_timeout_s / (cfg.syn_resends + 1)
        conn._transmit(syn, now)
        return conn

    @classmethod
    def accept(cls, syn: UtpHeader, rng: random.Random, *, now: float, config: UtpConfig | None = None) -> UtpConnection:
        """Acceptor for a received SYN: send on ``syn.connection_id``, receive on it + 1, reply ST_STATE.

        BEP 29 (2015 reflection fix): we stay in SYN_RECV, sending nothing but that ACK, until the
        initiator's first ST_DATA proves it saw our random ``seq_nr``.
        """
        if syn.type != ST_SYN:
            raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, "accept() needs an ST_SYN header")
        cfg = config or UtpConfig()
        cid = syn.connection_id
        conn = cls(UtpState.SYN_RECV, (cid + 1) & SEQ_MASK, cid, rng.randrange(0x10000), syn.seq_nr, now, cfg)
        conn._reply_micro = (timestamp_us(now) - syn.timestamp_us) & TS_MASK
        conn._peer_wnd = syn.wnd_size
        conn._connect_deadline = now + cfg.syn_recv_timeout_s
        conn._emit(ST_STATE, conn._seq_nr, b"", now)
        return conn

    # ------------------------------------------------------------------ properties

    @property
    def state(self) -> UtpState:
        return self._state

    @property
    def is_finished(self) -> bool:
        """CLOSED with nothing left to send: the multiplexer may forget it."""
        return self._state is UtpState.CLOSED and not self._outbox

    def send_room(self) -> int:
        """Bytes :meth:`send` would accept now (send buffer cap minus queued and unacked bytes)."""
        if self._state is UtpState.CLOSED or self._fin_requested:
            return 0
        return max(0, self._cfg.send_buffer_bytes - len(self._send_buf) - self._unacked_bytes)

    # ------------------------------------------------------------------ commands

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Queue application bytes; returns how many were accepted (backpressure when short)."""
        if self._state is UtpState.CLOSED or self._fin_requested:
            raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, "send() on a closed uTP connection")
        n = min(len(data), self.send_room())
        if n:
            self._send_buf += data[:n] if n < len(data) else data
        return n

    def close(self) -> None:
        """Graceful close: ST_FIN after every queued byte.  Before the handshake completes: reset()."""
        if self._state in (UtpState.SYN_SENT, UtpState.SYN_RECV):
            self.reset()
        elif self._state is not UtpState.CLOSED:
            self._fin_requested = True

    def reset(self) -> None:
        """Abort: send ST_RESET, drop all state."""
        if self._state is UtpState.CLOSED:
            return
        self._outbox.clear()
        self._emit_raw(ST_RESET, self.send_id, self._seq_nr, 0)
        self._terminate()

    def flush_acks(self, *, now: float) -> None:
        """End of a receive batch: send data (ACKs ride on it) or one ST_STATE if an ACK is owed."""
        if self._state in _OPEN:
            self._fill(now)
        if self._ack_pending and self._state is not UtpState.CLOSED:
            self._emit(ST_STATE, self._seq_nr, b"", now)

    def window_opened(self, *, now: float) -> None:
        """The application released held bytes: tell the sender the larger window at once."""
        if self._state in _OPEN:
            self._emit(ST_STATE, self._seq_nr, b"", now)

    def datagrams_to_send(self, *, now: float) -> list[bytes]:
        """Packetize queued data within min(cwnd, peer window) and drain the outbox."""
        if self._state in _OPEN:
            self._fill(now)
        out = self._outbox
        self._outbox = []
        return out

    def take_probe_datagram(self) -> bytes | None:
        """The datagram (one of the last :meth:`datagrams_to_send`) to send with don't-fragment, if any."""
        d, self._probe_dgram = self._probe_dgram, None
        return d

    # ------------------------------------------------------------------ input

    def take_run(self, datas: Sequence[Payload], addrs: Sequence[Addr], i: int, addr: Addr, now: float) -> int:
        """Take the in-order data packets at ``datas[i:]`` (a download's bulk) as ``_process_ack`` and ``_process_data``
        would (tests/sim/test_utp_link.py): ST_DATA v1 with a payload, no extension, from ``addr`` to us, the next
        seq_nr, acking nothing new, while connected and collecting into :attr:`received`.  Returns the index of the
        first other one (``i``: nothing changed), for :meth:`receive_packet`."""
        rx = self.received
        if (rx is None or self._state is not _CONNECTED or self._reorder or self._eof_seq is not None
                or self.held_bytes >= self._cfg.reorder_buffer_bytes):
            return i
        unpack, acked, count, had = _RUN_FIELDS.unpack_from, self._acked, len(datas), len(rx)
        head = (DATA_V1 << 24) | (EXT_NONE << 16) | self.recv_id  # type and version, extension, connection id
        sa = (((self._ack_nr + 1) & SEQ_MASK) << 16) | acked  # seq_nr and ack_nr of the next in-order packet
        samples: list[int] = []
        for j in range(i, count):
            d = datas[j]
            if len(d) <= HEADER_LEN or (addrs[j] is not addr and addrs[j] != addr):
                break
            h, tsd, seq_ack = unpack(d, 0)
            if seq_ack != sa or h != head:  # not the next packet, or it acks something other than what we have
                if h != head or seq_ack >> 16 != sa >> 16 or (((seq_ack & SEQ_MASK) - acked) & SEQ_MASK) < HALF_SEQ:
                    break  # acking something new is _process_ack's business; an older ack is taken, with no sample
            elif tsd:  # a delay sample, from a packet that acks nothing new
                samples.append(tsd)
            rx += d[HEADER_LEN:]
            sa = (sa + 0x10000) & 0xFFFFFFFF  # the next seq_nr (16 bits, wrapping), the same ack_nr
        else:
            j = count
        if j == i:
            return i
        _, _, _, ts, _, wnd, _, _ = HEADER_STRUCT.unpack_from(datas[j - 1], 0)  # the last packet's timestamp, window
        self._n["packets_received"] += j - i
        self._n["bytes_received"] += len(rx) - had
        self._reply_micro = (int(now * 1e6) - ts) & TS_MASK
        self._peer_wnd = wnd
        if samples:
            self._cc.on_delay_samples(samples, now=now)
        if not self._ack_pending:
            self._ack_pending = True
            self._ack_due = now + self._cfg.ack_delay_s
        self._ack_nr = ((sa >> 16) - 1) & SEQ_MASK
        return j

    def receive_packet(self, header: UtpHeader, sack: bytes | None, payload: Payload, *, now: float) -> list[UtpEvent]:
        """Feed one decoded packet addressed to this connection; packets that don't fit are ignored."""
        st = self._state
        typ = header.type
        if st is _CLOSED:
            return []
        n = self._n
        n["packets_received"] += 1
        if typ == ST_RESET:
            if seq_before(self._seq_nr, header.ack_nr):
                n["ignored"] += 1  # acks what we never sent: spoofed (libtorrent checks this too)
                return []
            self._outbox.clear()
            self._terminate()
            return [ConnectionReset()]
        self._reply_micro = (int(now * 1e6) - header.timestamp_us) & TS_MASK  # timestamp_us(now), inlined
        self._peer_wnd = header.wnd_size
        events: list[UtpEvent] = []
        if typ == ST_SYN:
            if st is UtpState.SYN_RECV and header.seq_nr == self._ack_nr:
                self._emit(ST_STATE, self._seq_nr, b"", now)  # our ST_STATE was lost: repeat it
            else:
                n["ignored"] += 1
            return events
        if st is _CONNECTED:
            pass  # the common case: neither handshake state below applies
        elif st is UtpState.SYN_SENT:
            if typ not in (ST_STATE, ST_DATA) or header.ack_nr != 1:
                n["ignored"] += 1
                return events
            # BEP 29: ST_STATE carries the acceptor's next seq_nr without consuming it (libutp/libtorrent)
            self._ack_nr = (header.seq_nr - 1) & SEQ_MASK
            self._become_connected(events)
        elif st is UtpState.SYN_RECV:
            if typ not in (ST_DATA, ST_FIN) or header.ack_nr != (self._seq_nr - 1) & SEQ_MASK:
                n["ignored"] += 1  # BEP 29 2015 fix: must ack our random seq_nr
                return events
            self._become_connected(events)
        if not self._process_ack(header, sack, now):
            return events
        if typ == ST_DATA or typ == ST_FIN:
            self._process_data(header, payload, now, events)
        return events

    def next_deadline(self) -> float | None:
        """Earliest absolute time :meth:`handle_timeout` has work to do."""
        if self._state is _CLOSED:
            return None
        cands = [self._connect_deadline, self._syn_resend_at, self._rto_at, self._close_at]
        if self._ack_pending:
            cands.append(self._ack_due)
        if self._state in _OPEN:
            cands.append(self._last_send + self._cfg.keepalive_s)
        return min((t for t in cands if t is not None), default=None)

    def handle_timeout(self, *, now: float) -> list[UtpEvent]:
        """Run due timers: connect timeout, SYN resends, RTO, deferred ACK, keep-alive, linger."""
        if self._state is _CLOSED:
            return []
        cfg = self._cfg
        if self._connect_deadline is not None and now >= self._connect_deadline:
            self._terminate()
            return [ConnectionTimedOut()]
        if self._syn_resend_at is not None and now >= self._syn_resend_at:
            syn = self._out.get(1)
            if syn is not None:
                self._n["retransmits"] += 1
                self._transmit(syn, now)
            self._syn_resend_at = now + cfg.connect_timeout_s / (cfg.syn_resends + 1)
        if self._close_at is not None and now >= self._close_at:
            self._terminate()
            return []
        if self._rto_at is not None and now >= self._rto_at:
            if self._on_rto(now):
                return [ConnectionTimedOut()]
        if self._ack_pending and self._ack_due is not None and now >= self._ack_due:
            self._emit(ST_STATE, self._seq_nr, b"", now)
        if self._state in _OPEN and now >= self._last_send + cfg.keepalive_s:
            self._n["keepalives"] += 1
            self._emit(ST_STATE, self._seq_nr, b"", now)  # BEP 29 leaves this open; keeps NATs open
        return []

    def stats(self) -> dict[str, float]:
        """Counters and gauges for tests and diagnostics (libutp ``utp_get_stats`` style)."""
        s: dict[str, float] = {k: float(v) for k, v in self._n.items()}
        s.update(self._cc.stats())
        s.update(inflight=float(self._inflight), outstanding_packets=float(len(self._out)),
                 peer_wnd=float(self._peer_wnd), rtt_ms=self._rtt * 1e3, rtt_var_ms=self._rtt_var * 1e3,
                 rto_ms=self._rto * 1e3, send_buffered=float(len(self._send_buf)),
                 reorder_bytes=float(self._reorder_bytes), max_window=float(self._cc.max_window),
                 mtu_payload=float(self._mtu.size), mtu_ceiling=float(self._mtu.ceiling))
        return s

    # ------------------------------------------------------------------ internals: sending

    def _emit_raw(self, typ: int, cid: int, seq: int, wnd: int, payload: bytes | bytearray = b"",
                  sack: bytes | None = None, now_us: int = 0) -> None:
        hdr = HEADER_STRUCT.pack((typ << 4) | UTP_VERSION, EXT_NONE if sack is None else EXT_SACK, cid, now_us,
                                 self._reply_micro, wnd, seq, self._ack_nr)
        if sack is not None:
            self._outbox.append(b"".join((hdr, bytes((EXT_NONE, len(sack))), sack, payload)))
        else:
            self._outbox.append(hdr + payload if payload else hdr)
        self._n["packets_sent"] += 1

    def _emit(self, typ: int, seq: int, payload: bytes | bytearray, now: float) -> None:
        """Build one packet carrying our current ACK state (and SACK if we have holes)."""
        if self._sack_dirty:
            self._sack = self._build_sack()
            self._sack_dirty = False
        cid = self.recv_id if typ == ST_SYN else self.send_id  # BEP 29: only the SYN uses recv_id
        wnd = max(0, self._cfg.reorder_buffer_bytes - self._reorder_bytes - self.held_bytes)
        self._emit_raw(typ, cid, seq, wnd, payload, self._sack if self._reorder else None, timestamp_us(now))
        if typ == ST_STATE:
            self._n["acks_sent"] += 1
        self._ack_pending = False
        self._ack_due = None
        self._last_send = now

    def _build_sack(self) -> bytes | None:
        """BEP 29 SACK for the packets held in the reorder buffer (see :func:`build_sack`)."""
        return build_sack(self._ack_nr, self._reorder)

    def _transmit(self, p: _Sent, now: float) -> None:
        if not p.in_flight:
            self._inflight += p.size
            p.in_flight = True
        p.tx += 1
        p.sent_at = now
        self._n["bytes_sent"] += p.size
        if self._rto_at is None and self._state is not UtpState.SYN_SENT:
            self._rto_at = now + self._current_rto()
        self._emit(p.type, p.seq, p.payload, now)
        if p.probe and p.tx == 1:
            self._probe_dgram = self._outbox[-1]

    def _fill(self, now: float) -> None:
        """Send retransmissions, then new data, then a queued FIN, while the window allows.

        BEP 29: send while cur_window + packet <= min(max_window, wnd_size); one packet is always
        allowed when nothing is in flight (how a connection restarts after a timeout).
        """
        limit = min(self._cc.max_window, self._peer_wnd)
        out = self._out
        queue = self._tx_queue
        while queue:
            p = out.get(queue[0])
            if p is None or p.in_flight or p.sacked:
                queue.popleft()
                continue
            if self._inflight and self._inflight + p.size > limit:
                return
            queue.popleft()
            self._n["retransmits"] += 1
            self._transmit(p, now)
        buf = self._send_buf
        size = self._mtu.size
        while buf and len(out) < MAX_OUTSTANDING_PACKETS:
            k = min(len(buf), size)
            probe = None
            if self._probe_seq is None and self._state is _CONNECTED and self._n["bytes_sent"] >= MTU_PROBE_AFTER_BYTES:
                probe = self._mtu.probe_size()
                if probe is not None and len(buf) >= probe:
                    k = probe
                else:
                    probe = None
            if self._inflight and self._inflight + k > limit:
                return
            payload = buf[:k]
            del buf[:k]
            seq = self._seq_nr
            self._seq_nr = (seq + 1) & SEQ_MASK
            p = _Sent(seq, ST_DATA, payload)
            if probe is not None:
                p.probe = True
                self._probe_seq = seq
                self._mtu.probe_sent()
                self._n["mtu_probes"] += 1
            out[seq] = p
            self._unacked_bytes += k
            self._transmit(p, now)
        if self._fin_requested and not buf and self._fin_seq is None and len(out) < MAX_OUTSTANDING_PACKETS:
            if self._fin_reached and not out:
                # The peer closed first and has all our data.  libtorrent's FIN does not take a seq_nr and
                # in fin_sent it ignores non-ST_STATE packets acking it, so our FIN would only be resent
                # in vain: linger to re-ACK their FIN instead.
                self._fin_seq = self._seq_nr
                self._fin_acked = True
                self._state = UtpState.FIN_SENT
                self._close_at = now + self._cfg.linger_s
                return
            seq = self._fin_seq = self._seq_nr
            self._seq_nr = (seq + 1) & SEQ_MASK
            p = _Sent(seq, ST_FIN, b"")
            out[seq] = p
            self._state = UtpState.FIN_SENT
            self._transmit(p, now)

    def _current_rto(self) -> float:
        return min(self._rto * (1 << min(self._consec_timeouts, 16)), MAX_RTO_S)

    # ------------------------------------------------------------------ internals: receiving

    def _become_connected(self, events: list[UtpEvent]) -> None:
        self._state = UtpState.CONNECTED
        self._connect_deadline = None
        self._syn_resend_at = None
        events.append(Connected())

    def _rtt_sample(self, sample: float) -> None:
        if self._have_rtt:  # BEP 29 'timeouts'
            delta = self._rtt - sample
            self._rtt_var += (abs(delta) - self._rtt_var) / 4
            self._rtt += (sample - self._rtt) / 8
        else:  # first sample seeds both (RFC 6298 2.2) instead of converging from zero
            self._rtt = sample
            self._rtt_var = sample / 2
            self._have_rtt = True
        self._rto = max(self._rtt + 4 * self._rtt_var, self._cfg.min_timeout_s)

    def _acked_one(self, p: _Sent, now: float) -> int:
        """Account one packet the peer has; returns its bytes if this is news."""
        if p.in_flight:
            self._inflight -= p.size
            p.in_flight = False
        if p.sacked:
            return 0
        if p.probe:
            self._probe_done(p, lost=False)
        if p.tx == 1:  # BEP 29: only packets sent once give RTT samples
            self._rtt_sample(now - p.sent_at)
        return p.size

    def _process_ack(self, h: UtpHeader, sack: bytes | None, now: float) -> bool:
        """Cumulative ACK, duplicate ACKs, SACK, LEDBAT.  False: the packet acks what we never sent."""
        ack = h.ack_nr
        acked = self._acked
        adv = (ack - acked) & SEQ_MASK
        if adv >= HALF_SEQ:
            return True  # an old ACK on a reordered packet: nothing to learn, data still counts
        if adv > ((self._seq_nr - 1 - acked) & SEQ_MASK):
            self._n["invalid_acks"] += 1
            return False
        if h.timestamp_diff_us:
            self._cc.on_delay_sample(h.timestamp_diff_us, now=now)
        out = self._out
        if not adv and sack is None and (not out or h.type != ST_STATE):
            return True  # a data packet acking nothing new (a download's common case): nothing below applies
        inflight_before = self._inflight
        newly = 0
        lost = False
        if adv:
            for i in range(1, adv + 1):
                p = out.pop((acked + i) & SEQ_MASK, None)
                if p is not None:
                    newly += self._acked_one(p, now)
                    self._unacked_bytes -= p.size
            self._acked = ack
            self._dup_acks = 0
            self._consec_timeouts = 0
            self._rto_at = now + self._current_rto() if out else None
            if seq_before(self._fast_resend_seq, (ack + 1) & SEQ_MASK):
                self._fast_resend_seq = (ack + 1) & SEQ_MASK
            if self._fin_seq is not None and not self._fin_acked and self._fin_seq not in out:
                self._fin_acked = True
                self._close_at = now + (self._cfg.linger_s if self._fin_reached else self._cfg.fin_wait_s)
        elif out and h.type == ST_STATE:
            self._n["dup_acks"] += 1
            self._dup_acks += 1
            first = (ack + 1) & SEQ_MASK
            if self._dup_acks >= DUP_ACK_LIMIT and not seq_before(first, self._fast_resend_seq):
                lost = self._mark_lost(first)
                self._fast_resend_seq = (first + 1) & SEQ_MASK
        if sack is not None and out:
            got, sack_lost = self._process_sack(sack, now)
            newly += got
            lost = lost or sack_lost
        if lost:
            self._cc.on_loss(rtt_s=self._rtt, now=now)
        if newly:
            self._cc.on_ack(bytes_acked=newly, bytes_in_flight=inflight_before, packet_bytes=self._mtu.size, now=now)
        return True

    def _mark_lost(self, seq: int) -> bool:
        p = self._out.get(seq)
        if p is None or not p.in_flight or p.sacked:
            return False
        p.in_flight = False
        self._inflight -= p.size
        queue = self._tx_queue
        if queue and seq_before(seq, queue[0]):
            queue.appendleft(seq)
        else:
            queue.append(seq)
        self._n["fast_retransmits"] += 1
        if p.probe:  # a lost MTU probe says the packet was too large, not that the path is congested
            self._probe_done(p, lost=True)
            return False
        return True

    def _probe_done(self, p: _Sent, *, lost: bool) -> None:
        p.probe = False
        self._probe_seq = None
        if lost:
            self._n["mtu_probes_lost"] += 1
            self._mtu.probe_lost(p.size)
        else:
            self._mtu.probe_acked(p.size)

    def _process_sack(self, sack: bytes, now: float) -> tuple[int, bool]:
        """BEP 29: each SACKed packet counts as a duplicate ACK; a packet with >= 3 SACKed after it is lost."""
        base = (self._acked + 2) & SEQ_MASK
        span = (self._seq_nr - base) & SEQ_MASK
        if span >= HALF_SEQ:
            return 0, False
        mask = int.from_bytes(sack, "little") & ((1 << span) - 1)
        out = self._out
        offsets: list[int] = []
        newly = 0
        while mask:
            low = mask & -mask
            mask ^= low
            off = low.bit_length() - 1
            p = out.get((base + off) & SEQ_MASK)
            if p is None:
                continue
            offsets.append(off)
            if not p.sacked:
                newly += self._acked_one(p, now)
                p.sacked = True
        lost = False
        if len(offsets) >= DUP_ACK_LIMIT:
            end = (base + offsets[-DUP_ACK_LIMIT]) & SEQ_MASK  # everything before has >= 3 SACKed after it
            seq = self._fast_resend_seq
            if seq_before(seq, (self._acked + 1) & SEQ_MASK):
                seq = (self._acked + 1) & SEQ_MASK
            while seq_before(seq, end):
                lost = self._mark_lost(seq) or lost
                seq = (seq + 1) & SEQ_MASK
            if seq_before(self._fast_resend_seq, end):
                self._fast_resend_seq = end
        return newly, lost

    def _process_data(self, h: UtpHeader, payload: Payload, now: float, events: list[UtpEvent]) -> None:
        seq = h.seq_nr
        n = self._n
        if not self._ack_pending:
            self._ack_pending = True
            self._ack_due = now + self._cfg.ack_delay_s
        if h.type == ST_FIN and self._eof_seq is None:
            self._eof_seq = seq  # BEP 29 eof_pkt: nothing after it exists
        elif self._eof_seq is not None and seq_before(self._eof_seq, seq):
            n["ignored"] += 1
            return
        dist = (seq - self._ack_nr) & SEQ_MASK
        if dist == 0 or dist >= HALF_SEQ:
            n["dup_packets"] += 1  # already have it; the ACK we owe tells the sender
            return
        if dist > 1:
            if (dist > MAX_REORDER_DISTANCE or seq in self._reorder
                    or self._reorder_bytes + len(payload) > self._cfg.reorder_buffer_bytes
                    or len(self._reorder) >= max(4, self._cfg.reorder_buffer_bytes // REORDER_MIN_AVG_PAYLOAD)):
                n["reorder_drops" if seq not in self._reorder else "dup_packets"] += 1
                return
            self._reorder[seq] = bytes(payload)  # kept past this call: a copy, not a view
            self._reorder_bytes += len(payload)
            self._sack_dirty = True
            return
        if payload and self.held_bytes >= self._cfg.reorder_buffer_bytes:
            n["window_drops"] += 1  # past the window we advertised: the sender resends it later
            return
        self._ack_nr = seq
        reorder = self._reorder
        if not reorder and self._eof_seq is None:  # in order, nothing waiting behind it: the common case
            if payload:
                self._give(payload, events)
            return
        chunks = [payload] if payload else []
        if reorder:
            nxt = (seq + 1) & SEQ_MASK
            while nxt in reorder:
                more = reorder.pop(nxt)
                self._reorder_bytes -= len(more)
                if more:
                    chunks.append(more)
                self._ack_nr = nxt
                nxt = (nxt + 1) & SEQ_MASK
            self._sack_dirty = True
        if chunks:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._give(data, events)
        if self._eof_seq is not None and self._ack_nr == self._eof_seq and not self._fin_reached:
            self._fin_reached = True
            if reorder:
                reorder.clear()
                self._reorder_bytes = 0
            events.append(ConnectionClosed("fin"))
            if self._fin_acked:
                self._close_at = now + self._cfg.linger_s

    def _give(self, data: Payload, events: list[UtpEvent]) -> None:
        """In-order payload to the application: into :attr:`received`, or as an event when that is None."""
        self._n["bytes_received"] += len(data)
        if self.received is None:
            events.append(_new_data(DataReceived, (data,)))
        else:
            self.received += data

    def _on_rto(self, now: float) -> bool:
        """Retransmission timeout (BEP 29 'timeouts').  True: give up (ConnectionTimedOut)."""
        out = self._out
        if not out:
            self._rto_at = None
            return False
        self._n["timeouts"] += 1
        self._consec_timeouts += 1
        if self._state is UtpState.FIN_SENT and self._consec_timeouts > self._cfg.fin_resends:
            self._terminate()  # we are leaving anyway (libtorrent utp_fin_resends)
            return False
        if self._consec_timeouts > self._cfg.num_resends:
            self._terminate()
            return True
        self._cc.on_timeout(now=now)
        queue: deque[int] = deque()
        seq = (self._acked + 1) & SEQ_MASK
        for _ in range((self._seq_nr - seq) & SEQ_MASK):
            p = out.get(seq)
            if p is not None and not p.sacked:
                if p.in_flight:
                    p.in_flight = False
                    self._inflight -= p.size
                if p.probe:
                    self._probe_done(p, lost=True)
                queue.append(seq)
            seq = (seq + 1) & SEQ_MASK
        self._tx_queue = queue
        self._fast_resend_seq = self._seq_nr
        self._rto_at = now + self._current_rto()
        self._fill(now)
        return False

    def _terminate(self) -> None:
        self._state = UtpState.CLOSED
        self._out.clear()
        self._tx_queue.clear()
        self._send_buf = bytearray()
        self._reorder.clear()
        self._inflight = self._unacked_bytes = self._reorder_bytes = 0
        self._rto_at = self._connect_deadline = self._syn_resend_at = self._close_at = self._ack_due = None
        self._ack_pending = False

