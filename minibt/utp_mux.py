"""uTP (BEP 29) connection multiplexer: every uTP connection behind one UDP socket.

Pure: the loop owns the socket and feeds datagrams in (see :mod:`minibt.utp` for the call sequence);
connection-id demux, SYN acceptance limits, rate-limited ST_RESET for unknown connections.
"""

import random
from collections import namedtuple
from collections.abc import Sequence

from minibt.errors import UtpError
from minibt.urls import Addr
from minibt.utp import ConnKey, IncomingConnection, MuxEvent, UtpConnection, UtpState
from minibt.utp_codec import (
    DATA_V1,
    EXT_NONE,
    HEADER_LEN,
    HEADER_STRUCT,
    SEQ_MASK,
    ST_RESET,
    ST_SYN,
    UTP_VERSION,
    Payload,
    UtpHeader,
    decode_packet,
    timestamp_us,
)
from minibt.utp_config import UtpConfig

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple

    class OutDatagram(NamedTuple):
        data: bytes
        addr: Addr
        dont_fragment: bool = False
else:
    OutDatagram = namedtuple("OutDatagram", ("data", "addr", "dont_fragment"), defaults=(False,))
OutDatagram.__doc__ = """One datagram to send to ``addr``; ``dont_fragment``: send with the IP don't-fragment bit (an MTU
probe, :mod:`minibt.utp_mtu`).  A tuple: one is built per datagram sent."""


class UtpMux:
    """All uTP connections behind one UDP socket, keyed by (address, our receive connection id)."""

    def __init__(self, rng: random.Random, *, config: UtpConfig | None = None) -> None:
        self._rng = rng
        self._cfg = config or UtpConfig()
        self._conns: dict[ConnKey, UtpConnection] = {}
        # the connections accepted that may still be half-open: at most max_half_open of them, so a SYN looks at
        # these, not at every connection (a flood of 20-byte SYNs cost 71 us each at 500 connections)
        self._syn_recv: set[ConnKey] = set()
        self._touched: set[ConnKey] = set()
        self._rst_out: list[OutDatagram] = []
        self._rst_tokens = self._cfg.rst_per_s
        self._rst_time: float | None = None
        self._n = dict.fromkeys(
            "datagrams garbage unknown_connection resets_sent resets_suppressed syns_refused accepted connects".split(),
            0,
        )

    def __len__(self) -> int:
        return len(self._conns)

    def connection(self, key: ConnKey) -> UtpConnection | None:
        return self._conns.get(key)

    def connect(self, addr: Addr, *, now: float) -> UtpConnection:
        """Start an outgoing connection; its key is ``(addr, conn.recv_id)``."""
        while True:
            rid = self._rng.randrange(0x10000)
            if (addr, rid) not in self._conns:
                break
        conn = UtpConnection.connect(self._rng, now=now, config=self._cfg, recv_id=rid)
        self._conns[(addr, rid)] = conn
        self._n["connects"] += 1
        return conn

    def receive_datagram(
        self, data: bytes | bytearray | memoryview, addr: Addr, *, now: float
    ) -> list[MuxEvent]:
        """Route one datagram.  Never raises on remote input: garbage is counted and dropped."""
        out: list[MuxEvent] = []
        self.receive_run((data,), (addr,), 0, out, now=now)
        return out

    def receive_run(self, datas: Sequence[Payload], addrs: Sequence[Addr], i: int, out: list[MuxEvent], *,
                    now: float) -> int:
        """Route ``datas[i]`` (from ``addrs[i]``) and the in-order data packets of its connection right after it
        (:meth:`UtpConnection.take_run`); their events go to ``out``.  Returns the index of the next datagram
        to route.  Never raises on remote input: garbage is counted and dropped."""
        data, addr = datas[i], addrs[i]
        if len(data) > HEADER_LEN and data[0] == DATA_V1 and not data[1]:  # ST_DATA, no extension
            key = (addr, (data[2] << 8) | data[3])
            conn = self._conns.get(key)
            if conn is not None:
                j = conn.take_run(datas, addrs, i, addr, now)
                if j > i:
                    self._n["datagrams"] += j - i
                    self._touched.add(key)
                    return j
        self._n["datagrams"] += 1
        out.extend(self._route(data, addr, now))
        return i + 1

    def _route(self, data: Payload, addr: Addr, now: float) -> list[MuxEvent]:
        """One datagram the short path did not take: decoded, then to its connection, a SYN or a reset."""
        try:
            header, sack, payload = decode_packet(data)
        except UtpError:
            self._n["garbage"] += 1
            return []
        cid = header.connection_id
        typ = header.type
        conns = self._conns
        if typ < ST_RESET:  # ST_DATA, ST_FIN, ST_STATE: the connection's receive id (the common case)
            key = (addr, cid)
            conn = conns.get(key)
            if conn is not None:
                self._touched.add(key)
                evs = conn.receive_packet(header, sack, payload, now=now)
                if not evs:  # in-order data collecting in conn.received: the common case
                    return []
                return [(key, evs[0])] if len(evs) == 1 else [(key, ev) for ev in evs]
        if typ == ST_SYN:
            key = (addr, (cid + 1) & SEQ_MASK)
            conn = conns.get(key)
            if conn is None:
                return self._accept(key, header, now)
        elif typ == ST_RESET:  # libutp: the id is our recv id, or our send id (either role)
            key = (addr, cid)
            conn = conns.get(key)
            if conn is None:
                for k in ((addr, (cid + 1) & SEQ_MASK), (addr, (cid - 1) & SEQ_MASK)):
                    c = conns.get(k)
                    if c is not None and c.send_id == cid:
                        key, conn = k, c
                        break
            if conn is None:
                self._n["unknown_connection"] += 1
                return []
        else:
            key = (addr, cid)
            conn = conns.get(key)
            if conn is None:
                self._n["unknown_connection"] += 1
                self._send_reset(header, addr, now)
                return []
        self._touched.add(key)
        return [(key, ev) for ev in conn.receive_packet(header, sack, payload, now=now)]

    def _accept(self, key: ConnKey, syn: UtpHeader, now: float) -> list[MuxEvent]:
        cfg = self._cfg
        conns, syn_recv = self._conns, self._syn_recv
        for k in [k for k in syn_recv if (c := conns.get(k)) is None or c.state is not UtpState.SYN_RECV]:
            syn_recv.discard(k)
        if len(conns) >= cfg.max_connections or len(syn_recv) >= cfg.max_half_open:
            self._n["syns_refused"] += 1
            self._send_reset(syn, key[0], now)
            return []
        conn = UtpConnection.accept(syn, self._rng, now=now, config=cfg)
        self._conns[key] = conn
        syn_recv.add(key)
        self._n["accepted"] += 1
        return [(key, IncomingConnection(conn))]

    def _send_reset(self, h: UtpHeader, addr: Addr, now: float) -> None:
        """ST_RESET to a packet for a connection we don't have, token-bucket limited (libutp RST_INFO_LIMIT)."""
        rate = self._cfg.rst_per_s
        if self._rst_time is not None:
            self._rst_tokens = min(rate, self._rst_tokens + (now - self._rst_time) * rate)
        self._rst_time = now
        if self._rst_tokens < 1.0:
            self._n["resets_suppressed"] += 1
            return
        self._rst_tokens -= 1.0
        self._n["resets_sent"] += 1
        pkt = HEADER_STRUCT.pack(
            (ST_RESET << 4) | UTP_VERSION,
            EXT_NONE,
            h.connection_id,
            timestamp_us(now),
            0,
            0,
            self._rng.randrange(0x10000),
            h.seq_nr,
        )
        self._rst_out.append(OutDatagram(pkt, addr))

    def socket_drained(self, *, now: float) -> None:
        """The loop emptied the UDP socket: connections that got packets send their (coalesced) ACKs."""
        conns = self._conns
        for key in self._touched:
            conn = conns.get(key)
            if conn is not None:
                conn.flush_acks(now=now)
        self._touched.clear()

    def datagrams_to_send(self, *, now: float) -> list[OutDatagram]:
        """Everything every connection wants sent now; finished connections are forgotten afterwards."""
        out = self._rst_out
        if not out and not self._conns:  # a TCP download's loop asks every turn
            return []
        self._rst_out = []
        dead: list[ConnKey] = []
        for key, conn in self._conns.items():
            addr = key[0]
            dgrams = conn.datagrams_to_send(now=now)
            probe = conn.take_probe_datagram()
            if probe is None:
                out.extend([OutDatagram(d, addr) for d in dgrams])
            else:
                out.extend([OutDatagram(d, addr, d is probe) for d in dgrams])
            if conn.is_finished:
                dead.append(key)
        for key in dead:
            del self._conns[key]
        return out

    def next_deadline(self) -> float | None:
        if not self._conns:
            return None
        return min((t for c in self._conns.values() if (t := c.next_deadline()) is not None), default=None)

    def handle_timeout(self, *, now: float) -> list[MuxEvent]:
        events: list[MuxEvent] = []
        for key, conn in self._conns.items():
            t = conn.next_deadline()
            if t is not None and now >= t:
                events.extend((key, ev) for ev in conn.handle_timeout(now=now))
        return events

    def stats(self) -> dict[str, int]:
        s = dict(self._n)
        s["connections"] = len(self._conns)
        s["half_open"] = sum(1 for c in self._conns.values() if c.state is UtpState.SYN_RECV)
        return s
