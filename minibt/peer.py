"""Per-connection state the session keeps beside the wire machine.

A ``PeerConnection`` starts in the handshake phase (``handshake`` set, ``wire`` None) and
hands over to a :class:`~minibt.wire.PeerWire` once the 68-byte BT handshake is complete
(the wsproto-style handoff of STYLE.md section 1).  It holds no socket: the loop addresses it by
its connection id.  Rates are smoothed with an exponential decay over a few seconds so the
choker and the request pipeline see a stable figure.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from minibt.errors import CloseReason
from minibt.handshake import Handshake
from minibt.urls import Addr


class Transport(enum.StrEnum):
    """How a peer connection is carried; the value is the name used in config, CLI, events and status."""

    TCP = "tcp"  # BEP 3 over TCP
    UTP = "utp"  # BEP 29 uTP


TRANSPORTS = tuple(t.value for t in Transport)


def valid_transports(names: tuple[str, ...] | list[str]) -> bool:
    """A non-empty preference order of distinct known transports."""
    return bool(names) and all(n in TRANSPORTS for n in names) and len(set(names)) == len(names)


def to_transports(names: tuple[str, ...] | list[str]) -> tuple[Transport, ...]:
    """Transport names (already checked by :func:`valid_transports`) as enum members, order kept."""
    return tuple(Transport(n) for n in names)

if TYPE_CHECKING:
    from minibt.magnetfetch import FetchLink
    from minibt.wire import PeerWire



class PeerSource(enum.Enum):
    TRACKER = "tracker"
    DHT = "dht"
    PEX = "pex"
    INCOMING = "incoming"
    USER = "user"
    HOLEPUNCH = "holepunch"
    LSD = "lsd"


class RateMeter:
    """Bytes per second, exponentially smoothed with time constant ``tau_s``."""

    __slots__ = ("_tau", "_acc", "_last", "total")

    def __init__(self, now: float, tau_s: float = 5.0) -> None:
        self._tau = tau_s
        self._acc = 0.0
        self._last = now
        self.total = 0

    def _decay(self, now: float) -> None:
        dt = now - self._last
        if dt > 0:
            self._acc *= math.exp(-dt / self._tau)
            self._last = now

    def add(self, n: int, now: float) -> None:
        self._decay(now)
        self._acc += n
        self.total += n

    def rate(self, now: float) -> float:
        self._decay(now)
        return self._acc / self._tau


@dataclass(frozen=True, slots=True)
class IncomingRequest:
    index: int
    begin: int
    length: int


class PeerConnection:
    """Everything the session knows about one connection."""

    def __init__(
        self,
        cid: int,
        addr: Addr,
        *,
        outgoing: bool,
        source: PeerSource,
        handshake: Handshake,
        now: float,
    ) -> None:
        self.cid = cid
        self.addr = addr
        self.outgoing = outgoing
        self.source = source
        self.handshake: Handshake | None = handshake
        self.wire: PeerWire | None = None
        self.fetch_link: FetchLink | None = None  # magnet phase: BEP 10 only (magnetfetch.py)
        self.info_hash: bytes | None = None
        self.peer_id: bytes | None = None
        self.reserved: bytes = bytes(8)
        self.connected_at = now
        self.established = False  # TCP connect finished (always True for incoming)
        self.transport = Transport.TCP
        self.fallbacks: list[Transport] = []  # transports still to try if the dial fails before the handshake
        self.down = RateMeter(now)  # payload bytes received from the peer
        self.up = RateMeter(now)  # payload bytes sent to the peer
        self.last_block_at = now
        self.last_useful_at = now  # last moment we were interested in it or it in us
        self.requests_in: deque[IncomingRequest] = deque()
        self.allowed_fast_in: set[int] = set()  # pieces the peer lets us request while choked
        self.allowed_fast_out: set[int] = set()  # pieces we let it request while choked
        self.ext: dict[bytes, Any] = {}
        self.ext_ids: dict[str, int] = {}
        self.reqq = 250  # BEP 10 'reqq' default assumed for libtorrent-like peers
        self.listen_port: int | None = None
        self.client_name = ""
        self.snubbed = False
        self.is_seed = False
        self.corrupt_strikes = 0
        self.closing = False
        self.pending_handshake_bytes = b""
        self.api: object | None = None  # its public minibt.handles.Peer facade, made on first use
        self.close_reason: CloseReason | None = None  # set when the session tears it down
        self.close_detail = ""

    @property
    def ip(self) -> str:
        return self.addr[0]

    @property
    def port(self) -> int:
        return self.addr[1]

    def __repr__(self) -> str:
        state = "handshaking" if self.wire is None else "active"
        return f"<PeerConnection #{self.cid} {self.addr[0]}:{self.addr[1]} {state}>"
