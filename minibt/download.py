"""The download side of one torrent: the request pipeline and the blocks that come back.

Pure (STYLE.md): no sockets or clock.  Requests go out through the peers' PeerWire machines, the
picker (picker.py) chooses the blocks and storage.py buffers them.  Effects (effects.py) go into the
caller's ``out`` list: :class:`~minibt.effects.Flush` for connections with requests or cancels
queued, :class:`~minibt.effects.HashPiece` to verify and write a completed piece.  A StorageError
propagates (the torrent fails).  The torrent sets :attr:`Downloader.active` while it downloads.
In scope: our interest in a peer (BEP 3), pipeline depth from the peer's rate, how many pieces the
write cache lets be started (more on long paths: :meth:`Downloader._update_pipeline`), requests while
choked only for allowed-fast pieces (BEP 6), rejects, snubbing, cancels to the other requesters of
an end-game block, library-driven requests (minibt.Peer.request), and the ledger of which IP sent
each block of a piece in progress (the smart-ban input of reputation.py).
Out of scope: what a verified or failed piece means for the torrent (torrent.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from minibt import wire_codec as w
from minibt.bitfield import Bitfield
from minibt.effects import Effect, Flush, HashPiece
from minibt.errors import CloseReason, LocalProtocolError
from minibt.metainfo import Metainfo
from minibt.peer import PeerConnection
from minibt.picker import Block, PiecePicker
from minibt.reputation import BlockRecord
from minibt.sha1 import sha1
from minibt.storage import Storage
from minibt.wire_codec import BLOCK_LEN
from minibt.workers import HashJob

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class DownloadStats(Protocol):
        """The counter the download side adds to (:class:`minibt.torrent.TorrentStats`)."""

        wasted: int

log = logging.getLogger(__name__)

MAX_ALLOWED_FAST_IN = 32  # convention: allowed-fast pieces kept per peer (BEP 6 suggests 10; libtorrent sends 5)
SNUB_TIMEOUT_S = 30.0  # no block for this long with requests out => snubbed, requests re-issued
SNUBBED_QUEUE_DEPTH = 1  # convention (libtorrent): a snubbed peer gets one outstanding request
PIPELINE_EVERY_S = 1.0  # how often the reservation and the lean depths are worked out again (_update_pipeline)
# Lean pipelines while the write cache holds back the requests of several delivering peers (minibt
# conventions, see _update_pipeline; chosen on the simulated swarms of tests/sim/test_many_peers_sim.py).
LEAN_MIN = 8  # blocks: half a 256 KiB piece
LEAN_EXTRA = 2
LEAN_TIME_S = 0.1  # our own loop's delay, which min_latency (an idle pipeline's) does not show
LEAN_HOLD_S = 5.0
PARK_RETRY_S = 10.0
SLOW_RATE_RATIO = 8.0
SERVICE_MIN_S = 0.05  # seconds of sending in a second that give a service rate
# The write cache (1 MiB by default) is sized for one near peer: the piece it is sending and verified pieces
# waiting for a hash thread.  It lets 1 MiB out per round trip, 10 MiB/s 100 ms away (the reservation then
# doubles that once a second), and one piece started per peer when several share it.  So while a delivering
# peer is LONG_PATH_S or more away (from its first round trip on), or two or more peers deliver or unchoke us,
# the pieces started may reach RESERVE_FLOOR: the 3 MiB that was the cache's own size until the twenty-fourth
# sitting.  Measured: 256 MiB over 100 ms, 43.9 MiB/s with 3 MiB, 36.5 with 1 MiB alone; eight 4 MiB/s
# libtorrent seeders on loopback, 14.8-19.8 MiB/s with 3 MiB (7 runs), 9.7-9.9 with 1 MiB alone (2 runs).
LONG_PATH_S = 0.010
RESERVE_FLOOR = 3 << 20
# Blocks cancelled that are still taken if they come (on_blocks), all peers together: the most blocks in
# flight when the reservation is at its 8 MiB ceiling, twice (end game); under 200 KiB (tracemalloc).
CANCELLED_KEPT = 1024


def _lean_depth(rate: float, latency: float) -> int:
    """A lean pipeline: twice ``rate`` (bytes/s) over a round trip of ``latency`` s, in blocks (see above)."""
    return max(LEAN_MIN, int(rate * max(2 * latency, LEAN_TIME_S) / BLOCK_LEN) + LEAN_EXTRA)


@dataclass(frozen=True, slots=True, eq=False)
class PieceJobTag:
    """Tag of a hash job that verifies (and writes) a downloaded piece of ``info_hash``'s torrent (one per
    Downloader, compared by identity, like checker.CheckJobTag)."""

    info_hash: bytes


class Downloader:
    """What we ask each peer for, and where the blocks it sends go."""

    def __init__(
        self,
        *,
        meta: Metainfo,
        peers: dict[int, PeerConnection],
        have: Bitfield,
        picker: PiecePicker,
        storage: Storage,
        stats: DownloadStats,
        queue_min: int,
        queue_max: int,
        queue_seconds: float,
        auto_request: bool,
        disk_retry_s: float = 30.0,
        need_free_bytes: int = 0,
        reserve_max: int = 0,
    ) -> None:
        self._meta = meta
        self.tag = PieceJobTag(meta.info_hash)  # this downloader's jobs' (by identity)
        self.active = False  # set by the torrent while it is downloading (TorrentState.DOWNLOADING)
        self._peers = peers  # the torrent's handshaken connections (shared, not copied)
        self._have = have
        self._picker = picker
        self._storage = storage
        self._stats = stats
        self._queue_min = queue_min
        self._queue_max = queue_max  # stay under libtorrent's 'reqq' (PROTOCOL.md 7.13)
        self._queue_seconds = queue_seconds  # pipeline depth = rate * this
        self._auto_request = auto_request
        self._block_src: dict[int, dict[int, str]] = {}  # piece in progress -> block -> IP that sent it
        self._disk_retry_s = disk_retry_s
        self._need_free = need_free_bytes  # free space that ends a disk-full pause
        self._disk_retry_at = 0.0
        self._cache_full = False  # the last pick stopped at the full write cache (see fill)
        self._reserve_max = reserve_max  # 0: pieces started never exceed the write cache (a size the user set)
        self._reserve = 0  # bytes of pieces that may be started; 0: the write cache's size (_update_pipeline)
        self._pipeline_at = -math.inf  # when _update_pipeline last ran
        self._totals: dict[int, int] = {}  # each peer's bytes received at that time
        self._busy: dict[int, float] = {}  # and its busy_s
        self._cache_stops = 0  # picks the full write cache stopped since then
        self._lean = False  # the write cache holds several delivering peers back: lean pipelines
        self._lean_until = 0.0
        self._got: dict[int, int] = {}  # each peer's bytes received between the last two updates
        self._cancelled: dict[tuple[int, int, int], None] = {}  # (cid, piece, begin) cancelled, may come yet
        self.disk_error: str | None = None  # set while paused by a full disk
        self.paused_reason: str | None = None  # set while paused by the user (Torrent.pause_download)

    # ------------------------------------------------------------------ pausing (full disk, schedule)

    @property
    def paused(self) -> bool:
        return self.disk_error is not None or self.paused_reason is not None

    @property
    def disk_retry_at(self) -> float:
        """When ``disk_retry`` next looks at the free space (meaningful while ``disk_error`` is set)."""
        return self._disk_retry_at

    @property
    def downloading(self) -> bool:
        """True while pieces may be requested (the torrent downloads, not paused)."""
        return self.active and self.disk_error is None and self.paused_reason is None

    def disk_full(self, message: str, now: float, *, name: str, out: list[Effect]) -> None:
        """A verified piece could not be written (ENOSPC): stop requesting, retry every disk_retry_s."""
        if self.disk_error is None:
            log.error("%s: disk full, download paused (verified pieces stay; retrying every %.0f s): %s",
                      name, self._disk_retry_s, message)
        self.disk_error = f"disk full: {message}"
        self._disk_retry_at = now + self._disk_retry_s
        self.release_all(out)

    def disk_retry(self, now: float, *, name: str, out: list[Effect]) -> None:
        """Timer: resume once the file system has room for ``need_free_bytes`` again."""
        if now < self._disk_retry_at:
            return
        self._disk_retry_at = now + self._disk_retry_s
        free = self._storage.free_bytes()
        if free is not None and free < self._need_free:
            log.info("%s: still no room on disk (%d bytes free, need %d)", name, free, self._need_free)
            return
        log.warning("%s: disk has room again (%s bytes free); download resumed", name, free)
        self.disk_error = None
        self.fill_all(now, out)

    def pause(self, reason: str, *, name: str, out: list[Effect]) -> None:
        if self.paused_reason is None:
            log.info("%s: download paused: %s", name, reason)
            self.release_all(out)
        self.paused_reason = reason

    def resume(self, now: float, *, name: str, out: list[Effect]) -> None:
        if self.paused_reason is None:
            return
        log.info("%s: download resumed", name)
        self.paused_reason = None
        self.fill_all(now, out)

    # ------------------------------------------------------------------ interest and the pipeline

    def update_interest(self, peer: PeerConnection) -> None:
        wire = peer.wire
        if wire is None:
            return
        interesting = not self._have.all() and self._picker.is_interesting(peer.cid)
        if interesting and not wire.am_interested:
            wire.interested()
        elif not interesting and wire.am_interested:
            wire.not_interested()

    def queue_depth(self, peer: PeerConnection, now: float) -> int:
        if peer.snubbed:
            return SNUBBED_QUEUE_DEPTH  # else its re-issued requests go straight back to it
        depth = int(peer.down.rate(now) * self._queue_seconds / BLOCK_LEN) + self._queue_min
        if self._lean and 0 <= peer.lean_depth < depth:
            return min(peer.lean_depth, self._queue_max, peer.reqq)
        return max(self._queue_min, min(depth, self._queue_max, peer.reqq))

    def fill(self, peer: PeerConnection, now: float, out: list[Effect], *, batch: bool = False,
             recheck: bool = True) -> None:
        """Top the peer's request pipeline up to its depth.

        With ``batch`` (after the blocks of a read, once ``on_blocks`` found a quarter of the last top-up's
        level free) it also waits until a quarter of the current depth is free, so requests go out in
        groups: fewer picker calls and fewer, larger sends.  A batch top-up, or one without
        ``recheck`` (fill_all after its first peer), asks the picker for nothing while its last pick
        stopped at the full write cache and no started piece has free blocks: nothing can start before
        a piece leaves the cache, which only its check does, and then fill_all (or the tick) asks again.
        """
        wire = peer.wire
        if wire is None or not self.downloading or peer.closing:
            return
        if not wire.am_interested or not self._auto_request:
            return
        picker = self._picker
        allowed: set[int] | None = None
        if wire.peer_choking:
            if not peer.allowed_fast_in:
                return
            allowed = peer.allowed_fast_in
        if recheck and not batch:
            self._cache_full = False
        elif self._cache_full and not picker.has_free_blocks():
            peer.req_depth = 0  # no batch top-up from on_blocks until fill_all (a piece left the cache) resets it
            return
        if now - self._pipeline_at >= PIPELINE_EVERY_S:
            self._update_pipeline(now, out)
        depth = peer.req_depth = self.queue_depth(peer, now)
        outstanding = picker.num_outstanding(peer.cid)
        n = depth - outstanding
        if n <= 0 or (batch and n < depth >> 2):
            return
        blocks = picker.pick(peer.cid, n, allowed=allowed, can_start=self._can_start)
        if len(blocks) < n:  # the write cache (or what the peer has) holds it lower: batch against that
            peer.req_depth = depth - n + len(blocks)
        if not blocks:
            if picker.num_outstanding(peer.cid) == 0:
                self.update_interest(peer)
        elif not outstanding:  # nothing queued ahead of the first block: its wait is the round trip
            peer.request_probe = (blocks[0].index, blocks[0].begin, now)
            # The wait for the first block is time spent sending (busy_s; without it, blocks that come in
            # bursts, as from a far peer, give a service rate many times the link's), and the snub timer
            # counts from here (as for request()).
            peer.had_out, peer.last_block_at = True, now
        wire.request_many(blocks)
        out.append(Flush(peer.cid))

    def _can_start(self, piece: int) -> bool:
        # Every started piece takes a whole buffer once its first block is in: the write cache bounds
        # the pieces in memory across all peers, and with them the requests outstanding.
        if self._storage.can_start_piece(piece, self._picker.partial_pieces(), self._reserve):
            return True
        self._cache_full = True
        self._cache_stops += 1
        return False

    def _update_pipeline(self, now: float, out: list[Effect]) -> None:
        """Once a second: what each peer delivered since the last time, and from it the write cache's
        reservation and the lean pipeline depths.

        *Reservation* (only with the default cache, ``reserve_max``): how many bytes of pieces may be
        started.  The requests in flight are bounded by the pieces started (each will take a whole buffer),
        so with the write cache's 1 MiB a peer 100 ms away could never send more than 10 MiB/s.  Blocks of
        a piece arrive one after the other and leave the cache once checked, so on a long path most
        started pieces are still on their way, not in memory.  Each peer's bytes over that time, times its
        ``min_latency``, is what it has in flight; twice their sum lets the rate double from one update to
        the next, up to what the link gives (as TCP grows its receive window).  On top of that, a piece for
        each peer that delivered: the piece whose blocks it is sending sits in the cache whatever its round
        trip (without it, ten peers at 1 MiB/s, five of them 300 ms away, filled the cache (3 MiB then) with
        the far ones' pieces).  A peer that unchokes us and has not delivered yet gets a piece too, from the moment
        it unchokes us (:meth:`on_unchoke`): at the start every peer asks at once, and without it the first
        ones took the cache while the fast one waited (one 4 MiB/s peer among 30 at 64 KiB/s, simulated: its
        first block came after 4 s; the download went from 2.8 to 3.3 MiB/s with it).
        While a delivering peer is LONG_PATH_S or more away, or two or more peers deliver or have unchoked
        us without delivering yet, never below RESERVE_FLOOR (for a far peer as soon as its first round trip
        is measured, :meth:`_latency_sample`, so it does not wait for the doubling).
        Never below the cache's own size, nor above ``reserve_max``: the memory the cache
        may take if every started piece's first block came at once.  With one near peer (loopback, a LAN)
        that stays under the cache, which alone bounds it.

        *Lean pipelines*: a pipeline holds a second of the peer's rate plus ``queue_min`` blocks, far more
        than its round trip needs (a 256 KiB/s peer 100 ms away needs 2 blocks, gets 32).  While the write
        cache has room that costs nothing.  Once it is full, the first peers to ask hold every block it lets
        out and the others get none, and a slow peer's blocks keep whole pieces in the cache for seconds
        (simulated, 30 peers at 256 KiB/s 100 ms away: 1.8 MiB/s of their 7.5, 7 of them busy; one 4 MiB/s
        peer among 30 at 64 KiB/s: 0.6 MiB/s).  So while picks stopped at the full cache with two or more
        peers delivering, or a peer is left out (below), and for LEAN_HOLD_S after.  Lean pipelines leave
        room enough that picks stop no more; when that alone ended them, the slow peers got full pipelines
        again, started a piece each and held the cache, and the fast one fell back to LEAN_MIN blocks and
        doubled its way up again (simulated, the 4 MiB/s peer among 30 slow ones, with a 1 MiB cache: 4 MiB/s
        to 0.4 for a second, then 2, then 3.7; with 3 MiB, to 2.9).  While lean:

        - a peer's pipeline (``lean_depth``) is twice what it delivered in its round trip (``min_latency``),
          at least LEAN_TIME_S of it, plus LEAN_EXTRA blocks, never under LEAN_MIN: peers share what the
          cache lets out, and one that could go faster doubles its share every update;
        - a peer sending less than 1/SLOW_RATE_RATIO of the fastest while it had requests out (``busy_s``,
          which counts from the requests: a rate-limited uploader answers its first block at once, a far
          peer's blocks come in bursts) gets no requests, and those it holds go back to the others; it
          stays out until, PARK_RETRY_S after its last block, LEAN_MIN requests time it again.  Its round
          trip alone leaves nobody out: a far peer as fast as the near ones keeps a pipeline that covers
          it (real libtorrent seeders 300 ms away sent 5 % of the payload while that rule left them out);
        - when a checked piece leaves room, the peers that delivered most ask first (:meth:`fill_all`).

        A peer not timed yet counts as quick as the quickest while it delivers, else keeps its usual depth.
        Simulated now (tests/sim/test_many_peers_sim.py): 5.4 and 3.1 MiB/s in those two swarms.
        """
        dt = now - self._pipeline_at
        need = 0.0
        delivering = 0  # peers that sent blocks since the last update
        untimed = 0  # and peers that unchoke us but have not delivered yet
        far = False  # a delivering peer LONG_PATH_S or more away
        totals: dict[int, int] = {}
        gots = self._got = {}
        busy: dict[int, float] = {}
        busy_totals: dict[int, float] = {}
        for cid, peer in self._peers.items():
            total = totals[cid] = peer.down.total
            got = gots[cid] = total - self._totals.get(cid, total)
            sent_s = busy_totals[cid] = peer.busy_s
            busy[cid] = sent_s - self._busy.get(cid, sent_s)
            if peer.min_latency < math.inf and dt < math.inf:
                need += got / dt * peer.min_latency
            delivering += got > 0
            untimed += not got and self._untimed(peer)
            far = far or got > 0 and LONG_PATH_S <= peer.min_latency < math.inf
        self._totals = totals
        self._busy = busy_totals
        self._pipeline_at = now
        if self._reserve_max:
            room = int(2 * need) + (delivering + untimed) * self._meta.piece_length
            if far or delivering + untimed >= 2:
                room = max(room, RESERVE_FLOOR)
            self._reserve = min(room, self._reserve_max)
        if self._cache_stops and delivering >= 2:
            self._lean_until = now + LEAN_HOLD_S
        self._lean = now < self._lean_until
        self._cache_stops = 0
        if not self._lean:
            return
        quickest = min(p.min_latency for p in self._peers.values())
        served = {cid: gots[cid] / b for cid, b in busy.items() if b >= SERVICE_MIN_S}  # bytes/s while sending
        fastest = max(served.values(), default=0.0)
        for cid, peer in self._peers.items():
            latency, rate = peer.min_latency, gots[cid] / dt
            if (served.get(cid, fastest) * SLOW_RATE_RATIO < fastest
                    or peer.lean_depth == 0 and not busy[cid]):  # left out at the last update: nothing new
                if now - peer.last_block_at >= PARK_RETRY_S:
                    peer.lean_depth = LEAN_MIN  # now and then a few blocks, which time it again
                else:
                    peer.lean_depth = 0
                    self._lean_until = now + LEAN_HOLD_S  # lean pipelines stay while a peer is left out
                    if self._picker.num_outstanding(cid) > 1:
                        self._give_back(peer, out)
            elif latency == math.inf:  # not timed yet: as quick as the quickest if it delivers, else as usual
                latency = quickest if rate else math.inf
                peer.lean_depth = -1 if latency == math.inf else _lean_depth(rate, latency)
            else:
                peer.lean_depth = _lean_depth(rate, latency)

    @staticmethod
    def _untimed(peer: PeerConnection) -> bool:
        """It unchokes us and has not delivered yet (no round trip measured)."""
        wire = peer.wire
        return peer.min_latency == math.inf and wire is not None and not wire.peer_choking

    def on_unchoke(self, peer: PeerConnection, now: float, out: list[Effect]) -> None:
        """It unchokes us: a peer not timed yet gets a piece of room in the reservation at once, on top of
        RESERVE_FLOOR, if another peer delivers or is new too, so a newcomer that may be fast does not wait
        while slower peers hold the cache (see _update_pipeline).  With one peer the cache alone serves, as
        before (a piece more there was 0.2 MiB more peak RSS on loopback and no faster)."""
        if self._reserve_max and peer.min_latency == math.inf:
            got = self._got
            if any(p is not peer and (got.get(p.cid, 0) > 0 or self._untimed(p)) for p in self._peers.values()):
                room = max(self._reserve, RESERVE_FLOOR) + self._meta.piece_length
                self._reserve = min(room, self._reserve_max)
        self.fill(peer, now, out)

    def fill_all(self, now: float, out: list[Effect]) -> None:
        """Top up the pipeline of every peer that does not choke us (the write cache looked at once:
        with many peers, one of them starts the piece that fills it and the others ask for nothing)."""
        self._cache_full = False
        peers = list(self._peers.values())
        if self._lean:  # the fastest first: the room a checked piece leaves goes to who delivers most
            got = self._got
            peers.sort(key=lambda p: got.get(p.cid, 0), reverse=True)
        for peer in peers:
            if peer.wire is not None and not peer.wire.peer_choking:
                self.fill(peer, now, out, recheck=False)

    def request(self, peer: PeerConnection, index: int, begin: int, length: int, *, now: float,
                out: list[Effect]) -> None:
        """Request one block for library code, with the picker's bookkeeping.

        The torrent has checked that the peer is connected and that it is downloading.
        Raises LocalProtocolError when the request is not allowed (see ``minibt.Peer.request``).
        """
        wire = peer.wire
        assert wire is not None
        if wire.peer_choking and index not in peer.allowed_fast_in:
            # BEP 3 drops (BEP 6 rejects) requests while choked, except for allowed-fast pieces.
            raise LocalProtocolError(
                CloseReason.PROTOCOL_VIOLATION, f"request: the peer chokes us and piece {index} is not allowed fast"
            )
        outstanding = self._picker.num_outstanding(peer.cid)
        if outstanding >= min(peer.reqq, self._queue_max):
            raise LocalProtocolError(
                CloseReason.PROTOCOL_VIOLATION, f"request: {outstanding} requests already outstanding (queue full)"
            )
        try:
            self._picker.mark_requested(peer.cid, Block(index, begin, length))
        except ValueError as e:
            raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, f"request: {e}") from None
        if outstanding == 0:
            peer.last_block_at = now  # the snub timer counts from the first outstanding request
        if not wire.am_interested:
            wire.interested()
        wire.request(index, begin, length)
        out.append(Flush(peer.cid))

    def release_all(self, out: list[Effect]) -> None:
        """Cancel every outstanding request and give the blocks back to the picker (download paused)."""
        for peer in list(self._peers.values()):
            self._give_back(peer, out)

    def _give_back(self, peer: PeerConnection, out: list[Effect]) -> None:
        """Cancel ``peer``'s outstanding requests; their blocks go back to the picker for others."""
        wire = peer.wire
        if wire is None or peer.closing:
            return
        blocks = self._picker.outstanding(peer.cid)
        self._cancel(peer, blocks)
        if blocks:
            out.append(Flush(peer.cid))
        peer.had_out = False

    def _cancel(self, peer: PeerConnection, blocks: list[Block]) -> None:
        """Cancel requests that ``peer`` may have sent already: blocks on their way (in its socket buffer or
        on a slow link) come anyway, and while nobody else has delivered them they are taken (on_blocks)."""
        picker, wire, cancelled, cid = self._picker, peer.wire, self._cancelled, peer.cid
        assert wire is not None
        for b in blocks:
            picker.request_failed(cid, b)
            wire.cancel(b.index, b.begin, b.length)
            cancelled[cid, b.index, b.begin] = None
        while len(cancelled) > CANCELLED_KEPT:
            del cancelled[next(iter(cancelled))]

    def check_snub(self, peer: PeerConnection, now: float, out: list[Effect]) -> None:
        """No block for SNUB_TIMEOUT_S with requests out: hand them to others, keep the connection.

        BEP 3 anti-snubbing; the snubbed peer's pipeline shrinks to SNUBBED_QUEUE_DEPTH.
        """
        picker = self._picker
        if picker.num_outstanding(peer.cid) and now - peer.last_block_at > SNUB_TIMEOUT_S:
            peer.snubbed = True
            peer.request_probe = None
            peer.had_out = False
            self._cancel(peer, picker.outstanding(peer.cid))
            peer.last_block_at = now
            out.append(Flush(peer.cid))

    # ------------------------------------------------------------------ what the peer sends

    def on_choke(self, peer: PeerConnection) -> None:
        assert peer.wire is not None
        peer.request_probe = None  # a block re-requested later would time the wait since this request
        peer.had_out = False  # the wait until it unchokes us is not time spent sending (busy_s)
        if not peer.wire.fast:
            # BEP 3: a choke discards all our pending requests.
            self._picker.peer_choked(peer.cid)

    def on_reject(self, peer: PeerConnection, msg: w.Reject, now: float, out: list[Effect]) -> None:
        self._picker.request_failed(peer.cid, Block(msg.index, msg.begin, msg.length))
        assert peer.wire is not None
        if not peer.wire.peer_choking:
            self.fill(peer, now, out)

    def on_allowed_fast(self, peer: PeerConnection, msg: w.AllowedFast, now: float, out: list[Effect]) -> None:
        if len(peer.allowed_fast_in) < MAX_ALLOWED_FAST_IN:  # one per piece otherwise (STYLE.md 7)
            peer.allowed_fast_in.add(msg.index)
        assert peer.wire is not None
        if peer.wire.peer_choking:
            self.fill(peer, now, out)

    def on_blocks(self, peer: PeerConnection, blocks: Sequence[tuple[int, int, bytes | memoryview]], now: float,
                  out: list[Effect]) -> None:
        """The blocks ``(index, begin, data)`` of one read from ``peer`` (one call per read: the per-block
        hot path).  Raises StorageError if one cannot be buffered (the torrent fails; the rest of the read
        is dropped)."""
        picker, storage, have, block_src, peers = self._picker, self._storage, self._have, self._block_src, self._peers
        cid, ip, downloading = peer.cid, peer.ip, self.downloading
        if peer.request_probe is not None:
            self._latency_sample(peer, peer.request_probe, blocks, now)
        total = 0
        stray = False
        last = -1  # the piece of the block before: a run's blocks mostly share one
        src: dict[int, str]  # the sender map of the block's piece (set at the run's first block of each piece)
        taken = picker.take_blocks(cid, blocks) if downloading else [None] * len(blocks)
        for (index, begin, data), others in zip(blocks, taken, strict=True):
            n = len(data)
            total += n
            if others is None:
                if not (downloading and not have.test(index) and self._cancelled.pop((cid, index, begin), 0) is None
                        and (others := picker.take_late(cid, Block(index, begin, n))) is not None):
                    self._stats.wasted += n  # unsolicited, late or duplicate: never written
                    stray = True
                    continue
            elif others:
                for other in others:
                    op = peers.get(other)  # type: ignore[call-overload]
                    if op is not None and op.wire is not None:
                        op.wire.cancel(index, begin, n)
                        out.append(Flush(op.cid))
            if index != last:
                last, src = index, block_src.setdefault(index, {})
            src[begin // BLOCK_LEN] = ip
            if storage.write_block(index, begin, data):
                picker.piece_hashing(index)
                out.append(HashPiece(self._verify_job(index, storage.prepare_commit(index))))
        peer.down.add(total, now)
        if peer.had_out:  # it was sending all along: the time counts towards its service rate
            peer.busy_s += now - peer.last_block_at
        peer.last_block_at = now
        peer.snubbed = False
        left = picker.num_outstanding(cid)
        peer.had_out = left > 0
        if stray:
            self.fill(peer, now, out)
            return
        depth = peer.req_depth  # a quarter free of the last top-up's level first (fill's ``batch``)
        if depth - left >= (depth >> 2 or 1):
            self.fill(peer, now, out, batch=True)

    def _latency_sample(self, peer: PeerConnection, probe: tuple[int, int, float],
                        blocks: Sequence[tuple[int, int, bytes | memoryview]], now: float) -> None:
        """Requests went to an idle pipeline: when the first one asked for comes back (in this read or a
        later one: a seeder reading its disk may answer out of order), the time since is a round trip plus
        the peer's own delay (``min_latency``).  A first round trip of LONG_PATH_S or more raises the
        reservation to RESERVE_FLOOR at once (see _update_pipeline)."""
        index, begin, sent_at = probe
        for b in blocks:
            if b[0] == index and b[1] == begin:
                peer.request_probe = None
                if now - sent_at < peer.min_latency:
                    peer.min_latency = now - sent_at
                    if self._reserve_max and peer.min_latency >= LONG_PATH_S and self._reserve < RESERVE_FLOOR:
                        self._reserve = min(RESERVE_FLOOR, self._reserve_max)
                return

    def _verify_job(self, index: int, writes: tuple[tuple[int, int, memoryview], ...]) -> HashJob:
        """Hash a complete piece; the worker writes it if it matches (result: Torrent.on_hash_result)."""
        return HashJob(
            piece=index,
            generation=0,
            expected=self._meta.piece_hash(index),
            data=self._storage.piece_buffer(index),
            spans=None,
            tag=self.tag,
            writes=writes,
        )

    # ------------------------------------------------------------------ the smart-ban ledger

    def block_records(self, index: int, buf: memoryview) -> list[BlockRecord]:
        """Who sent each block of a piece in progress and the SHA-1 of the bytes (smart-ban ledger)."""
        srcs = self._block_src.get(index, {})
        return [
            BlockRecord(b, ip, sha1(buf[b * BLOCK_LEN : (b + 1) * BLOCK_LEN]).digest())
            for b, ip in sorted(srcs.items())
        ]

    def block_digests(self, index: int) -> list[bytes]:
        """SHA-1 of each block of piece ``index`` as buffered (before its commit finishes)."""
        buf = self._storage.piece_buffer(index)
        return [sha1(buf[o : o + BLOCK_LEN]).digest() for o in range(0, len(buf), BLOCK_LEN)]

    def pop_sources(self, index: int) -> set[str]:
        """The IPs that sent blocks of piece ``index``; its ledger entry is dropped."""
        return set(self._block_src.pop(index, {}).values())
