"""BEP 55 holepunching (``ut_holepunch``): the codec and the torrent's part that plays all three roles.

Wire format (BEP 55; PROTOCOL.md 2.10), the payload of a BEP 10 extended message::

    msg_type u8 | addr_type u8 (0 IPv4, 1 IPv6) | addr (4 or 16 bytes) | port u16 BE | err_code u32 BE

so 12 bytes for IPv4 and 24 for IPv6; ``err_code`` is 0 except in an error message.  libtorrent
(bt_peer_connection.cpp, seen on the wire in tests/integration/test_holepunch_nat.py) leaves
``err_code`` out of its rendezvous and connect messages (8 and 20 bytes), so those lengths are
accepted too; we always send BEP 55's full layout, which libtorrent reads.  Anything else (another
length, an unknown type or address type, port 0, an error without a code) is a
:class:`HolepunchError` (the session closes the connection and penalises the IP).

Roles (:class:`Holepunch`, one per torrent; pure: bytes and ``now`` in, effects out):

- **initiator**: a dial to a candidate failed; the candidate came by PEX from a peer that is still
  connected and speaks ``ut_holepunch``, and PEX flagged the candidate as speaking it too (0x08):
  ask that peer to relay (``rendezvous`` with the candidate's endpoint), at most
  ``HP_MAX_RENDEZVOUS_PER_CANDIDATE`` times, ``HP_RENDEZVOUS_RETRY_S`` apart.
- **relay**: a ``rendezvous`` from a peer that advertised ``ut_holepunch``: when the target endpoint
  is a connection of this torrent that advertised it too, each side gets a ``connect`` with the
  other's endpoint as we see it (the uTP endpoint, or the IP and its BEP 10 listen port for TCP);
  else an ``error`` (NoSuchPeer, NotConnected, NoSupport, NoSelf).
- **target** (and the initiator, on the relay's ``connect``): dial the endpoint over uTP at once,
  unless already connected to it, it is us, it is banned, or it is a local address sent by a
  non-local peer; never answer a ``connect`` with an error.

Messages from a peer that did not advertise ``ut_holepunch`` are ignored (BEP 55).  Abuse limits
(a relay that obeys blindly is a traffic reflector): each is a named constant below; going over one
disconnects the peer with a penalty.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import struct
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from minibt.effects import Effect, Emit, Flush, HolepunchDial, SessionContext
from minibt.errors import CloseReason, LocalProtocolError, RemoteProtocolError
from minibt.events import EventName
from minibt.peer import PeerConnection
from minibt.pex import PexFlag, canonical_ip, format_peer_addr
from minibt.settings import Transport
from minibt.urls import Addr

log = logging.getLogger(__name__)

HP_EXT_NAME = "ut_holepunch"
_HEAD = struct.Struct(">BB")
_TAIL = struct.Struct(">HI")
V4_LEN, V6_LEN = 2 + 4 + 6, 2 + 16 + 6  # 12 and 24 bytes
_SHORT = {V4_LEN - 4: 0, V6_LEN - 4: 1}  # libtorrent's rendezvous/connect without err_code: 8 and 20 bytes

# Abuse limits (PROTOCOL.md 2.10; libtorrent has none this explicit).  A peer relays for us a few
# times a minute at most in a healthy swarm; a flood of them is an attempt to use us as a reflector.
HP_WINDOW_S = 60.0
HP_RENDEZVOUS_PER_PEER = 20  # rendezvous one peer may ask of us per window (we send 2 messages each)
HP_CONNECT_PER_PEER = 20  # connects one peer may send us per window (each may cost a uTP dial)
HP_DIALS_PER_WINDOW = 30  # uTP dials 'connect' messages may trigger per window, all peers together
HP_MAX_RENDEZVOUS_PER_CANDIDATE = 2  # we ask a relay about one unreachable candidate at most this often
HP_RENDEZVOUS_RETRY_S = 120.0  # ... this far apart
HP_MAX_TRACKED_CANDIDATES = 1000  # candidates remembered for the two limits above (oldest forgotten)
HP_PENALTY = 5  # reputation points when a peer goes over a limit


class HpMsgType(enum.IntEnum):
    RENDEZVOUS = 0
    CONNECT = 1
    ERROR = 2


class HpError(enum.IntEnum):
    NO_SUCH_PEER = 1  # the target endpoint is not valid
    NOT_CONNECTED = 2  # the relay is not connected to the target
    NO_SUPPORT = 3  # the target does not speak ut_holepunch
    NO_SELF = 4  # the target is the relay itself


class HolepunchError(RemoteProtocolError):
    """A malformed or abusive ut_holepunch message (BEP 55)."""

    def __init__(self, detail: str, reason: CloseReason = CloseReason.MALFORMED_MESSAGE) -> None:
        super().__init__(reason, f"ut_holepunch: {detail}")


@dataclass(frozen=True, slots=True)
class HpMessage:
    """One BEP 55 ut_holepunch message."""

    type: HpMsgType
    addr: Addr  # canonical IP text, port
    error: int = 0


def encode_hp(msg: HpMessage) -> bytes:
    """The BEP 55 payload of ``msg``; LocalProtocolError for an endpoint that cannot be sent."""
    ip, port = msg.addr
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, f"ut_holepunch: not an IP address: {ip!r}") from None
    if not 0 < port <= 0xFFFF or not 0 <= msg.error <= 0xFFFFFFFF:
        raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, f"ut_holepunch: bad port or code {port}/{msg.error}")
    return _HEAD.pack(msg.type, 0 if a.version == 4 else 1) + a.packed + _TAIL.pack(port, msg.error)


def decode_hp(payload: bytes) -> HpMessage:
    """Parse one BEP 55 payload; HolepunchError on anything malformed."""
    n = len(payload)
    if n not in (V4_LEN, V6_LEN, *_SHORT):
        raise HolepunchError(f"{n} bytes (expected {V4_LEN} or {V6_LEN})")
    msg_type, addr_type = _HEAD.unpack_from(payload)
    if addr_type not in (0, 1) or (n != (V4_LEN if addr_type == 0 else V6_LEN) and _SHORT.get(n) != addr_type):
        raise HolepunchError(f"address type {addr_type} with {n} bytes")
    if msg_type not in HpMsgType.__members__.values():
        raise HolepunchError(f"unknown message type {msg_type}")
    raw = payload[2:6] if addr_type == 0 else payload[2:18]
    if n in _SHORT:  # libtorrent's form: no err_code
        (port,), code = struct.unpack_from(">H", payload, n - 2), 0
    else:
        port, code = _TAIL.unpack_from(payload, n - _TAIL.size)
    if port == 0:
        raise HolepunchError("port 0")
    if (msg_type == HpMsgType.ERROR) != (code != 0):
        raise HolepunchError(f"error code {code} in a message of type {msg_type}")
    ip = str(ipaddress.IPv4Address(raw) if addr_type == 0 else ipaddress.IPv6Address(raw))
    return HpMessage(HpMsgType(msg_type), (canonical_ip(ip), port), code)


_LAN = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"))  # RFC 1918, CGNAT, ULA


def is_local(ip: str) -> bool:
    """Loopback, link-local, unspecified or a LAN range (RFC 1918, CGNAT, IPv6 ULA): never a
    connect target sent by a peer outside them (a reflector into someone's LAN).  Not Python's
    ``is_private``, which also counts documentation and benchmarking ranges."""
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return True
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return a.is_loopback or a.is_link_local or a.is_unspecified or any(a in n for n in _LAN if n.version == a.version)


class _Window:
    """How many times ``key`` happened within the last HP_WINDOW_S."""

    __slots__ = ("_at",)

    def __init__(self) -> None:
        self._at: dict[object, deque[float]] = {}

    def hit(self, key: object, limit: int, now: float) -> bool:
        """Count one more for ``key``; False when that makes more than ``limit`` in the window."""
        q = self._at.setdefault(key, deque())
        while q and q[0] <= now - HP_WINDOW_S:
            q.popleft()
        if len(q) >= limit:
            return False
        q.append(now)
        return True

    def forget(self, key: object) -> None:
        self._at.pop(key, None)


def supports_hp(peer: PeerConnection) -> bool:
    return 0 < peer.ext_ids.get(HP_EXT_NAME, 0) <= 255 and peer.wire is not None and not peer.closing


def endpoint(peer: PeerConnection) -> Addr:
    """Where a third peer should send uTP to reach ``peer``: its uTP endpoint as we see it, or for a
    TCP connection its IP with the listen port of its BEP 10 handshake ('p')."""
    if peer.transport == Transport.UTP:
        return peer.addr
    p = peer.ext.get(b"p")
    return (peer.ip, p) if isinstance(p, int) and 0 < p <= 0xFFFF else peer.addr


class Holepunch:
    """BEP 55 for one torrent's connections: initiator, relay and target."""

    def __init__(self, *, peers: Mapping[int, PeerConnection], ctx: SessionContext, enabled: bool,
                 candidate_via: Callable[[Addr], tuple[Addr | None, int]]) -> None:
        self._peers = peers
        self._ctx = ctx
        self.enabled = enabled
        self._candidate_via = candidate_via  # addr -> (the PEX peer that told us of it, its PEX flags)
        self._per_peer = _Window()
        self._dials = _Window()
        self._asked: dict[Addr, tuple[int, float]] = {}  # candidate -> (rendezvous sent, last at)
        self.counts = {"hp_rendezvous_in": 0, "hp_connect_in": 0, "hp_error_in": 0, "hp_relayed": 0,
                       "hp_rendezvous_sent": 0, "hp_dials": 0, "hp_ignored": 0}

    # ---------------------------------------------------------------- sending

    def send(self, peer: PeerConnection, msg: HpMessage, out: list[Effect]) -> None:
        """Send ``msg`` to ``peer``; LocalProtocolError if it does not speak ut_holepunch."""
        if not self.enabled or not supports_hp(peer) or peer.wire is None:
            raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, "the peer does not support ut_holepunch")
        peer.wire.extended(peer.ext_ids[HP_EXT_NAME], encode_hp(msg))
        out.append(Flush(peer.cid))

    def _find(self, addr: Addr) -> PeerConnection | None:
        for p in self._peers.values():
            if p.wire is not None and not p.closing and (p.addr == addr or endpoint(p) == addr):
                return p
        return None

    # ---------------------------------------------------------------- receiving

    def on_message(self, peer: PeerConnection, payload: bytes, *, now: float, out: list[Effect]) -> None:
        """A ut_holepunch message from ``peer``.  Raises HolepunchError (close and penalise) when it
        is malformed or ``peer`` goes over a limit."""
        msg = decode_hp(payload)
        if not self.enabled or not supports_hp(peer):
            self.counts["hp_ignored"] += 1  # BEP 55: ignore peers that did not advertise the extension
            return
        addr = format_peer_addr(msg.addr)
        match msg.type:
            case HpMsgType.RENDEZVOUS:
                self.counts["hp_rendezvous_in"] += 1
                if not self._per_peer.hit(("r", peer.cid), HP_RENDEZVOUS_PER_PEER, now):
                    raise HolepunchError(f"more than {HP_RENDEZVOUS_PER_PEER} rendezvous in {HP_WINDOW_S:.0f} s",
                                         CloseReason.PROTOCOL_VIOLATION)
                out.append(Emit(EventName.HP_RENDEZVOUS, peer, addr=addr))
                self._relay(peer, msg.addr, out)
            case HpMsgType.CONNECT:
                self.counts["hp_connect_in"] += 1
                if not self._per_peer.hit(("c", peer.cid), HP_CONNECT_PER_PEER, now):
                    raise HolepunchError(f"more than {HP_CONNECT_PER_PEER} connects in {HP_WINDOW_S:.0f} s",
                                         CloseReason.PROTOCOL_VIOLATION)
                out.append(Emit(EventName.HP_CONNECT, peer, addr=addr))
                self._connect(peer, msg.addr, now, out)
            case HpMsgType.ERROR:
                self.counts["hp_error_in"] += 1
                log.info("holepunch: %s:%d could not relay to %s: error %d", peer.ip, peer.port, addr, msg.error)
                out.append(Emit(EventName.HP_ERROR, peer, addr=addr, code=msg.error))

    def _relay(self, peer: PeerConnection, target: Addr, out: list[Effect]) -> None:
        """Relay role: introduce ``peer`` and ``target`` to each other, or say why not."""
        err: HpError | None = None
        t = self._find(target)
        if target in self._ctx.own_addresses():
            err = HpError.NO_SELF
        elif t is None:
            err = HpError.NOT_CONNECTED
        elif t is peer:
            err = HpError.NO_SUCH_PEER  # a peer asking to be introduced to itself
        elif not supports_hp(t):
            err = HpError.NO_SUPPORT
        if err is not None or t is None:
            code = err or HpError.NOT_CONNECTED
            log.info("holepunch: rendezvous from %s:%d to %s: error %d (%s)", peer.ip, peer.port,
                     format_peer_addr(target), code, code.name)
            self.send(peer, HpMessage(HpMsgType.ERROR, target, int(code)), out)
            return
        self.send(t, HpMessage(HpMsgType.CONNECT, endpoint(peer)), out)
        self.send(peer, HpMessage(HpMsgType.CONNECT, endpoint(t)), out)
        self.counts["hp_relayed"] += 1
        log.info("holepunch: relayed %s <-> %s", format_peer_addr(endpoint(peer)), format_peer_addr(endpoint(t)))

    def _connect(self, peer: PeerConnection, addr: Addr, now: float, out: list[Effect]) -> None:
        """Target (or initiator) role: open uTP to ``addr`` unless there is a reason not to."""
        ip = addr[0]
        if (addr in self._ctx.own_addresses() or self._ctx.reputation.is_banned(ip) or self._find(addr) is not None
                or (is_local(ip) and not is_local(peer.ip))):
            self.counts["hp_ignored"] += 1
            return
        if not self._dials.hit("dials", HP_DIALS_PER_WINDOW, now):
            raise HolepunchError(f"connect would exceed {HP_DIALS_PER_WINDOW} holepunch dials in {HP_WINDOW_S:.0f} s",
                                 CloseReason.PROTOCOL_VIOLATION)
        self.counts["hp_dials"] += 1
        log.info("holepunch: connect from %s:%d: dialling %s over uTP", peer.ip, peer.port, format_peer_addr(addr))
        out.append(HolepunchDial(addr))

    # ---------------------------------------------------------------- initiator

    def dial_failed(self, addr: Addr, *, now: float, out: list[Effect]) -> bool:
        """A dial to candidate ``addr`` failed: ask the PEX peer that told us of it to relay, when it
        and the candidate speak ut_holepunch and the per-candidate limits allow.  True if asked."""
        if not self.enabled:
            return False
        via, flags = self._candidate_via(addr)
        relay = self._find(via) if via is not None else None
        if relay is None or not supports_hp(relay) or not flags & PexFlag.HOLEPUNCH:
            return False
        n, last = self._asked.get(addr, (0, -HP_RENDEZVOUS_RETRY_S))
        if n >= HP_MAX_RENDEZVOUS_PER_CANDIDATE or now - last < HP_RENDEZVOUS_RETRY_S:
            return False
        self._asked.pop(addr, None)
        self._asked[addr] = (n + 1, now)
        while len(self._asked) > HP_MAX_TRACKED_CANDIDATES:
            del self._asked[next(iter(self._asked))]
        self.send(relay, HpMessage(HpMsgType.RENDEZVOUS, addr), out)
        self.counts["hp_rendezvous_sent"] += 1
        log.info("holepunch: %s unreachable: asked %s:%d to relay (rendezvous %d)", format_peer_addr(addr),
                 relay.ip, relay.port, n + 1)
        return True

    def peer_gone(self, cid: int) -> None:
        self._per_peer.forget(("r", cid))
        self._per_peer.forget(("c", cid))
