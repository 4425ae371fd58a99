"""The event loop: with trackerio.py, the only module that touches sockets and selectors (STYLE.md 8).

One ``selectors`` loop owns the TCP listener, every peer socket, the UDP socket (UDP trackers, uTP,
the DHT) and the hasher's wake-up socketpair.  The tracker transactions (HTTP(S) sockets, UDP
announces) live in :class:`~minibt.trackerio.TrackerIO`, which the loop owns: it registers its sockets
in this selector and gets their readiness, ``Announce`` actions, ``0x00`` datagrams, its DNS results
and the tick from the loop.  It reads ``now`` once per iteration, feeds the session, performs the
session's Actions and drains outgoing bytes with backpressure.  Blocking DNS lookups run on the
hasher's thread pool.

Datagrams (GRO buffers cut apart, udpio.py) are routed by their first byte: uTP (BEP 29) to the
:class:`~minibt.utp_mux.UtpMux`, ``0x00`` (a BEP 15 action) to the UDP tracker with that address;
anything else is counted and dropped.  A uTP connection is a peer connection like a TCP socket (same
cid space); the mux's ``next_deadline`` bounds the select timeout (ms-level uTP timers).  Without uTP
among the transports its modules are never imported.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import logging
import selectors
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from minibt.actions import Announce, Close, Datagram, Dial, LookupDhtNode
from minibt.deadlines import earliest, session_deadline, wait_timeout
from minibt.effects import Flush, HashPiece, SaveResume
from minibt.errors import CloseReason
from minibt.faults import FaultKind
from minibt.ifwatch import InterfaceWatch
from minibt.netif import Source, link_state, norm_ip, open_listen_sockets, resolve, send_probe, tune_tcp
from minibt.peer import IOV_MAX, SEND_CHUNK, drop_sent
from minibt.session import Session
from minibt.settings import Transport
from minibt.trackerio import STOPPED_TIMEOUT_S, TrackerIO
from minibt.udpio import UdpIO
from minibt.urls import Addr, is_ip
from minibt.workers import CallResult, Hasher, HashJob, HashResult

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from minibt.clock import Clock
    from minibt.utp_config import UtpConfig  # with LEDBAT's: loaded by utp_peers only when uTP runs
    from minibt.utp_peers import UtpPeers

log = logging.getLogger(__name__)

RECV_BUF = 256 * 1024
TICK_S = 0.25  # while connections are open; without any the loop waits for the nearest deadline (deadlines.py)
IDLE_TICK_S = 1.0  # without connections: the tick after an input, and polled timers (DHT, magnet fetches)
FLUSH_ROUNDS = 4  # convention: flush rounds per loop iteration (on_writable may queue more bytes each round)
SOCK_BUF = 1024 * 1024  # enlarged kernel socket buffers for loopback/LAN rates
# uTP needs large UDP buffers: with Linux's ~208 KiB default, libtorrent's uTP drops ~2 % of datagrams
# on loopback and runs ~8x slower (PROTOCOL.md 7.14).  The kernel caps this at net.core.rmem_max/wmem_max.
UDP_SOCK_BUF = 4 * 1024 * 1024
UDP_BATCH = 512  # datagrams read per readiness event before the ACKs of the batch go out (socket_drained)
UDP_MAX_DATAGRAM = 65536
MAX_TIMEOUT_S = 1.0  # STYLE.md 4: select(timeout=clamp(deadline - now, 0, 1.0))


@dataclass(frozen=True, slots=True)
class _DialLookup:
    """Worker-job tag: resolving the host name of a peer to dial."""

    dial: Dial


@dataclass(frozen=True, slots=True)
class _DhtLookup:
    """Worker-job tag: resolving a DHT bootstrap host name."""
    port: int


@dataclass(slots=True)
class _PeerSock:
    """A TCP peer connection's socket and its unsent bytes."""
    cid: int
    sock: socket.socket
    connecting: bool
    out: list[bytes | memoryview] | None = None  # what a short send left of its buffers
    events: int = 0
    read_paused: bool = False  # download rate limit: EVENT_READ dropped until tokens refill


class EventLoop:
    """Drives a :class:`Session` with real sockets."""

    def __init__(self, session: Session, *, clock: Clock, hasher: Hasher, bind: str = "0.0.0.0", port: int = 0,
                 utp_config: UtpConfig | None = None, interface: str | None = None,
                 udp_offload: bool = True) -> None:
        """``bind``: source address of every socket (0.0.0.0/:: = any); ``interface``: SO_BINDTODEVICE
        for every socket, and networking pauses while that device is down or gone (ifwatch.py);
        ``udp_offload``: UDP GRO/GSO where the kernel has them (udpio.py; False: one call per datagram)."""
        self.session = session
        self.clock = clock
        self.hasher = hasher
        self.bind = bind
        self.port = port
        self.source = Source.from_bind(bind, interface)
        self.watch = InterfaceWatch(interface) if interface is not None else None
        self.sel = selectors.DefaultSelector()
        self._peers: dict[int, _PeerSock] = {}
        self._dirty: set[int] = set()  # connections with bytes to send (Flush actions not flushed yet)
        self._listener: socket.socket | None = None
        self._udp: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._rbuf = bytearray(RECV_BUF)
        self._rview = memoryview(self._rbuf)
        self._stop_requested = False
        self._selecting = False
        self._next_tick = 0.0
        self._last_tick = float("-inf")  # the idle wait (_tick_at) is measured from the last tick
        self._stirred = True  # an input arrived since the last tick
        # Called once per iteration before actions and output are flushed (the Client delivers the
        # public API events here, so what callbacks queue goes out in the same iteration).
        self.before_flush: Callable[[], object] | None = None
        self._hash_backlog: deque[HashJob | SaveResume] = deque()
        self.counters: dict[str, int] = {"udp_unmatched": 0, "accepted": 0, "refused": 0, "dials": 0}
        self.counters["read_pauses"] = 0
        self._throttled: dict[int, _PeerSock] = {}  # sockets paused by the download limit, oldest first
        self._throttle_at = 0.0  # when the first of them may read again
        self.counters.update(udp_dropped=0, udp_send_errors=0, utp_mtu_probes=0)
        self._utp: UtpPeers | None = None
        if Transport.UTP in session.config.transports:
            from minibt.utp_peers import UtpPeers  # uTP's modules: 0.16 MiB a TCP-only process never loads

            self._utp = UtpPeers(session, session.rng, config=utp_config)
        self._ubuf = bytearray()  # UDP_MAX_DATAGRAM bytes from the first datagram on (64 KiB not spent before)
        self._udp_offload = udp_offload
        self._udpio: UdpIO | None = None
        self._udp_v6 = False
        self.udp_buffers = (0, 0)  # (SO_RCVBUF, SO_SNDBUF) the kernel granted
        self.trackers = TrackerIO(
            session, sel=self.sel, hasher=hasher, source=self.source, bind=bind,
            paused_reason=lambda: self.paused_reason, udp_socket=lambda: self._udp,
            udp_addr=self._udp_addr, udp_reaches=self._udp_reaches,
        )

    # ------------------------------------------------------------------ setup / teardown

    def wake_for_result(self) -> None:
        """Thread-safe (a hash worker's notify): wake select() only if the loop is in it; otherwise it
        drains the results after its select() anyway, and a wake-up would cost two system calls."""
        if self._selecting:
            self.wake()

    def wake(self) -> None:
        """Thread-safe: make select() return (used by the hasher)."""
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def open(self) -> int:
        """Bind the TCP listener and the UDP socket on the same port; returns the port.  With an interface
        that is missing (or whose sockets cannot be opened yet), networking starts paused and the sockets
        are opened when it appears (the port is 0 until then if 0 was asked)."""
        if self.watch is None:
            self._open_sockets()
        else:
            self._check_link(self.clock.now())
        return self.port

    def _open_sockets(self) -> None:
        ls, us = open_listen_sockets(self.bind, self.port, self.source.interface, udp_buf=UDP_SOCK_BUF)
        self.port = ls.getsockname()[1]
        self._listener, self._udp = ls, us
        self.sel.register(ls, selectors.EVENT_READ, ("listen", None))
        self.udp_buffers = (
            us.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            us.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        )
        log.debug("UDP socket buffers granted: rcv %d, snd %d bytes", *self.udp_buffers)
        self._udp_v6 = us.family == socket.AF_INET6
        self._udpio = UdpIO(us, self.counters, gro=self._udp_offload, gso=self._udp_offload)
        self.sel.register(us, selectors.EVENT_READ, ("udp", None))
        self.session.set_listen(self.bind, self.port)

    # ------------------------------------------------------------------ the bound interface (ifwatch.py)

    @property
    def udp_port(self) -> int | None:
        """The UDP socket's port (uTP, UDP trackers, the DHT), None while it is not open."""
        return self._udp.getsockname()[1] if self._udp is not None else None

    @property
    def paused_reason(self) -> str | None:
        """Why networking is paused (the bound interface is down or gone); None while it runs."""
        return self.watch.paused if self.watch is not None else None

    def _check_link(self, now: float) -> None:
        """Read the interface state (at most once per second) and pause, resume or rebind."""
        watch = self.watch
        if watch is None or not watch.due(now):
            return
        before = watch.paused
        state = link_state(watch.name)
        dec = watch.observe(state, now=now)
        if dec.close_sockets:
            self._drop_network(f"interface {watch.name} is gone", now)
        if dec.open_sockets and state.index is not None:
            try:
                self._open_sockets()
            except OSError as e:
                watch.sockets_failed(e.strerror or str(e))
            else:
                watch.sockets_opened(state.index)
                log.info("listening on %s:%d on interface %s", self.bind, self.port, watch.name)
        if watch.paused != before:
            if watch.paused is not None:
                log.warning("networking paused: %s", watch.paused)
            else:
                log.info("interface %s is up: networking resumes", watch.name)
            self.session.set_network_paused(watch.paused, now=now)

    def _drop_network(self, reason: str, now: float) -> None:
        """The device the sockets were bound to is gone: close every connection and both sockets."""
        for cid in list(self.session.conns):
            self.session.close(cid, CloseReason.IO_ERROR, reason)
        self._perform(now)
        if self._utp is not None:
            self._utp.reset_all()
            self._utp.datagrams_to_send(now=now)  # nowhere to send them: discarded
        self.trackers.fail_all(reason, now)
        self._close_socks(self._listener, self._udp)

    def request_stop(self) -> None:
        self._stop_requested = True
        self.wake()

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def close(self) -> None:
        for ps in list(self._peers.values()):
            self._close_sock(ps)
        self._peers.clear()
        if self._utp is not None:
            self._utp.reset_all()
            self._utp_send(self.clock.now())
        self.trackers.close()
        self._close_socks(self._listener, self._udp, self._wake_r, self._wake_w)
        self.sel.close()

    def _close_socks(self, *socks: socket.socket | None) -> None:
        for s in socks:
            if s is not None:
                try:
                    self.sel.unregister(s)
                except (KeyError, ValueError):
                    pass
                s.close()
        self._listener = self._udp = None
        self._udpio = None

    # ------------------------------------------------------------------ main loop

    def run(self, *, until: Callable[[], bool] | None = None, on_tick: Callable[[float], None] | None = None,
            tick_deadline: Callable[[float], float | None] | None = None) -> None:
        """Run until ``until()`` is true or a stop is requested (``tick_deadline``: see run_once)."""
        while not self._stop_requested:
            self.run_once(on_tick=on_tick, tick_deadline=tick_deadline)
            if until is not None and until():
                return

    def shutdown(self, *, grace_s: float = STOPPED_TIMEOUT_S) -> None:
        """Stop every torrent (announce 'stopped', save resume): announces get a moment, saves what they need."""
        now = self.clock.now()
        self.session.stop(now=now)
        self._perform(now)
        deadline = now + grace_s
        self._stop_requested = False
        while (self.trackers.busy or self.hasher.pending or self._hash_backlog) and (
                self.clock.now() < deadline or any(t.checker.save_in_flight for t in self.session.torrents.values())):
            self.run_once(tick_session=False)
        self._stop_requested = True

    def _tick_at(self, now: float, on_tick: object, tick_deadline: Callable[[float], float | None] | None) -> float:
        """When the next tick is due: every TICK_S while connections are open; without any, at the
        nearest real deadline (deadlines.py), once within IDLE_TICK_S of an input, never twice in TICK_S."""
        if self.session.conns:
            return self._next_tick
        poll_at = self._last_tick + IDLE_TICK_S
        at = earliest(
            session_deadline(self.session, now, poll_at=poll_at), self.trackers.next_deadline(),
            self.watch.next_deadline(now) if self.watch is not None else None,
            poll_at if self._stirred or (on_tick is not None and tick_deadline is None) else None,
            tick_deadline(now) if tick_deadline is not None else None,
        )
        return float("inf") if at is None else max(at, self._last_tick + TICK_S)

    def run_once(self, *, on_tick: Callable[[float], None] | None = None, tick_session: bool = True,
                 tick_deadline: Callable[[float], float | None] | None = None) -> None:
        """One select() and what it brought.  ``tick_deadline(now)``: when ``on_tick`` next has work
        (None: only after an input); without it, ``on_tick`` runs at least every IDLE_TICK_S."""
        now = self.clock.now()
        tick_at = self._tick_at(now, on_tick, tick_deadline)
        timeout = wait_timeout(tick_at - now, MAX_TIMEOUT_S)
        rate_at = self._rate_wake_at(now)
        if rate_at is not None:
            timeout = max(0.0, min(timeout, rate_at - now))
        utp_at = self._utp.next_deadline() if self._utp is not None else None
        if utp_at is not None:
            timeout = max(0.0, min(timeout, utp_at - now))
        self._selecting = True  # from here on a hash worker's result wakes select() (wake_for_result)
        if timeout and self.hasher.has_results():
            timeout = 0.0
        events = self.sel.select(timeout)
        self._selecting = False
        now = self.clock.now()
        if self.hasher.has_results():
            self._drain_results(now)
            self._stirred = True
        self._stirred = self._stirred or bool(events)  # an input may have moved a deadline: tick soon
        for key, mask in events:
            kind, obj = key.data
            try:
                if kind == "peer":
                    self._peer_event(obj, mask, now)
                elif kind == "listen":
                    self._accept(now)
                elif kind == "wake":
                    self._drain_wake(now)
                elif kind == "udp":
                    self._udp_read(now)
                elif kind == "http":
                    self.trackers.http_event(obj, mask, now)
            except Exception as e:
                self._contain(kind, obj, e, now)
        if rate_at is not None and now >= rate_at:
            self._rate_refill(now)
        if utp_at is not None and now >= utp_at and self._utp is not None:
            try:
                self._utp.handle_timeout(now=now)
            except Exception as e:
                self.session.faults.record(FaultKind.DATAGRAM, "uTP timers", e)
        if now >= tick_at:
            self._next_tick, self._last_tick, self._stirred = now + TICK_S, now, False
            if self.watch is not None:
                self._check_link(now)
            if tick_session:
                self.session.tick(now=now)
            self.trackers.tick(now)
            if on_tick is not None:
                on_tick(now)
        if self.before_flush is not None:
            self.before_flush()
        self._perform(now)
        self._utp_send(now)

    def _contain(self, kind: str, obj: Any, exc: Exception, now: float) -> None:
        """A fault while handling one input outside the session's own boundaries (STYLE.md section 13):
        close the one connection or tracker transaction it belonged to; the loop goes on."""
        if kind == "peer":
            self.session.fault(obj, exc)
            ps = self._peers.pop(obj, None)
            if ps is not None:
                self._close_sock(ps)
        elif kind == "http":
            self.trackers.fault(obj, exc, now)
        else:
            what = {"udp": FaultKind.DATAGRAM, "listen": FaultKind.ACCEPT}.get(kind, FaultKind.WORKER)
            self.session.faults.record(what, f"{kind} input", exc)

    # ------------------------------------------------------------------ actions

    def _perform(self, now: float) -> None:
        """Carry out the session's actions and flush the connections that have bytes (Flush); both may
        bring more actions.  Bounded: connections still dirty after FLUSH_ROUNDS wait for the next one."""
        flushes = 0
        for _ in range(100):
            acts = self.session.take_actions()
            if not acts and not self._dirty:
                return
            for a in acts:
                match a:
                    case Flush(cid=cid):
                        self._dirty.add(cid)
                    case Dial() if self.paused_reason is not None:
                        self.session.on_closed(a.cid, CloseReason.CONNECT_FAILED, f"paused: {self.paused_reason}",
                                               now=now)
                    case Dial() if not is_ip(a.addr[0]):
                        self._resolve_dial(a, now)
                    case Dial(transport=Transport.UTP):
                        self._utp_dial(a.cid, a.addr, now)
                    case Dial():
                        self._dial(a.cid, a.addr, now)
                    case Close(cid=cid):
                        ps = self._peers.pop(cid, None)
                        if ps is not None:
                            # Best effort: push out what is queued (e.g. a final message), then close.
                            self._close_sock(ps)
                        elif self._utp is not None:
                            self._utp.close(cid)
                    case HashPiece() | SaveResume():
                        self._hash_backlog.append(a.job if isinstance(a, HashPiece) else a)
                        self._pump_hasher()
                    case Announce():
                        self.trackers.announce(a.info_hash, a.job, a.params, now)
                    case Datagram(data=data, addr=addr):
                        self._send_datagram(data, addr)
                    case LookupDhtNode(host=host, port=port) if self.hasher.can_submit():
                        self.hasher.run(functools.partial(resolve, host, port, socket.SOCK_DGRAM),
                                        _DhtLookup(port))
            if self._dirty and flushes < FLUSH_ROUNDS:
                flushes += 1
                dirty, self._dirty = self._dirty, set()
                self._flush_dirty(dirty, now)
            elif not acts:
                return

    def _resolve_dial(self, a: Dial, now: float) -> None:
        """A peer known by host name (magnet x.pe): resolve it on the worker pool, then dial."""
        host, port = a.addr
        if not self.hasher.can_submit():
            self.session.on_closed(a.cid, CloseReason.CONNECT_FAILED, "busy: resolver queue full", now=now)
            return
        kind = socket.SOCK_DGRAM if a.transport == Transport.UTP else socket.SOCK_STREAM
        self.hasher.run(functools.partial(resolve, host, port, kind), _DialLookup(a))

    def _resolved_dial(self, a: Dial, res: CallResult, now: float) -> None:
        if a.cid not in self.session.conns:
            return  # closed while resolving
        infos: Any = res.value
        if res.error is not None or not infos:
            self.session.on_closed(a.cid, CloseReason.CONNECT_FAILED, f"cannot resolve {a.addr[0]}: {res.error}",
                                   now=now)
            return
        # IPv4 first (what a dial by name did before); IPv6 only where the socket can reach it.
        v4 = [i for i in infos if i[0] == socket.AF_INET]
        v6 = [i for i in infos if i[0] == socket.AF_INET6 and (a.transport != Transport.UTP or self._udp_v6)]
        usable = [i for i in v4 + v6 if self.source.reaches(i[4][0])]  # a v4 source cannot reach v6
        if not usable:
            self.session.on_closed(a.cid, CloseReason.CONNECT_FAILED, f"no usable address for {a.addr[0]}", now=now)
            return
        addr = (norm_ip(usable[0][4][0]), a.addr[1])
        if a.transport == Transport.UTP:
            self._utp_dial(a.cid, addr, now)
        else:
            self._dial(a.cid, addr, now)

    def _dial(self, cid: int, addr: tuple[str, int], now: float) -> None:
        ip, port = addr
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        self.counters["dials"] += 1
        if not self.source.reaches(ip):
            self.session.on_closed(cid, CloseReason.CONNECT_FAILED, f"{ip} is not reachable from {self.bind}", now=now)
            return
        try:
            s = socket.socket(fam, socket.SOCK_STREAM)
        except OSError as e:
            self.session.on_closed(cid, CloseReason.CONNECT_FAILED, str(e), now=now)
            return
        s.setblocking(False)
        tune_tcp(s, SOCK_BUF)
        try:
            self.source.prepare(s)  # the bound address / interface (issue 10): nothing leaves elsewhere
            err = s.connect_ex((ip, port))
        except OSError as e:
            s.close()
            self.session.on_closed(cid, CloseReason.CONNECT_FAILED, str(e), now=now)
            return
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            s.close()
            self.session.on_closed(cid, CloseReason.CONNECT_FAILED, errno.errorcode.get(err, str(err)), now=now)
            return
        ps = _PeerSock(cid, s, connecting=True)
        self._peers[cid] = ps
        self._set_events(ps, selectors.EVENT_WRITE)

    def _set_events(self, ps: _PeerSock, events: int) -> None:
        if events == ps.events:
            return
        if ps.events == 0:
            self.sel.register(ps.sock, events, ("peer", ps.cid))
        elif events == 0:
            self.sel.unregister(ps.sock)
        else:
            self.sel.modify(ps.sock, events, ("peer", ps.cid))
        ps.events = events

    def _close_sock(self, ps: _PeerSock) -> None:
        if ps.events:
            try:
                self.sel.unregister(ps.sock)
            except (KeyError, ValueError):
                pass
            ps.events = 0
        try:
            ps.sock.close()
        except OSError:
            pass

    def _lost(self, ps: _PeerSock, reason: CloseReason, detail: str, now: float) -> None:
        self._peers.pop(ps.cid, None)
        self._close_sock(ps)
        self.session.on_closed(ps.cid, reason, detail, now=now)

    # ------------------------------------------------------------------ peers

    def _accept(self, now: float) -> None:
        assert self._listener is not None
        for _ in range(64):
            try:
                s, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("accept failed: %s", e)
                return
            ip = norm_ip(addr[0])
            cid = self.session.on_incoming((ip, addr[1]), now=now)
            if cid is None:
                self.counters["refused"] += 1
                s.close()
                continue
            self.counters["accepted"] += 1
            s.setblocking(False)
            tune_tcp(s, SOCK_BUF)
            ps = _PeerSock(cid, s, connecting=False)
            self._peers[cid] = ps
            self._set_events(ps, selectors.EVENT_READ)

    def _peer_event(self, cid: int, mask: int, now: float) -> None:
        ps = self._peers.get(cid)
        if ps is None:
            return
        if ps.connecting:
            if not mask & selectors.EVENT_WRITE:
                return
            err = ps.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._lost(ps, CloseReason.CONNECT_FAILED, errno.errorcode.get(err, str(err)), now)
                return
            ps.connecting = False
            self._set_events(ps, selectors.EVENT_READ)
            self.session.on_connected(cid, now=now)
            self._flush(ps, now)
            return
        if mask & selectors.EVENT_READ:
            want = self._read_budget(ps, now) if self.session.down_limited else RECV_BUF
            try:
                n = ps.sock.recv_into(self._rbuf, want) if want else -1
            except (BlockingIOError, InterruptedError):
                n = -1
            except OSError as e:
                self._lost(ps, CloseReason.IO_ERROR, e.strerror or str(e), now)
                return
            if n == 0:
                self._lost(ps, CloseReason.CLOSED_BY_REMOTE, "connection closed by peer", now)
                return
            if n > 0:
                self.session.on_data(cid, self._rview[:n], now=now)
                if cid not in self._peers:
                    return
        if mask & selectors.EVENT_WRITE:
            self._flush(ps, now)
            if cid in self._peers:
                self.session.on_writable(cid, now=now)

    def _flush_dirty(self, dirty: set[int], now: float) -> None:
        for cid in dirty:
            ps = self._peers.get(cid)
            if ps is not None and not ps.connecting:
                self._flush(ps, now)
                if cid in self._peers and ps.out is None:
                    self.session.on_writable(cid, now=now)
                continue
            if self._utp is not None and self._utp.flush(cid, now=now):
                self.session.on_writable(cid, now=now)

    def _flush(self, ps: _PeerSock, now: float) -> None:
        """Send what the session has for this peer until the kernel buffer is full."""
        while True:
            out = ps.out
            if out is None:  # the queued buffers as they are: one gathering send, no join
                out = self.session.parts_to_send(ps.cid, SEND_CHUNK, now=now)
                if not out:
                    break
            try:
                sent = ps.sock.sendmsg(out if len(out) <= IOV_MAX else out[:IOV_MAX])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as e:
                self._lost(ps, CloseReason.IO_ERROR, e.strerror or str(e), now)
                return
            ps.out = drop_sent(out, sent)
            if ps.out is not None and (sent == 0 or len(out) <= IOV_MAX):
                self._set_events(ps, (0 if ps.read_paused else selectors.EVENT_READ) | selectors.EVENT_WRITE)
                return
        self._set_events(ps, 0 if ps.read_paused else selectors.EVENT_READ)

    # ------------------------------------------------------------------ rate limits (session.read_quota etc.)

    def _read_budget(self, ps: _PeerSock, now: float) -> int:
        """How much to read from a socket under a download limit; 0 pauses its reads."""
        q = self.session.rates.read_quota(self.session.torrent_of(ps.cid), now=now)
        if q <= 0:
            self._pause_reads(ps, now)
            return 0
        return q if q < RECV_BUF else RECV_BUF

    def _pause_reads(self, ps: _PeerSock, now: float) -> None:
        ps.read_paused = True
        self.counters["read_pauses"] += 1
        self._throttled.pop(ps.cid, None)
        at = self.session.rates.read_retry_at(self.session.torrent_of(ps.cid), now=now)
        if not self._throttled or at < self._throttle_at:
            self._throttle_at = at
        self._throttled[ps.cid] = ps  # to the back of the line: paused sockets resume round robin
        self._set_events(ps, selectors.EVENT_WRITE if ps.out is not None else 0)

    def _rate_wake_at(self, now: float) -> float | None:
        """When uploads waiting for tokens or paused reads can go on (None: nothing is rate limited)."""
        at = self.session.rates.wake_at(now=now)
        held = self._utp.held_wake_at(now=now) if self._utp is not None else None
        if held is not None and (at is None or held < at):
            at = held
        if self._throttled:
            if not self.session.down_limited:
                return now  # the limit was lifted
            if at is None or self._throttle_at < at:
                at = self._throttle_at
        return at

    def _rate_refill(self, now: float) -> None:
        self.session.on_rate_refill(now=now)
        if self._utp is not None:
            self._utp.resume_held(now=now)
        if self._throttled and (now >= self._throttle_at or not self.session.down_limited):
            self._resume_reads(now)

    def _resume_reads(self, now: float) -> None:
        nxt: float | None = None
        for cid, ps in list(self._throttled.items()):
            if self._peers.get(cid) is not ps:
                del self._throttled[cid]  # closed meanwhile
            elif not self.session.down_limited or self.session.rates.read_quota(self.session.torrent_of(cid), now=now) > 0:
                del self._throttled[cid]
                ps.read_paused = False
                self._set_events(ps, selectors.EVENT_READ | (selectors.EVENT_WRITE if ps.out is not None else 0))
            else:
                at = self.session.rates.read_retry_at(self.session.torrent_of(cid), now=now)
                if nxt is None or at < nxt:
                    nxt = at
        self._throttle_at = nxt if nxt is not None else now

    # ------------------------------------------------------------------ hasher

    def _drain_wake(self, now: float) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        self._drain_results(now)

    def _drain_results(self, now: float) -> None:
        for res in self.hasher.results():
            match res:
                case HashResult() | CallResult(tag=SaveResume()):
                    self.session.on_hash_result(res, now=now)  # contained per torrent by the session
                case CallResult():
                    try:
                        self._call_done(res, now)
                    except Exception as e:  # one name lookup's result
                        self.session.faults.record(FaultKind.DNS, f"lookup {res.tag!r}", e)
        self._pump_hasher()

    def _pump_hasher(self) -> None:
        while self._hash_backlog and self.hasher.can_submit():
            job = self._hash_backlog.popleft()
            if isinstance(job, SaveResume):  # its CallResult goes back to the session like a HashResult
                self.hasher.run(job.run, job)
            else:
                self.hasher.submit(job)

    def _call_done(self, res: CallResult, now: float) -> None:
        match res.tag:
            case _DialLookup(dial):
                self._resolved_dial(dial, res, now)
            case _DhtLookup(port=port):
                infos = res.value if res.error is None and isinstance(res.value, list) else []
                addrs = [(norm_ip(str(i[4][0])), port) for i in infos if self._udp_reaches(norm_ip(str(i[4][0])))]
                self.session.on_dht_resolved(list(dict.fromkeys(addrs)), now=now)
            case _:
                self.trackers.resolved(res, now)

    # ------------------------------------------------------------------ UDP socket

    def _udp_read(self, now: float) -> None:
        """Drain the UDP socket (up to a batch, GRO buffers cut apart) and route each datagram by its first byte."""
        assert self._udpio is not None
        utp = self._utp
        if not self._ubuf:
            self._ubuf = bytearray(UDP_MAX_DATAGRAM)
        self._udpio.read(self._ubuf, UDP_BATCH, utp.receive_batch if utp is not None else None, self._udp_other,
                         now, self._udp_fault)
        if utp is not None:
            try:
                utp.socket_drained(now=now)
            except Exception as e:
                self.session.faults.record(FaultKind.DATAGRAM, "uTP receive batch", e)

    def _udp_other(self, data: memoryview, src: Addr, *, now: float) -> None:
        """A datagram that is not uTP: the DHT's, a UDP tracker's answer, or dropped."""
        first = data[0] if data else -1
        if first == 0x64 and self.session.dht is not None:  # "d": a bencoded dict, KRPC (BEP 5)
            self.session.on_dht_datagram(bytes(data), src, now=now)
        elif first == 0:  # BEP 15 responses start with a 32-bit action < 256
            if not self.trackers.receive_datagram(data, src, now):
                self.counters["udp_unmatched"] += 1
        else:
            self.counters["udp_dropped"] += 1

    def _udp_fault(self, src: Addr, e: Exception) -> None:
        self.session.faults.record(FaultKind.DATAGRAM, f"datagram from {src[0]}:{src[1]}", e)

    # ------------------------------------------------------------------ uTP (BEP 29) peers

    def _udp_reaches(self, ip: str) -> bool:
        """The one UDP socket is bound to the bind address: a v4 socket cannot reach a v6 tracker."""
        return self.source.reaches(ip) and (self._udp_v6 or ":" not in ip)

    def _udp_addr(self, addr: Addr) -> Addr:
        """Destination for sendto(): an IPv4 address needs its mapped form on a dual-stack socket."""
        if self._udp_v6 and ":" not in addr[0]:
            return ("::ffff:" + addr[0], addr[1])
        return addr

    def _send_datagram(self, data: bytes, addr: Addr) -> None:
        """A DHT message out of the one UDP socket (a lost one is the DHT's to retry)."""
        if self._udp is None or not self._udp_reaches(addr[0]):
            self.counters["udp_send_errors"] += 1
            return
        try:
            self._udp.sendto(data, self._udp_addr(addr))
        except OSError:
            self.counters["udp_send_errors"] += 1

    def _utp_dial(self, cid: int, addr: Addr, now: float) -> None:
        self.counters["dials"] += 1
        if self._utp is None or self._udp is None:
            self.session.on_closed(cid, CloseReason.CONNECT_FAILED, "uTP is not enabled", now=now)
            return
        if not self.source.reaches(addr[0]):
            self.session.on_closed(cid, CloseReason.CONNECT_FAILED, f"{addr[0]} is not reachable from {self.bind}",
                                   now=now)
            return
        self._utp.dial(cid, (norm_ip(addr[0]), addr[1]), now=now)

    def _utp_send(self, now: float) -> None:
        """Send what the uTP connections produced: runs of datagrams through UdpIO (GSO), MTU probes alone."""
        utp, io = self._utp, self._udpio
        if utp is None or io is None:
            return
        datas: list[bytes] = []
        addrs: list[Addr] = []
        last: Addr | None = None
        to: Addr = ("", 0)
        for out in utp.datagrams_to_send(now=now):
            if out.dont_fragment:
                io.send_many(datas, addrs)
                datas, addrs = [], []
                self._send_probe(io.sock, out.data, out.addr)
                continue
            if out.addr is not last:
                last, to = out.addr, self._udp_addr(out.addr)
            datas.append(out.data)
            addrs.append(to)
        if datas:
            io.send_many(datas, addrs)

    def _send_probe(self, sock: socket.socket, dgram: bytes, addr: Addr) -> None:
        """Send a uTP MTU probe with the don't-fragment bit (utp_mtu); a probe that cannot go is lost."""
        try:
            send_probe(sock, dgram, self._udp_addr(addr))
            self.counters["utp_mtu_probes"] += 1
        except OSError as e:  # EMSGSIZE: larger than the interface MTU; it is retransmitted without DF
            self.counters["udp_send_errors"] += 1
            log.debug("uTP MTU probe of %d bytes to %s not sent: %s", len(dgram), addr, e)

    def utp_stats(self) -> dict[str, int]:
        """The uTP multiplexer's counters (empty without uTP)."""
        return self._utp.stats() if self._utp is not None else {}
