"""The orchestrator: routes loop events to torrents and peers, carries out their effects.

``Session`` is pure (STYLE.md section 3) and has one pipeline shape, like h2's ``receive_data`` /
``data_to_send``: the loop calls one ``on_*`` entry point per input kind, each taking ``now``
(``on_incoming``, ``on_connected``, ``on_data``, ``on_writable``, ``on_closed``, ``on_hash_result``,
``on_announce_result``, ``on_rate_refill``, ``tick``), then drains the loop actions with
``take_actions()`` -- Dial, Close, HashPiece, Announce and Flush (connection ``cid`` has bytes:
the loop pulls them with ``data_to_send(cid)``).  Public events for library code go to the bounded
``events`` queue, which the Client drains.

Torrents (torrent.py) and magnet fetches (magnetfetch.py) return effects (effects.py) from their
entry points; :meth:`Session._apply` is the one place that carries them out.  They read session
facts from ``self.ctx`` (a :class:`~minibt.effects.SessionContext`) and hold no reference to the
session.  A connection's phase (peer.py: Handshaking, FetchingMetadata, Active) changes only here.

Error boundary (STYLE.md P4): ``on_data`` is the one place where a peer's
``RemoteProtocolError`` becomes ``Close(reason)``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from minibt.checker import CheckJobTag
from minibt.download import PieceJobTag
from minibt.effects import (
    AnnounceDue,
    ClosePeer,
    DialPeer,
    Effect,
    Emit,
    Flush,
    HashPiece,
    LimitsChanged,
    MetadataDone,
    Penalize,
    PieceFailed,
    PiecePassed,
    RateWait,
    SessionContext,
    WantDials,
)
from minibt.errors import CloseReason, ConfigError, RemoteProtocolError
from minibt.events import Event, EventName, EventQueue
from minibt.faults import FaultKind, Faults
from minibt.fetchlink import FetchLink
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
from minibt.peer import (
    TRANSPORTS,
    Active,
    FetchingMetadata,
    Handshaking,
    PeerConnection,
    PeerSource,
    Transport,
    to_transports,
    valid_transports,
)
from minibt.ratelimit import KEEP, Keep, RateLimiter, TokenBucket
from minibt.reputation import Banned, RepEvent, Reputation, ReputationChanged
from minibt.settings import Mode, TorrentConfig, TorrentState
from minibt.torrent import Torrent
from minibt.tracker import AnnounceJob, AnnounceParams, AnnounceResult
from minibt.urls import Addr
from minibt.wire import PeerWire
from minibt.wire_codec import BLOCK_LEN
from minibt.workers import HashResult

log = logging.getLogger(__name__)

PROTOCOL_PENALTY = 5  # reputation points for a protocol violation (issue 3 refines)
READ_MIN_BYTES = 16384  # a throttled socket is read again once a 16 KiB block (BEP 3) fits the limit
PEER_ID_PREFIX = b"-MB0100-"  # Azureus-style client id: minibt 0.1.0.0
# A dial that ends like this before the BT handshake completes is retried on the next transport
# (PROTOCOL.md 7.9: a uTP-only libtorrent accepts TCP and closes it at once).
FALLBACK_REASONS = frozenset({CloseReason.CONNECT_FAILED, CloseReason.CLOSED_BY_REMOTE, CloseReason.IO_ERROR})
Owner = Torrent | MagnetFetch  # what a connection belongs to, and whose effects _apply carries out


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
class Announce:
    info_hash: bytes
    job: AnnounceJob
    params: AnnounceParams


Action = Dial | Close | HashPiece | Announce | Flush  # HashPiece and Flush: effects.py, passed on as they are


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
        self.reserved = make_reserved(fast=True, extension=True)
        self.torrents: dict[bytes, Torrent] = {}
        self.conns: dict[int, PeerConnection] = {}
        self._torrent_of: dict[int, Torrent] = {}  # cid -> torrent (outgoing from the start, incoming after handshake)
        self.fetches: dict[bytes, MagnetFetch] = {}  # magnet links still fetching metadata (magnetfetch.py)
        self._fetch_of: dict[int, MagnetFetch] = {}  # cid -> magnet fetch
        self._actions: list[Action] = []
        self._next_cid = 1
        self.reputation = Reputation()  # per-IP scores and bans, shared by every torrent
        self._now = 0.0  # the latest `now` any input brought (for teardown started by a command)
        self.closed_log: list[tuple[int, Addr, CloseReason, str]] = []  # bounded, newest last
        self.events = EventQueue()  # public API events; off until a Client enables it (minibt/events.py)
        self.faults = Faults()  # contained faults while handling outside input (STYLE.md section 13)
        # What the torrent layer may read of the session (effects.py): listen address, our own
        # addresses, bans, whether events are wanted, whether networking is paused.
        self.ctx = SessionContext(reputation=self.reputation, events=self.events, wall_time=wall_clock or (lambda: 0.0))
        self._init_rate_limits()

    # ------------------------------------------------------------------ setup

    @property
    def listen_port(self) -> int:
        return self.ctx.listen_port

    @property
    def listen_ip(self) -> str:
        return self.ctx.listen_ip

    @property
    def network_paused(self) -> str | None:
        """Why networking is paused (the bound interface is down or gone, ifwatch.py): no dials, and
        torrents hold their announces until it is None again."""
        return self.ctx.network_paused

    def set_listen(self, ip: str, port: int) -> None:
        self.ctx.listen_ip = ip
        self.ctx.listen_port = port
        if ip not in ("0.0.0.0", "::"):
            self.ctx.local_ips.add(ip)

    def set_network_paused(self, reason: str | None, *, now: float) -> None:
        """The loop saw the bound interface go down (``reason``) or come back (None)."""
        self._now = now
        self.ctx.network_paused = reason

    def own_addresses(self) -> set[Addr]:
        return self.ctx.own_addresses()

    def wall_time(self) -> float:
        return self.ctx.wall_time()

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
            meta,
            download_dir,
            mode=mode,
            resume_path=resume_path,
            config=config or self.config.torrent,
            rng=self.rng,
            now=now,
            ctx=self.ctx,
            global_up=self.global_up,
            global_down=self.global_down,
        )
        self.torrents[meta.info_hash] = t
        self.rate_limits_changed()
        self._apply(t, t.start(now=now), now)
        return t

    def remove_torrent(self, info_hash: bytes, *, now: float) -> bool:
        """Stop a torrent and forget it once its last piece write is done; True when it is gone.

        Call again on later ticks while it returns False (commits in flight finish first).
        """
        self._now = now
        f = self.fetches.pop(info_hash, None)
        if f is not None:  # a magnet link still fetching its metadata: nothing on disk yet
            self._apply(f, f.stop(now=now), now)
        t = self.torrents.get(info_hash)
        if t is None:
            return True
        self._apply(t, t.stop(now=now), now)
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
            magnet, download_dir, mode=mode, config=config or self.config.torrent, rng=self.rng, now=now,
            ctx=self.ctx, resume_path=resume_path,
        )
        self.fetches[magnet.info_hash] = f
        return f

    def add_peers(self, info_hash: bytes, addrs: list[Addr], source: PeerSource, *, now: float) -> None:
        self._now = now
        f = self.fetches.get(info_hash)
        if f is not None:
            f.add_peers(addrs, source)
            return
        t = self.torrents[info_hash]
        self._apply(t, t.add_candidates(addrs, source, now=now), now)

    def stop(self, *, now: float) -> None:
        self._now = now
        for f in list(self.fetches.values()):
            self._apply(f, f.stop(now=now), now)
        for t in list(self.torrents.values()):
            self._apply(t, t.stop(now=now), now)

    # ------------------------------------------------------------------ carrying out effects (effects.py)

    def _apply(self, owner: Owner | None, effects: list[Effect], now: float) -> None:  # noqa: C901
        """Carry out what ``owner`` (a torrent or a magnet fetch) asked for."""
        for e in effects:
            match e:
                case Flush():
                    self._actions.append(e)
                case ClosePeer(cid=cid, reason=reason, detail=detail):
                    self.close(cid, reason, detail)
                case HashPiece():
                    self._actions.append(e)
                case Emit():
                    if self.events.enabled:
                        self._emit_effect(owner, e)
                case PiecePassed(info_hash=ih, index=i, sources=srcs, digests=digests):
                    self.reputation_events(self.reputation.piece_passed(ih, i, set(srcs), digests))
                case PieceFailed(info_hash=ih, index=i, blocks=blocks):
                    self.reputation_events(self.reputation.piece_failed(ih, i, blocks))
                case Penalize(ip=ip, points=points, why=why):
                    self.penalize(ip, points, why)
                case WantDials() if owner is not None:
                    self._connect_more(owner, now)
                case AnnounceDue() if owner is not None:
                    self._announce(owner.info_hash, e)
                case RateWait() if isinstance(owner, Torrent):
                    self._rate_waiting[owner.info_hash] = owner
                case LimitsChanged():
                    self.rate_limits_changed()
                case MetadataDone(meta=meta) if isinstance(owner, MagnetFetch):
                    self._metadata_done(owner, meta, now)
                case DialPeer():
                    raise AssertionError("DialPeer comes only from connect_more")

    def _emit_effect(self, owner: Owner | None, e: Emit) -> None:
        conn = e.conn
        t = owner if isinstance(owner, Torrent) else (self._torrent_of.get(conn.cid) if conn is not None else None)
        self.events.push(
            Event(e.name, t, conn, index=e.index, detail=e.detail, added=e.added, dropped=e.dropped,
                  added6=e.added6, dropped6=e.dropped6, addr=e.addr, flags=e.flags)
        )

    def _pending_commands(self) -> None:
        """Effects of library commands on torrents (choke_peer, set_super_seed, ...) since the last call."""
        for t in list(self.torrents.values()):
            if t.has_pending:
                self._apply(t, t.take_pending(), self._now)

    def _announce(self, info_hash: bytes, e: AnnounceDue) -> None:
        """Queue ``e``'s announce with our peer id, listen port and key (no peers wanted when stopping)."""
        job = e.job
        params = AnnounceParams(
            info_hash=info_hash,
            peer_id=self.peer_id,
            port=self.listen_port,
            uploaded=e.uploaded,
            downloaded=e.downloaded,
            left=e.left,
            event=job.event,
            numwant=0 if job.event == "stopped" else e.numwant,
            key=self.announce_key,
            tracker_id=job.tracker_id,
        )
        self._actions.append(Announce(info_hash, job, params))

    def _connect_more(self, owner: Owner, now: float) -> None:
        """WantDials: give ``owner`` the global dial budget and open the connections it picks."""
        slots = self.config.max_connections - len(self.conns)
        if slots <= 0 or self.network_paused is not None:
            return
        dialing = self.dialing_addrs()
        for e in owner.connect_more(now=now, slots=slots, dialing=dialing):
            if isinstance(e, DialPeer):
                owner.dial_started(self._dial(owner, e.addr, e.source, now))

    def _metadata_done(self, f: MagnetFetch, meta: Metainfo, now: float) -> None:
        """A fetch verified its metadata: replace it with a normal torrent and hand its connections over."""
        self.fetches.pop(f.info_hash, None)
        t = f.torrent = self.add_torrent(
            meta, f.download_dir, mode=f.mode, resume_path=f.resume_path(meta), now=now, config=f.config
        )
        for conn in f.take_links():
            # The connection carries on as a peer connection of the new torrent; if it cannot
            # (the torrent is checking existing data, too much skipped), it is closed and redialled.
            if conn.closing:
                continue
            self._fetch_of.pop(conn.cid, None)
            moved = conn.fetch_link.hand_over() if conn.fetch_link is not None else None
            if moved is None or not self._hand_over(conn, t, moved[0], moved[1], now):
                self.close(conn.cid, CloseReason.SHUTDOWN, "metadata received; redialled for the download")
        for source, addrs in f.handover_candidates():
            self._apply(t, t.add_candidates(addrs, source, now=now), now)
        self.emit(EventName.METADATA_RECEIVED, None, t)

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
        """Connection ``cid`` has bytes queued (library code wrote to its wire)."""
        self._actions.append(Flush(cid))

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

    def dial(self, owner: Owner, addr: Addr, source: PeerSource, *, now: float) -> int | None:
        """Dial ``addr`` for ``owner`` now, outside its dialer's choice (None: connection limit
        reached or networking paused); its connection id."""
        self._now = now
        if len(self.conns) >= self.config.max_connections or self.network_paused is not None:
            return None
        cid = self._dial(owner, addr, source, now)
        owner.dial_started(cid)
        return cid

    def _dial(self, owner: Owner, addr: Addr, source: PeerSource, now: float) -> int:
        cid = self._new_cid()
        hs = self._handshake(owner.info_hash, now)
        conn = PeerConnection(cid, addr, outgoing=True, source=source, handshake=hs, now=now)
        order = self.config.transports
        conn.transport = order[0]
        conn.fallbacks = list(order[1:])
        self.conns[cid] = conn
        if isinstance(owner, MagnetFetch):
            self._fetch_of[cid] = owner
        else:
            self._torrent_of[cid] = owner
        self._actions.append(Dial(cid, addr, conn.transport))
        return cid

    def _fall_back(self, conn: PeerConnection, reason: CloseReason, detail: str, now: float) -> bool:
        """Redial an outgoing connection that failed before the BT handshake on its next transport."""
        if not conn.outgoing or conn.handshake is None or not conn.fallbacks or reason not in FALLBACK_REASONS:
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
        conn.enter(Handshaking(self._handshake(t.info_hash, now)))
        conn.established = False
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
        t = self._torrent_of.pop(conn.cid, None)
        conn.close_reason, conn.close_detail = reason, detail
        log.info("peer %s:%d (#%d) disconnected: %s (%d) %s", conn.ip, conn.port, conn.cid, reason.name, reason, detail)
        self.emit(EventName.PEER_DISCONNECTED, conn, t, reason=reason, detail=detail)
        self.closed_log.append((conn.cid, conn.addr, reason, detail))
        if len(self.closed_log) > 200:
            del self.closed_log[:100]
        if t is not None:
            self._apply(t, t.peer_closed(conn, now=now), now)
        f = self._fetch_of.pop(conn.cid, None)
        if f is not None:
            self._apply(f, f.peer_closed(conn, now=now), now)

    # ------------------------------------------------------------------ public API support (minibt/handles.py)

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
            self.events.push(Event(name, torrent, conn, index, reason, detail))

    def _emit_reputation(self, ev: RepEvent) -> None:
        conn = next((c for c in self.conns.values() if c.ip == ev.ip), None)
        t = self._torrent_of.get(conn.cid) if conn is not None else None
        if isinstance(ev, ReputationChanged):
            self.events.push(
                Event(EventName.REPUTATION_CHANGED, t, conn, detail=ev.reason, ip=ev.ip, old=ev.old, new=ev.new)
            )
        else:
            self.events.push(Event(EventName.BANNED, t, conn, detail=ev.reason, ip=ev.ip))

    def _refused(self, addr: Addr, reason: CloseReason, detail: str, now: float) -> None:
        """An incoming connection refused at accept: logged and reported like any disconnect."""
        log.info("peer %s:%d refused at accept: %s (%d) %s", addr[0], addr[1], reason.name, reason, detail)
        if self.events.enabled:
            hs = self._handshake(None, now)
            conn = PeerConnection(0, addr, outgoing=False, source=PeerSource.INCOMING, handshake=hs, now=now)
            conn.closing = True  # never registered: the facade shows it as closed
            conn.close_reason, conn.close_detail = reason, detail
            self.events.push(Event(EventName.PEER_DISCONNECTED, None, conn, reason=reason, detail=detail))

    def _new_cid(self) -> int:
        cid = self._next_cid
        self._next_cid += 1
        return cid

    # ------------------------------------------------------------------ loop inputs

    def take_actions(self) -> list[Action]:
        """What the loop is to do: dials, closes, hash jobs, announces, connections to flush."""
        self._pending_commands()
        acts, self._actions = self._actions, []
        return acts

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
            self._actions.append(Flush(cid))
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
        t = self._torrent_of.pop(cid, None)
        if t is not None:
            t.forget(cid)
        f = self._fetch_of.pop(cid, None)
        if f is not None:
            f.forget(cid)
        self._actions.append(Close(cid, reason, detail))

    def _torrent_fault(self, owner: Owner, kind: FaultKind, exc: Exception, now: float) -> None:
        """A fault in a torrent's (or magnet fetch's) own handling: stop that torrent with an error."""
        name = owner.meta.name if isinstance(owner, Torrent) else owner.name
        detail = self.faults.record(kind, f"torrent {name!r}", exc)
        try:
            if isinstance(owner, Torrent):
                if owner.state is not TorrentState.ERROR:
                    owner.save_resume(now)  # verified pieces only; ERROR state saves nothing more
                    owner.fail(detail)
                    self._apply(owner, owner.stop(now=now), now)  # closes its peers and files
            else:
                self._apply(owner, owner.fail(detail), now)
        except Exception as e2:
            self.faults.record(kind, f"stopping torrent {name!r}", e2)

    # ------------------------------------------------------------------ peer bytes

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
            match conn.phase:
                case Active(wire=wire):
                    t = self._torrent_of[cid]
                    for ev in wire.receive_data(data, now=now):
                        effects = t.on_message(conn, ev, now=now)
                        if effects:
                            self._apply(t, effects, now)
                        if conn.closing:
                            return
                    if wire.wants_write:
                        self._actions.append(Flush(cid))
                case FetchingMetadata():
                    f = self._fetch_of[cid]
                    self._apply(f, f.on_data(conn, data, now=now), now)
                case Handshaking(handshake=hs):
                    self._handshake_data(conn, hs, data, now)
        except RemoteProtocolError as e:
            self.close(cid, e.reason, e.detail)
            self.penalize(conn.ip, PROTOCOL_PENALTY, e.detail)

    def _handshake_data(self, conn: PeerConnection, hs: Handshake, data: bytes | memoryview, now: float) -> None:
        for ev in hs.receive_data(bytes(data), now=now):
            match ev:
                case InfoHashReceived(info_hash=info_hash) if not conn.outgoing:
                    t = self.torrents.get(info_hash)
                    f = self.fetches.get(info_hash) if t is None else None
                    if f is not None and f.can_accept() and not self.reputation.is_banned(conn.ip):
                        self._fetch_of[conn.cid] = f  # a magnet still fetching metadata: BEP 10 only
                        hs.accept(info_hash)
                        self._actions.append(Flush(conn.cid))
                        continue
                    refusal = self._refusal(t, conn, info_hash)
                    if refusal is not None:
                        self.close(conn.cid, *refusal)
                        return
                    assert t is not None
                    self._torrent_of[conn.cid] = t
                    hs.accept(info_hash)
                    self._actions.append(Flush(conn.cid))
                case HandshakeReceived():
                    self._handshake_done(conn, hs, ev, now)
                    return

    def _refusal(self, t: Torrent | None, conn: PeerConnection, info_hash: bytes) -> tuple[CloseReason, str] | None:
        """Why an incoming connection naming ``info_hash`` (torrent ``t``) is refused, or None."""
        if t is None:
            return CloseReason.UNKNOWN_INFO_HASH, info_hash.hex()
        if t.state is TorrentState.CHECKING:
            return CloseReason.HASH_CHECKING, "torrent is being checked"
        if self.reputation.is_banned(conn.ip):
            return CloseReason.BANNED, "banned"
        if not t.can_accept_peer():
            return CloseReason.TOO_MANY_PEERS, "per-torrent peer limit"
        return None

    def _new_wire(self, t: Torrent, reserved: bytes, now: float, *, extension: bool) -> PeerWire:
        meta = t.meta
        return PeerWire(
            num_pieces=meta.num_pieces,
            piece_length=meta.piece_length,
            total_length=meta.total_length,
            fast=supports_fast(reserved) and supports_fast(self.reserved),
            extension=extension,
            now=now,
        )

    def _handshake_done(self, conn: PeerConnection, hs: Handshake, ev: HandshakeReceived, now: float) -> None:
        t = self._torrent_of.get(conn.cid)
        f = self._fetch_of.get(conn.cid)
        if t is None and f is not None:
            self._fetch_handshake_done(f, conn, hs, ev, now)
            return
        if t is None:
            self.close(conn.cid, CloseReason.UNKNOWN_INFO_HASH, ev.info_hash.hex())
            return
        if ev.peer_id == self.peer_id:
            self.close(conn.cid, CloseReason.SELF_CONNECTION, "connected to ourselves")
            self.ctx.local_ips.add(conn.ip)
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
        extension = supports_extension(ev.reserved) and supports_extension(self.reserved)
        wire = self._new_wire(t, ev.reserved, now, extension=extension)
        pending = hs.data_to_send()
        leftover = hs.leftover()
        conn.enter(Active(wire, pending))
        self._apply(t, t.attach(conn, now=now), now)
        self.emit(EventName.HANDSHAKE_DONE, conn, t)
        if leftover:
            for msg in wire.receive_data(leftover, now=now):
                self._apply(t, t.on_message(conn, msg, now=now), now)
                if conn.closing:
                    return

    def _fetch_handshake_done(
        self, f: MagnetFetch, conn: PeerConnection, hs: Handshake, ev: HandshakeReceived, now: float
    ) -> None:
        if ev.peer_id == self.peer_id:
            self.ctx.local_ips.add(conn.ip)
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
        pending = hs.data_to_send()
        leftover = hs.leftover()
        conn.enter(FetchingMetadata(FetchLink(now=now), pending))
        self._apply(f, f.attach(conn, now=now), now)
        self.emit(EventName.HANDSHAKE_DONE, conn, None)
        if leftover:
            self._apply(f, f.on_data(conn, leftover, now=now), now)

    def _hand_over(self, conn: PeerConnection, t: Torrent, unsent: bytes, replay: bytes, now: float) -> bool:
        """A magnet fetch's connection becomes a peer connection of ``t`` (its metadata arrived):
        a peer wire, our bitfield and extension handshake, then the peer's frames seen so far."""
        if t.state not in (TorrentState.DOWNLOADING, TorrentState.SEEDING) or not t.can_accept_peer():
            return False
        if any(p.peer_id == conn.peer_id for p in t.peers.values()):
            return False  # the same peer twice (e.g. x.pe by name and by address): keep one
        ph = conn.phase
        before = ph.unsent if isinstance(ph, FetchingMetadata) else b""
        wire = self._new_wire(t, conn.reserved, now, extension=True)
        conn.enter(Active(wire, before + unsent))
        self._torrent_of[conn.cid] = t
        self._apply(t, t.attach(conn, now=now, ext_handshake_seen=True), now)
        try:
            for msg in wire.receive_data(replay, now=now):
                self._apply(t, t.on_message(conn, msg, now=now), now)
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
        if conn is None or conn.wire is None or not conn.requests_in:
            return
        t = self._torrent_of.get(cid)
        if t is not None:
            try:
                self._apply(t, t.serve(conn, now=now), now)
            except Exception as e:
                self.fault(cid, e)

    def data_to_send(self, cid: int, limit: int, *, now: float) -> bytes:
        self._now = now
        conn = self.conns.get(cid)
        if conn is None:
            return b""
        try:
            return conn.data_to_send(limit, now=now)
        except Exception as e:
            self.fault(cid, e)
            return b""

    # ------------------------------------------------------------------ workers, trackers, timers

    def on_hash_result(self, res: HashResult, *, now: float) -> None:
        self._now = now
        match res.tag:
            case CheckJobTag(info_hash=ih) | PieceJobTag(info_hash=ih):
                t = self.torrents.get(ih)
            case _:
                return
        if t is not None:
            try:
                self._apply(t, t.on_hash_result(res, now=now), now)
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
            owner: Owner | None = self.torrents.get(info_hash) or self.fetches.get(info_hash)
            if owner is not None:
                self._apply(owner, owner.on_announce_result(job, result, error, now=now), now)
        except Exception as e:
            self.faults.record(FaultKind.TRACKER, f"announce to {job.url}", e)

    def tick(self, *, now: float) -> None:
        """Timers: handshake/wire deadlines, then every torrent's tick."""
        self._now = now
        for conn in list(self.conns.values()):
            if conn.closing:
                continue
            try:
                self._conn_timers(conn, now)
            except RemoteProtocolError as e:
                self.close(conn.cid, e.reason, e.detail)
            except Exception as e:
                self.fault(conn.cid, e)
        owners: list[Owner] = [*self.fetches.values(), *self.torrents.values()]
        for owner in owners:
            try:
                self._apply(owner, owner.tick(now=now), now)
            except Exception as e:
                self._torrent_fault(owner, FaultKind.TORRENT, e, now)
        if self._rate_waiting:
            self.on_rate_refill(now=now)  # also driven by rate_wake_at(); this is the fallback

    def _conn_timers(self, conn: PeerConnection, now: float) -> None:
        match conn.phase:
            case Handshaking(handshake=hs):
                dl = hs.next_deadline()
                if dl is not None and now >= dl:
                    hs.handle_timeout(now=now)
            case Active(wire=wire):
                dl = wire.next_deadline()
                if dl is not None and now >= dl:
                    t = self._torrent_of.get(conn.cid)
                    for ev in wire.handle_timeout(now=now):
                        if t is not None:
                            self._apply(t, t.on_message(conn, ev, now=now), now)
                    if wire.wants_write:
                        self._actions.append(Flush(conn.cid))

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
            if t.state is TorrentState.STOPPED:
                self._rate_waiting.pop(key, None)
                continue
            waiting, effects = t.serve_waiting(now=now)
            if not waiting:
                self._rate_waiting.pop(key, None)
            if effects:
                self._apply(t, effects, now)
