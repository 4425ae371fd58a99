"""BEP 16 super-seeding for one torrent: the :class:`~minibt.superseed.SuperSeeder`'s offers on the wire.

superseed.py decides which piece to reveal to which peer; this part feeds it what the torrent's peers
announce and who comes and goes, sends a BEP 3 ``have`` for each offer, and when super-seeding ends
(switched off, or it has done its job) sends every peer the pieces it was never shown.  Pure like
the rest (STYLE.md): bytes are queued on the peers' PeerWire machines; the torrent, seen through the
narrow :class:`SuperSeedHost`, marks the connections dirty.  Whether super-seeding may start (a
complete torrent that is seeding) is the torrent's call; refused requests are upload.py's.
"""

from __future__ import annotations

import logging
import random
from typing import Protocol

from minibt import wire_codec as w
from minibt.peer import PeerConnection
from minibt.picker import PiecePicker
from minibt.superseed import Offer, SuperSeeder

log = logging.getLogger(__name__)


class SuperSeedHost(Protocol):
    """What super-seeding asks of its torrent (:class:`minibt.torrent.Torrent` implements it)."""

    def mark_dirty(self, cid: int) -> None: ...


class SuperSeeding:
    """Switches BEP 16 on and off for a torrent and relays between its peers and the SuperSeeder."""

    def __init__(
        self,
        host: SuperSeedHost,
        *,
        peers: dict[int, PeerConnection],
        picker: PiecePicker,
        num_pieces: int,
        rng: random.Random,
        name: str,
    ) -> None:
        self._host = host
        self._peers = peers  # the torrent's handshaken connections (shared, not copied)
        self._picker = picker
        self._num_pieces = num_pieces
        self._rng = rng
        self._name = name  # for log lines
        self.seeder: SuperSeeder | None = None  # set while super-seeding

    @property
    def active(self) -> bool:
        return self.seeder is not None

    def start(self) -> None:
        """Start super-seeding; peers connected before have seen our full bitfield and stay exempt."""
        if self.seeder is not None:
            return
        ss = self.seeder = SuperSeeder(self._num_pieces, self._rng)
        log.info("%s: super-seeding (BEP 16)", self._name)
        for p in self._peers.values():
            if p.wire is not None:
                ss.add_peer(p.cid, exempt=True)
                ss.peer_bitfield(p.cid, self._picker.peer_pieces(p.cid))
        if ss.finished:
            self.stop("another seed is connected")

    def stop(self, why: str) -> None:
        """Seed normally from now on: one ``have`` per piece a peer lacks and was never shown."""
        ss = self.seeder
        if ss is None:
            return
        self.seeder = None
        log.info("%s: super-seeding ends (%s); seeding normally (%s)", self._name, why, ss.stats())
        for p in self._peers.values():
            if p.wire is None or p.closing or p.wire.closed:
                continue
            try:
                missing = ss.unrevealed_missing(p.cid)
            except ValueError:
                continue
            for i in missing:
                p.wire.have(i)  # a later bitfield is not allowed (BEP 3): one have per piece
            if missing:
                self._host.mark_dirty(p.cid)

    def may_request(self, cid: int, index: int) -> bool:
        """True unless super-seeding has not revealed piece ``index`` to peer ``cid``."""
        return self.seeder is None or self.seeder.may_request(cid, index)

    def attach(self, peer: PeerConnection) -> None:
        """A new peer (instead of our bitfield): pretend to have nothing, then offer."""
        assert self.seeder is not None and peer.wire is not None
        if peer.wire.fast:
            peer.wire.send_have_none()  # BEP 16: "masquerades as a normal client with no data"
        self._send(self.seeder.add_peer(peer.cid))

    def on_message(self, peer: PeerConnection, msg: object) -> None:
        ss = self.seeder
        assert ss is not None
        match msg:
            case w.Have(index=index):
                self._send(ss.peer_have(peer.cid, index))
            case w.BitfieldMsg(bits=bits):
                self._send(ss.peer_bitfield(peer.cid, bits))
            case w.HaveAll():
                self._send(ss.peer_have_all(peer.cid))

    def peer_gone(self, cid: int) -> None:
        if self.seeder is not None:
            self._send(self.seeder.remove_peer(cid))

    def _send(self, offers: list[Offer]) -> None:
        """Send a ``have`` for each offer; end super-seeding once it has done its job."""
        for o in offers:
            p = self._peers.get(o.peer) if isinstance(o.peer, int) else None
            if p is not None and p.wire is not None and not p.closing and not p.wire.closed:
                p.wire.have(o.index)
                self._host.mark_dirty(p.cid)
        if self.seeder is not None and self.seeder.finished:
            self.stop("another peer is a seed or every piece is on two peers")
