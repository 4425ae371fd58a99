"""The orchestrator: routes loop events to torrents and peers, carries out their effects.

``Session`` is pure (STYLE.md section 3), one pipeline like h2's ``receive_data`` / ``data_to_send``: the
loop calls one ``on_*`` entry point per input kind, each taking ``now``, then drains the loop actions
(actions.py) with ``take_actions()``; a ``Flush`` says connection ``cid`` has bytes for ``data_to_send(cid)``
(or ``parts_to_send``).  Public events go to the bounded ``events`` queue, which the Client drains.
Torrents and magnet fetches return effects (effects.py); :meth:`Session._apply` alone carries them out.
They read session facts from ``self.ctx`` and hold no reference to the session.  A connection's phase
(peer.py) changes only here and in admission.py.  Error boundary (STYLE.md P4): ``on_data`` is where a
peer's ``RemoteProtocolError`` becomes ``Close(reason)``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable

from minibt import effects as fx
from minibt.actions import Action, Announce, Close, Datagram, Dial, LookupDhtNode
from minibt.admission import CONNECT_TIMEOUT_S, Admission, Refuse, own_config, usable_policy
from minibt.checker import CheckJobTag
from minibt.download import PieceJobTag
from minibt.errors import CloseReason, RemoteProtocolError
from minibt.events import Event, EventName, EventQueue, reputation_event
from minibt.faults import FaultKind, Faults
from minibt.handshake import Handshake, HandshakeReceived, InfoHashReceived, make_reserved, supports_extension
from minibt.magnet import Magnet
from minibt.metainfo import Metainfo
from minibt.peer import (
    Active,
    Encrypting,
    FetchingMetadata,
    Handshaking,
    PeerConnection,
    PeerSource,
)
from minibt.peerid import make_peer_id
from minibt.ratecontrol import RateControl
from minibt.ratelimit import KEEP, Keep
from minibt.reputation import Banned, RepEvent, Reputation
from minibt.settings import Mode, SessionConfig, TorrentConfig, TorrentState, Transport
from minibt.torrent import Torrent
from minibt.tracker import AnnounceJob, AnnounceResult
from minibt.urls import Addr
from minibt.workers import CallResult, HashResult

TYPE_CHECKING = False
if TYPE_CHECKING:  # a magnet link's modules and the DHT's load when one is added or enabled (issue 15)
    from minibt.dhtservice import DhtService
    from minibt.magnetfetch import MagnetFetch
    Owner = Torrent | MagnetFetch  # what a connection belongs to, and whose effects _apply carries out

log = logging.getLogger(__name__)

PROTOCOL_PENALTY = 5  # reputation points for a protocol violation (issue 3 refines)
MAX_OWN_IPS = 16  # addresses we take as ours (interfaces, 'yourip' of peers): a lying peer adds few


class Session:
    """All torrents and connections of one client."""

    def __init__(self, *, rng: random.Random, config: SessionConfig | None = None,
                 wall_clock: Callable[[], float] | None = None, peer_id: bytes | None = None) -> None:
        self.rng = rng
        self.config = config or SessionConfig()
        self.config = dataclasses.replace(self.config, encryption=usable_policy(self.config.encryption))
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
        self.events = EventQueue()  # public API events: built only while a Client has callbacks (events.py)
        self.faults = Faults()  # contained faults while handling outside input (STYLE.md section 13)
        # What the torrent layer may read of the session (effects.py): listen address, our own
        # addresses, bans, whether events are wanted, whether networking is paused.
        self.ctx = fx.SessionContext(reputation=self.reputation, events=self.events, wall_time=wall_clock or (lambda: 0.0))
        self.ctx.encryption, self.ctx.pex = self.config.encryption, self.config.pex
        self.ctx.holepunch = self.config.holepunch and Transport.UTP in self.config.transports  # BEP 55 needs uTP
        self.admission = Admission(peer_id=self.peer_id, timeout_s=self.config.handshake_timeout_s,
                                   encryption=self.config.encryption, max_mse_handshakes=self.config.max_mse_handshakes)
        self.rates = RateControl(self.config.upload_limit_bps, self.config.download_limit_bps, now=0.0)
        self.dht: DhtService | None = None  # the Mainline DHT, once enable_dht() ran (dhtservice.py)

    # ------------------------------------------------------------------ setup

    @property
    def listen_port(self) -> int:
        return self.ctx.listen_port

    @property
    def network_paused(self) -> str | None:
        """Why networking is paused (ifwatch.py): no dials, announces held until it is None again."""
        return self.ctx.network_paused

    def set_listen(self, ip: str, port: int) -> None:
        self.ctx.listen_ip = ip
        self.ctx.listen_port = port
        if ip not in ("0.0.0.0", "::"):
            self.ctx.local_ips.add(ip)

    def set_network_paused(self, reason: str | None, *, now: float) -> None:  # the bound interface down/back
        self._now = now
        self.ctx.network_paused = reason

    def _owners(self) -> list[Owner]:
        return [*self.torrents.values(), *self.fetches.values()]

    def add_torrent(self, meta: Metainfo, download_dir: str, *, mode: Mode, resume_path: str | None, now: float,
                    config: TorrentConfig | None = None) -> Torrent:
        self._now = now
        if meta.info_hash in self.torrents:
            raise ValueError(f"torrent {meta.info_hash.hex()} already added")
        t = Torrent(
            meta, download_dir, mode=mode, resume_path=resume_path, config=own_config(config or self.config.torrent), rng=self.rng,
            now=now, ctx=self.ctx, global_up=self.rates.global_up, global_down=self.rates.global_down,
        )
        self.torrents[meta.info_hash] = t
        self.rate_limits_changed()
        self._apply(t, t.start(now=now), now)
        return t

    def remove_torrent(self, info_hash: bytes, *, now: float) -> bool:
        """Stop a torrent; True once it is gone (else call again later: piece writes finish first)."""
        self._now = now
        f = self.fetches.pop(info_hash, None)
        if f is not None:  # a magnet link still fetching its metadata: nothing on disk yet
            self._apply(f, f.stop(now=now), now)
        t = self.torrents.get(info_hash)
        if t is None:
            return True
        self._apply(t, t.stop(now=now), now)
        if (t.state not in (TorrentState.STOPPED, TorrentState.ERROR) or t.storage.commits_in_flight
                or t.checker.save_in_flight):
            return False
        del self.torrents[info_hash]
        self.rates.waiting.pop(info_hash, None)
        self.rate_limits_changed()
        return True

    def add_magnet(self, magnet: Magnet, download_dir: str, *, mode: Mode = Mode.DOWNLOAD, now: float,
                   config: TorrentConfig | None = None,
                   resume_path: Callable[[Metainfo], str | None] | None = None) -> MagnetFetch:
        """Start fetching a magnet link's metadata (BEP 9); the torrent is added once it verifies."""
        self._now = now
        if magnet.info_hash in self.torrents or magnet.info_hash in self.fetches:
            raise ValueError(f"torrent {magnet.info_hash_hex} already added")
        from minibt.magnetfetch import MagnetFetch
        f = MagnetFetch(
            magnet, download_dir, mode=mode, config=own_config(config or self.config.torrent), rng=self.rng, now=now,
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
        self.torrents[info_hash].add_candidates(addrs, source, now=now)

    def stop(self, *, now: float) -> None:
        self._now = now
        for f in list(self.fetches.values()):
            self._apply(f, f.stop(now=now), now)
        for t in list(self.torrents.values()):
            self._apply(t, t.stop(now=now), now)

    # ------------------------------------------------------------------ carrying out effects (effects.py)

    def _apply(self, owner: Owner | None, effects: list[fx.Effect], now: float) -> None:  # noqa: C901
        """Carry out what ``owner`` (a torrent or a magnet fetch) asked for."""
        for e in effects:
            match e:
                case fx.Flush():
                    self._actions.append(e)
                case fx.ClosePeer(cid=cid, reason=reason, detail=detail):
                    self.close(cid, reason, detail)
                case fx.HashPiece() | fx.SaveResume():
                    self._actions.append(e)
                case fx.Emit():
                    if self.events.enabled:
                        self._emit_effect(owner, e)
                case fx.PiecePassed(info_hash=ih, index=i, sources=srcs, digests=digests):
                    self.reputation_events(self.reputation.piece_passed(ih, i, srcs, digests, changed=self.events.enabled))
                case fx.PieceFailed(info_hash=ih, index=i, blocks=blocks):
                    self.reputation_events(self.reputation.piece_failed(ih, i, blocks))
                case fx.Penalize(ip=ip, points=points, why=why):
                    self.penalize(ip, points, why)
                case fx.WantDials() if owner is not None:
                    self._connect_more(owner, now)
                case fx.AnnounceDue() if owner is not None:
                    self._announce(owner.info_hash, e)
                case fx.RateWait() if isinstance(owner, Torrent):
                    self.rates.waiting[owner.info_hash] = owner
                case fx.LimitsChanged():
                    self.rate_limits_changed()
                case fx.MetadataDone(meta=meta) if owner is not None and not isinstance(owner, Torrent):
                    self._metadata_done(owner, meta, now)
                case fx.SeenAs(ip=ip) if len(self.ctx.local_ips) < MAX_OWN_IPS:
                    self.ctx.local_ips.add(ip)  # (ip, our port) is us: e.g. our NAT's public address
                case fx.NodeHint(addr=addr) if self.dht is not None:
                    self.dht.port_hint(addr, now=now)
                case fx.HolepunchDial(addr=addr) if isinstance(owner, Torrent) and not any(
                        c.addr == addr for c in self.conns.values()):
                    self.dial(owner, addr, PeerSource.HOLEPUNCH, now=now)
                case fx.DialPeer():
                    raise AssertionError("fx.DialPeer comes only from connect_more")

    def _emit_effect(self, owner: Owner | None, e: fx.Emit) -> None:
        conn = e.conn
        t = owner if isinstance(owner, Torrent) else (self._torrent_of.get(conn.cid) if conn is not None else None)
        self.events.push(e.event(t))

    def _pending_commands(self) -> None:
        """Effects of library commands on torrents (choke_peer, set_super_seed, ...) since the last call."""
        for t in list(self.torrents.values()):
            if t.has_pending:
                self._apply(t, t.take_pending(), self._now)

    def _announce(self, info_hash: bytes, e: fx.AnnounceDue) -> None:
        params = e.params(info_hash, peer_id=self.peer_id, port=self.listen_port, key=self.announce_key)
        self._actions.append(Announce(info_hash, e.job, params))

    def _connect_more(self, owner: Owner, now: float) -> None:
        """fx.WantDials: give ``owner`` the global dial budget and open the connections it picks."""
        slots = self.config.max_connections - len(self.conns)
        if slots <= 0 or self.network_paused is not None:
            return
        dialing = {c.addr for c in self.conns.values() if c.outgoing}
        for e in owner.connect_more(now=now, slots=slots, dialing=dialing):
            if isinstance(e, fx.DialPeer):
                owner.dial_started(self._dial(owner, e.addr, e.source, e.flags, now))

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
            t.add_candidates(addrs, source, now=now)
        self.emit(EventName.METADATA_RECEIVED, None, t)

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

    def mark_dirty(self, cid: int) -> None:  # library code wrote to the wire of connection `cid`
        self._actions.append(fx.Flush(cid))

    def dial(self, owner: Owner, addr: Addr, source: PeerSource, *, now: float, switched: bool = False) -> int | None:
        """Dial ``addr`` for ``owner`` now, outside its dialer's choice; its cid (None: at the limit, or paused)."""
        self._now = now
        if len(self.conns) >= self.config.max_connections or self.network_paused is not None:
            return None
        cid = self._dial(owner, addr, source, 0, now)  # source HOLEPUNCH: over uTP only
        self.conns[cid].crypto_switched = switched
        owner.dial_started(cid)
        return cid

    def _dial(self, owner: Owner, addr: Addr, source: PeerSource, flags: int, now: float) -> int:
        cid = self._new_cid()
        hs = self.admission.handshake(owner.info_hash, self.reserved, now)
        conn = PeerConnection(cid, addr, outgoing=True, source=source, handshake=hs, now=now)
        conn.enter(self.admission.dial_phase(conn, owner, flags, self.reserved, now, self.rng))
        order = (Transport.UTP,) if source is PeerSource.HOLEPUNCH else self.config.transports  # BEP 55: uTP only
        conn.transport = order[0]
        conn.fallbacks = list(order[1:])
        self.conns[cid] = conn
        if not isinstance(owner, Torrent):
            self._fetch_of[cid] = owner
        else:
            self._torrent_of[cid] = owner
        self._actions.append(Dial(cid, addr, conn.transport))
        return cid

    def _fall_back(self, conn: PeerConnection, reason: CloseReason, detail: str, now: float) -> bool:
        """Redial an outgoing connection that failed before the BT handshake (admission.redial)."""
        t = self._torrent_of.get(conn.cid) or self._fetch_of.get(conn.cid)
        if t is None or self.network_paused is not None or not self.admission.redial(
                conn, t, reason, detail, self.reserved, now, self.rng):
            return False
        self._actions.append(Dial(conn.cid, conn.addr, conn.transport))
        self._apply(t, t.dial_attempt_failed(conn.addr, now=now), now)  # BEP 55: a relay may be asked meanwhile
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
    def now(self) -> float:  # the latest `now` an input brought (what library-driven actions use)
        return self._now

    def torrent_of(self, cid: int) -> Torrent | None:
        """The torrent of connection ``cid`` (None before an incoming handshake named one)."""
        return self._torrent_of.get(cid)

    def emit(self, name: EventName, conn: PeerConnection | None, torrent: Torrent | None, *,
             reason: CloseReason | None = None, detail: str = "") -> None:
        """Queue an event for the Client's callbacks (no-op unless a Client enabled the queue)."""
        if self.events.enabled:
            self.events.push(Event(name, torrent, conn, reason=reason, detail=detail))

    def _emit_reputation(self, ev: RepEvent) -> None:
        conn = next((c for c in self.conns.values() if c.ip == ev.ip), None)
        self.events.push(reputation_event(ev, self._torrent_of.get(conn.cid) if conn is not None else None, conn))

    def _refused(self, addr: Addr, reason: CloseReason, detail: str, now: float) -> None:
        """An incoming connection refused at accept: logged and reported like any disconnect."""
        log.info("peer %s:%d refused at accept: %s (%d) %s", addr[0], addr[1], reason.name, reason, detail)
        if self.events.enabled:
            hs = self.admission.handshake(None, self.reserved, now)
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
        """What the loop is to do: dials, closes, hash jobs, announces, connections to flush, datagrams."""
        self._pending_commands()
        if self.dht is not None:
            self._actions += [LookupDhtNode(h, p) for h, p in self.dht.take_lookups()]
            self._actions += [Datagram(d, a) for d, a in self.dht.datagrams_to_send()]
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
        refused = self.admission.accept(addr[0], len(self.conns), self.config.max_connections, self.reputation)
        if refused is not None:
            self._refused(addr, refused.reason, refused.detail, now)
            return None
        cid = self._new_cid()
        hs = self.admission.handshake(None, self.reserved, now)
        conn = PeerConnection(cid, addr, outgoing=False, source=PeerSource.INCOMING, handshake=hs, now=now)
        policy = self.admission.incoming_policy(self._owners())
        conn.enter(self.admission.first_phase(None, self.reserved, now, policy, self.rng))
        conn.established, conn.transport = True, Transport(transport)
        self.conns[cid] = conn
        self.emit(EventName.PEER_CONNECTED, conn, None)
        return cid

    def on_connected(self, cid: int, *, now: float) -> None:
        """An outgoing TCP connect finished: send our handshake."""
        self._now = now
        conn = self.conns.get(cid)
        if conn is None or not isinstance(conn.phase, (Handshaking, Encrypting)):
            return
        try:
            conn.came_up(now=now)
            self._actions.append(fx.Flush(cid))
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
        The traceback is logged once and counted in ``faults``; no reputation penalty (the bug is ours,
        even when a peer's input triggered it).  If even the orderly close fails, the connection is
        dropped from every table without calling into its torrent."""
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
        if conn.stream is not None:
            data = conn.stream.decrypt_view(data)  # in place in the loop's receive buffer (TCP)
        try:
            match conn.phase:
                case Active(wire=wire):
                    t = self._torrent_of[cid]
                    for ev in wire.receive_data(data, now=now, runs=True):
                        effects = t.on_message(conn, ev, now=now)
                        if effects:
                            self._apply(t, effects, now)
                        if conn.closing:
                            return
                    if wire.wants_write:
                        self._actions.append(fx.Flush(cid))
                case FetchingMetadata():
                    f = self._fetch_of[cid]
                    self._apply(f, f.on_data(conn, data, now=now), now)
                case Handshaking(handshake=hs):
                    self._handshake_data(conn, hs, bytes(data), now)
                case Encrypting() as ph:  # MSE/PE first (admission.py); then the BT handshake as usual
                    rest = self.admission.mse_data(conn, ph, bytes(data), self.rng, now, self._owners,
                                                   lambda: list(self.conns.values()))
                    if isinstance(rest, Refuse):
                        return self.close(cid, rest.reason, rest.detail)
                    self._actions.append(fx.Flush(cid))
                    if rest:
                        self._handshake_data(conn, ph.then, rest, now)
        except RemoteProtocolError as e:
            if not self._close_error(conn, e, now):
                self.penalize(conn.ip, PROTOCOL_PENALTY, e.detail)

    def _close_error(self, conn: PeerConnection, e: RemoteProtocolError, now: float) -> bool:
        """Close ``conn`` for ``e``; True if that was our MSE unanswered (or answered in plaintext): redialled."""
        owner = self._torrent_of.get(conn.cid) or self._fetch_of.get(conn.cid)
        redial = owner is not None and self.admission.mse_gave_up(conn, owner, e)
        self.close(conn.cid, e.reason, e.detail)
        if redial and owner is not None:
            self.dial(owner, conn.addr, conn.source, now=now, switched=True)
        return redial

    def _handshake_data(self, conn: PeerConnection, hs: Handshake, data: bytes | memoryview, now: float) -> None:
        for ev in hs.receive_data(bytes(data), now=now):
            match ev:
                case InfoHashReceived(info_hash=ih) if not conn.outgoing:
                    got = self.admission.incoming(ih, self.torrents.get(ih), self.fetches.get(ih), conn, self.reputation)
                    if isinstance(got, Refuse):
                        self.close(conn.cid, got.reason, got.detail)
                        return
                    if not isinstance(got, Torrent):
                        self._fetch_of[conn.cid] = got
                    else:
                        self._torrent_of[conn.cid] = got
                    hs.accept(ih)
                    self._actions.append(fx.Flush(conn.cid))
                case HandshakeReceived():
                    self._handshake_done(conn, hs, ev, now)
                    return

    def _handshake_done(self, conn: PeerConnection, hs: Handshake, ev: HandshakeReceived, now: float) -> None:
        """Into the next phase: Active for a torrent, FetchingMetadata for a magnet fetch (admission.py)."""
        owner: Owner | None = self._torrent_of.get(conn.cid) or self._fetch_of.get(conn.cid)
        refused = self.admission.completed(ev, conn, owner)
        if isinstance(refused, PeerConnection):  # conn replaces it (both sides dialled at once)
            self.close(refused.cid, CloseReason.DUPLICATE_PEER_ID, "both sides dialled: the other connection is kept")
        elif refused is not None:
            if refused.reason is CloseReason.SELF_CONNECTION and owner is not None:
                self.ctx.local_ips.add(conn.ip)
                owner.candidates.discard(conn.addr)
            self.close(conn.cid, refused.reason, refused.detail)
            return
        assert owner is not None
        self.admission.learn(conn)
        conn.peer_id, conn.reserved, conn.info_hash = ev.peer_id, ev.reserved, ev.info_hash
        pending = hs.data_to_send()
        leftover = hs.leftover()
        if not isinstance(owner, Torrent):
            from minibt.fetchlink import FetchLink
            conn.enter(FetchingMetadata(FetchLink(now=now), pending))
            self._apply(owner, owner.attach(conn, now=now), now)
            self.emit(EventName.HANDSHAKE_DONE, conn, None)
            if leftover:
                self._apply(owner, owner.on_data(conn, leftover, now=now), now)
            return
        extension = supports_extension(ev.reserved) and supports_extension(self.reserved)
        conn.enter(Active(self.admission.wire(owner, ev.reserved, self.reserved, now, extension=extension), pending))
        self._activate(conn, owner, leftover, now, handed_over=False)

    def _activate(self, conn: PeerConnection, t: Torrent, replay: bytes, now: float, *, handed_over: bool) -> None:
        """``conn`` (phase Active) joins ``t``: our bitfield and extension handshake, then the peer's
        frames that came with its handshake, or -- ``handed_over`` from a magnet fetch, whose BEP 10
        handshake we have already -- those it sent while it served us metadata."""
        self._apply(t, t.attach(conn, now=now, ext_handshake_seen=handed_over), now)
        if not handed_over:
            self.emit(EventName.HANDSHAKE_DONE, conn, t)
        wire = conn.wire
        if replay and wire is not None:
            for msg in wire.receive_data(replay, now=now):
                self._apply(t, t.on_message(conn, msg, now=now), now)
                if conn.closing:
                    return

    def _hand_over(self, conn: PeerConnection, t: Torrent, unsent: bytes, replay: bytes, now: float) -> bool:
        """A magnet fetch's connection becomes a peer connection of ``t`` (its metadata arrived)."""
        if not self.admission.can_hand_over(conn, t):
            return False
        ph = conn.phase
        before = ph.unsent if isinstance(ph, FetchingMetadata) else b""
        conn.enter(Active(self.admission.wire(t, conn.reserved, self.reserved, now, extension=True), before + unsent))
        self._torrent_of[conn.cid] = t
        try:
            self._activate(conn, t, replay, now, handed_over=True)
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

    def data_to_send(self, cid: int, limit: int, *, now: float) -> bytes:  # parts_to_send joined
        return b"".join(self.parts_to_send(cid, limit, now=now))

    def parts_to_send(self, cid: int, limit: int, *, now: float) -> list[bytes | memoryview]:
        """Up to ``limit`` bytes queued for ``cid``, as buffers for a gathering send (no copy)."""
        self._now = now
        conn = self.conns.get(cid)
        try:
            return conn.parts_to_send(limit, now=now) if conn is not None else []
        except Exception as e:
            self.fault(cid, e)
            return []

    # ------------------------------------------------------------------ workers, trackers, timers

    def on_hash_result(self, res: HashResult | CallResult, *, now: float) -> None:  # CallResult: a SaveResume's
        self._now = now
        match res.tag:
            case CheckJobTag(info_hash=ih) | PieceJobTag(info_hash=ih) | fx.SaveResume(info_hash=ih):
                t = self.torrents.get(ih)
            case _:
                return
        if t is not None:
            try:
                self._apply(t, t.on_hash_result(res, now=now), now)
            except Exception as e:
                self._torrent_fault(t, FaultKind.WORKER, e, now)

    def on_announce_result(self, info_hash: bytes, job: AnnounceJob, result: AnnounceResult | None,
                           error: str | None, *, now: float) -> None:
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
                self._close_error(conn, e, now)
            except Exception as e:
                self.fault(conn.cid, e)
        owners: list[Owner] = [*self.fetches.values(), *self.torrents.values()]
        for owner in owners:
            try:
                self._apply(owner, owner.tick(now=now), now)
            except Exception as e:
                self._torrent_fault(owner, FaultKind.TORRENT, e, now)
        if self.rates.waiting:
            self.on_rate_refill(now=now)  # also driven by rate_wake_at(); this is the fallback
        try:
            if self.dht is not None:
                self.dht.tick(self.torrents, self.fetches, self.listen_port, now=now)
        except Exception as e:
            self.faults.record(FaultKind.DATAGRAM, "DHT timers", e)

    # ------------------------------------------------------------------ the DHT (dhtservice.py)

    def enable_dht(self, *, saved: bytes | None, now: float, port: int | None) -> None:
        """Start the Mainline DHT (``saved``: what dht.dat held; ``port``: our UDP port) and set the DHT
        reserved bit, so peers learn the port from a BEP 5 PORT message."""
        from minibt.dhtservice import DhtService
        c = self.config
        self.dht = DhtService(rng=self.rng, now=now, saved=saved, bootstrap=c.dht_bootstrap, read_only=c.dht_read_only)
        self.reserved = make_reserved(fast=True, extension=True, dht=True)
        self.ctx.dht_port = port

    def on_dht_datagram(self, data: bytes, addr: Addr, *, now: float) -> None:
        """A datagram starting with ``d`` (KRPC) on the UDP socket."""
        self._now = now
        try:
            if self.dht is not None:
                self.dht.receive(data, addr, self.torrents, self.fetches, now=now)
        except Exception as e:
            self.faults.record(FaultKind.DATAGRAM, f"DHT datagram from {addr[0]}:{addr[1]}", e)

    def on_dht_resolved(self, addrs: list[Addr], *, now: float) -> None:  # a bootstrap host's addresses
        if self.dht is not None and addrs:
            self.dht.resolved(addrs, now=now)

    def _conn_timers(self, conn: PeerConnection, now: float) -> None:
        if conn.outgoing and not conn.established and now >= conn.connected_at + CONNECT_TIMEOUT_S:
            self._actions.append(Close(conn.cid, CloseReason.CONNECT_FAILED, "connect timed out"))  # drop the socket
            return self.on_closed(conn.cid, CloseReason.CONNECT_FAILED, "connect timed out", now=now)  # next transport
        timed_out = conn.handle_timeout(now=now)  # RemoteProtocolError: the handshake timed out
        t = self._torrent_of.get(conn.cid)
        for ev in timed_out:
            if t is not None:
                self._apply(t, t.on_message(conn, ev, now=now), now)
        if conn.wire is not None and conn.wire.wants_write:  # e.g. a keep-alive
            self._actions.append(fx.Flush(conn.cid))

    # ------------------------------------------------------------------ rate limits (ratecontrol.py)

    @property
    def down_limited(self) -> bool:
        """Some download limit is set: the loop reads up to ``read_quota`` and on_data charges."""
        return self.rates.down_limited

    def set_rate_limits(
        self, *, up: float | None | Keep = KEEP, down: float | None | Keep = KEEP, now: float | None = None
    ) -> None:
        """Global upload/download limits in payload bytes/s (None or 0 = unlimited), at run time."""
        self.rates.set_rates(up=up, down=down, now=self._now if now is None else now)
        self.rate_limits_changed()

    def rate_limits(self) -> tuple[float | None, float | None]:
        """The global (upload, download) limits, bytes/s; None = unlimited."""
        return self.rates.rates()

    def rate_limits_changed(self) -> None:
        self.rates.changed(self.torrents.values())


    def read_quota(self, cid: int, *, now: float) -> int:  # bytes to read from `cid` now (0: until read_retry_at)
        return self.rates.read_quota(self._torrent_of.get(cid), now=now)

    def read_retry_at(self, cid: int, *, now: float) -> float:
        return self.rates.read_retry_at(self._torrent_of.get(cid), now=now)

    def rate_wake_at(self, *, now: float) -> float | None:  # when on_rate_refill should run (None: nothing waits)
        return self.rates.wake_at(now=now)

    def _on_data_limited(self, cid: int, data: bytes | memoryview, *, now: float) -> None:
        conn = self.conns.get(cid)
        if conn is None:
            return
        before = conn.down.total
        self._on_data(cid, data, now=now)
        got = conn.down.total - before  # payload bytes of the blocks this read completed
        if got:
            self.rates.charge(self._torrent_of.get(cid), got, now=now)


    def on_rate_refill(self, *, now: float) -> None:
        """Tokens came back: serve the requests that waited for them."""
        self._now = now
        waiting = self.rates.waiting
        for key, t in list(waiting.items()):
            if t.state is TorrentState.STOPPED:
                waiting.pop(key, None)
                continue
            still, effects = t.serve_waiting(now=now)
            if not still:
                waiting.pop(key, None)
            if effects:
                self._apply(t, effects, now)
