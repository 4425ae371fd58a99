"""What the session asks of the event loop (loop.py): the loop actions ``Session.take_actions()`` returns.

``Dial`` opens connection ``cid`` (over ``transport``), ``Close`` closes it, ``Announce`` runs one
tracker transaction (trackerio.py), ``Datagram`` sends a DHT message and ``LookupDhtNode`` resolves
a DHT bootstrap host; ``HashPiece`` (a hash job for the worker pool) and ``Flush``
(connection ``cid`` has bytes: drain ``Session.data_to_send``) are torrent-layer effects
(effects.py) the session passes on unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from minibt.effects import Flush, HashPiece, SaveResume
from minibt.errors import CloseReason
from minibt.settings import Transport
from minibt.tracker import AnnounceJob, AnnounceParams
from minibt.urls import Addr


@dataclass(frozen=True, slots=True)
class Dial:
    """Open a connection to a peer (the loop dials ``addr``)."""

    cid: int
    addr: Addr
    transport: Transport = Transport.TCP


@dataclass(frozen=True, slots=True)
class Close:
    """Close a connection, with the reason reported to the session."""

    cid: int
    reason: CloseReason
    detail: str


@dataclass(frozen=True, slots=True)
class Announce:
    """Send one tracker announce (the loop's tracker I/O)."""

    info_hash: bytes
    job: AnnounceJob
    params: AnnounceParams


@dataclass(frozen=True, slots=True)
class Datagram:
    """Send ``data`` to ``addr`` from the UDP socket (a DHT message, dht.py)."""

    data: bytes
    addr: Addr


@dataclass(frozen=True, slots=True)
class LookupDhtNode:
    """Resolve a DHT bootstrap host name off the loop; the result goes to ``Session.on_dht_resolved``."""

    host: str
    port: int


# HashPiece, SaveResume and Flush: effects.py, passed on as they are
Action = Dial | Close | HashPiece | SaveResume | Announce | Flush | Datagram | LookupDhtNode
