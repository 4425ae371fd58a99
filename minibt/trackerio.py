"""Tracker transactions on real sockets: the tracker half of the event loop (STYLE.md section 8).

:class:`TrackerIO` carries out the session's ``Announce`` actions: HTTP(S) announces over
non-blocking TCP sockets of their own (:class:`~minibt.tracker.HttpRequest`; TLS through
``ssl.MemoryBIO``, at most 3 redirects) and BEP 15 UDP announces (one
:class:`~minibt.tracker.UdpTrackerClient` per tracker URL, one announce at a time) sent from the
loop's one UDP socket.  A UDP announce lives at most its job's ``timeout_s`` and a newer job of the
same torrent replaces it, so a tracker's queue holds one job per torrent at most; a tracker with
nothing to do is forgotten once its connection id has expired (STYLE.md section 7).  Host names
are resolved on the worker pool.  It has no thread, clock or selector of its own: the event loop
(loop.py) owns it, gives it its selector and UDP socket, and routes to it the ``("http", tid)``
readiness, the ``0x00`` datagrams, its lookup results and the tick.  Every outcome of an announce,
a contained fault included (STYLE.md section 13), goes back to ``Session.on_announce_result``.
It never imports minibt.loop.
"""

from __future__ import annotations

import errno
import functools
import logging
import selectors
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from minibt.errors import TrackerError
from minibt.faults import FaultKind
from minibt.netif import Source, norm_ip, resolve
from minibt.session import Session
from minibt.tracker import (
    UDP_CONNECTION_ID_TTL_S,
    AnnounceDone,
    AnnounceFailed,
    AnnounceJob,
    AnnounceParams,
    AnnounceResult,
    HttpRequest,
    UdpTrackerClient,
    build_announce_url,
    parse_http_announce,
)
from minibt.urls import Addr, is_ip, parse_tracker_url
from minibt.workers import CallResult, Hasher

TYPE_CHECKING = False
if TYPE_CHECKING:  # loaded by the first https tracker (_http_start), not by every download
    import ssl
    from typing import Any

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 30.0
STOPPED_TIMEOUT_S = 5.0
UDP_IDLE_KEEP_S = UDP_CONNECTION_ID_TTL_S  # an idle UDP tracker is kept while its connection id may be reused
UDP_IDLE_TRACKERS_MAX = 64  # convention: idle UDP trackers kept at most (oldest forgotten first)


@dataclass(frozen=True, slots=True)
class _HttpLookup:
    """Worker-job tag: resolving the host of HTTP tracker transaction ``tid``."""

    tid: int


@dataclass(frozen=True, slots=True)
class _UdpLookup:
    """Worker-job tag: resolving the host of the UDP tracker at ``url``."""

    url: str


@dataclass(slots=True)
class _HttpTxn:
    """An HTTP announce or scrape in flight."""

    tid: int
    info_hash: bytes
    job: AnnounceJob
    params: AnnounceParams
    url: str
    req: HttpRequest
    deadline: float
    redirects: int = 0
    sock: socket.socket | None = None
    connected: bool = False
    out: bytes = b""


@dataclass(slots=True)
class _UdpJob:
    """A UDP announce, queued or running; it fails with "timed out" at ``deadline`` (now + job.timeout_s)."""

    info_hash: bytes
    job: AnnounceJob
    params: AnnounceParams
    deadline: float


@dataclass(slots=True)
class _UdpTracker:
    """A UDP tracker (BEP 15) and its connection state."""

    url: str
    client: UdpTrackerClient
    addr: tuple[str, int] | None = None
    pending: list[_UdpJob] = field(default_factory=list)  # FIFO, at most one job per info hash
    job: _UdpJob | None = None
    resolving: bool = False
    idle_until: float = 0.0  # while idle: when it is forgotten (with its connection id)


class TrackerIO:
    """The HTTP(S) and UDP tracker transactions of one event loop."""

    def __init__(
        self,
        session: Session,
        *,
        sel: selectors.BaseSelector,
        hasher: Hasher,
        source: Source,
        bind: str,
        paused_reason: Callable[[], str | None],
        udp_socket: Callable[[], socket.socket | None],
        udp_addr: Callable[[Addr], Addr],
        udp_reaches: Callable[[str], bool],
    ) -> None:
        """``sel``: the loop's selector, where HTTP sockets are registered as ``("http", tid)``;
        ``hasher``: the worker pool for DNS; ``paused_reason``: why networking is paused (None: it
        runs); ``udp_socket``: the loop's UDP socket (None while it is closed); ``udp_addr``: an
        address as ``sendto()`` on it wants it; ``udp_reaches``: can that socket reach an IP."""
        self.session = session
        self.sel = sel
        self.hasher = hasher
        self.source = source
        self.bind = bind
        self._paused_reason = paused_reason
        self._udp_socket = udp_socket
        self._udp_addr = udp_addr
        self._udp_reaches = udp_reaches
        self._http: dict[int, _HttpTxn] = {}
        self._udp_active: dict[str, _UdpTracker] = {}  # a job running or queued; all the loop's calls scan
        self._udp_idle: dict[str, _UdpTracker] = {}  # nothing to do; oldest first (UDP_IDLE_TRACKERS_MAX)
        self._counters = dict.fromkeys(("udp_timed_out", "udp_superseded", "udp_forgotten"), 0)
        self._next_tid = 1
        self._tls: ssl.SSLContext | None = None

    # ------------------------------------------------------------------ the loop's calls

    @property
    def busy(self) -> bool:
        """Is an HTTP transaction open, or a UDP announce running or queued?"""
        return bool(self._http) or bool(self._udp_active)

    def stats(self) -> dict[str, int]:
        """Table sizes and counters (read-only)."""
        return {
            "http": len(self._http),
            "udp_active": len(self._udp_active),
            "udp_idle": len(self._udp_idle),
            "udp_pending": sum(len(ut.pending) for ut in self._udp_active.values()),
            **self._counters,
        }

    def announce(self, info_hash: bytes, job: AnnounceJob, params: AnnounceParams, now: float) -> None:
        """Carry out one ``Announce`` action; its outcome goes to ``session.on_announce_result``."""
        url = job.url
        paused = self._paused_reason()
        if paused is not None:
            self.session.on_announce_result(info_hash, job, None, f"paused: {paused}", now=now)
            return
        if url.startswith(("http://", "https://")):
            self._http_start(info_hash, job, params, url, now, redirects=0)
        elif url.startswith("udp://"):
            self._udp_start(info_hash, job, params, url, now)
        else:
            self.session.on_announce_result(info_hash, job, None, "unsupported tracker scheme", now=now)

    def fault(self, tid: int, exc: Exception, now: float) -> None:
        """An exception escaped :meth:`http_event` for ``tid``: that one announce fails (STYLE.md 13)."""
        txn = self._http.get(tid)
        detail = self.session.faults.record(FaultKind.TRACKER, f"tracker {txn.url if txn else tid}", exc)
        if txn is not None:
            self._http_fail(txn, detail, now)

    def resolved(self, res: CallResult, now: float) -> None:
        """A worker-pool lookup finished; results of lookups that are not a tracker's are ignored."""
        match res.tag:
            case _HttpLookup(tid):
                self._resolved_http(tid, res, now)
            case _UdpLookup(url):
                self._resolved_udp(url, res, now)

    def receive_datagram(self, data: memoryview, src: Addr, now: float) -> bool:
        """A BEP 15 datagram from ``src``; False if no UDP tracker there is waiting for one."""
        waiting = [ut for ut in self._udp_active.values() if ut.addr == src and ut.job is not None]
        for ut in waiting:
            self._udp_events(ut, ut.client.receive_datagram(bytes(data), now=now), now)
        return bool(waiting)

    def next_deadline(self) -> float | None:
        """The nearest HTTP timeout, UDP retransmission or UDP job timeout that ``tick`` acts on
        (None: nothing in flight)."""
        dls = [txn.deadline for txn in self._http.values()]
        for ut in self._udp_active.values():
            dls += [p.deadline for p in ut.pending]
            if ut.job is not None:
                dls.append(ut.job.deadline)
                if (d := ut.client.next_deadline()) is not None:
                    dls.append(d)
        return min(dls, default=None)

    def tick(self, now: float) -> None:
        """Time out HTTP transactions, retransmit or time out UDP announces, forget idle UDP trackers."""
        for txn in list(self._http.values()):
            if now >= txn.deadline:
                self._http_fail(txn, "timed out", now)
        for ut in list(self._udp_active.values()):
            cur = ut.job
            if cur is not None and now >= cur.deadline:
                ut.client.cancel()  # its owner has given up on it: no retransmission outlives timeout_s
                ut.job = None
                self._udp_report(cur, None, "timed out", now, count="udp_timed_out")
            elif cur is not None and (dl := ut.client.next_deadline()) is not None and now >= dl:
                self._udp_events(ut, ut.client.handle_timeout(now=now), now)
                continue
            self._udp_next(ut, now)
        self._udp_forget(now)

    def fail_all(self, reason: str, now: float) -> None:
        """The network went away: every open HTTP transaction fails with ``reason``."""
        for txn in list(self._http.values()):
            self._http_fail(txn, reason, now)

    def close(self) -> None:
        """Close every HTTP socket (no results are reported)."""
        for txn in list(self._http.values()):
            self._http_close(txn)

    # ------------------------------------------------------------------ lookups

    def _resolved_http(self, tid: int, res: CallResult, now: float) -> None:
        txn = self._http.get(tid)
        if txn is None:
            return
        if res.error is not None or not res.value:
            self._http_fail(txn, f"cannot resolve {txn.req.host}: {res.error}", now)
            return
        found: Any = res.value
        infos: Any = [i for i in found if self.source.reaches(i[4][0])] or found
        fam, _, _, _, sockaddr = infos[0]
        self._http_connect(txn, fam, sockaddr, now)

    def _resolved_udp(self, url: str, res: CallResult, now: float) -> None:
        ut = self._udp_active.get(url) or self._udp_idle.get(url)
        if ut is None:
            return  # forgotten meanwhile
        ut.resolving = False
        found: Any = res.value or ()
        infos = [i for i in found if self._udp_reaches(i[4][0])]
        if res.error is not None or not infos:
            why = f"cannot resolve: {res.error}" if res.error is not None or not found else (
                f"no address reachable from the UDP socket on {self.bind}")
            failed, ut.pending = ut.pending, []
            self._udp_file(ut, now)
            for p in failed:
                self.session.on_announce_result(p.info_hash, p.job, None, why, now=now)
            return
        ut.addr = (norm_ip(infos[0][4][0]), infos[0][4][1])
        self._udp_next(ut, now)

    # ------------------------------------------------------------------ HTTP(S) trackers

    def _http_start(
        self, info_hash: bytes, job: AnnounceJob, params: AnnounceParams, url: str, now: float, *, redirects: int
    ) -> None:
        try:
            full = build_announce_url(url, params)
            if url.startswith("https://"):
                if self._tls is None:
                    import ssl

                    self._tls = ssl.create_default_context()
                req = HttpRequest(full, tls_context=self._tls)
            else:
                req = HttpRequest(full)
        except (TrackerError, ValueError) as e:  # ValueError (UnicodeError) from ssl: defence in depth
            self.session.on_announce_result(info_hash, job, None, str(e), now=now)
            return
        tid = self._next_tid
        self._next_tid += 1
        timeout = min(job.timeout_s, STOPPED_TIMEOUT_S if params.event == "stopped" else HTTP_TIMEOUT_S)
        txn = _HttpTxn(tid, info_hash, job, params, url, req, now + timeout, redirects)
        self._http[tid] = txn
        host = req.host.strip("[]")
        if is_ip(host):
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._http_connect(txn, fam, (host, req.port), now)
        else:
            port = req.port
            if not self.hasher.can_submit():
                self._http_fail(txn, "busy: resolver queue full", now)
                return
            self.hasher.run(functools.partial(resolve, host, port, socket.SOCK_STREAM), _HttpLookup(tid))

    def _http_connect(self, txn: _HttpTxn, fam: int, sockaddr: Any, now: float) -> None:
        if not self.source.reaches(sockaddr[0]):
            self._http_fail(txn, f"{sockaddr[0]} is not reachable from {self.bind}", now)
            return
        try:
            s = socket.socket(fam, socket.SOCK_STREAM)
        except OSError as e:
            self._http_fail(txn, str(e), now)
            return
        try:
            s.setblocking(False)
            self.source.prepare(s)  # the bound address / interface (issue 10)
            err = s.connect_ex(sockaddr)
        except OSError as e:
            s.close()
            self._http_fail(txn, str(e), now)
            return
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            s.close()
            self._http_fail(txn, f"connect: {errno.errorcode.get(err, err)}", now)
            return
        txn.sock = s
        self.sel.register(s, selectors.EVENT_WRITE, ("http", txn.tid))

    def http_event(self, tid: int, mask: int, now: float) -> None:
        """The loop's selector reported ``("http", tid)`` ready (an exception goes to :meth:`fault`)."""
        txn = self._http.get(tid)
        if txn is None or txn.sock is None:
            return
        s = txn.sock
        if not txn.connected:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._http_fail(txn, f"connect: {errno.errorcode.get(err, err)}", now)
                return
            txn.connected = True
        try:
            if mask & selectors.EVENT_READ:
                data = s.recv(65536)
                if data:
                    txn.req.receive_data(data)
                else:
                    txn.req.eof()
            txn.out += txn.req.data_to_send()
            if txn.out:
                sent = s.send(txn.out)
                txn.out = txn.out[sent:]
        except (BlockingIOError, InterruptedError):
            pass
        except (OSError, TrackerError) as e:
            self._http_fail(txn, str(e), now)
            return
        if txn.req.done:
            self._http_finish(txn, now)
            return
        self.sel.modify(s, selectors.EVENT_READ | (selectors.EVENT_WRITE if txn.out else 0), ("http", tid))

    def _http_finish(self, txn: _HttpTxn, now: float) -> None:
        self._http_close(txn)
        try:
            status, body = txn.req.result()
            loc = txn.req.redirect_location
            if loc and txn.redirects < 3:
                self._http_start(txn.info_hash, txn.job, txn.params, loc, now, redirects=txn.redirects + 1)
                return
            if status != 200:
                raise TrackerError(f"HTTP status {status}")
            result = parse_http_announce(body)
        except TrackerError as e:
            self.session.on_announce_result(txn.info_hash, txn.job, None, str(e), now=now)
            return
        except Exception as e:  # one tracker transaction (STYLE.md section 13): the announce fails
            detail = self.session.faults.record(FaultKind.TRACKER, f"tracker {txn.url}", e)
            self.session.on_announce_result(txn.info_hash, txn.job, None, detail, now=now)
            return
        self.session.on_announce_result(txn.info_hash, txn.job, result, None, now=now)

    def _http_fail(self, txn: _HttpTxn, msg: str, now: float) -> None:
        self._http_close(txn)
        self.session.on_announce_result(txn.info_hash, txn.job, None, msg, now=now)

    def _http_close(self, txn: _HttpTxn) -> None:
        self._http.pop(txn.tid, None)
        if txn.sock is not None:
            try:
                self.sel.unregister(txn.sock)
            except (KeyError, ValueError):
                pass
            txn.sock.close()
            txn.sock = None

    # ------------------------------------------------------------------ UDP trackers (BEP 15)

    def _udp_start(self, info_hash: bytes, job: AnnounceJob, params: AnnounceParams, url: str, now: float) -> None:
        self._udp_forget(now)
        ut = self._udp_active.get(url) or self._udp_idle.pop(url, None)
        if ut is None:
            ut = _UdpTracker(url, UdpTrackerClient(self.session.rng))
        if ut.addr is None and not ut.resolving:
            error = self._udp_locate(ut)
            if error is not None:
                self._udp_file(ut, now)
                self.session.on_announce_result(info_hash, job, None, error, now=now)
                return
        new = _UdpJob(info_hash, job, params, now + job.timeout_s)
        cur = ut.job
        if cur is not None and cur.info_hash == info_hash:
            # Its owner has moved on (it timed out there, or the torrent stops): the new job takes its
            # place; announce() replaces the transaction in flight and keeps a connection id (BEP 15).
            ut.job = new
            ut.client.announce(params, now=now)
            self._udp_send(ut, now)
            self._udp_report(cur, None, "superseded by a newer announce", now, count="udp_superseded")
        elif (i := next((i for i, p in enumerate(ut.pending) if p.info_hash == info_hash), -1)) >= 0:
            stale, ut.pending[i] = ut.pending[i], new
            self._udp_report(stale, None, "superseded by a newer announce", now, count="udp_superseded")
        else:
            ut.pending.append(new)
        self._udp_next(ut, now)

    def _udp_locate(self, ut: _UdpTracker) -> str | None:
        """Set ``ut.addr`` or start resolving its host; an error message if neither can be done."""
        try:
            parsed = parse_tracker_url(ut.url, ("udp",))
        except ValueError as e:
            return f"bad UDP tracker URL: {e}"
        host, port = parsed.host, parsed.port
        if is_ip(host):
            if not self._udp_reaches(host):
                return f"{host} is not reachable from the UDP socket on {self.bind}"
            ut.addr = (host, port)
            return None
        if not self.hasher.can_submit():
            return "busy: resolver queue full"
        ut.resolving = True
        self.hasher.run(functools.partial(resolve, host, port, socket.SOCK_DGRAM), _UdpLookup(ut.url))
        return None

    def _udp_next(self, ut: _UdpTracker, now: float) -> None:
        """Fail the queued jobs whose time is up, start the next one if none runs, then file ``ut``."""
        expired = [p for p in ut.pending if now >= p.deadline]
        if expired:
            ut.pending = [p for p in ut.pending if now < p.deadline]
        if ut.job is None and ut.pending and ut.addr is not None:
            ut.job = ut.pending.pop(0)
            ut.client.announce(ut.job.params, now=now)
            self._udp_send(ut, now)
        self._udp_file(ut, now)
        for p in expired:
            self._udp_report(p, None, "timed out", now, count="udp_timed_out")

    def _udp_file(self, ut: _UdpTracker, now: float) -> None:
        """Put ``ut`` in the active table (a job running or queued) or the idle one, or forget it."""
        url = ut.url
        self._udp_idle.pop(url, None)
        if ut.job is not None or ut.pending:
            self._udp_active[url] = ut
            return
        self._udp_active.pop(url, None)
        if ut.addr is None and not ut.resolving:
            return  # nothing worth keeping: a bad URL or a failed lookup
        ut.idle_until = now + UDP_IDLE_KEEP_S
        self._udp_idle[url] = ut  # insertion order is idle_until order: now never goes back
        while len(self._udp_idle) > UDP_IDLE_TRACKERS_MAX:
            del self._udp_idle[next(iter(self._udp_idle))]
            self._counters["udp_forgotten"] += 1

    def _udp_forget(self, now: float) -> None:
        """Forget the idle trackers whose connection id has expired (a later lookup result is ignored)."""
        while self._udp_idle:
            url = next(iter(self._udp_idle))
            if now < self._udp_idle[url].idle_until:
                return
            del self._udp_idle[url]
            self._counters["udp_forgotten"] += 1

    def _udp_report(
        self, p: _UdpJob, result: AnnounceResult | None, error: str | None, now: float, *, count: str = ""
    ) -> None:
        if count:
            self._counters[count] += 1
        self.session.on_announce_result(p.info_hash, p.job, result, error, now=now)

    def _udp_send(self, ut: _UdpTracker, now: float) -> None:
        sock = self._udp_socket()
        if sock is None or ut.addr is None:
            return
        for dgram in ut.client.datagrams_to_send(now=now):
            try:
                sock.sendto(dgram, self._udp_addr(ut.addr))
            except (OSError, OverflowError, ValueError) as e:  # the URL was validated; defence in depth
                log.debug("udp send to %s failed: %s", ut.addr, e)

    def _udp_events(self, ut: _UdpTracker, events: list[Any], now: float) -> None:
        for ev in events:
            cur = ut.job
            if cur is None:
                break
            match ev:
                case AnnounceDone(result=result):
                    ut.job = None
                    self._udp_report(cur, result, None, now)
                case AnnounceFailed(message=message):
                    ut.job = None
                    self._udp_report(cur, None, message, now)
        self._udp_send(ut, now)
        self._udp_next(ut, now)
