"""minibt: a small BitTorrent client for Raspberry-Pi-class machines.

The public names below are imported on first use (PEP 562), so ``import minibt.metainfo`` (or
``minibt --version``) does not load the whole client.
"""

from __future__ import annotations

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

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

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


def __getattr__(name: str) -> Any:  # noqa: C901 - one branch per public name, static imports (test_layering)
    v: Any
    match name:
        case "Client":
            from minibt.client import Client as v
        case "CloseReason":
            from minibt.errors import CloseReason as v
        case "Event" | "EventName":
            from minibt import events
            v = getattr(events, name)
        case "Magnet" | "parse_magnet":
            from minibt import magnet
            v = getattr(magnet, name)
        case "MagnetFetch":
            from minibt.magnetfetch import MagnetFetch as v
        case "Peer" | "PeerFlags":
            from minibt import handles
            v = getattr(handles, name)
        case "PeerSource":
            from minibt.peer import PeerSource as v
        case "PexConfig" | "PexFlag" | "PexPeer":
            from minibt import pex
            v = getattr(pex, name)
        case "SessionConfig" | "TorrentConfig" | "TorrentState":
            from minibt import settings
            v = getattr(settings, name)
        case "Torrent":
            from minibt.torrent import Torrent as v
        case _:
            raise AttributeError(f"module 'minibt' has no attribute {name!r}")
    globals()[name] = v  # once
    return v


def __dir__() -> list[str]:
    return sorted(__all__)
