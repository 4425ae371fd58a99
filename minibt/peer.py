"""Per-connection state the session keeps beside the protocol machines.

A connection is in one of three phases, each a tagged value holding that phase's machine, handed
over from one to the next (the wsproto-style handoff of STYLE.md section 1):

    Encrypting(MSE machine) --MSE done (RC4 or plaintext)--> Handshaking   (with an encryption policy)
    Handshaking(Handshake) --BT handshake done--> Active(PeerWire)
    Handshaking(Handshake) --BT handshake done, magnet without metadata--> FetchingMetadata(FetchLink)
    FetchingMetadata(FetchLink) --metadata verified--> Active(PeerWire, the frames skipped so far)

``conn.wire``, ``conn.handshake`` and ``conn.fetch_link`` read the current phase's machine (None in
the other phases); only :meth:`PeerConnection.enter` changes the phase.  A connection holds no
socket: the loop addresses it by its connection id.  Rates are smoothed with an exponential decay
over a few seconds so the choker and the request pipeline see a stable figure.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from minibt.errors import CloseReason
from minibt.handshake import Handshake
from minibt.settings import Transport
from minibt.urls import Addr
from minibt.wire import PeerWire

TYPE_CHECKING = False
if TYPE_CHECKING:  # MSE/PE (mse.py, rc4.py) is loaded by the first encrypted connection (admission.py)
    from typing import Any

    from minibt.fetchlink import FetchLink  # loaded by the first magnet link's connection (session.py)
    from minibt.mse import CipherStream, MseInitiator, MseResponder


SEND_CHUNK = 512 * 1024  # bytes taken from the session per data_to_send call (TCP: loop.py, uTP: utp_peers.py)
IOV_MAX = 1024  # buffers one sendmsg takes (Linux UIO_MAXIOV)


def drop_sent(parts: list[bytes | memoryview], sent: int) -> list[bytes | memoryview] | None:
    """What is left of a gathering send's ``parts`` once ``sent`` bytes went out (None: nothing)."""
    i = 0
    while sent:
        n = len(parts[i])
        if sent < n:
            view = parts[i]
            parts[i] = (view if isinstance(view, memoryview) else memoryview(view))[sent:]
            break
        sent -= n
        i += 1
    if i >= len(parts):
        return None
    return parts[i:] if i else parts



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
        if now != self._last:  # blocks of one read share ``now``
            self._decay(now)
        self._acc += n
        self.total += n

    def rate(self, now: float) -> float:
        self._decay(now)
        return self._acc / self._tau


@dataclass(slots=True)
class Handshaking:
    """Phase 1: the 68-byte BT handshake (BEP 3) is in progress."""

    handshake: Handshake


@dataclass(slots=True)
class FetchingMetadata:
    """Phase 2 of a magnet link's connection: BEP 10 / ut_metadata only (magnetfetch.py).

    ``unsent``: our handshake bytes not yet taken by the loop when the phase began."""

    link: FetchLink
    unsent: bytes = b""


@dataclass(slots=True)
class Active:
    """The peer wire of a torrent (BEP 3/6/10).  ``unsent``: bytes of the previous phase to go first."""

    wire: PeerWire
    unsent: bytes = b""


@dataclass(slots=True)
class Encrypting:
    """Phase 0 with an encryption policy: MSE/PE (mse.py) before the BT handshake ``then``.

    ``mse`` is None on an incoming connection until its first bytes tell a plaintext BT handshake
    from an MSE key (``sniffed`` holds them meanwhile).  Outgoing, ``then`` already produced our BT
    handshake: it travels inside MSE as the initial payload."""

    mse: MseInitiator | MseResponder | None
    then: Handshake
    sniffed: bytes = b""


Phase = Encrypting | Handshaking | FetchingMetadata | Active


# A request a peer made that we have not served yet: (piece, begin, length).
IncomingRequest = tuple[int, int, int]


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
        self._phase: Phase = Handshaking(handshake)
        self._wire: PeerWire | None = None
        self.stream: CipherStream | None = None  # RC4 after an MSE handshake (mse.py); None: plaintext
        self.raw_unsent = b""  # the MSE machine's last message (already encrypted), sent before the rest
        self.plaintext = True  # outgoing: this attempt skips MSE (admission.dial_phase / redial)
        self.crypto_switched = False  # outgoing, policy preferred: redialled once with the other encryption
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
        self.request_probe: tuple[int, int, float] | None = None  # (piece, begin, sent at): see min_latency
        self.min_latency = math.inf  # least seconds seen from a request sent to an idle pipeline to its block
        self.last_useful_at = now  # last moment we were interested in it or it in us
        # Its requests not served yet, in order: a dict used as an ordered set, so that a cancel is O(1) (a deque's
        # remove() compared up to 500 queued requests at every cancel, one a 17-byte message could cost).
        self.requests_in: dict[IncomingRequest, None] = {}
        self.dup_requests = 0  # requests it repeated while the first was still queued (upload.py: a flood past the cap)
        self.read_ahead: tuple[int, int, memoryview] | None = None  # (piece, begin, data) read past a served run
        self.served_to: tuple[int, int] = (-1, 0)  # (piece, end) of the last run served (upload.py: _read)
        self.allowed_fast_in: set[int] = set()  # pieces the peer lets us request while choked
        self.allowed_fast_out: set[int] = set()  # pieces we let it request while choked
        self.ext: dict[bytes, Any] = {}
        self.ext_ids: dict[str, int] = {}
        self.reqq = 250  # BEP 10 'reqq' default assumed for libtorrent-like peers
        self.req_depth = 0  # request pipeline depth at the last full top-up (Downloader.fill)
        self.lean_depth = -1  # most requests outstanding while the write cache is short (Downloader._update_pipeline)
        self.busy_s = 0.0  # seconds from a block to the next while requests stayed out (its service rate)
        self.had_out = False  # requests were still out after the last block
        self.listen_port: int | None = None
        self.client_name = ""
        self.snubbed = False
        self.is_seed = False
        self.corrupt_strikes = 0
        self.closing = False
        self.api: object | None = None  # its public minibt.handles.Peer facade, made on first use
        self.close_reason: CloseReason | None = None  # set when the session tears it down
        self.close_detail = ""

    # ------------------------------------------------------------------ the phase

    def enter(self, phase: Phase) -> None:
        """Hand over to the next phase (or a fresh handshake for a redial on another transport)."""
        self._phase = phase
        self._wire = phase.wire if isinstance(phase, Active) else None

    @property
    def phase(self) -> Phase:
        """Handshaking, FetchingMetadata or Active; changed by :meth:`enter` only."""
        return self._phase

    @property
    def handshake(self) -> Handshake | None:
        """The BT handshake machine while handshaking, else None."""
        ph = self.phase
        return ph.handshake if isinstance(ph, Handshaking) else None

    @property
    def wire(self) -> PeerWire | None:
        """The peer wire once active, else None (kept by enter(): read on every block)."""
        return self._wire

    @property
    def fetch_link(self) -> FetchLink | None:
        """The BEP 10-only link while fetching a magnet's metadata, else None."""
        ph = self.phase
        return ph.link if isinstance(ph, FetchingMetadata) else None

    @property
    def encrypted(self) -> bool:
        """RC4 after an MSE/PE handshake."""
        return self.stream is not None

    def data_to_send(self, limit: int, *, now: float) -> bytes:
        """Up to about ``limit`` bytes of the current phase's output, encrypted when the connection is."""
        out = self._phase_output(limit, now)
        if self.stream is not None and out:
            out = self.stream.encrypt(out)
        if self.raw_unsent:
            out, self.raw_unsent = self.raw_unsent + out, b""
        return out

    def parts_to_send(self, limit: int, *, now: float) -> list[bytes | memoryview]:
        """:meth:`data_to_send` as buffers for a gathering send: an active, unencrypted wire's queue
        as it is (no copy); anything else as one joined buffer."""
        ph = self._phase
        if self.stream is None and not self.raw_unsent and isinstance(ph, Active) and not ph.unsent:
            return ph.wire.parts_to_send(limit, now=now)
        out = self.data_to_send(limit, now=now)
        return [out] if out else []

    def _phase_output(self, limit: int, now: float) -> bytes:
        match self.phase:
            case Active(wire=wire) as ph:
                if ph.unsent:
                    out, ph.unsent = ph.unsent, b""
                    return out + wire.data_to_send(max(0, limit - len(out)), now=now)
                return wire.data_to_send(limit, now=now)
            case Handshaking(handshake=hs):
                return hs.data_to_send()
            case FetchingMetadata(link=link) as ph:
                out, ph.unsent = ph.unsent, b""
                return out + link.data_to_send(max(0, limit - len(out)))
            case Encrypting(mse=mse) if mse is not None:
                return mse.data_to_send()  # the MSE machine encrypts its own messages
        return b""

    def came_up(self, *, now: float) -> None:
        """An outgoing connect finished: start the handshake (MSE: ours is already in its initial
        payload, and its timer starts now)."""
        self.established = True
        if self.handshake is not None:
            self.handshake.start()
        ph = self._phase
        if isinstance(ph, Encrypting) and ph.mse is not None:
            ph.mse.restart_timer(now=now)

    def handle_timeout(self, *, now: float) -> list[object]:
        """Run the current phase's timers: a handshake past its deadline raises RemoteProtocolError;
        an active wire's timers return its events (keep-alive timeout, ...)."""
        match self.phase:
            case Handshaking(handshake=hs):
                dl = hs.next_deadline()
                if dl is not None and now >= dl:
                    hs.handle_timeout(now=now)
            case Active(wire=wire):
                dl = wire.next_deadline()
                if dl is not None and now >= dl:
                    return list(wire.handle_timeout(now=now))
            case Encrypting(mse=mse, then=hs):
                dl = (mse or hs).next_deadline()
                if dl is not None and now >= dl:
                    (mse or hs).handle_timeout(now=now)
        return []

    @property
    def ip(self) -> str:
        return self.addr[0]

    @property
    def port(self) -> int:
        return self.addr[1]

    def __repr__(self) -> str:
        state = type(self.phase).__name__
        return f"<PeerConnection #{self.cid} {self.addr[0]}:{self.addr[1]} {state}>"
