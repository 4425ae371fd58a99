"""minibt: a small BitTorrent client for Raspberry-Pi-class machines."""

from __future__ import annotations

from minibt.api import Event, Peer, PeerFlags
from minibt.client import Client
from minibt.errors import CloseReason
from minibt.events import EventName
from minibt.peer import PeerSource
from minibt.session import SessionConfig
from minibt.torrent import Torrent, TorrentConfig, TorrentState

__version__ = "0.1.0"

__all__ = [
    "Client",
    "CloseReason",
    "Event",
    "EventName",
    "Peer",
    "PeerFlags",
    "PeerSource",
    "SessionConfig",
    "Torrent",
    "TorrentConfig",
    "TorrentState",
    "__version__",
]
