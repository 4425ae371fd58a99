"""Public event names and the bounded queue the pure machines fill (issue 3, STYLE.md section 3).

The session never calls user code: it appends small :class:`Event`\\ s to an :class:`EventQueue`
(bounded, off until a :class:`~minibt.client.Client` enables it).  The Client
drains the queue after every loop iteration and calls the callbacks registered with ``on(name, cb)``
on the Client, a Torrent or a Peer (:class:`Listeners`).  Also here: the text of the README tables
(events and disconnect reasons) so a unit test can check the README against the enums.
"""

from __future__ import annotations

import enum
import types
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from minibt import wire_codec as w
from minibt.errors import CloseReason
from minibt.pex import PexPeer
from minibt.reputation import RepEvent, ReputationChanged

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Generic, TypeVar

    T = TypeVar("T")
    P = TypeVar("P")
else:
    T = P = object  # what the annotations below resolve to at run time

    class Generic:
        """``typing.Generic`` at run time, without loading ``typing``: ``Event[Torrent, Peer]`` is a
        ``types.GenericAlias``, as ``list[int]`` is."""

        __slots__ = ()

        def __class_getitem__(cls, params: object) -> object:
            return cls if cls is Generic else types.GenericAlias(cls, params)

MAX_QUEUED_EVENTS = 10_000  # minibt convention: the Client drains every iteration; oldest dropped beyond


class EventName(enum.StrEnum):
    """Names accepted by ``on(name, callback)``; a plain string with the same value works too."""

    PEER_CONNECTED = "peer_connected"
    HANDSHAKE_DONE = "handshake_done"
    PEER_DISCONNECTED = "peer_disconnected"
    HAVE = "have"
    BITFIELD = "bitfield"
    PEER_CHOKED_US = "peer_choked_us"
    PEER_UNCHOKED_US = "peer_unchoked_us"
    PEER_INTERESTED = "peer_interested"
    PEER_NOT_INTERESTED = "peer_not_interested"
    WE_CHOKED_PEER = "we_choked_peer"
    WE_UNCHOKED_PEER = "we_unchoked_peer"
    PIECE_VERIFIED = "piece_verified"
    PIECE_FAILED = "piece_failed"
    TORRENT_COMPLETE = "torrent_complete"
    REPUTATION_CHANGED = "reputation_changed"
    BANNED = "banned"
    PEX = "pex"
    PEX_PEER = "peer"
    PEX_DROPPED = "dropped"
    METADATA_RECEIVED = "metadata_received"
    HP_RENDEZVOUS = "hp_rendezvous"
    HP_CONNECT = "hp_connect"
    HP_ERROR = "hp_error"


# Wire messages that are also public events; Have carries its index.
WIRE_EVENTS: dict[type, EventName] = {
    w.Have: EventName.HAVE,
    w.BitfieldMsg: EventName.BITFIELD,
    w.HaveAll: EventName.BITFIELD,
    w.HaveNone: EventName.BITFIELD,
    w.Choke: EventName.PEER_CHOKED_US,
    w.Unchoke: EventName.PEER_UNCHOKED_US,
    w.Interested: EventName.PEER_INTERESTED,
    w.NotInterested: EventName.PEER_NOT_INTERESTED,
}

# (fields set besides name/torrent/peer, meaning) for the README events table.
EVENT_DOCS: dict[EventName, tuple[str, str]] = {
    EventName.PEER_CONNECTED: ("", "a TCP connection is up (incoming: accepted; outgoing: connect finished)"),
    EventName.HANDSHAKE_DONE: ("", "the BitTorrent handshake completed; `peer.peer_id`, `peer.client` are known"),
    EventName.PEER_DISCONNECTED: (
        "reason, detail",
        "the connection ended; also for failed dials and for connections refused at accept (banned, too many)",
    ),
    EventName.HAVE: ("index", "the peer announced a piece (Have)"),
    EventName.BITFIELD: ("", "the peer sent its bitfield, Have All or Have None (`peer.bitfield_status`)"),
    EventName.PEER_CHOKED_US: ("", "the peer choked us"),
    EventName.PEER_UNCHOKED_US: ("", "the peer unchoked us: requests are possible now"),
    EventName.PEER_INTERESTED: ("", "the peer is interested in our pieces"),
    EventName.PEER_NOT_INTERESTED: ("", "the peer is no longer interested"),
    EventName.WE_CHOKED_PEER: ("", "we choked the peer (built-in choker or `peer.choke()`)"),
    EventName.WE_UNCHOKED_PEER: ("", "we unchoked the peer (built-in choker or `peer.unchoke()`)"),
    EventName.PIECE_VERIFIED: ("index", "a downloaded piece passed its SHA-1 check and was written"),
    EventName.PIECE_FAILED: ("index", "a downloaded piece failed its SHA-1 check (its senders lose reputation)"),
    EventName.TORRENT_COMPLETE: ("", "the last piece was verified: the torrent is seeding now"),
    EventName.REPUTATION_CHANGED: ("ip, old, new, detail", "an IP's reputation score changed"),
    EventName.BANNED: ("ip, detail", "an IP is banned for the rest of the session"),
    EventName.PEX: (
        "added, dropped, added6, dropped6",
        "a ut_pex message (BEP 11) arrived; new addresses only, each `added` entry a `PexPeer(ip, port, flags)`",
    ),
    EventName.PEX_PEER: ("addr, flags", "one address the peer added by PEX (`'ip:port'`, `'[ip6]:port'`)"),
    EventName.PEX_DROPPED: ("addr", "one address the peer dropped by PEX (it had added it before)"),
    EventName.METADATA_RECEIVED: (
        "",
        "a magnet link's info dict arrived and matched the info-hash; `event.torrent` is the new torrent",
    ),
    EventName.HP_RENDEZVOUS: ("addr", "BEP 55: the peer asks us to relay to `addr` (answered automatically)"),
    EventName.HP_CONNECT: ("addr", "BEP 55: the peer (a relay) says to connect to `addr` over uTP (dialled automatically)"),
    EventName.HP_ERROR: ("code, addr", "BEP 55: a relay could not introduce us to `addr` (`code`: 1 NoSuchPeer, "
                         "2 NotConnected, 3 NoSupport, 4 NoSelf)"),
}

# Meaning of each CloseReason for the README table (issue 3 "Disconnect reasons").
CLOSE_REASON_DOCS: dict[CloseReason, str] = {
    CloseReason.CLOSED_BY_REMOTE: "the remote peer closed the connection",
    CloseReason.SELF_CONNECTION: "we connected to ourselves (our own peer id came back)",
    CloseReason.UNKNOWN_INFO_HASH: "the peer asked for a torrent we do not serve (detail: the info-hash)",
    CloseReason.BAD_HANDSHAKE: "malformed BitTorrent handshake",
    CloseReason.INFO_HASH_MISMATCH: "the peer answered with another info-hash than the one we dialled for",
    CloseReason.MALFORMED_MESSAGE: "a peer-wire message of the wrong size or with bad contents",
    CloseReason.DUPLICATE_PEER_ID: "already connected to a peer with this peer id (detail: the id, hex)",
    CloseReason.TOO_MANY_PEERS: "the global or per-torrent connection limit is reached",
    CloseReason.HASH_CHECKING: "the torrent is still being hash-checked",
    CloseReason.BOTH_SEEDS: "both sides are seeds",
    CloseReason.HANDSHAKE_TIMEOUT: "the handshake did not finish within 30 s",
    CloseReason.IDLE: "3 minutes neither interested nor interesting",
    CloseReason.REPUTATION_TOO_LOW: "the peer's reputation fell to 50 or below; its IP is banned for the session",
    CloseReason.BANNED: "the IP is banned (refused at accept or after the handshake)",
    CloseReason.PROTOCOL_VIOLATION: "a BEP 3/6/10 rule was broken (detail says which)",
    CloseReason.ENCRYPTION_FAILED: "the MSE/PE handshake failed, or the encryption policy refused the peer (detail says which)",
    CloseReason.MESSAGE_TOO_LARGE: "a message length prefix above the limit for its type",
    CloseReason.CONNECT_FAILED: "the outgoing TCP connect failed",
    CloseReason.IO_ERROR: "a socket error",
    CloseReason.SHUTDOWN: "we are stopping the torrent or the client",
    CloseReason.TORRENT_REMOVED: "the torrent was removed",
    CloseReason.KEEPALIVE_TIMEOUT: "nothing received from the peer for 180 s",
    CloseReason.CORRUPT_DATA: "the peer sent data that failed the hash check",
    CloseReason.INTERNAL_ERROR: "a bug in minibt while handling this peer; only this connection was closed",
}


def close_reason_table() -> str:
    """The README's disconnect-reasons table (markdown), generated from :class:`CloseReason`."""
    rows = ["| value | name | meaning |", "|---|---|---|"]
    for r in CloseReason:
        rows.append(f"| {r.value} | `{r.name}` | {CLOSE_REASON_DOCS.get(r, '(undocumented)')} |")
    return "\n".join(rows)


def event_table() -> str:
    """The README's events table (markdown), generated from :class:`EventName`."""
    rows = ["| event | fields | when |", "|---|---|---|"]
    for n in EventName:
        fields, when = EVENT_DOCS.get(n, ("", "(undocumented)"))
        rows.append(f"| `{n.value}` | {fields or '-'} | {when} |")
    return "\n".join(rows)


@dataclass(frozen=True, slots=True)
class Event(Generic[T, P]):
    """What a callback registered with ``on(name, callback)`` receives (``minibt.Event``).

    ``torrent`` is the :class:`~minibt.torrent.Torrent` the event is about, ``peer`` the
    :class:`~minibt.handles.Peer` (None for torrent-level events -- piece_verified, piece_failed,
    torrent_complete -- and for reputation events of an IP with no connection).  ``index`` is the
    piece for have and the piece events; ``reason``/``detail`` come with peer_disconnected;
    ``ip``/``old``/``new`` with the reputation events (``detail`` says why);
    ``added``/``dropped``/``added6``/``dropped6`` with ``pex`` (added entries are
    :class:`~minibt.pex.PexPeer` with ``ip``, ``port``, ``flags``); ``addr`` (``'ip:port'``) with
    ``peer``, ``dropped`` and the BEP 55 events (``hp_rendezvous``, ``hp_connect``, ``hp_error``),
    plus ``flags`` with ``peer`` and ``code`` with ``hp_error``.

    The session queues each event with the connection itself as ``peer`` (the type parameters keep
    this module below the torrent and the handles); the Client's dispatcher delivers it with the
    connection's public :class:`~minibt.handles.Peer` in its place.
    """

    name: EventName
    torrent: T | None
    peer: P | None
    index: int | None = None
    reason: CloseReason | None = None
    detail: str = ""
    ip: str | None = None
    old: int | None = None
    new: int | None = None
    added: tuple[PexPeer, ...] = ()
    dropped: tuple[tuple[str, int], ...] = ()
    added6: tuple[PexPeer, ...] = ()
    dropped6: tuple[tuple[str, int], ...] = ()
    addr: str | None = None
    flags: int | None = None
    code: int | None = None


def reputation_event(ev: RepEvent, torrent: T | None, conn: P | None) -> Event[T, P]:
    """The public event of a reputation change or a ban (``conn``: one connection of that IP, if any)."""
    if isinstance(ev, ReputationChanged):
        return Event(EventName.REPUTATION_CHANGED, torrent, conn, detail=ev.reason, ip=ev.ip, old=ev.old, new=ev.new)
    return Event(EventName.BANNED, torrent, conn, detail=ev.reason, ip=ev.ip)


class EventQueue:
    """Bounded FIFO of :class:`Event`; ``push`` is a no-op unless ``enabled``: a Dispatcher delivers the
    queue (:meth:`attach`) and some callback is registered (:meth:`listening`, kept by :class:`Listeners`).
    So a program with no callback (the CLI, the runner) builds no event; a callback gets the events that
    happen after it is registered."""

    __slots__ = ("enabled", "dropped", "_q", "_max", "_attached", "_listening")

    def __init__(self, *, max_events: int = MAX_QUEUED_EVENTS, enabled: bool = False) -> None:
        if max_events <= 0:
            raise ValueError("max_events must be positive")
        self.enabled = enabled
        self.dropped = 0
        self._q: deque[Event[Any, Any]] = deque()
        self._max = max_events
        self._attached = False
        self._listening = 0

    def attach(self) -> None:
        """A Dispatcher takes this queue's events (and so may deliver them)."""
        self._attached = True
        self.enabled = self._listening > 0

    def listening(self, delta: int) -> None:
        """Callbacks registered (+) or removed (-) on any Listeners of this queue's session."""
        self._listening += delta
        self.enabled = self._attached and self._listening > 0

    def push(self, rec: Event[Any, Any]) -> None:
        if not self.enabled:
            return
        if len(self._q) >= self._max:
            self._q.popleft()  # keep the newest: a disconnect matters more than an old Have
            self.dropped += 1
        self._q.append(rec)

    def take(self) -> list[Event[Any, Any]]:
        out = list(self._q)
        self._q.clear()
        return out

    def __len__(self) -> int:
        return len(self._q)


if TYPE_CHECKING:
    Callback = Callable[[Any], object]


def check_event_name(name: str) -> EventName:
    try:
        return EventName(name)
    except ValueError:
        known = ", ".join(n.value for n in EventName)
        raise ValueError(f"unknown event {name!r}; known events: {known}") from None


class Listeners:
    """Callbacks by event name (the registry behind ``on``/``off``); never calls them itself.  Given the
    session's EventQueue, it tells the queue how many callbacks there are (no event is built for none)."""

    __slots__ = ("_by_name", "_queue")

    def __init__(self, queue: EventQueue | None = None) -> None:
        self._by_name: dict[EventName, list[Callback]] = {}
        self._queue = queue

    def on(self, name: str, callback: Callback) -> None:
        if not callable(callback):
            raise TypeError(f"callback {callback!r} is not callable")
        self._by_name.setdefault(check_event_name(name), []).append(callback)
        if self._queue is not None:
            self._queue.listening(1)

    def off(self, name: str, callback: Callback) -> None:
        """Remove one registration of ``callback`` for ``name`` (no error if absent)."""
        cbs = self._by_name.get(check_event_name(name))
        if cbs and callback in cbs:
            cbs.remove(callback)
            if self._queue is not None:
                self._queue.listening(-1)

    def get(self, name: EventName) -> tuple[Callback, ...]:
        cbs = self._by_name.get(name)
        return tuple(cbs) if cbs else ()

    def __bool__(self) -> bool:
        return any(self._by_name.values())
