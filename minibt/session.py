"""The orchestrator: routes loop events to torrents and peers, emits Actions.

``Session`` is pure (STYLE.md section 3): the loop calls ``on_*`` methods with ``now`` and
performs the Actions it takes from ``take_actions()``.  Outgoing peer bytes are not actions:
the session marks connections dirty and the loop drains ``data_to_send(cid)`` for each.

Error boundary (STYLE.md P4): ``on_data`` is the one place where a peer's
``RemoteProtocolError`` becomes ``Close(reason)``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from minibt.checker import CheckJobTag
from minibt.errors import CloseReason, ConfigError, RemoteProtocolError
from minibt.events import EventName, EventQueue, EventRecord
from minibt.faults import FaultKind, Faults
from minibt.handshake import (
    Handshake,
    HandshakeReceived,
    InfoHashReceived,
    make_reserved,
    supports_extension,
    supports_fast,
)
from minibt.magnet import Magnet
from minibt.magnetfetch import MagnetFetch
from minibt.metainfo import Metainfo
from minibt.peer import TRANSPORTS, PeerConnection, PeerSource, Transport, to_transports, valid_transports
from minibt.ratelimit import KEEP, Keep, RateLimiter, TokenBucket
from minibt.reputation import Banned, RepEvent, Reputation, ReputationChanged
from minibt.settings import Mode, TorrentConfig, TorrentState
from minibt.torrent import PieceJobTag, Torrent
from minibt.tracker import AnnounceJob, AnnounceParams, AnnounceResult
from minibt.urls import Addr
from minibt.wire import PeerWire
from minibt.wire_codec import BLOCK_LEN
from minibt.workers import HashJob, HashResult

log = logging.getLogger(__name__)

PROTOCOL_PENALTY = 5  # reputation points for a protocol violation (issue 3 refines)
READ_MIN_BYTES = 16384  # a throttled socket is read again once a 16 KiB block (BEP 3) fits the limit
PEER_ID_PREFIX = b"-MB0100-"  # Azureus-style client id: minibt 0.1.0.0
# A dial that ends like this before the BT handshake completes is retried on the next transport
# (PROTOCOL.md 7.9: a uTP-only libtorrent accepts TCP and closes it at once).
FALLBACK_REASONS = frozenset({CloseReason.CONNECT_FAILED, CloseReason.CLOSED_BY_REMOTE, CloseReason.IO_ERROR})


# ---------------------------------------------------------------------- actions (to the loop)


@dataclass(frozen=True, slots=True)
class Dial:
    cid: int
    addr: Addr
    transport: Transport = Transport.TCP


@dataclass(frozen=True, slots=True)
class Close:
    cid: int
    reason: CloseReason
    detail: str


@dataclass(frozen=True, slots=True)
class HashPiece:
    job: HashJob


@dataclass(frozen=True, slots=True)
class Announce:
    info_hash: bytes
    job: AnnounceJob
    params: AnnounceParams


Action = Dial | Close | HashPiece | Announce


@dataclass(frozen=True, slots=True)
class SessionConfig:
    max_connections: int = 200
    upload_limit_bps: float | None = None  # global payload bytes/s; None or 0 = unlimited (ratelimit.py)
    download_limit_bps: float | None = None
    handshake_timeout_s: float = 30.0
    torrent: TorrentConfig = TorrentConfig()
    # Outgoing preference order; incoming connections are accepted on every transport listed.
    # TCP first: on a LAN/loopback it moves data at a fraction of uTP's per-packet CPU cost in CPython,
    # and it keeps the TCP-only behaviour of earlier versions; uTP is the fallback (PROTOCOL.md 7.9).
    # Names ("tcp", "utp") are accepted and stored as Transport members.
    transports: tuple[Transport, ...] = (Transport.TCP, Transport.UTP)

    def __post_init__(self) -> None:
        if not valid_transports(self.transports):
            raise ConfigError(None, "transports", f"must be distinct names out of {TRANSPORTS}, got {self.transports}")
        object.__setattr__(self, "transports", to_transports(self.transports))


def make_peer_id(rng: random.Random) -> bytes:
    tail = bytes(rng.choice(b"0123456789abcdefghijklmnopqrstuvwxyz") for _ in range(12))
    return PEER_ID_PREFIX + tail


class Session:
    """All torrents and connections of one client."""

    def __init__(
        self,
        *,
        rng: random.Random,
        config: SessionConfig | None = None,
        wall_clock: Callable[[], float] | None = None,
        peer_id: bytes | None = None,
    ) -> None:
        self.rng = rng
        self.config = config or SessionConfig()
        self.peer_id = peer_id or make_peer_id(rng)
        self.announce_key = rng.getrandbits(32)
        self.listen_port = 0
        self.listen_ip = "0.0.0.0"
        self.reserved = make_reserved(fast=True, extension=True)
        self.torrents: dict[bytes, Torrent] = {}
        self.conns: dict[int, PeerConnection] = {}
        self._torrent_of: dict[int, Torrent] = {}  # cid -> torrent (outgoing from the start, incoming after handshake)
        self.fetches: dict[bytes, MagnetFetch] = {}  # magnet links still fetching metadata (magnetfetch.py)
        self._fetch_of: dict[int, MagnetFetch] = {}  # cid -> magnet fetch (outgoing only)
        self._actions: list[Action] = []
        self._dirty: set[int] = set()
        self._next_cid = 1
        self._wall = wall_clock or (lambda: 0.0)
        self._local_ips: set[str] = {"127.0.0.1", "::1"}
        self.reputation = Reputation()  # per-IP scores and bans, shared by every torrent
        self._now = 0.0  # the latest `now` any input brought (for teardown started by a command)
        self.closed_log: list[tuple[int, Addr, CloseReason, str]] = []  # bounded, newest last
        self.events = EventQueue()  # public API events; off until a Client enables it (minibt/events.py)
        self.faults = Faults()  # contained faults while handling outside input (STYLE.md section 13)
        # Why networking is paused (the bound interface is down or gone, ifwatch.py): no dials, and
        # torrents hold their announces until it is None again.
        self.network_paused: str | None = None
        self._init_rate_limits()

    # ------------------------------------------------------------------ setup

    def set_listen(self, ip: str, port: int) -> None:
        self.listen_ip = ip
        self.listen_port = port
        if ip not in ("0.0.0.0", "::"):
            self._local_ips.add(ip)

    def set_network_paused(self, reason: str | None, *, now: float) -> None:
        """The loop saw the bound interface go down (``reason``) or come back (None)."""
        self._now = now
        self.network_paused = reason

    def own_addresses(self) -> set[Addr]:
        return {(ip, self.listen_port) for ip in self._local_ips}

    def wall_time(self) -> float:
        return self._wall()

    def add_torrent(
        self,
        meta: Metainfo,
        download_dir: str,
        *,
        mode: Mode,
        resume_path: str | None,
        now: float,
        config: TorrentConfig | None = None,
    ) -> Torrent:
        self._now = now
        if meta.info_hash in self.torrents:
            raise ValueError(f"torrent {meta.info_hash.hex()} already added")
        t = Torrent(
            self,
            meta,
            download_dir,
            mode=mode,
            resume_path=resume_path,
            config=config or self.config.torrent,
            rng=self.rng,
            now=now,
        )
        self.torrents[meta.info_hash] = t
        self.rate_limits_changed()
        t.start(now=now)
        return t

    def remove_torrent(self, info_hash: bytes, *, now: float) -> bool:
        """Stop a torrent and forget it once its last piece write is done; True when it is gone.

        Call again on later ticks while it returns False (commits in flight finish first).
        """
        self._now = now
        f = self.fetches.pop(info_hash, None)
        if f is not None:  # a magnet link still fetching its metadata: nothing on disk yet
            f.stop(now=now)
        t = self.torrents.get(info_hash)
        if t is None:
            return True
        t.stop(now=now)
        if t.state not in (TorrentState.STOPPED, TorrentState.ERROR) or t.storage.commits_in_flight:
            return False
        del self.torrents[info_hash]
        self._rate_waiting.pop(info_hash, None)
        self.rate_limits_changed()
        return True

    def add_magnet(
        self,
        magnet: Magnet,
        download_dir: str,
        *,
        mode: Mode = Mode.DOWNLOAD,
        now: float,
        config: TorrentConfig | None = None,
        resume_path: Callable[[Metainfo], str | None] | None = None,
    ) -> MagnetFetch:
        """Start fetching a magnet link's metadata (BEP 9); the torrent is added once it verifies."""
        self._now = now
        if magnet.info_hash in self.torrents or magnet.info_hash in self.fetches:
            raise ValueError(f"torrent {magnet.info_hash_hex} already added")
        f = MagnetFetch(
            self, magnet, download_dir, mode=mode, config=config or self.config.torrent, rng=self.rng, now=now,
            resume_path=resume_path,
        )
        self.fetches[magnet.info_hash] = f
        return f

    def magnet_done(self, fetch: MagnetFetch, meta: Metainfo, *, now: float) -> None:
        """A fetch verified its metadata: replace it with a normal torrent."""
        self.fetches.pop(fetch.info_hash, None)
        fetch.torrent = self.add_torrent(
            meta, fetch.download_dir, mode=fetch.mode, resume_path=fetch.resume_path(meta), now=now,
            config=fetch.config,
        )

    def add_peers(self, info_hash: bytes, addrs: list[Addr], source: PeerSource, *, now: float) -> None:
        f = self.fetches.get(info_hash)
        if f is not None:
            f.add_peers(addrs, source)
            return
        self.torrents[info_hash].add_candidates(addrs, source, now=now)

    def stop(self, *, now: float) -> None:
        self._now = now
        for f in list(self.fetches.values()):
            f.stop(now=now)
        for t in self.torrents.values():
            t.stop(now=now)

    # ------------------------------------------------------------------ used by torrents

    def hash(self, job: HashJob) -> None:
        self._actions.append(HashPiece(job))

    def announce(
        self, torrent: Torrent | MagnetFetch, job: AnnounceJob, *, uploaded: int, downloaded: int, left: int,
        numwant: int,
    ) -> None:
        """Queue ``job``'s announce with our peer id, listen port and key (no peers wanted when stopping)."""
        params = AnnounceParams(
            info_hash=torrent.info_hash,
            peer_id=self.peer_id,
            port=self.listen_port,
            uploaded=uploaded,
            downloaded=downloaded,
            left=left,
            event=job.event,
            numwant=0 if job.event == "stopped" else numwant,
            key=self.announce_key,
            tracker_id=job.tracker_id,
        )
        self._actions.append(Announce(torrent.info_hash, job, params))

    @property
    def banned(self) -> set[str]:
        return set(self.reputation.banned())

    def penalize(self, ip: str, points: int, why: str) -> None:
        """Protocol abuse or bad data from ``ip`` costs ``points`` reputation."""
        self.reputation_events(self.reputation.adjust(ip, -points, why))

    def ban(self, ip: str, why: str) -> None:
        self.reputation_events(self.reputation.ban(ip, why))

    def reputation_events(self, events: list[RepEvent]) -> None:
        """Act on reputation changes: a ban closes every connection from that IP."""
        for ev in events:
            if self.events.enabled:
                self._emit_reputation(ev)
            if isinstance(ev, Banned):
                log.warning("banning %s for the rest of the session: %s", ev.ip, ev.reason)
                for t in self.torrents.values():
                    t.forget_ip(ev.ip)
                for conn in [c for c in self.conns.values() if c.ip == ev.ip]:
                    self.close(conn.cid, CloseReason.REPUTATION_TOO_LOW, ev.reason)

    def mark_dirty(self, cid: int) -> None:
        self._dirty.add(cid)

    def dialing_addrs(self) -> set[Addr]:
        return {c.addr for c in self.conns.values() if c.outgoing}

    def _handshake(self, info_hash: bytes | None, now: float) -> Handshake:
        """A BT handshake machine with our id, reserved bits and timeout (``None``: incoming, any torrent)."""
        return Handshake(
            peer_id=self.peer_id,
            reserved=self.reserved,
            info_hash=info_hash,
            now=now,
            timeout_s=self.config.handshake_timeout_s,
        )

    def dial(self, torrent: Torrent | MagnetFetch, addr: Addr, source: PeerSource, *, now: float) -> int | None:
        if len(self.conns) >= self.config.max_connections or self.network_paused is not None:
            return None
        cid = self._new_cid()
        hs = self._handshake(torrent.info_hash, now)
        conn = PeerConnection(cid, addr, outgoing=True, source=source, handshake=hs, now=now)
        order = self.config.transports
        conn.transport = order[0]
        conn.fallbacks = list(order[1:])
        self.conns[cid] = conn
        if isinstance(torrent, MagnetFetch):
            self._fetch_of[cid] = torrent
        else:
            self._torrent_of[cid] = torrent
        self._actions.append(Dial(cid, addr, conn.transport))
        return cid

    def _fall_back(self, conn: PeerConnection, reason: CloseReason, detail: str, now: float) -> bool:
        """Redial an outgoing connection that failed before the BT handshake on its next transport."""
        if not conn.outgoing or conn.wire is not None or not conn.fallbacks or reason not in FALLBACK_REASONS:
            return False
        if self.network_paused is not None:
            return False
        t = self._torrent_of.get(conn.cid) or self._fetch_of.get(conn.cid)
        if t is None:
            return False
        log.info(
            "peer %s:%d (#%d) over %s: %s %s; trying %s",
            conn.ip, conn.port, conn.cid, conn.transport, reason.name, detail, conn.fallbacks[0],
        )
        conn.transport = conn.fallbacks.pop(0)
        conn.handshake = self._handshake(t.info_hash, now)
        conn.established = False
        conn.pending_handshake_bytes = b""
        self._dirty.discard(conn.cid)
        self._actions.append(Dial(conn.cid, conn.addr, conn.transport))
        return True

    def close(self, cid: int, reason: CloseReason, detail: str) -> None:
        """Ask the loop to close ``cid``; state is torn down at once."""
        conn = self.conns.get(cid)
        if conn is None or conn.closing:
            return
        conn.closing = True
        self._actions.append(Close(cid, reason, detail))
        self._teardown(conn, reason, detail, now=self._now)

    def _teardown(self, conn: PeerConnection, reason: CloseReason, detail: str, *, now: float) -> None:
        self.conns.pop(conn.cid, None)
        self._dirty.discard(conn.cid)
        t = self._torrent_of.pop(conn.cid, None)
        conn.close_reason, conn.close_detail = reason, detail
        log.info("peer %s:%d (#%d) disconnected: %s (%d) %s", conn.ip, conn.port, conn.cid, reason.name, reason, detail)
        self.emit(EventName.PEER_DISCONNECTED, conn, t, reason=reason, detail=detail)
        self.closed_log.append((conn.cid, conn.addr, reason, detail))
        if len(self.closed_log) > 200:
            del self.closed_log[:100]
        if t is not None:
            if conn.wire is None and conn.outgoing:
                t.peer_connect_failed(conn.addr, now=now)
            t.peer_closed(conn, now=now)
        f = self._fetch_of.pop(conn.cid, None)
        if f is not None:
            f.peer_closed(conn, now=now, failed_dial=conn.fetch_link is None)

    # ------------------------------------------------------------------ public API support (minibt/api.py)

    @property
    def now(self) -> float:
        """The latest ``now`` an input brought (what library-driven actions use)."""
        return self._now

    def torrent_of(self, cid: int) -> Torrent | None:
        """The torrent of connection ``cid`` (None before an incoming handshake named one)."""
        return self._torrent_of.get(cid)

    def emit(
        self,
        name: EventName,
        conn: PeerConnection | None,
        torrent: Torrent | None,
        *,
        index: int | None = None,
        reason: CloseReason | None = None,
        detail: str = "",
    ) -> None:
        """Queue an event for the Client's callbacks (no-op unless a Client enabled the queue)."""
        if self.events.enabled:
            self.events.push(EventRecord(name, torrent, conn, index, reason, detail))

    def _emit_reputation(self, ev: RepEvent) -> None:
        conn = next((c for c in self.conns.values() if c.ip == ev.ip), None)
        t = self._torrent_of.get(conn.cid) if conn is not None else None
        if isinstance(ev, ReputationChanged):
            self.events.push(
                EventRecord(EventName.REPUTATION_CHANGED, t, conn, detail=ev.reason, ip=ev.ip, old=ev.old, new=ev.new)
            )
        else:
            self.events.push(EventRecord(EventName.BANNED, t, conn, detail=ev.reason, ip=ev.ip))

    def _refused(self, addr: Addr, reason: CloseReason, detail: str, now: float) -> None:
        """An incoming connection refused at accept: logged and reported like any disconnect."""
        log.info("peer %s:%d refused at accept: %s (%d) %s", addr[0], addr[1], reason.name, reason, detail)
        if self.events.enabled:
            hs = self._handshake(None, now)
            conn = PeerConnection(0, addr, outgoing=False, source=PeerSource.INCOMING, handshake=hs, now=now)
            conn.closing = True  # never registered: the facade shows it as closed
            conn.close_reason, conn.close_detail = reason, detail
            self.events.push(EventRecord(EventName.PEER_DISCONNECTED, None, conn, reason=reason, detail=detail))

    def _new_cid(self) -> int:
        cid = self._next_cid
        self._next_cid += 1
        return cid

    # ------------------------------------------------------------------ loop inputs

    def take_actions(self) -> list[Action]:
        acts, self._actions = self._actions, []
        return acts

    def take_dirty(self) -> set[int]:
        d, self._dirty = self._dirty, set()
        return d

    def on_incoming(self, addr: Addr, *, now: float, transport: Transport = Transport.TCP) -> int | None:
        """A connection was accepted (over ``transport``); returns its cid, or None to refuse it."""
        self._now = now
        first_cid = self._next_cid
        try:
            return self._on_incoming(addr, now, transport)
        except Exception as e:
            self.faults.record(FaultKind.ACCEPT, f"connection from {addr[0]}:{addr[1]}", e)
            for cid in range(first_cid, self._next_cid):
                conn = self.conns.get(cid)
                if conn is not None:
                    self._drop(conn, CloseReason.INTERNAL_ERROR, "internal error at accept")
            return None

    def _on_incoming(self, addr: Addr, now: float, transport: Transport) -> int | None:
        if len(self.conns) >= self.config.max_connections:
            self._refused(addr, CloseReason.TOO_MANY_PEERS, "global connection limit", now)
            return None
        if self.reputation.is_banned(addr[0]):
            # refused at accept: a banned IP gets no handshake at all
            self._refused(addr, CloseReason.BANNED, self.reputation.banned().get(addr[0], "banned"), now)
            return None
        cid = self._new_cid()
        hs = self._handshake(None, now)
        conn = PeerConnection(cid, addr, outgoing=False, source=PeerSource.INCOMING, handshake=hs, now=now)
        conn.established = True
        conn.transport = Transport(transport)
        self.conns[cid] = conn
        self.emit(EventName.PEER_CONNECTED, conn, None)
        return cid

    def on_connected(self, cid: int, *, now: float) -> None:
        """An outgoing TCP connect finished: send our handshake."""
        self._now = now
        conn = self.conns.get(cid)
        if conn is None or conn.handshake is None:
            return
        try:
            conn.established = True
            conn.handshake.start()
            self._dirty.add(cid)
            self.emit(EventName.PEER_CONNECTED, conn, self._torrent_of.get(cid))
        except Exception as e:
            self.fault(cid, e)

    def on_closed(self, cid: int, reason: CloseReason, detail: str, *, now: float) -> None:
        """The loop saw the connection end (EOF, error, failed connect)."""
        self._now = now
        conn = self.conns.get(cid)
        if conn is None:
            return
        try:
            if not conn.closing and self._fall_back(conn, reason, detail, now):
                return
            conn.closing = True
            self._teardown(conn, reason, detail, now=now)
        except Exception as e:
            self.fault(cid, e)

    # ------------------------------------------------------------------ containment (STYLE.md section 13)

    def fault(self, cid: int, exc: Exception) -> None:
        """An unexpected exception while handling connection ``cid``: close that connection alone.

        The traceback is logged once and counted in ``faults``; no reputation penalty (the bug is
        ours, even when a peer's input triggered it).  If even the orderly close fails, the
        connection is dropped from every table without calling into its torrent.
        """
        conn = self.conns.get(cid)
        what = f"peer {conn.ip}:{conn.port} (#{cid})" if conn is not None else f"connection #{cid}"
        detail = self.faults.record(FaultKind.PEER, what, exc)
        if conn is None:
            return
        if not conn.closing:
            try:
                self.close(cid, CloseReason.INTERNAL_ERROR, detail)
                if cid not in self.conns:
                    return
            except Exception as e2:
                self.faults.record(FaultKind.PEER, f"closing {what}", e2)
        self._drop(conn, CloseReason.INTERNAL_ERROR, detail)

    def _drop(self, conn: PeerConnection, reason: CloseReason, detail: str) -> None:
        """Last resort after a fault: forget ``conn`` everywhere and ask the loop to close it."""
        cid = conn.cid
        conn.closing = True
        conn.close_reason, conn.close_detail = reason, detail
        self.conns.pop(cid, None)
        self._dirty.discard(cid)
        t = self._torrent_of.pop(cid, None)
        if t is not None:
            t.peers.pop(cid, None)
            t.half_open.discard(cid)
        self._fetch_of.pop(cid, None)
        self._actions.append(Close(cid, reason, detail))

    def _torrent_fault(self, owner: Torrent | MagnetFetch, kind: FaultKind, exc: Exception, now: float) -> None:
        """A fault in a torrent's (or magnet fetch's) own handling: stop that torrent with an error."""
        name = owner.meta.name if isinstance(owner, Torrent) else owner.name
        detail = self.faults.record(kind, f"torrent {name!r}", exc)
        try:
            if isinstance(owner, Torrent):
                if owner.state is not TorrentState.ERROR:
                    owner.save_resume(now)  # verified pieces only; ERROR state saves nothing more
                    owner.fail(detail)
                    owner.stop(now=now)  # closes its peers and files
            else:
                owner.fail(detail)
        except Exception as e2:
            self.faults.record(kind, f"stopping torrent {name!r}", e2)

    def on_data(self, cid: int, data: bytes | memoryview, *, now: float) -> None:
        try:
            if self.down_limited:
                self._on_data_limited(cid, data, now=now)
            else:
                self._on_data(cid, data, now=now)
        except Exception as e:
            self.fault(cid, e)

    def _on_data(self, cid: int, data: bytes | memoryview, *, now: float) -> None:
        self._now = now
        conn = self.conns.get(cid)
        if conn is None or conn.closing:
            return
        try:
            if conn.wire is not None:
                t = self._torrent_of[cid]
                for ev in conn.wire.receive_data(data, now=now):
                    t.on_message(conn, ev, now=now)
                    if conn.closing:
                        return
            elif conn.fetch_link is not None:
                self._fetch_of[cid].on_data(conn, data, now=now)
            else:
                self._handshake_data(conn, data, now)
        except RemoteProtocolError as e:
            self.close(cid, e.reason, e.detail)
            self.penalize(conn.ip, PROTOCOL_PENALTY, e.detail)
        if not conn.closing and conn.wire is not None and (conn.wire.wants_write):
            self._dirty.add(cid)

    def _handshake_data(self, conn: PeerConnection, data: bytes | memoryview, now: float) -> None:
        hs = conn.handshake
        assert hs is not None
        for ev in hs.receive_data(bytes(data), now=now):
            match ev:
                case InfoHashReceived(info_hash=info_hash) if not conn.outgoing:
                    t = self.torrents.get(info_hash)
                    f = self.fetches.get(info_hash) if t is None else None
                    if f is not None and f.can_accept() and not self.reputation.is_banned(conn.ip):
                        self._fetch_of[conn.cid] = f  # a magnet still fetching metadata: BEP 10 only
                        hs.accept(info_hash)
                        self._dirty.add(conn.cid)
                        continue
                    if t is None:
                        self.close(conn.cid, CloseReason.UNKNOWN_INFO_HASH, info_hash.hex())
                        return
                    if t.state is TorrentState.CHECKING:
                        self.close(conn.cid, CloseReason.HASH_CHECKING, "torrent is being checked")
                        return
                    if self.reputation.is_banned(conn.ip):
                        self.close(conn.cid, CloseReason.BANNED, "banned")
                        return
                    if not t.can_accept_peer():
                        self.close(conn.cid, CloseReason.TOO_MANY_PEERS, "per-torrent peer limit")
                        return
                    self._torrent_of[conn.cid] = t
                    hs.accept(info_hash)
                    self._dirty.add(conn.cid)
                case HandshakeReceived():
                    self._handshake_done(conn, ev, now)
                    return

    def _handshake_done(self, conn: PeerConnection, ev: HandshakeReceived, now: float) -> None:
        t = self._torrent_of.get(conn.cid)
        hs = conn.handshake
        assert hs is not None
        f = self._fetch_of.get(conn.cid)
        if t is None and f is not None:
            self._fetch_handshake_done(f, conn, ev, now)
            return
        if t is None:
            self.close(conn.cid, CloseReason.UNKNOWN_INFO_HASH, ev.info_hash.hex())
            return
        if ev.peer_id == self.peer_id:
            self.close(conn.cid, CloseReason.SELF_CONNECTION, "connected to ourselves")
            self._local_ips.add(conn.ip)
            t.candidates.discard(conn.addr)
            return
        for other in t.peers.values():
            if other.peer_id == ev.peer_id and ev.peer_id != bytes(20):
                self.close(conn.cid, CloseReason.DUPLICATE_PEER_ID, ev.peer_id.hex())
                return
        if not conn.outgoing and not t.can_accept_peer():
            self.close(conn.cid, CloseReason.TOO_MANY_PEERS, "per-torrent peer limit")
            return
        conn.peer_id = ev.peer_id
        conn.reserved = ev.reserved
        conn.info_hash = ev.info_hash
        meta = t.meta
        conn.wire = PeerWire(
            num_pieces=meta.num_pieces,
            piece_length=meta.piece_length,
            total_length=meta.total_length,
            fast=supports_fast(ev.reserved) and supports_fast(self.reserved),
            extension=supports_extension(ev.reserved) and supports_extension(self.reserved),
            now=now,
        )
        pending = hs.data_to_send()
        leftover = hs.leftover()
        conn.handshake = None
        conn.pending_handshake_bytes = pending
        t.attach(conn, now=now)
        self._dirty.add(conn.cid)
        self.emit(EventName.HANDSHAKE_DONE, conn, t)
        if leftover:
            for msg in conn.wire.receive_data(leftover, now=now):
                t.on_message(conn, msg, now=now)
                if conn.closing:
                    return

    def _fetch_handshake_done(self, f: MagnetFetch, conn: PeerConnection, ev: HandshakeReceived, now: float) -> None:
        hs = conn.handshake
        assert hs is not None
        if ev.peer_id == self.peer_id:
            self._local_ips.add(conn.ip)
            f.candidates.discard(conn.addr)
            self.close(conn.cid, CloseReason.SELF_CONNECTION, "connected to ourselves")
            return
        if not supports_extension(ev.reserved):
            # BEP 9 needs BEP 10: this peer cannot give us the metadata.
            self.close(conn.cid, CloseReason.PROTOCOL_VIOLATION, "no extension protocol (BEP 10): cannot fetch metadata")
            return
        conn.peer_id = ev.peer_id
        conn.reserved = ev.reserved
        conn.info_hash = ev.info_hash
        conn.pending_handshake_bytes = hs.data_to_send()
        leftover = hs.leftover()
        conn.handshake = None
        f.attach(conn, now=now)
        self._dirty.add(conn.cid)
        self.emit(EventName.HANDSHAKE_DONE, conn, None)
        if leftover:
            f.on_data(conn, leftover, now=now)

    def hand_over(self, conn: PeerConnection, t: Torrent, unsent: bytes, replay: bytes, *, now: float) -> bool:
        """A magnet fetch's connection becomes a peer connection of ``t`` (its metadata arrived):
        a peer wire, our bitfield and extension handshake, then the peer's frames seen so far."""
        if t.state not in (TorrentState.DOWNLOADING, TorrentState.SEEDING) or not t.can_accept_peer():
            return False
        if any(p.peer_id == conn.peer_id for p in t.peers.values()):
            return False  # the same peer twice (e.g. x.pe by name and by address): keep one
        self._fetch_of.pop(conn.cid, None)
        conn.fetch_link = None
        meta = t.meta
        conn.wire = PeerWire(
            num_pieces=meta.num_pieces,
            piece_length=meta.piece_length,
            total_length=meta.total_length,
            fast=supports_fast(conn.reserved) and supports_fast(self.reserved),
            extension=True,
            now=now,
        )
        conn.pending_handshake_bytes += unsent
        self._torrent_of[conn.cid] = t
        t.attach(conn, now=now)
        t.exchange.on_ext_handshake(conn, now=now)  # its BEP 10 handshake came during the fetch
        self._dirty.add(conn.cid)
        try:
            for msg in conn.wire.receive_data(replay, now=now):
                t.on_message(conn, msg, now=now)
                if conn.closing:
                    break
        except RemoteProtocolError as e:
            self.close(conn.cid, e.reason, e.detail)
            self.penalize(conn.ip, PROTOCOL_PENALTY, e.detail)
        return True

    def on_writable(self, cid: int, *, now: float) -> None:
        """The socket drained: let the torrent serve more queued requests."""
        self._now = now
        conn = self.conns.get(cid)
        if conn is None or conn.wire is None:
            return
        t = self._torrent_of.get(cid)
        if t is not None and conn.requests_in:
            try:
                t.serve(conn, now)
            except Exception as e:
                self.fault(cid, e)

    def data_to_send(self, cid: int, limit: int, *, now: float) -> bytes:
        self._now = now
        try:
            return self._data_to_send(cid, limit, now)
        except Exception as e:
            self.fault(cid, e)
            return b""

    def _data_to_send(self, cid: int, limit: int, now: float) -> bytes:
        conn = self.conns.get(cid)
        if conn is None:
            return b""
        if conn.handshake is not None:
            return conn.handshake.data_to_send()
        out = b""
        if conn.pending_handshake_bytes:
            out = conn.pending_handshake_bytes
            conn.pending_handshake_bytes = b""
        if conn.fetch_link is not None:
            return out + conn.fetch_link.data_to_send(max(0, limit - len(out)))
        assert conn.wire is not None
        rest = conn.wire.data_to_send(max(0, limit - len(out)), now=now)
        return out + rest if out else rest

    def on_hash_result(self, res: HashResult, *, now: float) -> None:
        self._now = now
        match res.tag:
            case CheckJobTag(info_hash=ih) | PieceJobTag(info_hash=ih):
                t = self.torrents.get(ih)
            case _:
                return
        if t is not None:
            try:
                t.on_hash_result(res, now=now)
            except Exception as e:
                self._torrent_fault(t, FaultKind.WORKER, e, now)

    def on_announce_result(
        self,
        info_hash: bytes,
        job: AnnounceJob,
        result: AnnounceResult | None,
        error: str | None,
        *,
        now: float,
    ) -> None:
        self._now = now
        try:
            t = self.torrents.get(info_hash)
            if t is not None:
                t.on_announce_result(job, result, error, now=now)
                return
            f = self.fetches.get(info_hash)
            if f is not None:
                f.on_announce_result(job, result, error, now=now)
        except Exception as e:
            self.faults.record(FaultKind.TRACKER, f"announce to {job.url}", e)

    def tick(self, *, now: float) -> None:
        """Timers: handshake/wire deadlines, then every torrent's tick."""
        self._now = now
        for conn in list(self.conns.values()):
            if conn.closing:
                continue
            try:
                if conn.handshake is not None:
                    dl = conn.handshake.next_deadline()
                    if dl is not None and now >= dl:
                        conn.handshake.handle_timeout(now=now)
                elif conn.wire is not None:
                    dl = conn.wire.next_deadline()
                    if dl is not None and now >= dl:
                        for ev in conn.wire.handle_timeout(now=now):
                            t = self._torrent_of.get(conn.cid)
                            if t is not None:
                                t.on_message(conn, ev, now=now)
                        if conn.wire.wants_write:
                            self._dirty.add(conn.cid)
            except RemoteProtocolError as e:
                self.close(conn.cid, e.reason, e.detail)
            except Exception as e:
                self.fault(conn.cid, e)
        for f in list(self.fetches.values()):
            try:
                f.tick(now=now)
            except Exception as e:
                self._torrent_fault(f, FaultKind.TORRENT, e, now)
        for t in list(self.torrents.values()):
            try:
                t.tick(now=now)
            except Exception as e:
                self._torrent_fault(t, FaultKind.TORRENT, e, now)
        if self._rate_waiting:
            self.on_rate_refill(now=now)  # also driven by rate_wake_at(); this is the fallback

    # ------------------------------------------------------------------ rate limits (issue 3, ratelimit.py)
    # Payload bytes only, both directions.  Upload: Torrent.serve() takes tokens before queueing a
    # block; peers that found none wait in the torrent's TransferLimits until ``rate_wake_at()``, when
    # the loop calls ``on_rate_refill()``.  Download: the loop reads a socket only up to
    # ``read_quota()`` (0: stop reading until ``read_retry_at()``); the payload a read delivered is
    # charged in ``on_data``.  With no download limit anywhere, ``down_limited`` is False and neither
    # the loop nor on_data does any of this.

    def _init_rate_limits(self) -> None:
        cfg = self.config
        self.global_up = TokenBucket(cfg.upload_limit_bps, now=self._now)
        self.global_down = TokenBucket(cfg.download_limit_bps, now=self._now)
        self._down_global_only = RateLimiter(self.global_down)  # connections not bound to a torrent yet
        self._rate_waiting: dict[bytes, Torrent] = {}  # torrents with peers waiting for upload tokens
        self.down_limited = self.global_down.limited

    def set_rate_limits(
        self, *, up: float | None | Keep = KEEP, down: float | None | Keep = KEEP, now: float | None = None
    ) -> None:
        """Global upload/download limits in payload bytes/s (None or 0 = unlimited), at run time."""
        t = self._now if now is None else now
        if not isinstance(up, Keep):
            self.global_up.set_rate(up, now=t)
        if not isinstance(down, Keep):
            self.global_down.set_rate(down, now=t)
        self.rate_limits_changed()

    def rate_limits(self) -> tuple[float | None, float | None]:
        """The global (upload, download) limits, bytes/s; None = unlimited."""
        return self.global_up.rate_bps, self.global_down.rate_bps

    def rate_limits_changed(self) -> None:
        """Recompute the fast-path flags after any limit (global or a torrent's) changed."""
        self.down_limited = self.global_down.limited or any(
            t.limits.down_bucket.limited for t in self.torrents.values()
        )
        for t in self.torrents.values():
            t.limits.refresh()

    def down_limiter(self, cid: int) -> RateLimiter:
        t = self._torrent_of.get(cid)
        return t.limits.down if t is not None else self._down_global_only

    def read_quota(self, cid: int, *, now: float) -> int:
        """How many bytes the loop may read from ``cid`` now; 0 = pause reading until ``read_retry_at``."""
        lim = self.down_limiter(cid)
        q = lim.available(now=now)
        return q if q >= min(READ_MIN_BYTES, lim.burst_bytes) else 0

    def read_retry_at(self, cid: int, *, now: float) -> float:
        """When ``read_quota(cid)`` will be non-zero again (at the current limits)."""
        lim = self.down_limiter(cid)
        return lim.next_refill_deadline(lim.quantum(READ_MIN_BYTES), now=now)

    def _on_data_limited(self, cid: int, data: bytes | memoryview, *, now: float) -> None:
        conn = self.conns.get(cid)
        if conn is None:
            return
        t = self._torrent_of.get(cid)
        before = conn.down.total
        self._on_data(cid, data, now=now)
        got = conn.down.total - before  # payload bytes of the blocks this read completed
        if got:
            if t is None:
                t = self._torrent_of.get(cid)
            (t.limits.down if t is not None else self._down_global_only).charge(got, now=now)

    def rate_waiting(self, torrent: Torrent) -> None:
        """``torrent`` has peers whose requests wait for upload tokens."""
        self._rate_waiting[torrent.info_hash] = torrent

    def rate_wake_at(self, *, now: float) -> float | None:
        """When ``on_rate_refill`` should run next (None: nothing waits for tokens)."""
        if not self._rate_waiting:
            return None
        best: float | None = None
        for t in self._rate_waiting.values():
            at = t.limits.wake_at(BLOCK_LEN, now=now)
            if at is None:
                return now  # nothing left to wait for: let on_rate_refill drop it
            if best is None or at < best:
                best = at
        return best

    def on_rate_refill(self, *, now: float) -> None:
        """Tokens came back: serve the requests that waited for them."""
        self._now = now
        for key, t in list(self._rate_waiting.items()):
            if t.state is TorrentState.STOPPED or not t.serve_waiting(now=now):
                self._rate_waiting.pop(key, None)
