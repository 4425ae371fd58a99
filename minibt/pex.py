"""BEP 11 peer exchange (``ut_pex``): payload codec and the per-connection sender and receiver.

In scope: :func:`encode_pex` / :func:`decode_pex`; :class:`PexSender`, which turns the torrent's set
of established, handshaken connections into rate-limited diff messages (plus WebTorrent-style
manual controls and an explicit ``send``); :class:`PexReceiver`, which decodes and polices what one
peer sends.  The dial-candidate pool with BEP 40 ordering lives in :mod:`minibt.dialer`.
Out of scope: BEP 10 framing (wire.py) and when to dial (session).  The session never creates
these objects for private torrents (BEP 27) -- nothing here knows about privacy.

    sender:   poll(connected, now) --(>= 60 s since last, non-empty diff)--> payload bytes
    receiver: receive(payload, now) --size cap, flood check, decode, filter--> PexReceived | PexError
"""

from __future__ import annotations

import enum
import ipaddress
import itertools
import struct
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from minibt import bencode
from minibt.errors import BencodeError, CloseReason, LocalProtocolError, PexError
from minibt.urls import Addr, parse_host_port

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeGuard

PEX_EXT_NAME = "ut_pex"  # BEP 11: key in the BEP 10 handshake "m" dict
PEX_MIN_INTERVAL_S = 60.0  # BEP 11: "no more than 1 PEX message per minute"
# Convention (WebTorrent ut_pex PEX_INTERVAL): what the running client uses (TorrentConfig.pex).  The
# 5 s over the minimum keep a message delayed behind block data in our outbox from reaching a
# WebTorrent peer < 60 s after the previous one (it disconnects on that).
PEX_SEND_INTERVAL_S = 65.0
PEX_MAX_DELTA = 50  # BEP 11: after the initial message <= 50 added and <= 50 dropped (v4+v6)
# Convention (libtorrent ut_pex.cpp max_peer_entries): size of the initial full list.
PEX_MAX_INITIAL_ADDED = 100
# Convention (libtorrent ut_pex.cpp): a larger payload => disconnect (pex_message_too_large).
PEX_MAX_PAYLOAD_BYTES = 500 * 1024
PEX_MAX_PEERS_PER_SOURCE = 50  # libtorrent settings_pack max_pex_peers: PEX peers kept per connection
PEX_FLOOD_WINDOW_S = 60.0  # libtorrent ut_pex.cpp: ring of the last 6 message times ...
PEX_FLOOD_MAX_MESSAGES = 6  # ... a 7th message within 60 s => too_frequent_pex
# WebTorrent ut_pex disconnects on two messages < 60 s apart.  Convention: we allow 10 s of slack
# for the sender's timer granularity (libtorrent ticks once a second) and queueing delay in front
# of one message (a TCP retransmission or a burst of piece data); anything tighter is a flood.
PEX_MIN_GAP_S = 50.0
PEX_IDLE_RECHECK_S = 10.0  # convention: an idle sender re-diffs the connected set this often
PEX_MAX_MANUAL = 1000  # convention: bound on addresses kept by add_peer()/drop_peer()/send()
# Convention: entries looked at per list of a received message.  An honest peer sends <= 100
# (libtorrent) per list; the rest of a hostile 500 KiB payload is never turned into objects.
PEX_RECEIVE_MAX_ENTRIES = 200
_MAX_DEPTH = 8  # the payload is a flat dict; leave room for unknown nested keys
_MAX_TOKENS = 4096

_V4 = struct.Struct("!BBBBH")  # BEP 23 compact IPv4 contact
_V6 = struct.Struct("!16sH")  # BEP 7 compact IPv6 contact
_PORT = struct.Struct("!H")


class PexFlag(enum.IntFlag):
    """BEP 11 per-peer flag bits (``added.f`` / ``added6.f``)."""

    ENCRYPTION = 0x01  # prefers encryption ("e" in its extension handshake)
    SEED = 0x02  # seed / upload_only (may be a lie: only use it to skip seed-to-seed dials)
    UTP = 0x04  # supports uTP
    HOLEPUNCH = 0x08  # advertised ut_holepunch
    REACHABLE = 0x10  # outgoing connection: the peer is reachable


@dataclass(frozen=True, slots=True)
class PexConfig:
    """Limits; the defaults are the BEP 11 / libtorrent / WebTorrent values.

    ``interval_s`` may be lowered only in tests whose remote peer accepts that rate (libtorrent
    takes 6 messages a minute); the receiving limits should never be weakened.
    """

    interval_s: float = PEX_MIN_INTERVAL_S
    max_initial_added: int = PEX_MAX_INITIAL_ADDED
    max_payload_bytes: int = PEX_MAX_PAYLOAD_BYTES
    max_peers_per_source: int = PEX_MAX_PEERS_PER_SOURCE
    flood_window_s: float = PEX_FLOOD_WINDOW_S
    flood_max_messages: int = PEX_FLOOD_MAX_MESSAGES
    min_gap_s: float = PEX_MIN_GAP_S
    idle_recheck_s: float = PEX_IDLE_RECHECK_S

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.idle_recheck_s <= 0 or self.flood_window_s < 0 or self.min_gap_s < 0:
            raise ValueError("PEX intervals must be positive")
        if min(self.max_initial_added, self.max_payload_bytes, self.max_peers_per_source) < 1:
            raise ValueError("PEX limits must be >= 1")
        if self.flood_max_messages < 1:
            raise ValueError("flood_max_messages must be >= 1")


@dataclass(frozen=True, slots=True)
class PexPeer:
    """One ``added`` entry: address plus BEP 11 flags."""

    ip: str
    port: int
    flags: int = 0

    @property
    def addr(self) -> Addr:
        return (self.ip, self.port)


@dataclass(frozen=True, slots=True)
class PexMessage:
    """A decoded ``ut_pex`` payload.  IPv4 entries go in ``added``/``dropped``, IPv6 in ``*6``."""

    added: tuple[PexPeer, ...] = ()
    dropped: tuple[Addr, ...] = ()
    added6: tuple[PexPeer, ...] = ()
    dropped6: tuple[Addr, ...] = ()

    def is_empty(self) -> bool:
        return not (self.added or self.dropped or self.added6 or self.dropped6)


@dataclass(frozen=True, slots=True)
class PexReceived:
    """What a peer told us, after :class:`PexReceiver` filtering (new addresses only)."""

    added: tuple[PexPeer, ...]
    dropped: tuple[Addr, ...]
    added6: tuple[PexPeer, ...]
    dropped6: tuple[Addr, ...]

    def all_added(self) -> tuple[PexPeer, ...]:
        return self.added + self.added6

    def all_dropped(self) -> tuple[Addr, ...]:
        return self.dropped + self.dropped6


# ---------------------------------------------------------------------------------------- codec


def _local_error(detail: str) -> LocalProtocolError:
    return LocalProtocolError(CloseReason.MALFORMED_MESSAGE, detail)


def _pack_one(ip: str, port: int, v6: bool) -> bytes:
    if not 0 <= port <= 0xFFFF:
        raise _local_error(f"port {port!r} out of range")
    try:
        packed = (ipaddress.IPv6Address(ip) if v6 else ipaddress.IPv4Address(ip)).packed
    except ValueError:
        raise _local_error(f"{ip!r} is not an IPv{6 if v6 else 4} address") from None
    return packed + _PORT.pack(port)


def _pack_added(peers: tuple[PexPeer, ...], v6: bool) -> tuple[bytes, bytes]:
    for p in peers:
        if not 0 <= p.flags <= 0xFF:
            raise _local_error(f"flags {p.flags!r} do not fit in one byte")
    return b"".join(_pack_one(p.ip, p.port, v6) for p in peers), bytes(p.flags for p in peers)


def encode_pex(msg: PexMessage) -> bytes:
    """Bencode a ``ut_pex`` payload.  Empty lists are left out (BEP 11 needs at least one field,
    so an empty message is sent as ``added`` = "").  Raises LocalProtocolError for bad entries."""
    d: dict[bytes, bytes] = {}
    if msg.added:
        d[b"added"], d[b"added.f"] = _pack_added(msg.added, False)
    if msg.added6:
        d[b"added6"], d[b"added6.f"] = _pack_added(msg.added6, True)
    if msg.dropped:
        d[b"dropped"] = b"".join(_pack_one(ip, port, False) for ip, port in msg.dropped)
    if msg.dropped6:
        d[b"dropped6"] = b"".join(_pack_one(ip, port, True) for ip, port in msg.dropped6)
    if not d:
        d[b"added"] = b""
    return bencode.encode(d)


def _compact(d: dict[Any, Any], key: bytes, entry_len: int) -> tuple[bytes, int]:
    blob = d.get(key, b"")
    if not isinstance(blob, bytes):
        raise PexError(CloseReason.MALFORMED_MESSAGE, f"ut_pex {key.decode()!r} is not a string")
    if len(blob) % entry_len:
        raise PexError(
            CloseReason.MALFORMED_MESSAGE,
            f"ut_pex {key.decode()!r} has {len(blob)} bytes, not a multiple of {entry_len}",
        )
    return blob, len(blob) // entry_len


def _addrs(blob: bytes, v6: bool, limit: int) -> list[Addr]:
    if v6:
        view = blob[: limit * _V6.size]
        return [(ipaddress.IPv6Address(raw).compressed, port) for raw, port in _V6.iter_unpack(view)]
    view = blob[: limit * _V4.size]
    return [(f"{a}.{b}.{c}.{d}", port) for a, b, c, d, port in _V4.iter_unpack(view)]


def _added(d: dict[Any, Any], key: bytes, v6: bool, limit: int) -> tuple[PexPeer, ...]:
    blob, count = _compact(d, key, _V6.size if v6 else _V4.size)
    flags = d.get(key + b".f")
    # libtorrent ut_pex.cpp: flags are used only if there is exactly one byte per entry.
    if not isinstance(flags, bytes) or len(flags) != count:
        flags = bytes(count)
    return tuple(PexPeer(ip, port, f) for (ip, port), f in zip(_addrs(blob, v6, limit), flags, strict=False))


def decode_pex(
    payload: bytes | bytearray | memoryview,
    *,
    max_payload_bytes: int = PEX_MAX_PAYLOAD_BYTES,
    max_entries: int | None = None,
) -> PexMessage:
    """Decode a ``ut_pex`` payload; the size cap is checked before any decoding.

    ``max_entries`` (default: all) bounds the entries turned into objects per list; the rest of
    a longer list is ignored.  Raises PexError (only) on oversize or malformed input.
    """
    if len(payload) > max_payload_bytes:
        raise PexError(
            CloseReason.MESSAGE_TOO_LARGE, f"ut_pex message of {len(payload)} bytes (limit {max_payload_bytes})"
        )
    try:
        d = bencode.decode(payload, max_depth=_MAX_DEPTH, max_tokens=_MAX_TOKENS)
    except BencodeError as e:
        raise PexError(CloseReason.MALFORMED_MESSAGE, f"ut_pex payload is not bencode: {e}") from None
    if not isinstance(d, dict):
        raise PexError(CloseReason.MALFORMED_MESSAGE, "ut_pex payload is not a dictionary")
    limit = len(payload) if max_entries is None else max(0, max_entries)
    dropped, _ = _compact(d, b"dropped", _V4.size)
    dropped6, _ = _compact(d, b"dropped6", _V6.size)
    return PexMessage(
        added=_added(d, b"added", False, limit),
        dropped=tuple(_addrs(dropped, False, limit)),
        added6=_added(d, b"added6", True, limit),
        dropped6=tuple(_addrs(dropped6, True, limit)),
    )


# ---------------------------------------------------------------------------------------- helpers


def canonical_ip(ip: str) -> str:
    """The canonical text form of an IP literal (IPv4-mapped IPv6 becomes IPv4).

    Raises ValueError if ``ip`` is not an IP literal.
    """
    a = ipaddress.ip_address(ip.strip("[]"))
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return str(a.ipv4_mapped)
    return a.compressed


def parse_peer_addr(text: str) -> Addr:
    """Parse ``"1.2.3.4:6881"`` or ``"[2001:db8::1]:6881"`` (IP literals only, in canonical form).

    The text is read by :func:`minibt.urls.parse_host_port`, the one ``host:port`` parser; a host
    name is refused.  Raises ValueError with a readable message on anything else.
    """
    text = text.strip()
    host, port = parse_host_port(text)
    try:
        return (canonical_ip(host), port)
    except ValueError:
        raise ValueError(f"{text[:80]!r}: {host[:80]!r} is not an IP address") from None


def format_peer_addr(addr: Addr) -> str:
    """``"1.2.3.4:6881"`` or ``"[2001:db8::1]:6881"`` (the WebTorrent ut_pex event form)."""
    ip, port = addr
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _is_v6(ip: str) -> bool:
    return ":" in ip


def _is_int(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _coerce_addr(entry: object) -> tuple[Addr, int]:
    """A user-supplied entry -> (canonical addr, flags); see PexSender.send for accepted forms."""
    flags: object = 0
    if isinstance(entry, PexPeer):
        ip, port, flags = entry.ip, entry.port, entry.flags
    elif isinstance(entry, str):
        try:
            return parse_peer_addr(entry), 0
        except ValueError as e:
            raise _local_error(str(e)) from None
    elif isinstance(entry, tuple | list) and len(entry) in (2, 3):
        ip, port = entry[0], entry[1]
        if len(entry) == 3:
            flags = entry[2]
    elif isinstance(entry, dict) and "ip" in entry and "port" in entry:
        ip, port, flags = entry["ip"], entry["port"], entry.get("flags", 0)
    else:
        raise _local_error(f"cannot use {entry!r} as a PEX entry: want (ip, port) or {{'ip':..., 'port':...}}")
    if not isinstance(ip, str) or not _is_int(port) or not _is_int(flags):
        raise _local_error(f"bad PEX entry {entry!r}")
    if not 0 < port <= 0xFFFF or not 0 <= flags <= 0xFF:
        raise _local_error(f"bad port or flags in PEX entry {entry!r}")
    try:
        return (canonical_ip(ip), int(port)), int(flags)
    except ValueError:
        raise _local_error(f"{ip!r} is not an IP address") from None


# ---------------------------------------------------------------------------------------- sender


class PexSender:
    """What we tell one peer: the diff of the torrent's established connections, at most once
    per ``interval_s`` (BEP 11), plus manual entries (WebTorrent ``addPeer``/``dropPeer``).

    The session calls :meth:`poll` after creating or starting it, whenever its connected set
    changes (cheap: it returns None while rate limited) and at :meth:`next_deadline`.  An address
    is put in ``dropped`` only after it was sent in ``added``; an address is never added and
    dropped in one message; empty messages are never produced.  ``connected`` must hold only
    established, handshaken peers, keyed by the address other peers can dial (for incoming ones,
    their BEP 10 listen port), with IP strings in canonical form (:func:`canonical_ip`).
    """

    def __init__(
        self, *, peer_addr: Addr | None = None, config: PexConfig | None = None, started: bool = True
    ) -> None:
        self._cfg = config or PexConfig()
        # Never advertise the peer to itself.
        self._peer_addr = None if peer_addr is None else (canonical_ip(peer_addr[0]), peer_addr[1])
        self._running = started
        self._advertised: dict[Addr, int] = {}  # sent as added and not dropped since
        self._manual: dict[Addr, int] = {}  # add_peer()/send(added=...) entries
        self._withheld: set[Addr] = set()  # drop_peer()/send(dropped=...): never advertise
        self._initial_sent = False
        self._last_sent_at: float | None = None
        self._due_at: float | None = None
        self._sent = 0
        self._added_total = 0
        self._dropped_total = 0

    # -- controls (WebTorrent ut_pex names)

    def start(self) -> None:
        """Resume automatic messages; call :meth:`poll` next."""
        self._running = True

    def stop(self) -> None:
        """Stop automatic messages (explicit :meth:`send` still works)."""
        self._running = False
        self._due_at = None

    def reset(self) -> None:
        """Stop and forget what was advertised and all manual entries.

        The rate limit survives: the peer's one-message-a-minute limit still applies.
        """
        self.stop()
        self._advertised.clear()
        self._manual.clear()
        self._withheld.clear()
        self._initial_sent = False

    def add_peer(self, addr: str | Addr, flags: int = 0) -> None:
        """Advertise ``addr`` ('ip:port', '[ip6]:port' or a tuple) in the next message and keep it."""
        key, _ = _coerce_addr(addr)
        if not _is_int(flags) or not 0 <= flags <= 0xFF:
            raise _local_error(f"flags {flags!r} do not fit in one byte")
        self._remember(key, int(flags))

    def drop_peer(self, addr: str | Addr) -> None:
        """Withdraw ``addr``: dropped in the next message if it was advertised, and not
        advertised again until :meth:`add_peer` or :meth:`reset`."""
        key, _ = _coerce_addr(addr)
        self._forget(key)

    def _remember(self, key: Addr, flags: int) -> None:
        if key not in self._manual and len(self._manual) >= PEX_MAX_MANUAL:
            raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, f"more than {PEX_MAX_MANUAL} manual PEX entries")
        self._manual[key] = flags
        self._withheld.discard(key)

    def _forget(self, key: Addr) -> None:
        self._manual.pop(key, None)
        if key not in self._withheld and len(self._withheld) >= PEX_MAX_MANUAL:
            raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, f"more than {PEX_MAX_MANUAL} withheld PEX entries")
        self._withheld.add(key)

    # -- timers

    @property
    def running(self) -> bool:
        return self._running

    def next_deadline(self) -> float | None:
        """When :meth:`poll` should run next (None: stopped, or poll() not called since start())."""
        return self._due_at if self._running else None

    def next_allowed_at(self) -> float | None:
        """The earliest time the peer's rate limit lets us send (None: now)."""
        return None if self._last_sent_at is None else self._last_sent_at + self._cfg.interval_s

    # -- automatic messages

    def poll(self, connected: Mapping[Addr, int], *, now: float) -> bytes | None:
        """The next ``ut_pex`` payload for this peer, or None (stopped, too early, nothing new)."""
        if not self._running:
            self._due_at = None
            return None
        allowed = self.next_allowed_at()
        if allowed is not None and now < allowed:
            self._due_at = allowed
            return None
        msg = self._diff(connected)
        if msg is None:
            self._due_at = now + self._cfg.idle_recheck_s
            return None
        return self._commit(msg, now)

    def _diff(self, connected: Mapping[Addr, int]) -> PexMessage | None:
        desired: dict[Addr, int] = {}
        for addr, flags in connected.items():
            if addr != self._peer_addr and addr not in self._withheld and 0 < addr[1] <= 0xFFFF:
                desired[addr] = flags & 0xFF
        for addr, flags in self._manual.items():
            if addr != self._peer_addr:
                desired.setdefault(addr, flags)
        add_cap = PEX_MAX_DELTA if self._initial_sent else self._cfg.max_initial_added
        adv = self._advertised
        added = list(itertools.islice(((a, f) for a, f in desired.items() if a not in adv), add_cap))
        dropped = list(itertools.islice((a for a in adv if a not in desired), PEX_MAX_DELTA))
        if not added and not dropped:
            return None
        return _split(added, dropped)

    def _commit(self, msg: PexMessage, now: float) -> bytes:
        payload = encode_pex(msg)
        for p in msg.added + msg.added6:
            self._advertised[p.addr] = p.flags
        for a in msg.dropped + msg.dropped6:
            self._advertised.pop(a, None)
        self._initial_sent = True
        self._last_sent_at = now
        self._due_at = now + self._cfg.interval_s if self._running else None
        self._sent += 1
        self._added_total += len(msg.added) + len(msg.added6)
        self._dropped_total += len(msg.dropped) + len(msg.dropped6)
        return payload

    # -- explicit messages (Net::BitTorrent send_pex)

    def send(
        self,
        added: Iterable[object] = (),
        dropped: Iterable[object] = (),
        added6: Iterable[object] = (),
        dropped6: Iterable[object] = (),
        *,
        now: float,
    ) -> bytes:
        """Build a ``ut_pex`` payload with exactly these entries and return it.

        Entries are ``(ip, port)``, ``(ip, port, flags)``, ``{'ip':..., 'port':..., 'flags':...}``,
        ``'ip:port'`` or :class:`PexPeer`; each goes in the v4 or v6 field by its address family,
        so ``added``/``added6`` may be used interchangeably.  What is sent is the caller's
        business, but the peer's limits are not: raises LocalProtocolError if the last message
        to this peer was less than ``interval_s`` ago, if the message would be empty, if an
        address is both added and dropped, or if a list is over the BEP 11 size (50, or the
        initial-list size for the first message).  Added entries stay advertised and dropped
        ones withheld, exactly as with :meth:`add_peer` / :meth:`drop_peer`.
        """
        allowed = self.next_allowed_at()
        if allowed is not None and now < allowed:
            raise LocalProtocolError(
                CloseReason.PROTOCOL_VIOLATION,
                f"last PEX message to this peer was {now - (allowed - self._cfg.interval_s):.1f} s ago "
                f"(BEP 11: at most one per minute; this sender waits {self._cfg.interval_s:.0f} s)",
            )
        add: dict[Addr, int] = {}
        for entry in itertools.chain(added, added6):
            key, flags = _coerce_addr(entry)
            add.setdefault(key, flags)
        drop: dict[Addr, None] = {}
        for entry in itertools.chain(dropped, dropped6):
            drop[_coerce_addr(entry)[0]] = None
        both = add.keys() & drop.keys()
        if both:
            raise _local_error(f"BEP 11: {sorted(both)[0]} is both added and dropped")
        if not add and not drop:
            raise _local_error("BEP 11: a PEX message needs at least one entry")
        add_cap = PEX_MAX_DELTA if self._initial_sent else self._cfg.max_initial_added
        if len(add) > add_cap or len(drop) > PEX_MAX_DELTA:
            raise _local_error(
                f"BEP 11: at most {add_cap} added and {PEX_MAX_DELTA} dropped entries in this message"
            )
        for key, flags in add.items():
            self._remember(key, flags)
        for key in drop:
            self._forget(key)
        return self._commit(_split(list(add.items()), list(drop)), now)

    def stats(self) -> dict[str, int]:
        return {
            "messages_sent": self._sent,
            "added_total": self._added_total,
            "dropped_total": self._dropped_total,
            "advertised": len(self._advertised),
            "manual": len(self._manual),
            "withheld": len(self._withheld),
        }


def _split(added: list[tuple[Addr, int]], dropped: list[Addr]) -> PexMessage:
    return PexMessage(
        added=tuple(PexPeer(a[0], a[1], f) for a, f in added if not _is_v6(a[0])),
        dropped=tuple(a for a in dropped if not _is_v6(a[0])),
        added6=tuple(PexPeer(a[0], a[1], f) for a, f in added if _is_v6(a[0])),
        dropped6=tuple(a for a in dropped if _is_v6(a[0])),
    )


# ---------------------------------------------------------------------------------------- receiver


class PexReceiver:
    """Decodes and polices the ``ut_pex`` messages of one peer (PEX is untrusted input).

    Raises PexError -- the session closes the connection -- on a payload over the size cap,
    malformed bencode, more than ``flood_max_messages`` messages within ``flood_window_s``, or two
    messages less than ``min_gap_s`` apart (the first message is always allowed).  After an error
    the receiver is closed and raises on every call.  Keeps at most ``max_peers_per_source``
    addresses learned from this peer; ignores port 0, our own addresses, duplicates (within the
    message and already learned from this peer), addresses in both lists, and entries past the cap.
    ``dropped`` reports only addresses this peer had told us about.
    """

    def __init__(self, *, own_addrs: Iterable[Addr] = (), config: PexConfig | None = None) -> None:
        self._cfg = config or PexConfig()
        self._own: set[Addr] = set()
        for addr in own_addrs:
            self.add_own_addr(addr)
        self._times: deque[float] = deque(maxlen=self._cfg.flood_max_messages)
        self._learned: dict[Addr, int] = {}
        self._closed = False
        self._counts = {
            "messages": 0,
            "added": 0,
            "dropped": 0,
            "ignored_port0": 0,
            "ignored_own": 0,
            "ignored_duplicate": 0,
            "ignored_conflict": 0,
            "ignored_cap": 0,
        }

    def add_own_addr(self, addr: Addr) -> None:
        """Also ignore ``addr`` (e.g. our external address once a peer tells us)."""
        try:
            self._own.add((canonical_ip(addr[0]), addr[1]))
        except ValueError:
            pass

    @property
    def closed(self) -> bool:
        return self._closed

    def learned(self) -> dict[Addr, int]:
        """Addresses (-> flags) learned from this peer and not dropped by it since."""
        return dict(self._learned)

    def receive(self, payload: bytes | bytearray | memoryview, *, now: float) -> PexReceived:
        """Decode and filter one ``ut_pex`` payload."""
        if self._closed:
            raise PexError(CloseReason.PROTOCOL_VIOLATION, "ut_pex receiver closed after an earlier violation")
        try:
            self._check_rate(now)
            msg = decode_pex(
                payload, max_payload_bytes=self._cfg.max_payload_bytes, max_entries=PEX_RECEIVE_MAX_ENTRIES
            )
        except PexError:
            self._closed = True
            raise
        self._counts["messages"] += 1
        dropped, dropped6 = self._drop(msg.dropped), self._drop(msg.dropped6)
        gone = set(msg.dropped) | set(msg.dropped6)
        seen: set[Addr] = set()
        return PexReceived(self._add(msg.added, gone, seen), dropped, self._add(msg.added6, gone, seen), dropped6)

    def _check_rate(self, now: float) -> None:
        cfg = self._cfg
        if self._times:
            gap = now - self._times[-1]
            if gap < cfg.min_gap_s:
                raise PexError(
                    CloseReason.PROTOCOL_VIOLATION,
                    f"ut_pex messages {gap:.1f} s apart (minimum {cfg.min_gap_s:.0f} s; BEP 11: one per minute)",
                )
            if len(self._times) == self._times.maxlen and now - self._times[0] < cfg.flood_window_s:
                raise PexError(
                    CloseReason.PROTOCOL_VIOLATION,
                    f"more than {cfg.flood_max_messages} ut_pex messages within {cfg.flood_window_s:.0f} s",
                )
        self._times.append(now)

    def _drop(self, addrs: tuple[Addr, ...]) -> tuple[Addr, ...]:
        out = []
        for addr in addrs:
            if self._learned.pop(addr, None) is not None:
                out.append(addr)
        self._counts["dropped"] += len(out)
        return tuple(out)

    def _add(self, peers: tuple[PexPeer, ...], gone: set[Addr], seen: set[Addr]) -> tuple[PexPeer, ...]:
        out = []
        counts = self._counts
        for p in peers:
            addr = p.addr
            if p.port == 0:
                counts["ignored_port0"] += 1
            elif addr in gone:
                counts["ignored_conflict"] += 1  # BEP 11: never added and dropped in one message
            elif addr in seen or addr in self._learned:
                counts["ignored_duplicate"] += 1
            elif (canonical_ip(p.ip), p.port) in self._own:
                counts["ignored_own"] += 1
            elif len(self._learned) >= self._cfg.max_peers_per_source:
                counts["ignored_cap"] += 1
            else:
                self._learned[addr] = p.flags
                out.append(p)
            seen.add(addr)
        counts["added"] += len(out)
        return tuple(out)

    def stats(self) -> dict[str, int]:
        return {**self._counts, "learned": len(self._learned)}
