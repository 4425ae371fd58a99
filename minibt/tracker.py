"""Tracker announces: HTTP(S) (BEP 3, 7, 23), UDP (BEP 15) and tier scheduling (BEP 12).

Everything here is pure: the loop's tracker half (trackerio.py) opens the sockets, feeds
bytes/datagrams and ``now``, and sends what the machines return.  ``ssl`` is used only through
``ssl.MemoryBIO`` + ``SSLContext.wrap_bio`` (no sockets).  Scrape (BEP 48 / BEP 15 action 2) is
out of scope.

    Announcer.poll() -> AnnounceJob(url, event) -> session builds AnnounceParams
        http(s): HttpRequest(build_announce_url(url, p)) -> parse_http_announce(body)
        udp:     UdpTrackerClient.announce(p) -> AnnounceDone | AnnounceFailed
    -> Announcer.job_done(job, result) / job_failed(job, error)
"""

from __future__ import annotations

import enum
import ipaddress
import random
import struct
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, replace

import bencode2

from .errors import TrackerError
from .httpclient import (
    HTTP_MAX_BODY_BYTES,
    REDIRECT_STATUSES,
    USER_AGENT,
    HttpResponseParser,
    encode_get_request,
    parse_http_url,
)
from .urls import is_tracker_url, resolve_redirect

TYPE_CHECKING = False
if TYPE_CHECKING:  # ssl is loaded by the first https request (HttpRequest), not by every download
    import ssl
    from typing import Any

ANNOUNCE_EVENTS = ("", "started", "completed", "stopped")  # BEP 3 "event" values
INTERVAL_MIN_S = 30  # convention: clamp tracker intervals (minibt brief)
INTERVAL_MAX_S = 2 * 3600  # convention: clamp tracker intervals (minibt brief)
INTERVAL_DEFAULT_S = 1800  # convention when the tracker sends no interval
MAX_PEERS_PER_ANNOUNCE = 500  # convention: cap the peers taken from one reply
MAX_RESPONSE_BYTES = HTTP_MAX_BODY_BYTES  # PROTOCOL.md section 5: cap tracker response size
MAX_MESSAGE_CHARS = 512  # convention: failure/warning/error text kept for logs and the CLI
MAX_TRACKER_ID_BYTES = 256  # convention: BEP 3 "tracker id" is opaque; bound what we echo back
COMPACT_V4_LEN = 6  # BEP 23: 4-byte IPv4 + 2-byte port
COMPACT_V6_LEN = 18  # BEP 7: 16-byte IPv6 + 2-byte port

_V4 = struct.Struct("!BBBBH")
_V6 = struct.Struct("!16sH")


@dataclass(frozen=True, slots=True)
class AnnounceParams:
    """What one announce tells the tracker (BEP 3 request parameters)."""

    info_hash: bytes
    peer_id: bytes
    port: int
    uploaded: int
    downloaded: int
    left: int
    event: str
    key: int
    numwant: int = 50
    compact: bool = True
    tracker_id: bytes | None = None

    def __post_init__(self) -> None:
        if len(self.info_hash) != 20 or len(self.peer_id) != 20:
            raise ValueError("info_hash and peer_id must be 20 bytes")
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port {self.port} out of range")
        if min(self.uploaded, self.downloaded, self.left) < 0:
            raise ValueError("uploaded/downloaded/left must be >= 0")
        if self.event not in ANNOUNCE_EVENTS:
            raise ValueError(f"unknown announce event {self.event!r}")
        if not 0 <= self.key <= 0xFFFFFFFF:
            raise ValueError("key must be a 32-bit unsigned value")
        if self.numwant < -1:
            raise ValueError("numwant must be >= -1 (-1: tracker default)")


@dataclass(frozen=True, slots=True)
class AnnounceResult:
    """A tracker's answer; ``failure`` set means the tracker refused (BEP 3 "failure reason")."""

    interval: int
    min_interval: int | None
    peers: tuple[tuple[str, int], ...]
    complete: int | None = None
    incomplete: int | None = None
    tracker_id: bytes | None = None
    warning: str | None = None
    failure: str | None = None


def build_announce_url(base_url: str, p: AnnounceParams) -> str:
    """The BEP 3 announce GET URL; info_hash/peer_id are percent-encoded byte by byte."""
    base = base_url.split("#", 1)[0]
    if "?" not in base:
        sep = "?"
    elif base.endswith(("?", "&")):
        sep = ""
    else:
        sep = "&"
    q = urllib.parse.quote_from_bytes
    parts = [
        f"info_hash={q(p.info_hash, safe='')}",
        f"peer_id={q(p.peer_id, safe='')}",
        f"port={p.port}",
        f"uploaded={p.uploaded}",
        f"downloaded={p.downloaded}",
        f"left={p.left}",
    ]
    if p.event:
        parts.append(f"event={p.event}")
    if p.numwant >= 0:
        parts.append(f"numwant={p.numwant}")
    parts.append(f"key={p.key:08X}")
    parts.append(f"compact={1 if p.compact else 0}")
    parts.append("no_peer_id=1")
    if p.tracker_id is not None:
        parts.append(f"trackerid={q(p.tracker_id, safe='')}")
    return base + sep + "&".join(parts)


def _clean_text(raw: bytes) -> str:
    """Decode tracker-supplied text for logs/CLI: no control characters, bounded length."""
    text = raw[: MAX_MESSAGE_CHARS * 4].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else " " for c in text[:MAX_MESSAGE_CHARS])


def _clamp_interval(value: int) -> int:
    return max(INTERVAL_MIN_S, min(INTERVAL_MAX_S, value))


def _compact_peers(blob: bytes, entry_len: int, out: dict[tuple[str, int], None]) -> None:
    if len(blob) % entry_len:
        raise TrackerError(f"compact peer string of {len(blob)} bytes is not a multiple of {entry_len}")
    if entry_len == COMPACT_V4_LEN:
        for a, b, c, d, port in _V4.iter_unpack(blob):
            if len(out) >= MAX_PEERS_PER_ANNOUNCE:
                return
            if port:
                out[(f"{a}.{b}.{c}.{d}", port)] = None
    else:
        for raw_ip, port in _V6.iter_unpack(blob):
            if len(out) >= MAX_PEERS_PER_ANNOUNCE:
                return
            if port:
                out[(ipaddress.IPv6Address(raw_ip).compressed, port)] = None


def _dict_peers(entries: list[Any], out: dict[tuple[str, int], None]) -> None:
    # BEP 3 non-compact form; entries we cannot dial (DNS names, bad ports) are skipped.
    for entry in entries:
        if len(out) >= MAX_PEERS_PER_ANNOUNCE:
            return
        if not isinstance(entry, dict):
            raise TrackerError("peer list entry is not a dictionary")
        ip, port = entry.get(b"ip"), entry.get(b"port")
        if not isinstance(ip, bytes) or not isinstance(port, int) or not 0 < port <= 0xFFFF:
            continue
        try:
            addr = ipaddress.ip_address(ip.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            continue
        out[(addr.compressed, port)] = None


def _opt_int(d: dict[bytes, Any], key: bytes) -> int | None:
    value = d.get(key)
    return value if isinstance(value, int) and value >= 0 else None


def parse_http_announce(body: bytes) -> AnnounceResult:
    """Parse a bencoded HTTP tracker reply; malformed input raises TrackerError."""
    if len(body) > MAX_RESPONSE_BYTES:
        raise TrackerError(f"tracker response of {len(body)} bytes exceeds {MAX_RESPONSE_BYTES}")
    try:
        d = bencode2.bdecode(bytes(body))
    except Exception as exc:  # bencode2 raises BencodeDecodeError (a ValueError); be total anyway
        raise TrackerError(f"tracker response is not valid bencode: {exc}") from None
    if not isinstance(d, dict):
        raise TrackerError("tracker response is not a dictionary")
    interval_raw = d.get(b"interval", INTERVAL_DEFAULT_S)
    if not isinstance(interval_raw, int):
        raise TrackerError("tracker 'interval' is not an integer")
    interval = _clamp_interval(interval_raw)
    min_raw = _opt_int(d, b"min interval")
    min_interval = None if min_raw is None else _clamp_interval(min_raw)
    failure = d.get(b"failure reason")
    if failure is not None:
        if not isinstance(failure, bytes):
            raise TrackerError("tracker 'failure reason' is not a string")
        return AnnounceResult(interval, min_interval, (), failure=_clean_text(failure) or "(empty)")
    warning = d.get(b"warning message")
    tracker_id = d.get(b"tracker id")
    if not isinstance(tracker_id, bytes) or not 0 < len(tracker_id) <= MAX_TRACKER_ID_BYTES:
        tracker_id = None
    peers: dict[tuple[str, int], None] = {}  # insertion-ordered set: dedupe, keep tracker order
    raw = d.get(b"peers", b"")
    if isinstance(raw, bytes):
        _compact_peers(raw, COMPACT_V4_LEN, peers)
    elif isinstance(raw, list):
        _dict_peers(raw, peers)
    else:
        raise TrackerError("tracker 'peers' is neither a string nor a list")
    raw6 = d.get(b"peers6", b"")
    if not isinstance(raw6, bytes):
        raise TrackerError("tracker 'peers6' is not a string")
    _compact_peers(raw6, COMPACT_V6_LEN, peers)
    return AnnounceResult(
        interval=interval,
        min_interval=min_interval,
        peers=tuple(peers),
        complete=_opt_int(d, b"complete"),
        incomplete=_opt_int(d, b"incomplete"),
        tracker_id=tracker_id,
        warning=_clean_text(warning) if isinstance(warning, bytes) else None,
    )


# -- HTTP(S) request machine ----------------------------------------------------------------

_TLS_READ_BYTES = 64 * 1024


class HttpRequest:
    """One HTTP/1.1 GET over one connection, optionally TLS over ``ssl.MemoryBIO``.

    trackerio.py connects to ``(host, port)``, sends :meth:`data_to_send`, feeds what it reads to
    :meth:`receive_data` and calls :meth:`eof` when the server closes.  Remote input never raises:
    a failure makes :attr:`done` True and :meth:`result` raise TrackerError.
    """

    def __init__(
        self,
        url: str,
        *,
        tls_context: ssl.SSLContext | None = None,
        max_body: int = HTTP_MAX_BODY_BYTES,
        user_agent: str = USER_AGENT,
    ) -> None:
        target = parse_http_url(url)
        self.url = url
        self.host = target.host
        self.port = target.port
        self.use_tls = target.use_tls
        self._parser = HttpResponseParser(max_body=max_body)
        self._request = encode_get_request(target, user_agent=user_agent)
        self._error: str | None = None
        self._tls: ssl.SSLObject | None = None
        self._handshake_done = False
        if self.use_tls:
            import ssl

            self._incoming = ssl.MemoryBIO()
            self._outgoing = ssl.MemoryBIO()
            ctx = tls_context if tls_context is not None else ssl.create_default_context()
            self._tls = ctx.wrap_bio(self._incoming, self._outgoing, server_hostname=self.host)
            self._pump_tls()  # produces the ClientHello

    @property
    def done(self) -> bool:
        return self._error is not None or self._parser.done

    @property
    def error(self) -> str | None:
        return self._error if self._error is not None else self._parser.error

    @property
    def status(self) -> int | None:
        return self._parser.status

    @property
    def redirect_location(self) -> str | None:
        """Absolute target of a 301/302/303/307/308 reply (the caller follows, at most 3 times).

        Raises TrackerError ("bad redirect: ...") when the Location is not a usable http(s) URL.
        """
        if self._parser.status not in REDIRECT_STATUSES:
            return None
        location = self._parser.header("location")
        if not location:
            return None
        try:
            return resolve_redirect(self.url, location)
        except ValueError as e:
            raise TrackerError(f"bad redirect: {e}") from None

    def data_to_send(self) -> bytes:
        """Bytes for the socket: the request, or TLS records (handshake included) when https."""
        if self._tls is None:
            out, self._request = self._request, b""
            return out
        return self._outgoing.read()

    def receive_data(self, data: bytes) -> None:
        if self.done or not data:
            return
        if self._tls is None:
            self._parser.receive_data(data)
            return
        self._incoming.write(data)
        self._pump_tls()

    def eof(self) -> None:
        """The server closed the connection."""
        if self.done:
            return
        if self._tls is not None:
            self._incoming.write_eof()
            self._pump_tls()
        if not self.done:
            self._parser.eof()

    def result(self) -> tuple[int, bytes]:
        """``(status, body)`` once the response is complete; else raise TrackerError."""
        if self._error is not None:
            raise TrackerError(self._error)
        return self._parser.result()

    def _pump_tls(self) -> None:
        import ssl  # loaded already: _tls exists

        tls = self._tls
        assert tls is not None
        try:
            if not self._handshake_done:
                try:
                    tls.do_handshake()
                except ssl.SSLWantReadError:
                    return
                self._handshake_done = True
                tls.write(self._request)
                self._request = b""
            while not self._parser.done:
                try:
                    chunk = tls.read(_TLS_READ_BYTES)
                except ssl.SSLWantReadError:
                    return
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    # close_notify, or a TCP close without it: the response framing (or the
                    # bencode parser for read-until-close bodies) detects truncation.
                    self._parser.eof()
                    return
                if not chunk:
                    self._parser.eof()
                    return
                self._parser.receive_data(chunk)
        except ssl.SSLError as exc:
            self._error = f"TLS error: {exc}"


# -- UDP tracker (BEP 15) -------------------------------------------------------------------

UDP_PROTOCOL_ID = 0x41727101980  # BEP 15 connect magic
UDP_ACTION_CONNECT = 0  # BEP 15
UDP_ACTION_ANNOUNCE = 1  # BEP 15
UDP_ACTION_ERROR = 3  # BEP 15
UDP_CONNECTION_ID_TTL_S = 60.0  # BEP 15: a client may use a connection id for one minute
UDP_BASE_TIMEOUT_S = 15.0  # BEP 15: retransmit after 15 * 2**n seconds
UDP_MAX_RETRIES = 8  # BEP 15: n goes up to 8 (3840 s)
UDP_EVENT_CODES = {"": 0, "completed": 1, "started": 2, "stopped": 3}  # BEP 15 announce "event"
_UDP_CONNECT = struct.Struct("!QII")  # protocol_id, action, transaction_id: 16 bytes
_UDP_HEADER = struct.Struct("!II")  # action, transaction_id
_UDP_ANNOUNCE = struct.Struct("!QII20s20sqqqIIIiH")  # 98 bytes, BEP 15 announce request
_UDP_ANNOUNCE_REPLY = struct.Struct("!IIIII")  # action, txid, interval, leechers, seeders
_INT64_MAX = 2**63 - 1


class UdpPhase(enum.Enum):
    IDLE = enum.auto()
    CONNECTING = enum.auto()
    ANNOUNCING = enum.auto()


@dataclass(frozen=True, slots=True)
class AnnounceDone:
    """A tracker answered the announce."""

    result: AnnounceResult


@dataclass(frozen=True, slots=True)
class AnnounceFailed:
    """The announce failed (no answer, or a failure reason)."""

    message: str


UdpTrackerEvent = AnnounceDone | AnnounceFailed


class UdpTrackerClient:
    """BEP 15 client for one tracker: connect (cached 60 s), announce, retransmit, fail.

    IDLE --announce--> CONNECTING --connect reply--> ANNOUNCING --announce reply--> IDLE
          \\--(cached connection id)-----------------/      (timeout / error --> IDLE)
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        ipv6: bool = False,
        base_timeout_s: float = UDP_BASE_TIMEOUT_S,
        max_retries: int = UDP_MAX_RETRIES,
    ) -> None:
        self._rng = rng
        self._peer_len = COMPACT_V6_LEN if ipv6 else COMPACT_V4_LEN
        self._base_timeout_s = base_timeout_s
        self._max_retries = max_retries
        self._phase = UdpPhase.IDLE
        self._params: AnnounceParams | None = None
        self._txid = 0
        self._attempt = 0  # BEP 15 "n": timeouts so far in this announce
        self._deadline: float | None = None
        self._conn_id: int | None = None
        self._conn_expires_at = 0.0
        self._outbox: list[bytes] = []
        self._stats = dict.fromkeys(
            ("connects_sent", "announces_sent", "retransmits", "replies", "unknown_txid",
             "malformed", "errors", "timeouts", "announces_done"), 0,
        )

    @property
    def phase(self) -> UdpPhase:
        return self._phase

    @property
    def busy(self) -> bool:
        return self._phase is not UdpPhase.IDLE

    def announce(self, params: AnnounceParams, *, now: float) -> None:
        """Start an announce, replacing any one in flight."""
        self._params = params
        self._attempt = 0
        self._outbox.clear()
        self._start_request(now)

    def cancel(self) -> None:
        """Abandon the announce in flight (its replies become unknown-txid datagrams)."""
        self._phase = UdpPhase.IDLE
        self._deadline = None
        self._outbox.clear()

    def datagrams_to_send(self, *, now: float) -> list[bytes]:
        out, self._outbox = self._outbox, []
        return out

    def expects_datagram(self, data: bytes) -> bool:
        """True if ``data`` carries the transaction id we are waiting for (for demultiplexing)."""
        return (
            self._phase is not UdpPhase.IDLE
            and len(data) >= _UDP_HEADER.size
            and _UDP_HEADER.unpack_from(data)[1] == self._txid
        )

    def next_deadline(self) -> float | None:
        return self._deadline

    def receive_datagram(self, data: bytes, *, now: float) -> list[UdpTrackerEvent]:
        if not self.expects_datagram(data):
            self._stats["unknown_txid"] += 1
            return []
        self._stats["replies"] += 1
        action = _UDP_HEADER.unpack_from(data)[0]
        if action == UDP_ACTION_ERROR:
            self._stats["errors"] += 1
            self._conn_id = None  # the tracker may have rejected our connection id
            return self._finish(AnnounceFailed(_clean_text(bytes(data[8:])) or "tracker error"))
        if self._phase is UdpPhase.CONNECTING:
            if action != UDP_ACTION_CONNECT or len(data) < 16:
                return self._malformed(f"bad connect reply (action {action}, {len(data)} bytes)")
            (self._conn_id,) = struct.unpack_from("!Q", data, 8)
            self._conn_expires_at = now + UDP_CONNECTION_ID_TTL_S
            self._phase = UdpPhase.ANNOUNCING
            self._txid = self._rng.getrandbits(32)
            self._send(now)
            return []
        if action != UDP_ACTION_ANNOUNCE or len(data) < _UDP_ANNOUNCE_REPLY.size:
            return self._malformed(f"bad announce reply (action {action}, {len(data)} bytes)")
        _, _, interval, leechers, seeders = _UDP_ANNOUNCE_REPLY.unpack_from(data)
        peers: dict[tuple[str, int], None] = {}
        try:
            _compact_peers(bytes(data[_UDP_ANNOUNCE_REPLY.size :]), self._peer_len, peers)
        except TrackerError as exc:
            return self._malformed(str(exc))
        self._stats["announces_done"] += 1
        result = AnnounceResult(
            _clamp_interval(interval), None, tuple(peers), complete=seeders, incomplete=leechers
        )
        return self._finish(AnnounceDone(result))

    def handle_timeout(self, *, now: float) -> list[UdpTrackerEvent]:
        if self._deadline is None or now < self._deadline:
            return []
        self._attempt += 1
        if self._attempt > self._max_retries:
            self._stats["timeouts"] += 1
            return self._finish(AnnounceFailed("timeout"))
        self._stats["retransmits"] += 1
        if self._phase is UdpPhase.ANNOUNCING and now >= self._conn_expires_at:
            self._start_request(now)  # BEP 15: the id expired meanwhile, connect again
        else:
            self._send(now)
        return []

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def _start_request(self, now: float) -> None:
        if self._conn_id is not None and now < self._conn_expires_at:
            self._phase = UdpPhase.ANNOUNCING
        else:
            self._phase = UdpPhase.CONNECTING
        self._txid = self._rng.getrandbits(32)
        self._send(now)

    def _send(self, now: float) -> None:
        if self._phase is UdpPhase.CONNECTING:
            packet = _UDP_CONNECT.pack(UDP_PROTOCOL_ID, UDP_ACTION_CONNECT, self._txid)
            self._stats["connects_sent"] += 1
        else:
            p = self._params
            assert p is not None and self._conn_id is not None
            packet = _UDP_ANNOUNCE.pack(
                self._conn_id, UDP_ACTION_ANNOUNCE, self._txid, p.info_hash, p.peer_id,
                min(p.downloaded, _INT64_MAX), min(p.left, _INT64_MAX), min(p.uploaded, _INT64_MAX),
                UDP_EVENT_CODES[p.event], 0, p.key, p.numwant, p.port,
            )
            self._stats["announces_sent"] += 1
        self._outbox = [packet]  # a retransmission supersedes an unsent copy
        self._deadline = now + self._base_timeout_s * 2**self._attempt

    def _malformed(self, why: str) -> list[UdpTrackerEvent]:
        self._stats["malformed"] += 1
        return self._finish(AnnounceFailed(f"malformed reply: {why}"))

    def _finish(self, event: UdpTrackerEvent) -> list[UdpTrackerEvent]:
        self.cancel()
        return [event]


# -- Announcer: tiers and scheduling (BEP 12) -------------------------------------------------

RETRY_BACKOFF_BASE_S = 30.0  # convention: after a whole round fails, 30 s, 60 s, 120 s ...
RETRY_BACKOFF_MAX_S = 1800.0  # convention: ... capped at 30 min
EARLY_REANNOUNCE_MIN_S = 60.0  # convention: want_more_peers() floor without a "min interval"
JOB_TIMEOUT_S = 120.0  # convention: a job with no answer by then counts as failed
STOP_TIMEOUT_S = 10.0  # convention: event=stopped gets one short try


@dataclass(frozen=True, slots=True)
class AnnounceJob:
    """One announce for the loop to perform; ``tracker_id`` goes into AnnounceParams."""

    url: str
    event: str
    timeout_s: float = JOB_TIMEOUT_S
    tracker_id: bytes | None = None
    seq: int = 0  # tells two jobs with the same url and event apart


class _Tracker:
    __slots__ = ("url", "tier", "last_ok_at", "last_error", "last_result", "last_peers", "tracker_id")

    def __init__(self, url: str, tier: int) -> None:
        self.url = url
        self.tier = tier
        self.last_ok_at: float | None = None
        self.last_error: str | None = None
        self.last_result: AnnounceResult | None = None  # without its peers: status() shows their count
        self.last_peers: int | None = None
        self.tracker_id: bytes | None = None

    def keep(self, result: AnnounceResult) -> None:
        """Keep what status() shows of a reply, not its peer list (up to 500 addresses per tracker)."""
        self.last_result, self.last_peers = replace(result, peers=()), len(result.peers)


class Announcer:
    """Decides which tracker to announce to, when, and with which event, for one torrent.

    Each announce round walks the tiers in order, trying the trackers of a tier in turn (BEP 12);
    success moves the tracker to the front of its tier and schedules the next round after the
    tracker's interval; a round in which every tracker fails is retried with backoff.
    """

    def __init__(
        self,
        tiers: Sequence[Sequence[str]],
        rng: random.Random,
        *,
        now: float,
        job_timeout_s: float = JOB_TIMEOUT_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        seen: set[str] = set()
        self._tiers: list[list[_Tracker]] = []
        for urls in tiers:
            tier: list[_Tracker] = []
            for url in urls:
                if url in seen or not is_tracker_url(url):
                    continue
                seen.add(url)
                tier.append(_Tracker(url, len(self._tiers)))
            if tier:
                rng.shuffle(tier)  # BEP 12: shuffle each tier once
                self._tiers.append(tier)
        self._job_timeout_s = job_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._created_at = now
        self._cursor = (0, 0)  # (tier, index) of the next tracker to try in this round
        self._next_at: float | None = None  # when the next job is due; None: nothing to do
        self._event = ""  # event still to be delivered
        self._started = False
        self._stopping: _Tracker | None = None
        self._completed_sent = False
        self._inflight: AnnounceJob | None = None
        self._inflight_tracker: _Tracker | None = None
        self._inflight_deadline = 0.0
        self._seq = 0
        self._round_failures = 0
        self._last_ok: _Tracker | None = None
        self._last_ok_at: float | None = None
        self._min_interval: int | None = None

    @property
    def active(self) -> bool:
        """Started, and not yet done with the stopped announce."""
        return self._started or self._stopping is not None

    @property
    def tracker_count(self) -> int:
        return sum(len(t) for t in self._tiers)

    def start(self, *, now: float) -> None:
        """The torrent started: announce event=started now."""
        self._abandon()
        self._stopping = None
        self._started = bool(self._tiers)
        self._event = "started"
        self._completed_sent = False
        self._new_round(now)

    def completed(self, *, now: float) -> None:
        """The download finished: announce event=completed once, right away."""
        if not self._started or self._completed_sent:
            return
        self._completed_sent = True
        self._event = "completed"
        if self._inflight is None:
            self._new_round(now)
        # else: delivered right after the job in flight ends (job_done sees the pending event)

    def stop(self, *, now: float) -> None:
        """The torrent stops: one short event=stopped try to the tracker that knows us."""
        target = self._last_ok or self._inflight_tracker
        self._abandon()
        was_started, self._started = self._started, False
        self._event = ""
        self._next_at = None
        if was_started and target is not None:
            self._stopping = target
            self._next_at = now

    def want_more_peers(self, *, now: float) -> None:
        """Re-announce early, but never before min_interval (or 60 s) after the last success."""
        if (
            not self._started or self._inflight is not None or self._event or self._round_failures
            or self._last_ok_at is None or self._next_at is None
        ):
            return
        floor = float(self._min_interval) if self._min_interval is not None else EARLY_REANNOUNCE_MIN_S
        earliest = max(now, self._last_ok_at + floor)
        if earliest < self._next_at:
            self._next_at = earliest
            self._cursor = (0, 0)

    def next_deadline(self) -> float | None:
        if self._inflight is not None:
            return self._inflight_deadline
        return self._next_at

    def poll(self, *, now: float) -> AnnounceJob | None:
        """The job to perform now, if any (at most one is in flight)."""
        if self._inflight is not None:
            if now < self._inflight_deadline:
                return None
            self._failed(self._inflight, "timeout", now)
        if self._next_at is None or now < self._next_at:
            return None
        if self._stopping is not None:
            tracker, event, timeout_s = self._stopping, "stopped", self._stop_timeout_s
        else:
            tier, index = self._cursor
            tracker, event, timeout_s = self._tiers[tier][index], self._event, self._job_timeout_s
        self._seq += 1
        job = AnnounceJob(tracker.url, event, timeout_s, tracker.tracker_id, self._seq)
        self._inflight, self._inflight_tracker = job, tracker
        self._inflight_deadline = now + timeout_s
        return job

    def job_done(self, job: AnnounceJob, result: AnnounceResult, *, now: float) -> None:
        if job != self._inflight or self._inflight_tracker is None:
            return  # stale: superseded, timed out or abandoned
        tracker = self._inflight_tracker
        if result.failure is not None:
            tracker.keep(result)
            self._failed(job, f"tracker failure: {result.failure}", now)
            return
        self._inflight = self._inflight_tracker = None
        tracker.keep(result)
        tracker.last_ok_at, tracker.last_error = now, None
        if result.tracker_id is not None:
            tracker.tracker_id = result.tracker_id
        if self._stopping is not None:
            self._stopping, self._next_at = None, None
            return
        tier = self._tiers[tracker.tier]
        tier.insert(0, tier.pop(tier.index(tracker)))  # BEP 12: promote within its tier
        self._last_ok, self._last_ok_at = tracker, now
        self._min_interval = result.min_interval
        self._round_failures = 0
        self._cursor = (0, 0)
        if job.event == self._event:
            self._event = ""
        wait = max(result.interval, result.min_interval or 0)
        self._next_at = now if self._event else now + wait

    def job_failed(self, job: AnnounceJob, error: str, *, now: float) -> None:
        if job == self._inflight:
            self._failed(job, error, now)

    def status(self) -> list[dict[str, Any]]:
        """One dict per tracker for the CLI and the status file."""
        next_url: str | None = None
        if self._inflight is None and self._next_at is not None:
            if self._stopping is not None:
                next_url = self._stopping.url
            else:
                next_url = self._tiers[self._cursor[0]][self._cursor[1]].url
        out: list[dict[str, Any]] = []
        for tier in self._tiers:
            for t in tier:
                r = t.last_result
                out.append({
                    "url": t.url,
                    "tier": t.tier,
                    "last_ok_at": t.last_ok_at,
                    "last_error": t.last_error,
                    "warning": r.warning if r is not None else None,
                    "interval": r.interval if r is not None else None,
                    "peers": t.last_peers,
                    "seeders": r.complete if r is not None else None,
                    "leechers": r.incomplete if r is not None else None,
                    "updating": self._inflight_tracker is t,
                    "next_announce_at": self._next_at if t.url == next_url else None,
                })
        return out

    def _new_round(self, now: float) -> None:
        self._cursor = (0, 0)
        self._next_at = now if self._started else None

    def _abandon(self) -> None:
        self._inflight = self._inflight_tracker = None

    def _failed(self, job: AnnounceJob, error: str, now: float) -> None:
        tracker = self._inflight_tracker
        self._abandon()
        if tracker is not None:
            tracker.last_error = error[:MAX_MESSAGE_CHARS]
        if self._stopping is not None:
            self._stopping, self._next_at = None, None  # one try only
            return
        tier, index = self._cursor
        if index + 1 < len(self._tiers[tier]):
            self._cursor, self._next_at = (tier, index + 1), now
        elif tier + 1 < len(self._tiers):
            self._cursor, self._next_at = (tier + 1, 0), now  # BEP 12: fall over to the next tier
        else:
            self._round_failures += 1
            backoff = RETRY_BACKOFF_BASE_S * 2 ** min(self._round_failures - 1, 16)
            self._cursor, self._next_at = (0, 0), now + min(backoff, RETRY_BACKOFF_MAX_S)
