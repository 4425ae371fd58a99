"""BEP 10, the extension protocol: our handshake, what we keep of the peer's, and the router that
hands a torrent's extended messages to ut_pex (BEP 11) and to serving ut_metadata (BEP 9).

Pure (STYLE.md).  :func:`our_handshake` builds our handshake dictionary ('m' with the extended
messages we support -- ut_pex unless the torrent is private, ut_metadata -- 'metadata_size', 'v',
'reqq', 'p'); :func:`apply_peer_handshake` copies the peer's 'm', 'reqq', 'p' and 'v' into its
:class:`~minibt.peer.PeerConnection`, bounded and type-checked (the dictionary comes from the
remote peer).  :class:`ExtensionRouter` is the torrent's part for extended messages: per connection
that offers ``ut_pex`` a :class:`~minibt.pex.PexSender` fed with the torrent's established,
handshaken connections (dialable address + BEP 11 flags) and a :class:`~minibt.pex.PexReceiver`
whose output the torrent puts into its candidate pool (source PEX, flags kept); ut_metadata requests
are answered from the info dict.  Its effects (effects.py) go into the caller's ``out`` list: Flush
and the public ``pex``/``peer``/``dropped`` events; abuse raises RemoteProtocolError (PexError,
MetadataError: the session closes and penalises).  Nothing PEX runs for private torrents (BEP 27).
The codecs and limits live in pex.py and metadata.py; fetching metadata for magnet links is
magnetfetch.py.  A new extension (e.g. ut_holepunch, BEP 55) gets a local id here, an entry in
:func:`our_handshake` and a branch in :meth:`ExtensionRouter.on_extended`.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping

from minibt.effects import Effect, Emit, Flush
from minibt.errors import CloseReason, LocalProtocolError
from minibt.events import EventName
from minibt.holepunch import Holepunch
from minibt.infobytes import InfoBytes
from minibt.peer import PeerConnection
from minibt.pex import (
    PEX_EXT_NAME,
    PexConfig,
    PexFlag,
    PexReceived,
    PexReceiver,
    PexSender,
    canonical_ip,
    format_peer_addr,
)
from minibt.settings import Transport
from minibt.urls import Addr

TYPE_CHECKING = False
if TYPE_CHECKING:  # metadata.py loads with the first ut_metadata message (ExtensionRouter.metadata)
    from minibt.metadata import MetadataServer

log = logging.getLogger(__name__)

CLIENT_VERSION = b"minibt 0.1.0"  # BEP 10 'v'
MAX_PEER_REQQ = 2000  # convention: the largest 'reqq' of a peer we believe
MAX_CLIENT_NAME_BYTES = 64  # convention: how much of a peer's 'v' we keep
# What PeerConnection.ext keeps of the peer's handshake: BEP 21 'upload_only', BEP 6-era 'e', BEP 10
# 'yourip', 'p', 'reqq', 'v', BEP 9 'metadata_size'; byte strings up to MAX_KEPT_VALUE_BYTES.
KEPT_KEYS = frozenset((b"e", b"upload_only", b"yourip", b"p", b"reqq", b"v", b"metadata_size"))
MAX_KEPT_VALUE_BYTES = 64
# Of the peer's 'm' (extension name -> id): every name minibt speaks, and at most MAX_OTHER_EXT_NAMES others of
# at most MAX_KEPT_VALUE_BYTES (what a library user may look at).  All of it, a 32 KiB handshake of ~4,700
# names, was ~335 KiB a connection (budget.py CONN_OBJECTS_BYTES allows 16 KiB).
MAX_OTHER_EXT_NAMES = 16
# pex.PEX_EXT_NAME, metadata.METADATA_EXT_NAME, holepunch.HP_EXT_NAME (spelled here: a download without a magnet
# loads neither metadata.py nor holepunch.py; tests/unit/test_extension.py checks they agree)
_SPOKEN = frozenset(("ut_pex", "ut_metadata", "ut_holepunch"))
# Our local extended-message ids (BEP 10: the peer sends us these ids; 0 would mean disabled).
LOCAL_UT_PEX_ID = 1
LOCAL_UT_METADATA_ID = 2
LOCAL_UT_HOLEPUNCH_ID = 3


def our_handshake(
    *, reqq: int, listen_port: int | None, pex: bool = False, metadata: bool = False, metadata_size: int | None = None,
    encryption: bool = False, holepunch: bool = False,
) -> dict[bytes, object]:
    """Our extension handshake: ``reqq`` requests queued per peer, ``listen_port`` if we listen,
    ``ut_pex`` if ``pex`` (never for private torrents, BEP 27), ``ut_metadata`` if ``metadata``
    with ``metadata_size`` when we have the info dict (BEP 9), ``e`` = 1 if we prefer encryption
    (MSE/PE; what other peers learn as PEX flag 0x01), ``ut_holepunch`` if ``holepunch`` (BEP 55)."""
    m: dict[bytes, int] = {}
    if pex:
        m[b"ut_pex"] = LOCAL_UT_PEX_ID
    if metadata:
        m[b"ut_metadata"] = LOCAL_UT_METADATA_ID
    if holepunch:
        m[b"ut_holepunch"] = LOCAL_UT_HOLEPUNCH_ID
    hs: dict[bytes, object] = {b"m": m, b"v": CLIENT_VERSION, b"reqq": reqq}
    if metadata and metadata_size:
        hs[b"metadata_size"] = metadata_size
    if listen_port:
        hs[b"p"] = listen_port
    if encryption:
        hs[b"e"] = 1
    return hs


def apply_peer_handshake(peer: PeerConnection, d: dict[bytes, object]) -> None:
    """Keep what the peer's extension handshake ``d`` says; ignore entries of the wrong type."""
    # Only the scalars someone reads: the whole dict (up to EXT_HANDSHAKE_MAX_TOKENS) could be ~100x
    # its bencoded size in Python objects, per connection.
    peer.ext = {k: v for k, v in d.items() if k in KEPT_KEYS and (isinstance(v, int) or
                                                               (isinstance(v, bytes) and len(v) <= MAX_KEPT_VALUE_BYTES))}
    m = d.get(b"m")
    if isinstance(m, dict):
        ids: dict[str, int] = {}
        others = 0
        for k, v in m.items():
            if not isinstance(k, bytes) or not isinstance(v, int) or len(k) > MAX_KEPT_VALUE_BYTES:
                continue
            name = k.decode("utf-8", "replace")
            if name not in _SPOKEN:
                if others >= MAX_OTHER_EXT_NAMES:
                    continue
                others += 1
            ids[name] = v
        peer.ext_ids = ids
    reqq = d.get(b"reqq")
    if isinstance(reqq, int) and reqq > 0:
        peer.reqq = min(reqq, MAX_PEER_REQQ)
    p = d.get(b"p")
    if isinstance(p, int) and 0 < p < 65536:
        peer.listen_port = p
    v = d.get(b"v")
    if isinstance(v, bytes):
        peer.client_name = v[:MAX_CLIENT_NAME_BYTES].decode("utf-8", "replace")


def dialable_addr(peer: PeerConnection) -> Addr | None:
    """The address other peers can dial to reach ``peer`` (BEP 11: only these are advertised):
    the one we dialled, or for an incoming peer the listen port from its BEP 10 handshake."""
    if peer.outgoing:
        ip, port = peer.addr
    elif peer.listen_port:
        ip, port = peer.ip, peer.listen_port
    else:
        return None
    try:
        return (canonical_ip(ip), port)
    except ValueError:
        return None


def pex_flags(peer: PeerConnection) -> int:
    """BEP 11 flags we advertise for ``peer``."""
    f = 0
    if peer.ext.get(b"e") == 1 or peer.encrypted:  # said it prefers encryption, or took RC4 with us
        f |= PexFlag.ENCRYPTION
    if peer.is_seed or peer.ext.get(b"upload_only") == 1:  # BEP 21 upload_only counts as a seed
        f |= PexFlag.SEED
    if peer.transport == Transport.UTP:
        f |= PexFlag.UTP
    if peer.ext_ids.get("ut_holepunch", 0) > 0:
        f |= PexFlag.HOLEPUNCH
    if peer.outgoing:
        f |= PexFlag.REACHABLE
    return int(f)


def _is_local(ip: str) -> bool:
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return a.is_private or a.is_loopback or a.is_link_local


class _PexLink:
    __slots__ = ("sender", "receiver", "ext_id", "addr")

    def __init__(self, sender: PexSender, receiver: PexReceiver, ext_id: int, addr: Addr | None) -> None:
        self.sender = sender
        self.receiver = receiver
        self.ext_id = ext_id
        self.addr = addr


class ExtensionRouter:
    """ut_pex and ut_metadata (serving) for the peers of one torrent."""

    def __init__(
        self,
        *,
        peers: Mapping[int, PeerConnection],
        info_bytes: bytes | InfoBytes,
        private: bool,
        holepunch: Holepunch,
        pex_config: PexConfig | None = None,
    ) -> None:
        self._private = private  # BEP 27 (or PEX switched off): no PEX
        self.holepunch = holepunch  # BEP 55 (holepunch.py)
        self._peers = peers  # the torrent's handshaken connections (shared)
        self._cfg = pex_config or PexConfig()
        self._links: dict[int, _PexLink] = {}
        self._info_bytes = info_bytes
        self._metadata: MetadataServer | None = None
        self._counts = {"pex_sent": 0, "pex_received": 0, "pex_ignored_local": 0, "metadata_served": 0,
                        "metadata_busy": 0}

    @property
    def metadata(self) -> MetadataServer:
        """Serving ut_metadata (BEP 9), made at the first request: metadata.py loads then, not for every torrent
        (issue 15).  Info bytes longer than a peer may take (LIBTORRENT_MAX_METADATA_BYTES) are not served:
        every request for them is rejected."""
        if self._metadata is None:
            from minibt.metadata import LIBTORRENT_MAX_METADATA_BYTES, MetadataServer

            info = self._info_bytes
            self._metadata = MetadataServer(info if 0 < len(info) <= LIBTORRENT_MAX_METADATA_BYTES else None)
        return self._metadata

    # ------------------------------------------------------------------ our handshake

    @property
    def pex_enabled(self) -> bool:
        return not self._private

    # ------------------------------------------------------------------ the connected set

    def connected(self) -> dict[Addr, int]:
        """Established, handshaken connections: dialable address -> BEP 11 flags."""
        out: dict[Addr, int] = {}
        for p in self._peers.values():
            if p.wire is None or p.closing:
                continue
            a = dialable_addr(p)
            if a is not None:
                out[a] = pex_flags(p)
        return out

    # ------------------------------------------------------------------ peers

    def on_ext_handshake(self, peer: PeerConnection, *, own: set[Addr], now: float, out: list[Effect]) -> None:
        """The peer's BEP 10 handshake arrived (maybe again): start PEX with it if it offers ut_pex.
        ``own``: our own addresses, never taken from PEX."""
        ext_id = peer.ext_ids.get(PEX_EXT_NAME, 0)
        link = self._links.get(peer.cid)
        if not self.pex_enabled or not 0 < ext_id <= 255:
            if link is not None:
                link.sender.stop()
                link.ext_id = 0
            return
        if link is not None:
            link.ext_id = ext_id  # a repeated handshake may renumber the extension
            link.addr = dialable_addr(peer)
            return
        addr = dialable_addr(peer)
        self._links[peer.cid] = _PexLink(
            PexSender(peer_addr=addr, config=self._cfg),
            PexReceiver(own_addrs=own, config=self._cfg),
            ext_id,
            addr,
        )
        self._poll(peer, now, out)

    def peer_gone(self, cid: int) -> None:
        self._links.pop(cid, None)
        self.holepunch.peer_gone(cid)
        if self._metadata is not None:
            self._metadata.forget_peer(cid)

    def sender(self, cid: int) -> PexSender | None:
        link = self._links.get(cid)
        return None if link is None else link.sender

    def receiver(self, cid: int) -> PexReceiver | None:
        link = self._links.get(cid)
        return None if link is None else link.receiver

    # ------------------------------------------------------------------ sending

    def _poll(
        self, peer: PeerConnection, now: float, out: list[Effect], connected: Mapping[Addr, int] | None = None
    ) -> None:
        link = self._links.get(peer.cid)
        if link is None or link.ext_id == 0 or peer.wire is None or peer.closing:
            return
        payload = link.sender.poll(self.connected() if connected is None else connected, now=now)
        if payload is not None:
            peer.wire.extended(link.ext_id, payload)
            out.append(Flush(peer.cid))
            self._counts["pex_sent"] += 1

    def tick(self, *, now: float, out: list[Effect]) -> None:
        """Send the PEX messages that are due (at most one per ``interval_s`` per connection)."""
        connected: dict[Addr, int] | None = None
        for cid, link in self._links.items():
            due = link.sender.next_deadline()
            if not link.sender.running or (due is not None and now < due):
                continue
            peer = self._peers.get(cid)
            if peer is None:
                continue
            if connected is None:
                connected = self.connected()
            self._poll(peer, now, out, connected)

    def next_deadline(self) -> float | None:
        return min((d for link in self._links.values() if (d := link.sender.next_deadline()) is not None), default=None)

    def send_pex(
        self,
        peer: PeerConnection,
        added: Iterable[object] = (),
        dropped: Iterable[object] = (),
        added6: Iterable[object] = (),
        dropped6: Iterable[object] = (),
        *,
        now: float,
        out: list[Effect],
    ) -> None:
        """An explicit ut_pex message (library API); raises LocalProtocolError if not allowed now."""
        link = self._require_link(peer, "send_pex")
        assert peer.wire is not None
        payload = link.sender.send(added, dropped, added6, dropped6, now=now)
        peer.wire.extended(link.ext_id, payload)
        out.append(Flush(peer.cid))
        self._counts["pex_sent"] += 1

    def _require_link(self, peer: PeerConnection, what: str) -> _PexLink:
        if not self.pex_enabled:
            raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, f"{what}: no PEX for a private torrent (BEP 27)")
        link = self._links.get(peer.cid)
        if link is None or link.ext_id == 0 or peer.wire is None or peer.closing:
            raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, f"{what}: the peer does not support ut_pex")
        return link

    def control(self, peer: PeerConnection, what: str) -> PexSender:
        """The sender behind ``peer.pex`` (start/stop/reset/add_peer/drop_peer)."""
        return self._require_link(peer, what).sender

    def poll_now(self, peer: PeerConnection, *, now: float, out: list[Effect]) -> None:
        """After a control call: send at once if the rate limit allows."""
        self._poll(peer, now, out)

    # ------------------------------------------------------------------ receiving

    def on_extended(
        self, peer: PeerConnection, ext_id: int, payload: bytes, *, now: float, out: list[Effect]
    ) -> tuple[PexReceived, Addr] | None:
        """An extended message sent to one of our local ids; returns what a ut_pex message told us
        and the PEX source it came from (the torrent adds it to its candidates).  Raises
        RemoteProtocolError (PexError, MetadataError) on abuse: the session closes the connection
        and penalises the IP."""
        if ext_id == LOCAL_UT_PEX_ID:
            return self._on_pex(peer, payload, now, out)
        if ext_id == LOCAL_UT_METADATA_ID:
            self._on_metadata(peer, payload, now, out)
        if ext_id == LOCAL_UT_HOLEPUNCH_ID:
            self.holepunch.on_message(peer, payload, now=now, out=out)
        # other ids: not ours to understand (BEP 10); ignore
        return None

    def _on_pex(
        self, peer: PeerConnection, payload: bytes, now: float, out: list[Effect]
    ) -> tuple[PexReceived, Addr] | None:
        link = self._links.get(peer.cid)
        if link is None:
            # ut_pex from a peer that never offered it, or any ut_pex on a private torrent: ignore
            # (libtorrent does not even create the plugin for private torrents).
            return None
        got = link.receiver.receive(payload, now=now)  # PexError propagates: close + penalty
        self._counts["pex_received"] += 1
        if not _is_local(peer.ip):
            got = self._drop_local(got)
        self._emit(peer, got, out)
        return got, link.addr or peer.addr

    def _drop_local(self, got: PexReceived) -> PexReceived:
        # libtorrent ut_pex.cpp: local (LAN) addresses from a non-local sender are ignored.
        added = tuple(p for p in got.added if not _is_local(p.ip))
        added6 = tuple(p for p in got.added6 if not _is_local(p.ip))
        self._counts["pex_ignored_local"] += len(got.added) + len(got.added6) - len(added) - len(added6)
        return PexReceived(added, got.dropped, added6, got.dropped6)

    def _emit(self, peer: PeerConnection, got: PexReceived, out: list[Effect]) -> None:
        out.append(Emit(EventName.PEX, peer, added=got.added, dropped=got.dropped, added6=got.added6,
                        dropped6=got.dropped6))
        for p in got.all_added():
            out.append(Emit(EventName.PEX_PEER, peer, addr=format_peer_addr(p.addr), flags=p.flags))
        for a in got.all_dropped():
            out.append(Emit(EventName.PEX_DROPPED, peer, addr=format_peer_addr(a)))

    def _on_metadata(self, peer: PeerConnection, payload: bytes, now: float, out: list[Effect]) -> None:
        from minibt.metadata import (
            METADATA_EXT_NAME,
            MSG_REJECT,
            MSG_REQUEST,
            decode_metadata_msg,
            encode_metadata_msg,
        )

        msg, _ = decode_metadata_msg(payload)  # MetadataError propagates
        if msg.msg_type != MSG_REQUEST or msg.piece is None:
            return  # we have the metadata: data/reject are unsolicited; unknown types MUST be ignored
        their_id = peer.ext_ids.get(METADATA_EXT_NAME, 0)
        if not 0 < their_id <= 255 or peer.wire is None:
            return  # it never told us where to send ut_metadata messages
        if peer.wire.can_send():
            peer.wire.extended(their_id, self.metadata.on_request(peer.cid, msg.piece, now=now))
            self._counts["metadata_served"] += 1
        else:  # it has not read what we sent it yet: no 16 KiB piece on top (the wire's hard cap closes a non-reader)
            peer.wire.extended(their_id, encode_metadata_msg(MSG_REJECT, max(0, msg.piece)))
            self._counts["metadata_busy"] += 1
        out.append(Flush(peer.cid))

    def stats(self) -> dict[str, int]:
        return {**self._counts, "pex_links": len(self._links), **{f"metadata_{k}": v for k, v in self.metadata.stats().items()}}
