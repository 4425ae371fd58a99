"""The end of a connection's handshake phase: may it go on, and with which machine.

Pure decisions over plain state (STYLE.md): the session asks at the two moments a BT handshake
(handshake.py) gives it something to decide -- an incoming peer named an info-hash, a handshake
completed -- and carries out the answer: close with the :class:`Refuse` reason, or hand the
connection to its next phase (peer.py): ``Active`` with a :class:`~minibt.wire.PeerWire` for a
torrent, ``FetchingMetadata`` for a magnet link still without its info dict.  Also here: the
machines a connection gets, built with our peer id and reserved bits.
"""

from __future__ import annotations

from dataclasses import dataclass

from minibt.errors import CloseReason
from minibt.handshake import Handshake, HandshakeReceived, supports_extension, supports_fast
from minibt.magnetfetch import MagnetFetch
from minibt.peer import PeerConnection
from minibt.reputation import Reputation
from minibt.settings import TorrentState
from minibt.torrent import Torrent
from minibt.wire import PeerWire

NO_PEER_ID = bytes(20)  # some clients send all zeroes: never a duplicate


@dataclass(frozen=True, slots=True)
class Refuse:
    """Close the connection with this reason."""

    reason: CloseReason
    detail: str


class Admission:
    """Who may continue past the BT handshake; the Handshake and PeerWire machines of a connection."""

    def __init__(self, *, peer_id: bytes, timeout_s: float) -> None:
        self.peer_id = peer_id
        self.timeout_s = timeout_s

    def handshake(self, info_hash: bytes | None, reserved: bytes, now: float) -> Handshake:
        """A BT handshake machine with our id and reserved bits (``info_hash`` None: incoming, any torrent)."""
        return Handshake(peer_id=self.peer_id, reserved=reserved, info_hash=info_hash, now=now, timeout_s=self.timeout_s)

    @staticmethod
    def wire(t: Torrent, theirs: bytes, ours: bytes, now: float, *, extension: bool) -> PeerWire:
        """The peer wire of an active connection of ``t`` (fast extension if both sides set the bit)."""
        meta = t.meta
        return PeerWire(
            num_pieces=meta.num_pieces,
            piece_length=meta.piece_length,
            total_length=meta.total_length,
            fast=supports_fast(theirs) and supports_fast(ours),
            extension=extension,
            now=now,
        )

    @staticmethod
    def accept(ip: str, open_conns: int, max_conns: int, reputation: Reputation) -> Refuse | None:
        """A connection from ``ip`` was accepted by the loop: None to start its handshake."""
        if open_conns >= max_conns:
            return Refuse(CloseReason.TOO_MANY_PEERS, "global connection limit")
        if reputation.is_banned(ip):  # a banned IP gets no handshake at all
            return Refuse(CloseReason.BANNED, reputation.banned().get(ip, "banned"))
        return None

    @staticmethod
    def incoming(
        info_hash: bytes, t: Torrent | None, f: MagnetFetch | None, ip: str, reputation: Reputation
    ) -> Torrent | MagnetFetch | Refuse:
        """An incoming peer named ``info_hash``: the torrent (or magnet fetch) it joins, or why not."""
        if t is None and f is not None and f.can_accept() and not reputation.is_banned(ip):
            return f  # a magnet still fetching metadata: BEP 10 only
        if t is None:
            return Refuse(CloseReason.UNKNOWN_INFO_HASH, info_hash.hex())
        if t.state is TorrentState.CHECKING:
            return Refuse(CloseReason.HASH_CHECKING, "torrent is being checked")
        if reputation.is_banned(ip):
            return Refuse(CloseReason.BANNED, "banned")
        if not t.can_accept_peer():
            return Refuse(CloseReason.TOO_MANY_PEERS, "per-torrent peer limit")
        return t

    def completed(
        self, ev: HandshakeReceived, conn: PeerConnection, owner: Torrent | MagnetFetch | None
    ) -> Refuse | None:
        """The BT handshake with ``conn`` completed: None if it may go on with ``owner``."""
        if owner is None:
            return Refuse(CloseReason.UNKNOWN_INFO_HASH, ev.info_hash.hex())
        if ev.peer_id == self.peer_id:
            return Refuse(CloseReason.SELF_CONNECTION, "connected to ourselves")
        if isinstance(owner, MagnetFetch):
            if not supports_extension(ev.reserved):  # BEP 9 needs BEP 10: it cannot give us the metadata
                return Refuse(CloseReason.PROTOCOL_VIOLATION, "no extension protocol (BEP 10): cannot fetch metadata")
            return None
        if ev.peer_id != NO_PEER_ID and any(p.peer_id == ev.peer_id for p in owner.peers.values()):
            return Refuse(CloseReason.DUPLICATE_PEER_ID, ev.peer_id.hex())
        if not conn.outgoing and not owner.can_accept_peer():
            return Refuse(CloseReason.TOO_MANY_PEERS, "per-torrent peer limit")
        return None

    @staticmethod
    def can_hand_over(conn: PeerConnection, t: Torrent) -> bool:
        """A magnet fetch's connection may carry on as a peer connection of the new torrent ``t``."""
        if t.state not in (TorrentState.DOWNLOADING, TorrentState.SEEDING) or not t.can_accept_peer():
            return False
        # the same peer twice (e.g. x.pe by name and by address): keep one
        return not any(p.peer_id == conn.peer_id for p in t.peers.values())
