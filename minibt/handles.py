"""The public per-connection handles: :class:`Peer` and :class:`PeerFlags`, and the event dispatcher (issue 3).

``Peer`` is a thin facade over one :class:`~minibt.peer.PeerConnection`, its wire machine and its
torrent, with the names of Net::BitTorrent's Peer in Pythonic form.  Reading a property never
changes anything; every action goes through the same session/torrent paths the built-in logic uses
(outbox + mark dirty, picker bookkeeping for requests, reputation events, ``Session.close``).  Like
the rest of ``minibt`` it touches no socket: bytes an action queues leave on the next loop iteration.

:class:`Dispatcher` delivers the session's queued :class:`~minibt.events.Event`\\ s, with each
connection replaced by its ``Peer``, to the callbacks; only the impure :class:`~minibt.client.Client`
runs it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable

from minibt.errors import CloseReason, LocalProtocolError
from minibt.events import Event, Listeners
from minibt.faults import FaultKind
from minibt.handshake import supports_dht
from minibt.holepunch import HpMessage, HpMsgType, endpoint
from minibt.peer import PeerConnection, PeerSource
from minibt.peerid import decode_client
from minibt.pex import PexSender, canonical_ip
from minibt.session import Session
from minibt.settings import Transport
from minibt.torrent import Torrent

log = logging.getLogger(__name__)

DISPATCH_ROUNDS = 8  # callbacks may cause more events; deliver those too, but never loop forever


class PeerFlags(enum.IntFlag):
    """What a connection is and can do (``Peer.flags``)."""

    NONE = 0
    ENCRYPTED = 1  # MSE/PE: RC4 after an MSE handshake (``is_encrypted``)
    SEEDER = 2  # the peer has every piece
    INCOMING = 4  # the peer dialled us
    UTP = 8  # uTP transport (BEP 29)
    HOLEPUNCH = 16  # the peer supports ut_holepunch (BEP 55) per its BEP 10 handshake
    FAST = 32  # BEP 6 fast extension negotiated
    EXTENSION = 64  # BEP 10 extension protocol negotiated
    DHT = 128  # the peer set the BEP 5 DHT reserved bit
    PEX = 256  # the peer supports ut_pex (BEP 11) per its BEP 10 handshake
    SNUBBED = 512  # no block from it for 30 s while requests were out
    HANDSHAKE_DONE = 1024  # past the BitTorrent handshake


def _not_connected(what: str) -> LocalProtocolError:
    return LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, f"{what}: the peer is not connected (or not past the handshake)")


class Peer:
    """One peer connection, as library code sees it.  Get it from events or ``Client.peers()``.

    The same ``Peer`` object is returned for a connection as long as it lives, so per-peer
    callbacks (``peer.on(...)``) and attributes you keep in dicts stay attached to it.  After the
    connection closed, properties show the last state and ``close_reason`` is set; actions raise
    :class:`~minibt.errors.LocalProtocolError`, as do actions the protocol does not allow now.
    """

    __slots__ = ("_conn", "_session", "_torrent", "listeners", "pex")

    def __init__(self, conn: PeerConnection, session: Session) -> None:
        self._conn = conn
        self._session = session
        self._torrent: Torrent | None = session.torrent_of(conn.cid)
        self.listeners = Listeners(session.events)
        self.pex = PexControl(self)  # WebTorrent-style ut_pex controls: start/stop/reset/add_peer/drop_peer

    @classmethod
    def of(cls, conn: PeerConnection, session: Session) -> Peer:
        """The facade of ``conn`` (created once, then cached on the connection)."""
        p = conn.api
        if isinstance(p, Peer):
            return p
        p = cls(conn, session)
        conn.api = p
        return p

    def on(self, name: str, callback: Callable[[Event[Torrent, Peer]], object]) -> None:
        """Call ``callback(event)`` for this peer's events (see :class:`~minibt.events.EventName`)."""
        self.listeners.on(name, callback)

    def off(self, name: str, callback: Callable[[Event[Torrent, Peer]], object]) -> None:
        self.listeners.off(name, callback)

    # ------------------------------------------------------------------ identity

    @property
    def ip(self) -> str:
        return self._conn.ip

    @property
    def port(self) -> int:
        return self._conn.port

    @property
    def peer_id(self) -> bytes | None:
        """The 20-byte peer id from its handshake (None before)."""
        return self._conn.peer_id

    @property
    def client(self) -> str:
        """Its BEP 10 'v' string when it sent one, else the name decoded from its peer id."""
        return self._conn.client_name or decode_client(self._conn.peer_id)

    @property
    def client_from_peer_id(self) -> str:
        return decode_client(self._conn.peer_id)

    @property
    def incoming(self) -> bool:
        return not self._conn.outgoing

    @property
    def source(self) -> PeerSource:
        """How we learnt about it: tracker, DHT, PEX, incoming, user, holepunch or LSD."""
        return self._conn.source

    @property
    def reserved_bytes(self) -> bytes:
        return self._conn.reserved

    @property
    def transport(self) -> str:
        """'tcp' or 'utp' (BEP 29)."""
        return str(self._conn.transport)

    @property
    def torrent(self) -> Torrent | None:
        """Its torrent (None for an incoming connection before the handshake named one)."""
        if self._torrent is None:
            self._torrent = self._session.torrent_of(self._conn.cid)
        return self._torrent

    @property
    def close_reason(self) -> CloseReason | None:
        """Why the connection ended (None while it is open)."""
        return self._conn.close_reason

    @property
    def close_detail(self) -> str:
        return self._conn.close_detail

    @property
    def connected(self) -> bool:
        c = self._conn
        return not c.closing and self._session.conns.get(c.cid) is c

    # ------------------------------------------------------------------ state

    @property
    def am_choking(self) -> bool:
        w = self._conn.wire
        return True if w is None else w.am_choking

    @property
    def am_interested(self) -> bool:
        w = self._conn.wire
        return False if w is None else w.am_interested

    @property
    def peer_choking(self) -> bool:
        w = self._conn.wire
        return True if w is None else w.peer_choking

    @property
    def peer_interested(self) -> bool:
        w = self._conn.wire
        return False if w is None else w.peer_interested

    @property
    def is_seeder(self) -> bool:
        t = self.torrent
        return self._conn.is_seed or (t is not None and t.picker.peer_is_seed(self._conn.cid))

    @property
    def is_encrypted(self) -> bool:
        """RC4 after an MSE/PE handshake (mse.py)."""
        return self._conn.encrypted

    @property
    def snubbed(self) -> bool:
        return self._conn.snubbed

    @property
    def flags(self) -> PeerFlags:
        c = self._conn
        f = PeerFlags.NONE
        if self.is_seeder:
            f |= PeerFlags.SEEDER
        if c.encrypted:
            f |= PeerFlags.ENCRYPTED
        if not c.outgoing:
            f |= PeerFlags.INCOMING
        if c.transport == Transport.UTP:
            f |= PeerFlags.UTP
        if c.wire is not None:
            f |= PeerFlags.HANDSHAKE_DONE
            if c.wire.fast:
                f |= PeerFlags.FAST
            if c.wire.extension:
                f |= PeerFlags.EXTENSION
        if supports_dht(c.reserved):
            f |= PeerFlags.DHT
        if "ut_holepunch" in c.ext_ids:
            f |= PeerFlags.HOLEPUNCH
        if "ut_pex" in c.ext_ids:
            f |= PeerFlags.PEX
        if c.snubbed:
            f |= PeerFlags.SNUBBED
        return f

    @property
    def bitfield(self) -> bytes:
        """The pieces it announced, as a BEP 3 bitfield (b'' before its torrent is known)."""
        t = self.torrent
        return b"" if t is None else t.picker.peer_pieces(self._conn.cid)

    @property
    def bitfield_status(self) -> str | bytes:
        """'all', 'none' or the raw bitfield (Net::BitTorrent's bitfield_status)."""
        if self.is_seeder:
            return "all"
        bits = self.bitfield
        return bits if any(bits) else "none"

    @property
    def blocks_inflight(self) -> int:
        """Our requests to it not answered yet."""
        t = self.torrent
        return 0 if t is None else t.picker.num_outstanding(self._conn.cid)

    @property
    def rate_down(self) -> float:
        """Payload bytes/s received from it (smoothed over a few seconds)."""
        return self._conn.down.rate(self._session.now)

    @property
    def rate_up(self) -> float:
        return self._conn.up.rate(self._session.now)

    @property
    def downloaded(self) -> int:
        return self._conn.down.total

    @property
    def uploaded(self) -> int:
        return self._conn.up.total

    @property
    def reputation(self) -> int:
        """The score of its IP (starts at 100; banned at 50 or below)."""
        return self._session.reputation.score(self._conn.ip)

    # ------------------------------------------------------------------ actions

    def _live(self, what: str) -> tuple[PeerConnection, Torrent]:
        c = self._conn
        t = self.torrent
        if c.wire is None or t is None or not self.connected:
            raise _not_connected(what)
        return c, t

    def choke(self) -> None:
        """Choke it (its pending requests are rejected, except allowed-fast ones; BEP 6)."""
        c, t = self._live("choke")
        t.choke_peer(c, now=self._session.now)

    def unchoke(self) -> None:
        c, t = self._live("unchoke")
        t.unchoke_peer(c, now=self._session.now)

    def interested(self) -> None:
        c, _ = self._live("interested")
        assert c.wire is not None
        c.wire.interested()
        self._session.mark_dirty(c.cid)

    def not_interested(self) -> None:
        c, _ = self._live("not_interested")
        assert c.wire is not None
        c.wire.not_interested()
        self._session.mark_dirty(c.cid)

    def request(self, index: int, begin: int, length: int) -> None:
        """Request one block; the answer is written, hashed and verified like any other block.

        Raises LocalProtocolError when it is not allowed: torrent not downloading, piece already had
        or being hashed, the peer lacks the piece, a malformed block, a block already received or
        already requested from this peer, the peer choking us (outside its allowed-fast set) or its
        request queue full.
        """
        c, t = self._live("request")
        t.request_block(c, index, begin, length, now=self._session.now)

    def send_suggest(self, index: int) -> None:
        """BEP 6 Suggest Piece (needs the fast extension and a piece we have)."""
        c, t = self._live("send_suggest")
        assert c.wire is not None
        if not 0 <= index < t.meta.num_pieces or not t.have[index]:
            raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, f"suggest: we do not have piece {index}")
        c.wire.suggest(index)
        self._session.mark_dirty(c.cid)

    def send_allowed_fast(self, index: int) -> None:
        """BEP 6 Allowed Fast: it may request this piece (which we have) even while choked."""
        c, t = self._live("send_allowed_fast")
        assert c.wire is not None
        if not 0 <= index < t.meta.num_pieces or not t.have[index]:
            raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, f"allowed_fast: we do not have piece {index}")
        if index not in c.allowed_fast_out:
            c.wire.allowed_fast(index)
            c.allowed_fast_out.add(index)
            self._session.mark_dirty(c.cid)

    def is_allowed_fast(self, index: int) -> bool:
        """Whether it told us (Allowed Fast) that we may request ``index`` while it chokes us."""
        return index in self._conn.allowed_fast_in

    def adjust_reputation(self, delta: int, why: str = "adjusted by the library user") -> None:
        """Change its IP's score; at 50 or below it is disconnected and banned for the session."""
        s = self._session
        s.reputation_events(s.reputation.adjust(self._conn.ip, int(delta), why))

    def send_pex(
        self,
        added: Iterable[object] = (),
        dropped: Iterable[object] = (),
        added6: Iterable[object] = (),
        dropped6: Iterable[object] = (),
    ) -> None:
        """Send one ut_pex message (BEP 11) now; entries are ``(ip, port)``, ``{'ip':..., 'port':...}``
        (optionally with ``flags``) or ``'ip:port'``.

        Raises LocalProtocolError if the peer does not support ut_pex, the torrent is private, the
        last PEX message to this peer was less than 60 s ago, or the message breaks BEP 11 (empty,
        an address both added and dropped, more than 50 entries in a list after the first message).
        """
        c, t = self._live("send_pex")
        t.send_pex(c, added, dropped, added6, dropped6, now=self._session.now)

    # ------------------------------------------------------------------ BEP 55 holepunch

    def send_hp_rendezvous(self, target: tuple[str, int] | Peer) -> None:
        """Ask this peer to relay (BEP 55): introduce us to ``target``, an endpoint ``(ip, port)`` or
        another connected ``Peer`` (its endpoint as a third peer sees it: its uTP address, or its IP
        and BEP 10 listen port).  The peer answers with hp_connect (then we dial over uTP at once)
        or hp_error.  Raises LocalProtocolError if the peer does not speak ut_holepunch."""
        addr = endpoint(target._conn) if isinstance(target, Peer) else (str(target[0]), int(target[1]))
        self._send_hp("send_hp_rendezvous", HpMessage(HpMsgType.RENDEZVOUS, _hp_addr(addr)))

    def send_hp_connect(self, ip: str, port: int) -> None:
        """Tell this peer to open a uTP connection to ``ip:port`` (what a relay sends both sides)."""
        self._send_hp("send_hp_connect", HpMessage(HpMsgType.CONNECT, _hp_addr((ip, port))))

    def send_hp_error(self, code: int, ip: str, port: int) -> None:
        """Tell this peer a rendezvous for ``ip:port`` failed (``code``: HpError 1-4)."""
        self._send_hp("send_hp_error", HpMessage(HpMsgType.ERROR, _hp_addr((ip, port)), int(code)))

    def _send_hp(self, what: str, msg: HpMessage) -> None:
        c, t = self._live(what)
        t.send_hp(c, msg)

    def disconnect(self, reason: CloseReason, detail: str = "closed by the library user") -> None:
        """Close the connection; peer_disconnected follows with this reason."""
        self._session.close(self._conn.cid, CloseReason(reason), detail)

    # ------------------------------------------------------------------ dumps

    def describe(self) -> str:
        """A multi-line, human-readable dump of its state."""
        t = self.torrent
        pid = self.peer_id
        lines = [
            f"peer {self.ip}:{self.port} ({'incoming' if self.incoming else 'outgoing'}, {self.transport}, "
            f"{'RC4 (MSE/PE)' if self.is_encrypted else 'plaintext'}, source {self.source.value})",
            f"  client: {self.client or '?'}  peer id: {pid!r}",
            f"  torrent: {t.meta.name + ' ' + t.info_hash.hex() if t is not None else '-'}",
            f"  connected: {self.connected}"
            + (f"  closed: {self.close_reason.name} ({self.close_reason.value}) {self.close_detail}"
               if self.close_reason is not None else ""),
            f"  am_choking={self.am_choking} am_interested={self.am_interested} "
            f"peer_choking={self.peer_choking} peer_interested={self.peer_interested}",
        ]
        if t is not None:
            bits = self.bitfield
            have = sum(bin(b).count("1") for b in bits)
            lines.append(
                f"  pieces: {have}/{t.meta.num_pieces}  seeder={self.is_seeder}  blocks in flight: {self.blocks_inflight}"
            )
        lines.append(
            f"  rate down {self.rate_down:.0f} B/s, up {self.rate_up:.0f} B/s; "
            f"total down {self.downloaded} B, up {self.uploaded} B"
        )
        lines.append(f"  reputation: {self.reputation}  flags: {self.flags!r}  reserved: {self.reserved_bytes.hex()}")
        fast_in = sorted(self._conn.allowed_fast_in)
        if fast_in:
            lines.append(f"  allowed fast (from it): {fast_in}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        state = "connected" if self.connected else (
            f"closed:{self.close_reason.name}" if self.close_reason is not None else "closed"
        )
        return (
            f"<Peer {self.ip}:{self.port} {'in' if self.incoming else 'out'} {self.client or '?'!s} {state} "
            f"choking={int(self.am_choking)}/{int(self.peer_choking)} "
            f"interested={int(self.am_interested)}/{int(self.peer_interested)}>"
        )


def _hp_addr(addr: tuple[str, int]) -> tuple[str, int]:
    try:
        return canonical_ip(addr[0]), int(addr[1])
    except ValueError:
        raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, f"ut_holepunch: not an IP address: {addr[0]!r}") from None


class PexControl:
    """``peer.pex``: the WebTorrent ``ut_pex`` controls on one connection (automatic PEX is on by
    default).  Each call raises LocalProtocolError if the peer does not support ut_pex, the
    torrent is private, or the connection is gone."""

    __slots__ = ("_peer",)

    def __init__(self, peer: Peer) -> None:
        self._peer = peer

    def _sender(self, what: str) -> tuple[PexSender, PeerConnection, Torrent]:
        c, t = self._peer._live(f"pex.{what}")
        return t.extensions.control(c, f"pex.{what}"), c, t

    def start(self) -> None:
        """Send automatic PEX updates again (at most one message per 60 s)."""
        s, c, t = self._sender("start")
        s.start()
        t.pex_poll_now(c, now=self._peer._session.now)

    def stop(self) -> None:
        """Stop automatic PEX updates to this peer."""
        self._sender("stop")[0].stop()

    def reset(self) -> None:
        """Stop, and forget what was advertised and every add_peer/drop_peer entry."""
        self._sender("reset")[0].reset()

    def add_peer(self, addr: str) -> None:
        """Advertise ``'ip:port'`` (or ``'[ip6]:port'``) in the next PEX message."""
        self._sender("add_peer")[0].add_peer(addr)

    def drop_peer(self, addr: str) -> None:
        """Put ``'ip:port'`` in the next message's dropped list (if advertised) and stop advertising it."""
        self._sender("drop_peer")[0].drop_peer(addr)

    def stats(self) -> dict[str, int]:
        """Counters of this connection's PEX sender and receiver (messages, entries, ignored...)."""
        c, t = self._peer._live("pex.stats")
        s, r = t.extensions.sender(c.cid), t.extensions.receiver(c.cid)
        out: dict[str, int] = {}
        if s is not None:
            out.update({f"sent_{k}": v for k, v in s.stats().items()})
        if r is not None:
            out.update({f"received_{k}": v for k, v in r.stats().items()})
        return out


class Dispatcher:
    """Drains a session's event queue and calls callbacks: peer, then torrent, then client ones.

    A callback that raises is logged and skipped; it never stops the others or the loop.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.listeners = Listeners(session.events)
        self.counters = {"events": 0, "callbacks": 0, "callback_errors": 0}
        self._dropped_seen = 0
        session.events.attach()

    def dispatch(self) -> int:
        """Deliver every queued event; returns how many there were."""
        n = 0
        for _ in range(DISPATCH_ROUNDS):
            recs = self.session.events.take()
            if not recs:
                break
            n += len(recs)
            for rec in recs:
                self._deliver(rec)
        q = self.session.events
        if q.dropped != self._dropped_seen:
            log.warning("event queue overflow: %d events dropped", q.dropped - self._dropped_seen)
            self._dropped_seen = q.dropped
        self.counters["events"] += n
        return n

    def _deliver(self, rec: Event[Torrent, PeerConnection]) -> None:
        peer = Peer.of(rec.peer, self.session) if rec.peer is not None else None
        if peer is not None and peer._torrent is None and rec.torrent is not None:
            peer._torrent = rec.torrent
        cbs = (
            (peer.listeners.get(rec.name) if peer is not None else ())
            + (rec.torrent.listeners.get(rec.name) if rec.torrent is not None else ())
            + self.listeners.get(rec.name)
        )
        if not cbs:
            return  # nobody listens (a CLI download: a few events a piece)
        ev: Event[Torrent, Peer] = Event(
            rec.name, rec.torrent, peer, rec.index, rec.reason, rec.detail, rec.ip, rec.old, rec.new,
            rec.added, rec.dropped, rec.added6, rec.dropped6, rec.addr, rec.flags,
        )
        for cb in cbs:
            self.counters["callbacks"] += 1
            try:
                cb(ev)
            except Exception as e:  # one library callback (STYLE.md section 13)
                self.counters["callback_errors"] += 1
                self.session.faults.record(FaultKind.CALLBACK, f"callback {cb!r} for event {rec.name.value}", e)
