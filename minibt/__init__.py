"""minibt: a small BitTorrent client for Raspberry-Pi-class machines."""

from __future__ import annotations

from minibt.client import Client
from minibt.errors import CloseReason
from minibt.events import Event, EventName
from minibt.handles import Peer, PeerFlags
from minibt.magnet import Magnet, parse_magnet
from minibt.magnetfetch import MagnetFetch
from minibt.peer import PeerSource
from minibt.pex import PexConfig, PexFlag, PexPeer
from minibt.settings import SessionConfig, TorrentConfig, TorrentState
from minibt.torrent import Torrent

__version__ = "0.1.0"

__all__ = [
    "Client",
    "CloseReason",
    "Event",
    "EventName",
    "Magnet",
    "MagnetFetch",
    "Peer",
    "PeerFlags",
    "PeerSource",
    "PexConfig",
    "PexFlag",
    "PexPeer",
    "SessionConfig",
    "Torrent",
    "TorrentConfig",
    "TorrentState",
    "__version__",
    "parse_magnet",
]
