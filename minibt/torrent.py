"""One torrent: storage, picker, choker, announcer and its peers, wired together.

Pure in the STYLE.md sense: no sockets, threads or clock.  Inputs come from the session
(wire events of attached peers, hash results, tracker results, ``tick(now)``); outputs are
Actions appended to the session's action list and bytes queued on the peers' wire machines.

States::

    CHECKING --all pieces checked--> DOWNLOADING --last piece verified--> SEEDING
        \\__________________ resume data valid _____________________/
    any --stop()--> STOPPED        any --storage error--> ERROR
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from minibt import wire as w
from minibt.bitfield import Bitfield
from minibt.choker import Choker, PeerSnapshot, allowed_fast_set
from minibt.errors import CloseReason, LocalProtocolError, StorageError
from minibt.events import EventName, Listeners
from minibt.hasher import HashJob, HashResult
from minibt.metainfo import Metainfo
from minibt.peer import Addr, IncomingRequest, PeerConnection, PeerSource
from minibt.picker import Block, PiecePicker
from minibt.ratelimit import KEEP, Keep, TransferLimits
from minibt.reputation import BlockRecord
from minibt.storage import ResumeData, Storage, load_resume, save_resume
from minibt.superseed import Offer, SuperSeeder
from minibt.tracker import AnnounceJob, AnnounceParams, Announcer, AnnounceResult

if TYPE_CHECKING:
    from minibt.session import Session

log = logging.getLogger(__name__)

BLOCK_LEN = 16384  # BEP 3: requests are 2^14 bytes
ALLOWED_FAST_K = 10  # BEP 6 default set size
SNUB_TIMEOUT_S = 30.0  # no block for this long with requests out => snubbed, requests re-issued
SNUBBED_QUEUE_DEPTH = 1  # convention (libtorrent): a snubbed peer gets one outstanding request
IDLE_TIMEOUT_S = 180.0  # neither interested nor interesting for 3 minutes => disconnect
USER_RETRY_S = 2.0
PEER_RETRY_S = 30.0
MAX_RETRY_S = 1800.0


# Wire messages that are also public events (minibt/events.py); Have carries its index.
_WIRE_EVENTS: dict[type, EventName] = {
    w.Have: EventName.HAVE,
    w.BitfieldMsg: EventName.BITFIELD,
    w.HaveAll: EventName.BITFIELD,
    w.HaveNone: EventName.BITFIELD,
    w.Choke: EventName.PEER_CHOKED_US,
    w.Unchoke: EventName.PEER_UNCHOKED_US,
    w.Interested: EventName.PEER_INTERESTED,
    w.NotInterested: EventName.PEER_NOT_INTERESTED,
}


class TorrentState(enum.Enum):
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    SEEDING = "seeding"
    STOPPED = "stopped"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class TorrentConfig:
    max_peers: int = 50
    max_half_open: int = 8
    cache_bytes: int = 16 * 1024 * 1024
    request_queue_min: int = 16
    request_queue_max: int = 250  # stay under libtorrent's 'reqq' (PROTOCOL.md 7.13)
    request_queue_seconds: float = 1.0  # pipeline depth = rate * this
    max_incoming_requests: int = 500
    check_jobs_in_flight: int = 4
    resume_interval_s: float = 60.0
    numwant: int = 50
    fsync: bool = True
    upload_outbox_bytes: int = 256 * 1024  # serve queued requests while the outbox is below this
    upload_limit_bps: float | None = None  # this torrent's payload bytes/s; None or 0 = unlimited (ratelimit.py)
    download_limit_bps: float | None = None
    auto_choke: bool = True  # False: the built-in choker never runs; library code unchokes (Peer.unchoke)
    auto_request: bool = True  # False: never pick/request by itself; library code calls Peer.request
    super_seed: bool = False  # BEP 16 super-seeding (initial seeder only; minibt/superseed.py)


@dataclass(slots=True)
class TorrentStats:
    uploaded: int = 0
    downloaded: int = 0  # payload bytes of verified pieces
    wasted: int = 0
    hash_failures: int = 0
    checked: int = 0
    started_at: float = 0.0
    completed_at: float | None = None


@dataclass(slots=True)
class _Candidate:
    source: PeerSource
    fails: int = 0
    retry_at: float = 0.0


class Torrent:
    """All per-torrent state; driven by :class:`minibt.session.Session`."""

    def __init__(
        self,
        session: Session,
        meta: Metainfo,
        download_dir: str,
        *,
        mode: str,
        resume_path: str | None,
        config: TorrentConfig,
        rng: random.Random,
        now: float,
    ) -> None:
        if mode not in ("download", "seed"):
            raise ValueError(f"unknown mode {mode!r}")
        if config.super_seed and mode != "seed":
            raise ValueError("super-seeding (BEP 16) is for seeding a complete torrent (mode='seed')")
        self.session = session
        self.meta = meta
        self.info_hash = meta.info_hash
        self.download_dir = download_dir
        self.mode = mode
        self.resume_path = resume_path
        self.config = config
        self.rng = rng
        self.state = TorrentState.STOPPED
        self.error: str | None = None
        self.stats = TorrentStats(started_at=now)
        self.have = Bitfield(meta.num_pieces)
        self.picker = PiecePicker(meta.num_pieces, meta.piece_length, meta.total_length, rng)
        self.choker = Choker(rng)
        self.announcer = Announcer(meta.announce_tiers, rng, now=now)
        self.storage = Storage(meta, download_dir, cache_bytes=config.cache_bytes, fsync=config.fsync)
        self.peers: dict[int, PeerConnection] = {}  # handshaken connections by cid
        self.half_open: set[int] = set()
        self.candidates: dict[Addr, _Candidate] = {}
        self._block_src: dict[int, dict[int, str]] = {}  # piece in progress -> block -> IP that sent it
        self._check_queue: deque[int] = deque()
        self._check_inflight = 0
        self._commits_inflight = 0
        self._generation = 0
        self._unchoked: set[int] = set()
        self._next_resume_at = now + config.resume_interval_s
        self._resume_dirty = False
        self._stopping = False
        self._last_connect_at = 0.0
        self.completed_event_sent = False
        self.limits = TransferLimits(
            session.global_up,
            session.global_down,
            up_bps=config.upload_limit_bps,
            down_bps=config.download_limit_bps,
            now=now,
        )
        self.listeners = Listeners()  # callbacks for this torrent's events (called by the Client only)
        self.superseed: SuperSeeder | None = None  # set while super-seeding (BEP 16)

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, now: float) -> None:
        """Open storage, trust resume data or check the files, start announcing."""
        meta = self.meta
        try:
            existed = any(
                os.path.exists(meta.file_path(self.download_dir, i))
                for i, f in enumerate(meta.files)
                if not getattr(f, "pad", False)
            )
            self.storage.open(create=self.mode == "download")
        except StorageError as e:
            self._fail(f"cannot open data files: {e}")
            return
        have_from_resume = None
        if self.resume_path is not None:
            rd, warning = load_resume(self.resume_path, meta, self.download_dir)
            if warning:
                log.warning("%s: %s; checking data on disk", meta.name, warning)
            if rd is not None:
                have_from_resume = Bitfield.from_bytes(meta.num_pieces, rd.have)
                self.stats.uploaded = rd.uploaded
        if have_from_resume is not None:
            for i in have_from_resume.indexes():
                self._mark_have(i)
            self._enter_transfer(now)
        elif existed:
            self.state = TorrentState.CHECKING
            self._check_queue.extend(range(meta.num_pieces))
            self._pump_check()
        else:
            self._enter_transfer(now)
        self.announcer.start(now=now)

    def _enter_transfer(self, now: float) -> None:
        if self.have.all():
            self.state = TorrentState.SEEDING
            if self.stats.completed_at is None:
                self.stats.completed_at = now
        else:
            self.state = TorrentState.DOWNLOADING
        if self.state is TorrentState.SEEDING or self.mode == "download":
            self._resume_dirty = True
        if self.config.super_seed and self.superseed is None:
            self._super_seed_from_config(now)

    def stop(self, *, now: float) -> None:
        """Announce 'stopped', close every peer, save resume data, close files."""
        if self._stopping:
            return
        self._stopping = True
        for peer in list(self.peers.values()):
            self.session.close(peer.cid, CloseReason.SHUTDOWN, "stopping")
        for cid in list(self.half_open):
            self.session.close(cid, CloseReason.SHUTDOWN, "stopping")
        if self.state is not TorrentState.ERROR:
            self.announcer.stop(now=now)
            self._poll_announcer(now)
        if self._commits_inflight == 0:
            self._finalize(now)
        # else: the last commit result calls _finalize (the loop waits for the hasher to drain).

    def _finalize(self, now: float) -> None:
        if self.state is TorrentState.STOPPED:
            return
        self.save_resume(now)
        self.storage.close()
        if self.state is not TorrentState.ERROR:
            self.state = TorrentState.STOPPED

    def _fail(self, message: str) -> None:
        log.error("%s: %s", self.meta.name, message)
        self.state = TorrentState.ERROR
        self.error = message

    @property
    def complete(self) -> bool:
        return self.have.all()

    @property
    def bytes_left(self) -> int:
        if self.have.all():
            return 0
        meta = self.meta
        missing = meta.num_pieces - self.have.count()
        left = missing * meta.piece_length
        last = meta.num_pieces - 1
        if not self.have[last]:
            left -= meta.piece_length - meta.piece_size(last)
        return left

    def _mark_have(self, index: int) -> None:
        self.have.set(index)
        self.picker.set_have(index)

    # ------------------------------------------------------------------ checking

    def _pump_check(self) -> None:
        while self._check_queue and self._check_inflight < self.config.check_jobs_in_flight:
            i = self._check_queue.popleft()
            job = HashJob(
                piece=i,
                generation=self._generation,
                expected=self.meta.piece_hash(i),
                data=None,
                spans=tuple(self.storage.read_piece_spans(i)),
                tag=("check", self.info_hash),
            )
            self._check_inflight += 1
            self.session.hash(job)

    def on_hash_result(self, res: HashResult, *, now: float) -> None:
        kind = res.tag[0] if isinstance(res.tag, tuple) else None
        if kind == "check":
            self._check_inflight -= 1
            self.stats.checked += 1
            if res.ok:
                self._mark_have(res.piece)
            if self.state is TorrentState.CHECKING:
                self._pump_check()
                if not self._check_queue and self._check_inflight == 0:
                    log.info("%s: check done, %d/%d pieces", self.meta.name, self.have.count(), self.meta.num_pieces)
                    self._enter_transfer(now)
                    self.save_resume(now)
            return
        if kind != "piece":
            return
        # A verified piece's bytes were written by the worker (off the event loop); its result is
        # handled even while stopping, so the final resume data includes it.
        self._commits_inflight -= 1
        i = res.piece
        if res.ok and res.written:
            rep = self.session.reputation
            digests = None
            if rep.has_ledger(self.info_hash, i):
                buf = self.storage.piece_buffer(i)
                digests = [
                    hashlib.sha1(buf[o : o + BLOCK_LEN]).digest() for o in range(0, len(buf), BLOCK_LEN)
                ]
            srcs = self._block_src.pop(i, {})
            self.storage.finish_commit(i, written=True)
            self.session.reputation_events(rep.piece_passed(self.info_hash, i, set(srcs.values()), digests))
            if self.state is TorrentState.DOWNLOADING:
                self._piece_passed(i, now)
            elif self.state is not TorrentState.ERROR:
                self._mark_have(i)
                self.stats.downloaded += self.meta.piece_size(i)
        elif res.ok:
            self.storage.finish_commit(i, written=False)
            self.storage.discard_piece(i)
            self.picker.piece_failed(i)
            self._fail(f"write failed: {res.error}")
        else:
            self.storage.finish_commit(i, written=False)
            if self.state is TorrentState.DOWNLOADING:
                self._piece_failed(i, now)
            else:
                self.storage.discard_piece(i)
        if self._stopping and self._commits_inflight == 0:
            self._finalize(now)

    # ------------------------------------------------------------------ peers joining / leaving

    def can_accept_peer(self) -> bool:
        return len(self.peers) < self.config.max_peers and self.state in (
            TorrentState.DOWNLOADING,
            TorrentState.SEEDING,
        )

    def attach(self, peer: PeerConnection, *, now: float) -> None:
        """The BT handshake with ``peer`` is complete: start the wire."""
        self.half_open.discard(peer.cid)
        self.peers[peer.cid] = peer
        meta = self.meta
        assert peer.wire is not None
        wire = peer.wire
        if self.superseed is not None:
            self._super_seed_attach(peer)  # BEP 16: pretend to have nothing, then offer
        elif wire.fast:
            if self.have.all():
                wire.send_have_all()
            elif self.have.none():
                wire.send_have_none()
            else:
                wire.send_bitfield(self.have.to_bytes())
        elif not self.have.none():
            wire.send_bitfield(self.have.to_bytes())
        if wire.extension:
            hs: dict[bytes, object] = {
                b"m": {},
                b"v": b"minibt 0.1.0",
                b"reqq": self.config.max_incoming_requests,
            }
            if self.session.listen_port:
                hs[b"p"] = self.session.listen_port
            wire.ext_handshake(hs)
        if wire.fast and not self.have.all() and self.superseed is None and ":" not in peer.ip:
            # BEP 6: grant the canonical allowed-fast set to this peer's /24.
            for i in allowed_fast_set(peer.ip, self.info_hash, meta.num_pieces, ALLOWED_FAST_K):
                if self.have[i]:
                    wire.allowed_fast(i)
                    peer.allowed_fast_out.add(i)
        cand = self.candidates.get(peer.addr)
        if cand is not None:
            cand.fails = 0

    def peer_closed(self, peer: PeerConnection, *, now: float) -> None:
        self.half_open.discard(peer.cid)
        if self.peers.pop(peer.cid, None) is None:
            return
        self.picker.peer_gone(peer.cid)
        if self.superseed is not None:
            self._super_seed_offers(self.superseed.remove_peer(peer.cid))
        if peer.cid in self._unchoked:
            self._unchoked.discard(peer.cid)
            self._rechoke(now, scheduled=False)

    def peer_connect_failed(self, addr: Addr, *, now: float) -> None:
        cand = self.candidates.get(addr)
        if cand is not None:
            cand.fails += 1
            # Peers the user named are retried soon and never forgotten (the other side may still be
            # starting or hash-checking); others back off from 30 s and are dropped after 5 failures.
            base = USER_RETRY_S if cand.source is PeerSource.USER else PEER_RETRY_S
            cand.retry_at = now + min(base * 2 ** (cand.fails - 1), MAX_RETRY_S)
            if cand.fails >= 5 and cand.source is not PeerSource.USER:
                del self.candidates[addr]

    def add_candidates(self, addrs: list[Addr], source: PeerSource, *, now: float) -> None:
        own = self.session.own_addresses()
        for addr in addrs:
            if addr in own or addr[1] == 0:
                continue  # PROTOCOL.md 7.3: trackers return our own address
            if self.session.reputation.is_banned(addr[0]) or addr in self.candidates:
                continue
            if len(self.candidates) >= 1000:
                break
            self.candidates[addr] = _Candidate(source)

    def _connect_more(self, now: float) -> None:
        if self.state not in (TorrentState.DOWNLOADING, TorrentState.SEEDING) or self._stopping:
            return
        want = self.config.max_peers - len(self.peers) - len(self.half_open)
        if want <= 0 or not self.candidates:
            return
        # Also skip the listen address of peers that dialled us (known from their BEP 10 'p'):
        # dialling it would only end in a duplicate-peer-id close.
        connected = {p.addr for p in self.peers.values()} | self.session.dialing_addrs()
        connected |= {(p.ip, p.listen_port) for p in self.peers.values() if p.listen_port}
        seeding = self.state is TorrentState.SEEDING
        for addr, cand in list(self.candidates.items()):
            if want <= 0 or len(self.half_open) >= self.config.max_half_open:
                break
            if addr in connected or cand.retry_at > now or self.session.reputation.is_banned(addr[0]):
                continue
            if seeding and cand.source is PeerSource.TRACKER and cand.fails > 0:
                continue
            cid = self.session.dial(self, addr, cand.source, now=now)
            if cid is None:
                break
            self.half_open.add(cid)
            cand.retry_at = now + 60.0  # do not redial while this attempt lasts
            want -= 1

    # ------------------------------------------------------------------ wire events

    def on_message(self, peer: PeerConnection, msg: object, *, now: float) -> None:  # noqa: C901
        wire = peer.wire
        assert wire is not None
        t = type(msg)
        if self.session.events.enabled and t in _WIRE_EVENTS:
            self.session.emit(_WIRE_EVENTS[t], peer, self, index=msg.index if isinstance(msg, w.Have) else None)
        if self.superseed is not None:
            self._super_seed_message(peer, msg)
        if t is w.Piece:
            assert isinstance(msg, w.Piece)
            self._on_block(peer, msg, now)
        elif t is w.Request:
            assert isinstance(msg, w.Request)
            self._on_request(peer, msg, now)
        elif t is w.Have:
            assert isinstance(msg, w.Have)
            if not self.picker.peer_has(peer.cid, msg.index):
                self.picker.peer_have(peer.cid, msg.index)
            self._update_interest(peer)
            self._check_seed(peer, now)
        elif t is w.BitfieldMsg:
            assert isinstance(msg, w.BitfieldMsg)
            self.picker.peer_bitfield(peer.cid, msg.bits)
            self._update_interest(peer)
            self._check_seed(peer, now)
        elif t is w.HaveAll:
            self.picker.peer_have_all(peer.cid)
            self._update_interest(peer)
            self._check_seed(peer, now)
        elif t is w.HaveNone:
            self.picker.peer_have_none(peer.cid)
        elif t is w.Unchoke:
            self._fill_requests(peer, now)
        elif t is w.Choke:
            if not wire.fast:
                # BEP 3: a choke discards all our pending requests.
                self.picker.peer_choked(peer.cid)
        elif t is w.Interested:
            peer.last_useful_at = now
            if len(self._unchoked) < 5:
                self._rechoke(now, scheduled=False)
        elif t is w.NotInterested:
            if peer.cid in self._unchoked:
                self._rechoke(now, scheduled=False)
        elif t is w.Cancel:
            assert isinstance(msg, w.Cancel)
            req = IncomingRequest(msg.index, msg.begin, msg.length)
            try:
                peer.requests_in.remove(req)
            except ValueError:
                pass
        elif t is w.Reject:
            assert isinstance(msg, w.Reject)
            self.picker.request_failed(peer.cid, Block(msg.index, msg.begin, msg.length))
            if not wire.peer_choking:
                self._fill_requests(peer, now)
        elif t is w.AllowedFast:
            assert isinstance(msg, w.AllowedFast)
            peer.allowed_fast_in.add(msg.index)
            if wire.peer_choking:
                self._fill_requests(peer, now)
        elif t is w.ExtHandshake:
            assert isinstance(msg, w.ExtHandshake)
            self._on_ext_handshake(peer, msg.data)
        # Suggest, Port, KeepAlive, other extended messages: nothing to do yet.

    def _on_ext_handshake(self, peer: PeerConnection, d: dict[bytes, object]) -> None:
        peer.ext = d
        m = d.get(b"m")
        if isinstance(m, dict):
            peer.ext_ids = {
                k.decode("utf-8", "replace"): v for k, v in m.items() if isinstance(k, bytes) and isinstance(v, int)
            }
        reqq = d.get(b"reqq")
        if isinstance(reqq, int) and reqq > 0:
            peer.reqq = min(reqq, 2000)
        p = d.get(b"p")
        if isinstance(p, int) and 0 < p < 65536:
            peer.listen_port = p
        v = d.get(b"v")
        if isinstance(v, bytes):
            peer.client_name = v[:64].decode("utf-8", "replace")

    def _check_seed(self, peer: PeerConnection, now: float) -> None:
        if not peer.is_seed and self.picker.peer_is_seed(peer.cid):
            peer.is_seed = True
            if self.have.all():
                self.session.close(peer.cid, CloseReason.BOTH_SEEDS, "both sides are seeds")

    def _update_interest(self, peer: PeerConnection) -> None:
        wire = peer.wire
        if wire is None:
            return
        interesting = not self.have.all() and self.picker.is_interesting(peer.cid)
        if interesting and not wire.am_interested:
            wire.interested()
        elif not interesting and wire.am_interested:
            wire.not_interested()

    # ------------------------------------------------------------------ downloading

    def _queue_depth(self, peer: PeerConnection, now: float) -> int:
        if peer.snubbed:
            return SNUBBED_QUEUE_DEPTH  # else its re-issued requests go straight back to it
        cfg = self.config
        depth = int(peer.down.rate(now) * cfg.request_queue_seconds / BLOCK_LEN) + cfg.request_queue_min
        return max(cfg.request_queue_min, min(depth, cfg.request_queue_max, peer.reqq))

    def _fill_requests(self, peer: PeerConnection, now: float, *, batch: bool = False) -> None:
        """Top the peer's request pipeline up to its depth.

        With ``batch`` (after each received block) it waits until a quarter of the pipeline is free,
        so requests go out in groups: fewer picker calls and fewer, larger sends.
        """
        wire = peer.wire
        if wire is None or self.state is not TorrentState.DOWNLOADING or peer.closing:
            return
        if not wire.am_interested or not self.config.auto_request:
            return
        allowed: set[int] | None = None
        if wire.peer_choking:
            if not peer.allowed_fast_in:
                return
            allowed = peer.allowed_fast_in
        depth = self._queue_depth(peer, now)
        n = depth - self.picker.num_outstanding(peer.cid)
        if n <= 0 or (batch and n < depth >> 2):
            return
        blocks = self.picker.pick(peer.cid, n, allowed=allowed, can_start=self.storage.can_start_piece)
        if not blocks and self.picker.num_outstanding(peer.cid) == 0:
            self._update_interest(peer)
        for b in blocks:
            wire.request(b.index, b.begin, b.length)
        self.session.mark_dirty(peer.cid)

    def _on_block(self, peer: PeerConnection, msg: w.Piece, now: float) -> None:
        n = len(msg.data)
        peer.down.add(n, now)
        peer.last_block_at = now
        peer.snubbed = False
        block = Block(msg.index, msg.begin, n)
        if self.state is not TorrentState.DOWNLOADING or self.have[msg.index] or not self.picker.is_requested(peer.cid, block):
            self.stats.wasted += n  # unsolicited, late or duplicate: never written
            self._fill_requests(peer, now)
            return
        expected, others = self.picker.block_received(peer.cid, block)
        for other in others:
            op = self.peers.get(other)  # type: ignore[call-overload]
            if op is not None and op.wire is not None:
                op.wire.cancel(block.index, block.begin, block.length)
                self.session.mark_dirty(op.cid)
        self._block_src.setdefault(block.index, {})[block.begin // BLOCK_LEN] = peer.ip
        try:
            done = self.storage.write_block(block.index, block.begin, msg.data)
        except StorageError as e:
            self._fail(str(e))
            return
        if done:
            self.picker.piece_hashing(block.index)
            try:
                writes = self.storage.prepare_commit(block.index)
            except StorageError as e:
                self._fail(str(e))
                return
            self._commits_inflight += 1
            self.session.hash(
                HashJob(
                    piece=block.index,
                    generation=self._generation,
                    expected=self.meta.piece_hash(block.index),
                    data=self.storage.piece_buffer(block.index),
                    spans=None,
                    tag=("piece", self.info_hash),
                    writes=writes,
                )
            )
        self._fill_requests(peer, now, batch=True)

    def _piece_passed(self, index: int, now: float) -> None:
        self._mark_have(index)
        self.session.emit(EventName.PIECE_VERIFIED, None, self, index=index)
        self.picker.piece_passed(index)
        self.stats.downloaded += self.meta.piece_size(index)
        self._resume_dirty = True
        for peer in self.peers.values():
            if peer.wire is None:
                continue
            if not self.picker.peer_has(peer.cid, index):
                peer.wire.have(index)
                self.session.mark_dirty(peer.cid)
            if peer.wire.am_interested and not self.picker.is_interesting(peer.cid):
                peer.wire.not_interested()
                self.session.mark_dirty(peer.cid)
        if self.have.all():
            self._on_complete(now)
        else:
            for peer in list(self.peers.values()):
                if peer.wire is not None and not peer.wire.peer_choking:
                    self._fill_requests(peer, now)

    def _piece_failed(self, index: int, now: float) -> None:
        blocks = self.block_records(index, self.storage.piece_buffer(index))
        self.storage.discard_piece(index)
        self.picker.piece_failed(index)
        self.stats.hash_failures += 1
        self.stats.wasted += self.meta.piece_size(index)
        srcs = self._block_src.pop(index, {})
        self.session.emit(EventName.PIECE_FAILED, None, self, index=index, detail=", ".join(sorted(set(srcs.values()))))
        log.warning(
            "%s: piece %d failed its hash check (from %s)", self.meta.name, index, ", ".join(sorted(set(srcs.values())))
        )
        self.session.reputation_events(self.session.reputation.piece_failed(self.info_hash, index, blocks))
        for peer in list(self.peers.values()):
            if peer.wire is not None and not peer.wire.peer_choking:
                self._fill_requests(peer, now)

    def block_records(self, index: int, buf: memoryview) -> list[BlockRecord]:
        """Who sent each block of a piece in progress and the SHA-1 of the bytes (smart-ban ledger)."""
        srcs = self._block_src.get(index, {})
        return [
            BlockRecord(b, ip, hashlib.sha1(buf[b * BLOCK_LEN : (b + 1) * BLOCK_LEN]).digest())
            for b, ip in sorted(srcs.items())
        ]

    @property
    def banned(self) -> set[str]:
        return set(self.session.reputation.banned())

    def forget_ip(self, ip: str) -> None:
        """A banned IP: never dial it again."""
        for addr in [a for a in self.candidates if a[0] == ip]:
            del self.candidates[addr]

    def _on_complete(self, now: float) -> None:
        self.state = TorrentState.SEEDING
        self.stats.completed_at = now
        log.info("%s: download complete", self.meta.name)
        self.session.emit(EventName.TORRENT_COMPLETE, None, self)
        self.save_resume(now)
        if not self.completed_event_sent:
            self.completed_event_sent = True
            self.announcer.completed(now=now)
        for peer in list(self.peers.values()):
            if peer.is_seed:
                self.session.close(peer.cid, CloseReason.BOTH_SEEDS, "both sides are seeds")

    # ------------------------------------------------------------------ uploading

    def _on_request(self, peer: PeerConnection, msg: w.Request, now: float) -> None:
        wire = peer.wire
        assert wire is not None
        if not self.have[msg.index]:
            # Asking for what we never announced is a protocol violation (BEP 3).
            self.session.close(peer.cid, CloseReason.PROTOCOL_VIOLATION, f"request for piece {msg.index} we lack")
            return
        if self.superseed is not None and not self.superseed.may_request(peer.cid, msg.index):
            self._super_seed_refuse(peer, msg)  # BEP 16: only the pieces we revealed to it
            return
        if wire.am_choking and msg.index not in peer.allowed_fast_out:
            if wire.fast:
                if not wire.can_send():
                    # Each 17-byte request queues a 17-byte reject: a peer that floods requests while
                    # choked and never reads would grow our outbox without bound (STYLE.md 7).
                    self.session.close(peer.cid, CloseReason.PROTOCOL_VIOLATION, "request flood while choked")
                    return
                wire.reject(msg.index, msg.begin, msg.length)  # BEP 6: answer every request
                self.session.mark_dirty(peer.cid)
            return
        if len(peer.requests_in) >= self.config.max_incoming_requests:
            self.session.close(peer.cid, CloseReason.PROTOCOL_VIOLATION, "request queue flood")
            return
        peer.requests_in.append(IncomingRequest(msg.index, msg.begin, msg.length))
        self.serve(peer, now)

    def serve(self, peer: PeerConnection, now: float) -> None:
        """Answer queued requests while the peer's outbox has room (backpressure)."""
        wire = peer.wire
        if wire is None or peer.closing:
            return
        limit = self.config.upload_outbox_bytes
        served = False
        while peer.requests_in and wire.outbox_len < limit:
            if self.limits.up_gated and not self.limits.up.consume(peer.requests_in[0].length, now=now):
                self.limits.wait(peer.cid, peer.requests_in[0].length)  # serve_waiting() retries it
                self.session.rate_waiting(self)
                break
            r = peer.requests_in.popleft()
            try:
                data = self.storage.read_block(r.index, r.begin, r.length)
            except StorageError as e:
                self._fail(f"read failed: {e}")
                return
            wire.piece(r.index, r.begin, data)
            peer.up.add(r.length, now)
            self.stats.uploaded += r.length
            served = True
        if served:
            self.session.mark_dirty(peer.cid)

    # ------------------------------------------------------------------ rate limits (issue 3, ratelimit.py)

    def set_rate_limits(
        self, *, up: float | None | Keep = KEEP, down: float | None | Keep = KEEP, now: float | None = None
    ) -> None:
        """This torrent's own upload/download limits in payload bytes/s (None or 0 = unlimited).

        The global limits apply as well.  Takes effect at once; ``now`` defaults to the session's latest time.
        """
        self.limits.set_rates(up=up, down=down, now=self.session.now if now is None else now)
        self.session.rate_limits_changed()

    def rate_limits(self) -> tuple[float | None, float | None]:
        """(upload, download) limits of this torrent alone, bytes/s; None = unlimited."""
        return self.limits.up_bucket.rate_bps, self.limits.down_bucket.rate_bps

    def serve_waiting(self, *, now: float) -> bool:
        """Serve peers whose requests waited for upload tokens, round robin; True if some still wait."""
        waiting = self.limits.waiting
        for cid in list(waiting):
            waiting.pop(cid, None)
            peer = self.peers.get(cid)
            if peer is not None and peer.requests_in:
                self.serve(peer, now)
            if cid in waiting:
                break  # out of tokens again: the others keep their places ahead of it
        return bool(waiting)

    # ------------------------------------------------------------------ choking

    def _rechoke(self, now: float, *, scheduled: bool) -> None:
        if not self.config.auto_choke:
            return  # library code chokes and unchokes (minibt.Peer)
        seeding = self.have.all()
        snaps = []
        for p in self.peers.values():
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
        unchoke = self.choker.rechoke(snaps, now=now, scheduled=scheduled)
        for p in self.peers.values():
            wire = p.wire
            if wire is None:
                continue
            if p.cid in unchoke and wire.am_choking:
                wire.unchoke()
                self.session.mark_dirty(p.cid)
                self.session.emit(EventName.WE_UNCHOKED_PEER, p, self)
            elif p.cid not in unchoke and not wire.am_choking:
                wire.choke()
                self._reject_pending(p)
                self.session.mark_dirty(p.cid)
                self.session.emit(EventName.WE_CHOKED_PEER, p, self)
        self._unchoked = {k for k in unchoke if isinstance(k, int)}

    def _reject_pending(self, peer: PeerConnection) -> None:
        wire = peer.wire
        assert wire is not None
        keep: deque[IncomingRequest] = deque()
        for r in peer.requests_in:
            if r.index in peer.allowed_fast_out:
                keep.append(r)
            elif wire.fast:
                wire.reject(r.index, r.begin, r.length)  # BEP 6: choke no longer cancels implicitly
        peer.requests_in = keep

    # ------------------------------------------------------------------ public API (minibt.Peer, on())

    def on(self, name: str, callback: Callable[[Any], object]) -> None:
        """Call ``callback(event)`` for this torrent's events (the Client delivers them; minibt/events.py)."""
        self.listeners.on(name, callback)

    def off(self, name: str, callback: Callable[[Any], object]) -> None:
        self.listeners.off(name, callback)

    def choke_peer(self, peer: PeerConnection, *, now: float) -> None:
        """Choke ``peer`` on behalf of library code (the built-in choker may undo it if enabled)."""
        wire = peer.wire
        assert wire is not None
        self._unchoked.discard(peer.cid)
        if wire.am_choking:
            return
        wire.choke()
        self._reject_pending(peer)
        self.session.mark_dirty(peer.cid)
        self.session.emit(EventName.WE_CHOKED_PEER, peer, self)

    def unchoke_peer(self, peer: PeerConnection, *, now: float) -> None:
        wire = peer.wire
        assert wire is not None
        self._unchoked.add(peer.cid)
        if not wire.am_choking:
            return
        wire.unchoke()
        self.session.mark_dirty(peer.cid)
        self.session.emit(EventName.WE_UNCHOKED_PEER, peer, self)

    def request_block(self, peer: PeerConnection, index: int, begin: int, length: int, *, now: float) -> None:
        """Request one block from ``peer`` for library code, with the picker's bookkeeping.

        Raises LocalProtocolError when the request is not allowed (see ``minibt.Peer.request``).
        """
        wire = peer.wire
        if wire is None or peer.closing:
            raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, "request: the peer is not connected")
        if self.state is not TorrentState.DOWNLOADING:
            raise LocalProtocolError(
                CloseReason.PROTOCOL_VIOLATION, f"request: the torrent is {self.state.value}, not downloading"
            )
        if wire.peer_choking and index not in peer.allowed_fast_in:
            # BEP 3 drops (BEP 6 rejects) requests while choked, except for allowed-fast pieces.
            raise LocalProtocolError(
                CloseReason.PROTOCOL_VIOLATION, f"request: the peer chokes us and piece {index} is not allowed fast"
            )
        outstanding = self.picker.num_outstanding(peer.cid)
        if outstanding >= min(peer.reqq, self.config.request_queue_max):
            raise LocalProtocolError(
                CloseReason.PROTOCOL_VIOLATION, f"request: {outstanding} requests already outstanding (queue full)"
            )
        try:
            self.picker.mark_requested(peer.cid, Block(index, begin, length))
        except ValueError as e:
            raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, f"request: {e}") from None
        if outstanding == 0:
            peer.last_block_at = now  # the snub timer counts from the first outstanding request
        if not wire.am_interested:
            wire.interested()
        wire.request(index, begin, length)
        self.session.mark_dirty(peer.cid)

    # ------------------------------------------------------------------ timers

    def tick(self, *, now: float) -> None:
        if self.state in (TorrentState.STOPPED, TorrentState.ERROR):
            return
        if self.state is not TorrentState.CHECKING:
            if self.choker.due(now):
                self._rechoke(now, scheduled=True)
            for peer in list(self.peers.values()):
                self._peer_timers(peer, now)
            if now - self._last_connect_at >= 1.0:
                self._last_connect_at = now
                self._connect_more(now)
            if len(self.peers) < 5 and self.candidates == {}:
                self.announcer.want_more_peers(now=now)
            # Not while checking: 'left' is unknown until the check ends, and a seed that announced
            # left=<everything> would be listed as a leecher until its next interval (30 min).
            self._poll_announcer(now)
        if self._resume_dirty and now >= self._next_resume_at:
            self.save_resume(now)

    def _peer_timers(self, peer: PeerConnection, now: float) -> None:
        wire = peer.wire
        if wire is None or peer.closing:
            return
        if self.picker.num_outstanding(peer.cid) and now - peer.last_block_at > SNUB_TIMEOUT_S:
            # Snubbed: hand its requests to others; keep the connection (BEP 3 anti-snubbing).
            peer.snubbed = True
            for b in self.picker.outstanding(peer.cid):
                self.picker.request_failed(peer.cid, b)
                wire.cancel(b.index, b.begin, b.length)
            peer.last_block_at = now
            self.session.mark_dirty(peer.cid)
        if wire.am_interested or wire.peer_interested:
            peer.last_useful_at = now
        elif now - peer.last_useful_at > IDLE_TIMEOUT_S:
            self.session.close(peer.cid, CloseReason.IDLE, "neither interested nor interesting for 3 minutes")
            return
        if self.state is TorrentState.DOWNLOADING and not wire.peer_choking:
            self._fill_requests(peer, now)

    def _poll_announcer(self, now: float) -> None:
        job = self.announcer.poll(now=now)
        if job is None:
            return
        params = AnnounceParams(
            info_hash=self.info_hash,
            peer_id=self.session.peer_id,
            port=self.session.listen_port,
            uploaded=self.stats.uploaded,
            downloaded=self.stats.downloaded,
            left=self.bytes_left,
            event=job.event,
            numwant=0 if job.event == "stopped" else self.config.numwant,
            key=self.session.announce_key,
            tracker_id=job.tracker_id,
        )
        self.session.announce(self, job, params)

    def on_announce_result(
        self, job: AnnounceJob, result: AnnounceResult | None, error: str | None, *, now: float
    ) -> None:
        if result is not None and result.failure is None:
            self.announcer.job_done(job, result, now=now)
            self.add_candidates(list(result.peers), PeerSource.TRACKER, now=now)
            self._connect_more(now)
        else:
            msg = error or (result.failure if result is not None else None) or "unknown error"
            if result is not None:
                self.announcer.job_done(job, result, now=now)
            else:
                self.announcer.job_failed(job, msg, now=now)
            log.info("%s: tracker %s: %s", self.meta.name, job.url, msg)

    # ------------------------------------------------------------------ resume data

    def save_resume(self, now: float) -> None:
        if self.resume_path is None or self.state in (TorrentState.CHECKING, TorrentState.ERROR):
            return
        self._next_resume_at = now + self.config.resume_interval_s
        self._resume_dirty = False
        try:
            self.storage.sync()  # data first, then the record that says it is there
            save_resume(
                self.resume_path,
                ResumeData(
                    info_hash=self.info_hash,
                    piece_length=self.meta.piece_length,
                    num_pieces=self.meta.num_pieces,
                    have=self.have.to_bytes(),
                    file_sizes=tuple(f.length for f in self.meta.files),
                    uploaded=self.stats.uploaded,
                    downloaded=self.stats.downloaded,
                    saved_at=self.session.wall_time(),
                ),
            )
        except (StorageError, OSError) as e:
            log.warning("%s: could not save resume data: %s", self.meta.name, e)

    # ------------------------------------------------------------------ super-seeding (BEP 16)

    @property
    def super_seeding(self) -> bool:
        return self.superseed is not None

    def set_super_seed(self, on: bool, *, now: float) -> None:
        """Switch BEP 16 super-seeding on or off at run time (minibt/superseed.py has the rules).

        On is only valid while seeding a complete torrent (ValueError otherwise).  Peers connected
        before have seen our full bitfield: they are served as before and only count toward piece
        availability.  Off (or the automatic end): every peer is sent a ``have`` for each piece it
        lacks and was never shown, and seeding goes on normally.
        """
        if not on:
            if self.superseed is not None:
                self._super_seed_end("switched off")
            return
        if self.superseed is not None:
            return
        if self.state is not TorrentState.SEEDING or not self.have.all():
            raise ValueError(f"super-seeding needs a complete torrent that is seeding (it is {self.state.value})")
        ss = self.superseed = SuperSeeder(self.meta.num_pieces, self.rng)
        log.info("%s: super-seeding (BEP 16)", self.meta.name)
        for p in self.peers.values():
            if p.wire is not None:
                ss.add_peer(p.cid, exempt=True)
                ss.peer_bitfield(p.cid, self.picker.peer_pieces(p.cid))
        if ss.finished:
            self._super_seed_end("another seed is connected")

    def _super_seed_from_config(self, now: float) -> None:
        if self.state is TorrentState.SEEDING:
            self.set_super_seed(True, now=now)
        else:
            self._fail(
                f"super-seeding needs complete data ({self.have.count()}/{self.meta.num_pieces} pieces verified)"
            )

    def _super_seed_attach(self, peer: PeerConnection) -> None:
        assert self.superseed is not None and peer.wire is not None
        if peer.wire.fast:
            peer.wire.send_have_none()  # BEP 16: "masquerades as a normal client with no data"
        self._super_seed_offers(self.superseed.add_peer(peer.cid))

    def _super_seed_message(self, peer: PeerConnection, msg: object) -> None:
        ss = self.superseed
        assert ss is not None
        if isinstance(msg, w.Have):
            offers = ss.peer_have(peer.cid, msg.index)
        elif isinstance(msg, w.BitfieldMsg):
            offers = ss.peer_bitfield(peer.cid, msg.bits)
        elif isinstance(msg, w.HaveAll):
            offers = ss.peer_have_all(peer.cid)
        else:
            return
        self._super_seed_offers(offers)

    def _super_seed_offers(self, offers: list[Offer]) -> None:
        """Send a ``have`` for each offer; end super-seeding once it has done its job."""
        for o in offers:
            p = self.peers.get(o.peer) if isinstance(o.peer, int) else None
            if p is not None and p.wire is not None and not p.closing and not p.wire.closed:
                p.wire.have(o.index)
                self.session.mark_dirty(p.cid)
        if self.superseed is not None and self.superseed.finished:
            self._super_seed_end("another peer is a seed or every piece is on two peers")

    def _super_seed_refuse(self, peer: PeerConnection, msg: w.Request) -> None:
        """A request for a piece not revealed to the peer: reject it (BEP 6) or ignore it (BEP 3)."""
        wire = peer.wire
        assert wire is not None
        if not wire.fast:
            return
        if not wire.can_send():
            self.session.close(peer.cid, CloseReason.PROTOCOL_VIOLATION, "request flood for pieces not offered")
            return
        wire.reject(msg.index, msg.begin, msg.length)
        self.session.mark_dirty(peer.cid)

    def _super_seed_end(self, why: str) -> None:
        ss = self.superseed
        assert ss is not None
        self.superseed = None
        log.info("%s: super-seeding ends (%s); seeding normally (%s)", self.meta.name, why, ss.stats())
        for p in self.peers.values():
            if p.wire is None or p.closing or p.wire.closed:
                continue
            try:
                missing = ss.unrevealed_missing(p.cid)
            except ValueError:
                continue
            for i in missing:
                p.wire.have(i)  # a later bitfield is not allowed (BEP 3): one have per piece
            if missing:
                self.session.mark_dirty(p.cid)

    # ------------------------------------------------------------------ reporting

    def status(self, now: float) -> dict[str, object]:
        down = sum(p.down.rate(now) for p in self.peers.values())
        up = sum(p.up.rate(now) for p in self.peers.values())
        have_bytes = self.meta.total_length - self.bytes_left
        return {
            "name": self.meta.name,
            "info_hash": self.meta.info_hash.hex(),
            "state": self.state.value,
            "error": self.error,
            "progress": have_bytes / self.meta.total_length if self.meta.total_length else 1.0,
            "have_pieces": self.have.count(),
            "num_pieces": self.meta.num_pieces,
            "checked": self.stats.checked,
            "bytes_left": self.bytes_left,
            "total_bytes": self.meta.total_length,
            "rate_down": down,
            "rate_up": up,
            "uploaded": self.stats.uploaded,
            "downloaded": self.stats.downloaded,
            "wasted": self.stats.wasted,
            "hash_failures": self.stats.hash_failures,
            "peers": len(self.peers),
            "half_open": len(self.half_open),
            "candidates": len(self.candidates),
            "banned": sorted(self.session.reputation.banned()),
            "super_seeding": self.superseed is not None,
        }
