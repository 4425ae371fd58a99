"""The torrent layer's interface to the session: effects out, session facts in.

The parts of a torrent (download.py, upload.py, dialer.py, extension.py, superseed.py, checker.py)
and their owners (torrent.py, magnetfetch.py) never call up.  Each entry point appends what it
wants done to the ``out`` list its caller passes, as the small typed values below; a torrent
collects its parts' effects and returns them, and the session (session.py, ``_apply``) is the one
place that carries them out: closing connections, queueing loop actions, updating reputation,
queueing public events.  What the torrent layer needs to know of the session -- our listen port and
addresses, bans, whether events are wanted, whether the network is paused -- it reads from the
:class:`SessionContext` the session owns and keeps current.  See ARCHITECTURE.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from minibt.errors import CloseReason
from minibt.events import Event, EventName, EventQueue
from minibt.metainfo import Metainfo
from minibt.peer import PeerConnection, PeerSource
from minibt.pex import PexPeer
from minibt.reputation import BlockRecord, Reputation
from minibt.settings import Encryption
from minibt.tracker import AnnounceJob, AnnounceParams
from minibt.urls import Addr
from minibt.workers import HashJob

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeVar

    _T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Flush:
    """Connection ``cid`` has bytes queued: the loop drains ``Session.parts_to_send(cid)`` (TCP) or
    ``Session.data_to_send(cid)`` (uTP).

    Also a loop action (session.py ``Action``): the session passes it on unchanged."""

    cid: int


@dataclass(frozen=True, slots=True)
class ClosePeer:
    """Close connection ``cid`` (its state is torn down at once, the socket by the loop)."""

    cid: int
    reason: CloseReason
    detail: str


@dataclass(frozen=True, slots=True)
class Penalize:
    """Protocol abuse or bad data from ``ip`` costs ``points`` reputation (reputation.py)."""

    ip: str
    points: int
    why: str


@dataclass(frozen=True, slots=True)
class Emit:
    """A public event (events.py) about ``conn`` (or about the torrent when None).

    The session adds the torrent whose effects these are and queues it for the Client."""

    name: EventName
    conn: PeerConnection | None = None
    index: int | None = None
    detail: str = ""
    added: tuple[PexPeer, ...] = ()
    dropped: tuple[Addr, ...] = ()
    added6: tuple[PexPeer, ...] = ()
    dropped6: tuple[Addr, ...] = ()
    addr: str | None = None
    flags: int | None = None
    code: int | None = None

    def event(self, torrent: _T | None) -> Event[_T, PeerConnection]:
        """The public event, about ``torrent`` (the torrent whose effect this is)."""
        return Event(self.name, torrent, self.conn, index=self.index, detail=self.detail, added=self.added,
                     dropped=self.dropped, added6=self.added6, dropped6=self.dropped6, addr=self.addr, flags=self.flags,
                     code=self.code)


@dataclass(frozen=True, slots=True)
class HashPiece:
    """Hash (and, for a downloaded piece, write) ``job`` in the worker pool (workers.py).

    Also a loop action: the session passes it on; the result comes back as ``on_hash_result``."""

    job: HashJob


@dataclass(frozen=True, slots=True)
class SaveResume:
    """Run ``run`` (checker.py: fsync the data written, then write the resume file) in the worker pool,
    so the loop never waits for the disk.  Also a loop action; the outcome comes back to
    ``Session.on_hash_result`` as a CallResult tagged with this value."""

    info_hash: bytes
    run: Callable[[], None]


@dataclass(frozen=True, slots=True)
class AnnounceDue:
    """A tracker announce is due; the session adds our peer id, port and key."""

    job: AnnounceJob
    uploaded: int
    downloaded: int
    left: int
    numwant: int

    def params(self, info_hash: bytes, *, peer_id: bytes, port: int, key: int) -> AnnounceParams:
        """The announce as sent (no peers wanted when stopping)."""
        return AnnounceParams(
            info_hash=info_hash, peer_id=peer_id, port=port, uploaded=self.uploaded, downloaded=self.downloaded,
            left=self.left, event=self.job.event, numwant=0 if self.job.event == "stopped" else self.numwant,
            key=key, tracker_id=self.job.tracker_id,
        )


@dataclass(frozen=True, slots=True)
class WantDials:
    """There are candidates and room for connections: the session calls ``connect_more`` with the
    global dial budget (connection limit, addresses already being dialled)."""


@dataclass(frozen=True, slots=True)
class DialPeer:
    """Dial ``addr`` for this torrent (inside the budget ``connect_more`` was given).

    The session opens the connection and tells the owner its id (``dial_started``)."""

    addr: Addr
    source: PeerSource
    flags: int = 0  # its BEP 11 flags (0x01: prefers encryption, so MSE first)


@dataclass(frozen=True, slots=True)
class SeenAs:
    """A peer's BEP 10 'yourip': how it sees us (behind a NAT, the NAT's public address).  The
    session counts (``ip``, our listen port) among our own addresses: never dialled, never relayed to."""

    ip: str


@dataclass(frozen=True, slots=True)
class HolepunchDial:
    """A BEP 55 ``connect`` (holepunch.py): dial ``addr`` over uTP at once (source HOLEPUNCH), within
    the session's connection limit but outside the dialer's choice."""

    addr: Addr


@dataclass(frozen=True, slots=True)
class RateWait:
    """Some peer's requests wait for upload tokens: the session calls ``serve_waiting`` when they refill."""


@dataclass(frozen=True, slots=True)
class LimitsChanged:
    """A rate limit changed: the session recomputes its fast-path flags."""


@dataclass(frozen=True, slots=True)
class PiecePassed:
    """Piece ``index`` verified: credit its senders (``digests``: its blocks' SHA-1 for the smart-ban
    ledger, when reputation keeps one for the piece)."""

    info_hash: bytes
    index: int
    sources: frozenset[str]
    digests: list[bytes] | None


@dataclass(frozen=True, slots=True)
class PieceFailed:
    """Piece ``index`` failed its hash check: blame its senders (who sent which block, and its SHA-1)."""

    info_hash: bytes
    index: int
    blocks: list[BlockRecord]


@dataclass(frozen=True, slots=True)
class NodeHint:
    """A peer's BEP 5 PORT message: a DHT node at ``addr`` (the session's DHT pings it)."""

    addr: Addr


@dataclass(frozen=True, slots=True)
class MetadataDone:
    """A magnet fetch verified its info dict: the session adds the torrent and hands the
    connections over (magnetfetch.py)."""

    meta: Metainfo


Effect = (
    Flush | ClosePeer | Penalize | Emit | HashPiece | AnnounceDue | WantDials | DialPeer | RateWait
    | LimitsChanged | PiecePassed | PieceFailed | MetadataDone | NodeHint | HolepunchDial | SeenAs | SaveResume
)

WANT_DIALS = WantDials()
RATE_WAIT = RateWait()
LIMITS_CHANGED = LimitsChanged()


class SessionContext:
    """The session facts the torrent layer reads; only the session writes them.

    ``reputation`` is shared for reading bans and ledgers (its scores change through effects),
    ``events.enabled`` says whether anyone listens for public events.
    """

    __slots__ = ("reputation", "events", "listen_port", "listen_ip", "local_ips", "network_paused", "wall_time",
                 "dht_port", "encryption", "holepunch", "pex")

    def __init__(self, *, reputation: Reputation, events: EventQueue, wall_time: Callable[[], float]) -> None:
        self.reputation = reputation
        self.events = events
        self.listen_port = 0
        self.listen_ip = "0.0.0.0"
        self.local_ips: set[str] = {"127.0.0.1", "::1"}
        self.network_paused: str | None = None  # why networking is paused (ifwatch.py), else None
        self.wall_time = wall_time
        self.dht_port: int | None = None  # our DHT's UDP port when the DHT runs (BEP 5 PORT message)
        self.encryption = Encryption.NONE  # the session's MSE/PE policy (a torrent may override it)
        self.holepunch = False  # BEP 55 on (SessionConfig.holepunch)
        self.pex = True  # BEP 11 on (SessionConfig.pex; never for private torrents anyway)

    def own_addresses(self) -> set[Addr]:
        """Our own (ip, listen port) pairs: never dialled (PROTOCOL.md 7.3)."""
        return {(ip, self.listen_port) for ip in self.local_ips}

    @property
    def client_addr(self) -> Addr | None:
        """Our address as peers see it, for BEP 40 priorities (None while bound to any address)."""
        return None if self.listen_ip in ("0.0.0.0", "::") else (self.listen_ip, self.listen_port)
