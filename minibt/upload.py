"""The upload side of one torrent: choking, incoming requests, serving blocks under the rate limit.

Pure (STYLE.md): no sockets or clock.  Bytes go out through the peers' PeerWire machines; what the
session must do is appended to the caller's ``out`` list as effects (effects.py): Flush, ClosePeer,
Emit (we choked / unchoked a peer), RateWait (requests wait for upload tokens).  A StorageError
while reading a block propagates (the torrent fails).  In scope: applying the choker's decisions (BEP 3), the per-peer
queue of incoming requests with rejects while choked and on floods (BEP 6), serving that queue while
the outbox has room and upload tokens last (ratelimit.py), allowed-fast grants (BEP 6), and refusing
requests for pieces super-seeding has not revealed (BEP 16).  :class:`SuperSeeding` switches BEP 16 on and
off and relays between the torrent's peers and superseed.py's SuperSeeder, which loads only when it starts.
Out of scope: what we download (download.py) and which pieces we announce (torrent.py).
"""

from __future__ import annotations

import logging

from minibt import wire_codec as w
from minibt.bitfield import Bitfield
from minibt.choker import ALLOWED_FAST_K, Choker, PeerSnapshot, allowed_fast_set
from minibt.effects import RATE_WAIT, ClosePeer, Effect, Emit, Flush
from minibt.errors import CloseReason
from minibt.events import EventName
from minibt.peer import IncomingRequest, PeerConnection
from minibt.ratelimit import TransferLimits
from minibt.storage import Storage
from minibt.wire import RequestsReceived

TYPE_CHECKING = False
if TYPE_CHECKING:
    import random
    from typing import Protocol

    from minibt.picker import PiecePicker
    from minibt.superseed import Offer, SuperSeeder

    class UploadStats(Protocol):
        """The counter the upload side adds to (:class:`minibt.torrent.TorrentStats`)."""

        uploaded: int

_ss_log = logging.getLogger("minibt.superseed")  # SuperSeeding's lines, under the BEP 16 module's name
READ_AHEAD = 128 * 1024  # bytes one read for a peer's requests takes in (minibt convention; see _read)


class Uploader:
    """Who is unchoked, and which queued requests are answered, rejected or kept waiting."""

    def __init__(
        self,
        *,
        info_hash: bytes,
        peers: dict[int, PeerConnection],
        have: Bitfield,
        storage: Storage,
        limits: TransferLimits,
        choker: Choker,
        stats: UploadStats,
        superseeding: SuperSeeding,
        outbox_bytes: int,
        max_requests: int,
        auto_choke: bool,
    ) -> None:
        self._info_hash = info_hash
        self._peers = peers  # the torrent's handshaken connections (shared, not copied)
        self._have = have
        self._storage = storage
        self._limits = limits
        self._choker = choker
        self._stats = stats
        self._superseeding = superseeding
        self._outbox_bytes = outbox_bytes  # serve queued requests while the outbox is below this
        self._max_requests = max_requests
        self._auto_choke = auto_choke
        self.unchoked: set[int] = set()  # cids unchoked by the choker or by library code

    # ------------------------------------------------------------------ incoming requests

    def grant_allowed_fast(self, peer: PeerConnection) -> None:
        """BEP 6: grant the canonical allowed-fast set to this peer's /24 (IPv4, not while super-seeding)."""
        wire = peer.wire
        assert wire is not None
        have = self._have
        if not wire.fast or have.all() or self._superseeding.active or ":" in peer.ip:
            return
        if not peer.ip.replace(".", "").isdigit():
            return  # dialled by host name (magnet x.pe): no IPv4 address to derive the set from
        for i in allowed_fast_set(peer.ip, self._info_hash, len(have), ALLOWED_FAST_K):
            if have[i]:
                wire.allowed_fast(i)
                peer.allowed_fast_out.add(i)

    def on_request(self, peer: PeerConnection, msg: w.Request | RequestsReceived, now: float, out: list[Effect]) -> None:
        """A request, or a read's run of them: each is queued (or refused), then the queue is served.
        Raises StorageError if serving fails to read a block (the torrent fails)."""
        reqs = msg.requests if isinstance(msg, RequestsReceived) else ((msg.index, msg.begin, msg.length),)
        for index, begin, length in reqs:
            if not self._take(peer, index, begin, length, out):
                return
        self.serve(peer, now, out)

    def _take(self, peer: PeerConnection, index: int, begin: int, length: int, out: list[Effect]) -> bool:
        """Queue one request, or refuse it; False once the peer is to be closed."""
        wire = peer.wire
        assert wire is not None
        if not self._have[index]:
            # Asking for what we never announced is a protocol violation (BEP 3).
            out.append(ClosePeer(peer.cid, CloseReason.PROTOCOL_VIOLATION, f"request for piece {index} we lack"))
            return False
        if not self._superseeding.may_request(peer.cid, index):
            return self._refuse(peer, index, begin, length, "request flood for pieces not offered", out)  # BEP 16
        if wire.am_choking and index not in peer.allowed_fast_out:
            return self._refuse(peer, index, begin, length, "request flood while choked", out)
        queue = peer.requests_in
        key = (index, begin, length)
        if key in queue:  # asked again while queued: answered once; a peer that keeps doing it floods
            peer.dup_requests += 1
            if peer.dup_requests >= self._max_requests:
                out.append(ClosePeer(peer.cid, CloseReason.PROTOCOL_VIOLATION, "request flood (the same blocks again)"))
                return False
            return True
        if len(queue) >= self._max_requests:
            out.append(ClosePeer(peer.cid, CloseReason.PROTOCOL_VIOLATION, "request queue flood"))
            return False
        queue[key] = None
        return True

    def _refuse(self, peer: PeerConnection, index: int, begin: int, length: int, flood_detail: str,
                out: list[Effect]) -> bool:
        """A request we will not serve: reject it (BEP 6: answer every request) or ignore it (BEP 3).
        False if the reject no longer fits the outbox (the peer is closed)."""
        wire = peer.wire
        assert wire is not None
        if not wire.fast:
            return True
        if not wire.can_send():
            # Each 17-byte request queues a 17-byte reject: a peer that floods requests and never
            # reads would grow our outbox without bound (STYLE.md 7).
            out.append(ClosePeer(peer.cid, CloseReason.PROTOCOL_VIOLATION, flood_detail))
            return False
        wire.reject(index, begin, length)
        out.append(Flush(peer.cid))
        return True

    def on_cancel(self, peer: PeerConnection, msg: w.Cancel) -> None:
        peer.requests_in.pop((msg.index, msg.begin, msg.length), None)

    def serve(self, peer: PeerConnection, now: float, out: list[Effect]) -> None:
        """Answer queued requests while the peer's outbox has room (backpressure).  Raises StorageError."""
        wire = peer.wire
        if wire is None or peer.closing:
            return
        limits = self._limits
        limit = self._outbox_bytes
        queue = peer.requests_in
        served = False
        while queue and wire.outbox_len < limit:
            first = next(iter(queue))
            index, begin, length = first
            if limits.up_gated and not limits.up.consume(length, now=now):
                limits.wait(peer.cid, length)  # serve_waiting() retries it
                out.append(RATE_WAIT)
                break
            del queue[first]
            # The requests queued next that continue the same piece (a leecher asks for a piece's blocks
            # in order) are read with the same pread, as long as each would have been served by itself
            # (room in the outbox, upload tokens): one system call for up to a piece, not one a block.
            run = [first]
            end = begin + length
            while queue and (r := next(iter(queue)))[0] == index and r[1] == end:
                if wire.outbox_len + (end - begin) >= limit:
                    break
                if limits.up_gated and not limits.up.consume(r[2], now=now):
                    break  # the loop above asks again, and waits
                del queue[r]
                run.append(r)
                end += r[2]
            data = self._read(peer, index, begin, end - begin)
            if len(run) == 1:
                wire.piece(index, begin, data)
            else:
                view = memoryview(data)
                for r_index, r_begin, r_length in run:
                    at = r_begin - begin
                    wire.piece(r_index, r_begin, view[at : at + r_length])
            peer.served_to = (index, end)
            peer.up.add(end - begin, now)
            self._stats.uploaded += end - begin
            served = True
        if served:
            out.append(Flush(peer.cid))

    def _read(self, peer: PeerConnection, index: int, begin: int, length: int) -> bytes | memoryview:
        """The data of a run of requests: from what this peer's last read took in ahead if that covers
        it, else one read, of READ_AHEAD bytes (up to the piece's end) when the run continues the last
        one served.  A leecher asks for a piece's blocks in order, mostly one or two at a time: one
        system call for eight blocks, not one each.  A peer that asks out of order (two pieces at once,
        or at random) reads only what it asked for."""
        ra = peer.read_ahead
        if ra is not None and ra[0] == index and ra[1] <= begin and begin + length <= ra[1] + len(ra[2]):
            at = begin - ra[1]
            if at + length == len(ra[2]):
                peer.read_ahead = None  # used up: not kept while the peer asks for nothing
            return ra[2][at : at + length]
        ahead = READ_AHEAD if peer.served_to == (index, begin) else 0
        data = self._storage.read_block(index, begin, length, ahead=ahead)
        if len(data) == length:
            peer.read_ahead = None
            return data
        view = memoryview(data)
        peer.read_ahead = (index, begin, view)
        return view[:length]

    def serve_waiting(self, *, now: float, out: list[Effect]) -> bool:
        """Serve peers whose requests waited for upload tokens, round robin; True if some still wait."""
        waiting = self._limits.waiting
        for cid in list(waiting):
            waiting.pop(cid, None)
            peer = self._peers.get(cid)
            if peer is not None and peer.requests_in:
                self.serve(peer, now, out)
            if cid in waiting:
                break  # out of tokens again: the others keep their places ahead of it
        return bool(waiting)

    # ------------------------------------------------------------------ choking

    def on_interested(self, now: float, out: list[Effect]) -> None:
        if len(self.unchoked) < 5:
            self.rechoke(now, out, scheduled=False)

    def on_not_interested(self, peer: PeerConnection, now: float, out: list[Effect]) -> None:
        if peer.cid in self.unchoked:
            self.rechoke(now, out, scheduled=False)

    def peer_gone(self, cid: int, now: float, out: list[Effect]) -> None:
        if cid in self.unchoked:
            self.unchoked.discard(cid)
            self.rechoke(now, out, scheduled=False)

    def rechoke(self, now: float, out: list[Effect], *, scheduled: bool) -> None:
        """Run the choker over the connected peers and apply its decision to their wires."""
        if not self._auto_choke:
            return  # library code chokes and unchokes (minibt.Peer)
        seeding = self._have.all()
        snaps = []
        for p in self._peers.values():
            if p.wire is None:
                continue
            snaps.append(
                PeerSnapshot(
                    key=p.cid,
                    interested=p.wire.peer_interested,
                    rate=p.up.rate(now) if seeding else p.down.rate(now),
                    snubbed=p.snubbed,
                    connected_at=p.connected_at,
                    unchoked=not p.wire.am_choking,
                )
            )
        unchoke = self._choker.rechoke(snaps, now=now, scheduled=scheduled)
        for p in self._peers.values():
            wire = p.wire
            if wire is None:
                continue
            if p.cid in unchoke and wire.am_choking:
                wire.unchoke()
                out.append(Flush(p.cid))
                out.append(Emit(EventName.WE_UNCHOKED_PEER, p))
            elif p.cid not in unchoke and not wire.am_choking:
                wire.choke()
                self._reject_pending(p)
                out.append(Flush(p.cid))
                out.append(Emit(EventName.WE_CHOKED_PEER, p))
        self.unchoked = {k for k in unchoke if isinstance(k, int)}

    def choke(self, peer: PeerConnection, out: list[Effect]) -> None:
        """Choke ``peer`` on behalf of library code (the built-in choker may undo it if enabled)."""
        wire = peer.wire
        assert wire is not None
        self.unchoked.discard(peer.cid)
        if wire.am_choking:
            return
        wire.choke()
        self._reject_pending(peer)
        out.append(Flush(peer.cid))
        out.append(Emit(EventName.WE_CHOKED_PEER, peer))

    def unchoke(self, peer: PeerConnection, out: list[Effect]) -> None:
        wire = peer.wire
        assert wire is not None
        self.unchoked.add(peer.cid)
        if not wire.am_choking:
            return
        wire.unchoke()
        out.append(Flush(peer.cid))
        out.append(Emit(EventName.WE_UNCHOKED_PEER, peer))

    def _reject_pending(self, peer: PeerConnection) -> None:
        wire = peer.wire
        assert wire is not None
        keep: dict[IncomingRequest, None] = {}
        peer.read_ahead = None
        for r in peer.requests_in:
            if r[0] in peer.allowed_fast_out:
                keep[r] = None
            elif wire.fast:
                wire.reject(*r)  # BEP 6: choke no longer cancels implicitly
        peer.requests_in = keep


class SuperSeeding:
    """Switches BEP 16 on and off for a torrent and relays between its peers and the SuperSeeder."""

    def __init__(
        self,
        *,
        peers: dict[int, PeerConnection],
        picker: PiecePicker,
        num_pieces: int,
        rng: random.Random,
        name: str,
    ) -> None:
        self._peers = peers  # the torrent's handshaken connections (shared, not copied)
        self._picker = picker
        self._num_pieces = num_pieces
        self._rng = rng
        self._name = name  # for log lines
        self.seeder: SuperSeeder | None = None  # set while super-seeding

    @property
    def active(self) -> bool:
        return self.seeder is not None

    def start(self, out: list[Effect]) -> None:
        """Start super-seeding; peers connected before have seen our full bitfield and stay exempt."""
        if self.seeder is not None:
            return
        from minibt.superseed import SuperSeeder  # loaded by the first torrent that super-seeds

        ss = self.seeder = SuperSeeder(self._num_pieces, self._rng)
        _ss_log.info("%s: super-seeding (BEP 16)", self._name)
        for p in self._peers.values():
            if p.wire is not None:
                ss.add_peer(p.cid, exempt=True)
                ss.peer_bitfield(p.cid, self._picker.peer_pieces(p.cid))
        if ss.finished:
            self.stop("another seed is connected", out)

    def switch(self, on: bool, *, allowed: bool, state: str, out: list[Effect]) -> None:
        """Switched on or off at run time; on needs a complete torrent that is seeding (``allowed``,
        else ValueError naming its ``state``)."""
        if not on:
            self.stop("switched off", out)
        elif self.seeder is None:
            if not allowed:
                raise ValueError(f"super-seeding needs a complete torrent that is seeding (it is {state})")
            self.start(out)

    def stop(self, why: str, out: list[Effect]) -> None:
        """Seed normally from now on: one ``have`` per piece a peer lacks and was never shown."""
        ss = self.seeder
        if ss is None:
            return
        self.seeder = None
        _ss_log.info("%s: super-seeding ends (%s); seeding normally (%s)", self._name, why, ss.stats())
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
                out.append(Flush(p.cid))

    def may_request(self, cid: int, index: int) -> bool:
        """True unless super-seeding has not revealed piece ``index`` to peer ``cid``."""
        return self.seeder is None or self.seeder.may_request(cid, index)

    def attach(self, peer: PeerConnection, out: list[Effect]) -> None:
        """A new peer (instead of our bitfield): pretend to have nothing, then offer."""
        assert self.seeder is not None and peer.wire is not None
        if peer.wire.fast:
            peer.wire.send_have_none()  # BEP 16: "masquerades as a normal client with no data"
        self._send(self.seeder.add_peer(peer.cid), out)

    def on_message(self, peer: PeerConnection, msg: object, out: list[Effect]) -> None:
        ss = self.seeder
        assert ss is not None
        match msg:
            case w.Have(index=index):
                self._send(ss.peer_have(peer.cid, index), out)
            case w.BitfieldMsg(bits=bits):
                self._send(ss.peer_bitfield(peer.cid, bits), out)
            case w.HaveAll():
                self._send(ss.peer_have_all(peer.cid), out)

    def peer_gone(self, cid: int, out: list[Effect]) -> None:
        if self.seeder is not None:
            self._send(self.seeder.remove_peer(cid), out)

    def _send(self, offers: list[Offer], out: list[Effect]) -> None:
        """Send a ``have`` for each offer; end super-seeding once it has done its job."""
        for o in offers:
            p = self._peers.get(o.peer) if isinstance(o.peer, int) else None
            if p is not None and p.wire is not None and not p.closing and not p.wire.closed:
                p.wire.have(o.index)
                out.append(Flush(p.cid))
        if self.seeder is not None and self.seeder.finished:
            self.stop("another peer is a seed or every piece is on two peers", out)
