"""uTP (BEP 29) connections as session peer connections: the glue between UtpMux and Session.

Pure (no socket): the loop hands in datagrams, ``now`` and the end of each receive batch, and sends
what :meth:`UtpPeers.datagrams_to_send` returns (libtorrent's utp_socket_manager shape).  Each uTP
connection is a peer connection exactly like a TCP socket, in the session's cid space:
``Connected`` -> ``session.on_connected``; payload -> ``session.on_data`` (one call per connection
per receive batch); FIN/RESET/timeout -> ``session.on_closed`` with a CloseReason; the session's
bytes move into the connection's send buffer while ``send_room()`` allows (backpressure), again after
ACKs free room.  Not here: receive-side rate limiting (uTP has no read pause; the limiter is charged).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from minibt.errors import CloseReason
from minibt.peer import SEND_CHUNK
from minibt.session import Session
from minibt.settings import Transport
from minibt.urls import Addr
from minibt.utp import (
    Connected,
    ConnectionClosed,
    ConnectionReset,
    ConnectionTimedOut,
    ConnKey,
    DataReceived,
    IncomingConnection,
    MuxEvent,
    UtpConnection,
    UtpState,
)
from minibt.utp_codec import Payload
from minibt.utp_config import UtpConfig
from minibt.utp_mux import OutDatagram, UtpMux

log = logging.getLogger(__name__)



@dataclass(slots=True)
class _UtpPeer:
    """A peer connection carried over uTP."""

    cid: int
    key: ConnKey
    conn: UtpConnection
    connected: bool  # outgoing: the session heard on_connected (incoming: always True)
    blocked: bool = False  # the send buffer was full: refill when ACKs free room
    out: bytes = b""  # taken from the session but not yet accepted by the send buffer


class UtpPeers:
    """Every uTP peer connection of one session behind one UDP socket."""

    def __init__(self, session: Session, rng: random.Random, *, config: UtpConfig | None = None) -> None:
        self.session = session
        self.mux = UtpMux(rng, config=config)
        self._by_cid: dict[int, _UtpPeer] = {}
        self._by_key: dict[ConnKey, _UtpPeer] = {}
        # Bytes held back by a download limit (the session gets them as tokens allow; they shrink the
        # window the connection advertises, so the sender slows down: uTP's read pause).
        self._held: dict[int, bytes] = {}
        self.counters = {"utp_dials": 0, "utp_accepted": 0, "utp_refused": 0}

    def __contains__(self, cid: int) -> bool:
        return cid in self._by_cid

    # ------------------------------------------------------------------ commands from the loop

    def dial(self, cid: int, addr: Addr, *, now: float) -> None:
        self.counters["utp_dials"] += 1
        conn = self.mux.connect(addr, now=now)
        conn.received = bytearray()  # in-order payload collects here, no event per packet (_deliver takes it)
        up = _UtpPeer(cid, (addr, conn.recv_id), conn, connected=False)
        self._by_cid[cid] = up
        self._by_key[up.key] = up

    def close(self, cid: int) -> None:
        """The session closed ``cid``: FIN after what is queued (a RESET before the handshake)."""
        up = self._by_cid.get(cid)
        if up is not None:
            self._forget(up)
            up.conn.close()

    def reset_all(self) -> None:
        for up in list(self._by_cid.values()):
            self._forget(up)
            up.conn.reset()

    def flush(self, cid: int, *, now: float) -> bool:
        """Fill ``cid``'s send buffer from the session; True if it is a uTP peer with room left."""
        up = self._by_cid.get(cid)
        return up is not None and up.connected and self._fill(up, now)

    # ------------------------------------------------------------------ input

    def receive_batch(self, datas: Sequence[Payload], addrs: Sequence[Addr], *, now: float,
                      on_error: Callable[[Addr, Exception], None]) -> None:
        """The uTP datagrams of one read, in order (the mux takes a connection's in-order run in one step).
        A fault while handling one goes to ``on_error`` with its sender, and the rest are still handled."""
        mux = self.mux
        i, count = 0, len(datas)
        while i < count:
            evs: list[MuxEvent] = []
            try:
                j = mux.receive_run(datas, addrs, i, evs, now=now)
                if evs:
                    self._events(evs, now)
            except Exception as e:  # one datagram: dropped, the loop goes on (STYLE.md section 13)
                on_error(addrs[i], e)
                j = i + 1
            i = j

    def socket_drained(self, *, now: float) -> None:
        """End of a receive batch: deliver payload, send coalesced ACKs, refill freed send buffers."""
        for up in [u for u in self._by_cid.values() if u.conn.received]:
            self._deliver(up.cid, now)
        self.mux.socket_drained(now=now)
        self._unblock(now)

    def next_deadline(self) -> float | None:
        return self.mux.next_deadline()

    def handle_timeout(self, *, now: float) -> None:
        self._events(self.mux.handle_timeout(now=now), now)
        self._unblock(now)

    def datagrams_to_send(self, *, now: float) -> list[OutDatagram]:
        return self.mux.datagrams_to_send(now=now)

    def stats(self) -> dict[str, int]:
        s = self.mux.stats()
        s.update(self.counters)
        return s

    # ------------------------------------------------------------------ internals

    def _forget(self, up: _UtpPeer) -> None:
        if up.cid in self._by_cid:
            st = up.conn.stats()
            log.info(
                "uTP connection #%d %s:%d ends: %d packets sent, %d retransmits, %d timeouts, "
                "payload %d bytes after %d MTU probes (%d lost)",
                up.cid, up.key[0][0], up.key[0][1], st["packets_sent"], st["retransmits"], st["timeouts"],
                st["mtu_payload"], st["mtu_probes"], st["mtu_probes_lost"],
            )
        self._by_cid.pop(up.cid, None)
        self._by_key.pop(up.key, None)
        up.conn.received = None  # what still arrives (it may linger for a FIN) is dropped
        self._held.pop(up.cid, None)

    def _lost(self, up: _UtpPeer, reason: CloseReason, detail: str, now: float) -> None:
        self._deliver(up.cid, now, all_of_it=True)  # bytes that arrived before the close come first
        self._forget(up)
        self.session.on_closed(up.cid, reason, detail, now=now)

    def _events(self, evs: list[MuxEvent], now: float) -> None:
        by_key = self._by_key
        for key, ev in evs:
            if isinstance(ev, DataReceived):
                continue  # a connection the session let go of (ours collect into conn.received)
            if isinstance(ev, IncomingConnection):
                self._incoming(key, ev.conn, now)
                continue
            up = by_key.get(key)
            if up is None:
                continue  # a connection the session already closed (lingering for its FIN)
            match ev:
                case Connected():
                    if not up.connected:
                        up.connected = True
                        self.session.on_connected(up.cid, now=now)
                        self._fill(up, now)
                case ConnectionClosed():
                    up.conn.close()  # answer their FIN with ours
                    self._lost(up, CloseReason.CLOSED_BY_REMOTE, "uTP FIN", now)
                case ConnectionReset():
                    reason = CloseReason.CLOSED_BY_REMOTE if up.connected else CloseReason.CONNECT_FAILED
                    self._lost(up, reason, "uTP reset by peer", now)
                case ConnectionTimedOut():
                    if up.connected:
                        self._lost(up, CloseReason.IO_ERROR, "uTP timed out", now)
                    else:
                        self._lost(up, CloseReason.CONNECT_FAILED, "uTP connect timed out", now)

    def _incoming(self, key: ConnKey, conn: UtpConnection, now: float) -> None:
        cid = self.session.on_incoming(key[0], now=now, transport=Transport.UTP)
        if cid is None:
            self.counters["utp_refused"] += 1
            conn.reset()
            return
        self.counters["utp_accepted"] += 1
        conn.received = bytearray()
        up = _UtpPeer(cid, key, conn, connected=True)
        self._by_cid[cid] = up
        self._by_key[key] = up

    def _deliver(self, cid: int, now: float, *, all_of_it: bool = False) -> None:
        up = self._by_cid.get(cid)
        data: bytes | bytearray = b""
        if up is not None and up.conn.received:  # the batch's bytes, copied out of the datagrams
            data, up.conn.received = up.conn.received, bytearray()
        if cid in self._held or (self.session.down_limited and not all_of_it and data):
            data = self._held.pop(cid, b"") + data
            keep = 0 if all_of_it or not self.session.down_limited else max(
                0, len(data) - self.session.read_quota(cid, now=now))
            if keep:
                data, self._held[cid] = data[:-keep], data[-keep:]
            if up is not None and up.conn.held_bytes != keep:
                opened = keep < up.conn.held_bytes
                up.conn.held_bytes = keep
                if opened:
                    up.conn.window_opened(now=now)
        if data:  # a batch's own bytearray: read (and decrypted) in place, like the TCP receive buffer
            self.session.on_data(cid, memoryview(data) if isinstance(data, bytearray) else data, now=now)

    def resume_held(self, *, now: float) -> None:
        """Download tokens came back (or the limit was lifted): hand held bytes on."""
        for cid in list(self._held):
            self._deliver(cid, now)

    def held_wake_at(self, *, now: float) -> float | None:
        """When held bytes may go on (None: nothing held)."""
        if not self._held:
            return None
        if not self.session.down_limited:
            return now
        return min(self.session.read_retry_at(cid, now=now) for cid in self._held)

    def _fill(self, up: _UtpPeer, now: float) -> bool:
        """Move the session's bytes for ``up`` into its send buffer; True if room is left."""
        conn = up.conn
        while True:
            if conn.state is UtpState.CLOSED or up.cid not in self._by_cid:
                return False
            room = conn.send_room()
            if room <= 0:
                up.blocked = True
                return False
            if up.out:
                data, up.out = up.out, b""
            else:
                data = self.session.data_to_send(up.cid, min(room, SEND_CHUNK), now=now)
                if not data:
                    up.blocked = False
                    return True
            n = conn.send(data)
            if n < len(data):
                up.out = data[n:]

    def _unblock(self, now: float) -> None:
        """ACKs freed send-buffer room: refill blocked connections and let their torrents serve more."""
        for up in [u for u in self._by_cid.values() if u.blocked]:
            if up.conn.send_room() > 0 and self._fill(up, now):
                self.session.on_writable(up.cid, now=now)
