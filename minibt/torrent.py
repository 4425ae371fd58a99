"""One torrent: storage, picker, choker, announcer and its peers, wired together.

Pure in the STYLE.md sense: no sockets, threads or clock.  Inputs come from the session
(wire events of attached peers, hash results, tracker results, ``tick(now)``); outputs are
Actions appended to the session's action list and bytes queued on the peers' wire machines.
Here: the life cycle, routing wire messages, piece verification results, timers, announces.
The rest is done by parts this torrent owns, each seeing it only through a small Protocol
(section "services for the parts"): checker.py (hash check, resume file), dialer.py (whom to
dial), download.py (request pipeline, received blocks), upload.py (choking, serving requests),
superseeding.py (BEP 16), exchange.py (ut_pex, serving ut_metadata); extension.py has the BEP 10
handshake.

States::

    CHECKING --all pieces checked--> DOWNLOADING --last piece verified--> SEEDING
        \\__________________ resume data valid _____________________/
    any --stop()--> STOPPED        any --storage error--> ERROR
"""

from __future__ import annotations

import errno
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from minibt import wire_codec as w
from minibt.bitfield import Bitfield
from minibt.candidates import CandidatePool
from minibt.checker import Checker, CheckJobTag
from minibt.choker import Choker
from minibt.dialer import Dialer
from minibt.download import Downloader
from minibt.errors import CloseReason, LocalProtocolError, StorageError
from minibt.events import EventName, EventRecord, Listeners
from minibt.exchange import Exchange
from minibt.extension import apply_peer_handshake, our_handshake
from minibt.metainfo import Metainfo
from minibt.peer import PeerConnection, PeerSource
from minibt.pex import PexPeer, PexReceived
from minibt.picker import PiecePicker
from minibt.ratelimit import KEEP, Keep, TransferLimits
from minibt.reputation import BlockRecord
from minibt.settings import Mode, TorrentConfig, TorrentState, TorrentStats, parse_mode
from minibt.storage import Storage, plan_names, wanted_pieces
from minibt.superseed import SuperSeeder
from minibt.superseeding import SuperSeeding
from minibt.tracker import AnnounceJob, Announcer, AnnounceResult
from minibt.upload import Uploader
from minibt.urls import Addr
from minibt.workers import HashJob, HashResult

if TYPE_CHECKING:
    from minibt.session import Session

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 180.0  # neither interested nor interesting for 3 minutes => disconnect
# A write that fails with one of these pauses downloading (verified data stays, seeding goes on)
# and is retried every disk_retry_s once the disk has room for a piece again; other errors are fatal.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True, slots=True)
class PieceJobTag:
    """Tag of a hash job that verifies (and writes) a downloaded piece of ``info_hash``'s torrent."""

    info_hash: bytes

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


class Torrent:
    """All per-torrent state; driven by :class:`minibt.session.Session`."""

    def __init__(
        self,
        session: Session,
        meta: Metainfo,
        download_dir: str,
        *,
        mode: Mode,
        resume_path: str | None,
        config: TorrentConfig,
        rng: random.Random,
        now: float,
    ) -> None:
        mode = parse_mode(mode)
        if config.super_seed and mode is not Mode.SEED:
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
        # File selection: pieces wholly inside unselected files are never requested and files no wanted
        # piece touches are never created; complete = every wanted piece verified.
        self.wanted: bytes | None = None
        only: frozenset[int] | None = None
        if config.wanted_files is not None:
            self.wanted, only = wanted_pieces(meta, config.wanted_files)
            self.picker.set_wanted(self.wanted)
        self.storage = Storage(
            meta, download_dir, cache_bytes=config.cache_bytes, fsync=config.fsync, only_files=only,
            names=plan_names(meta, download_dir, resume_path),  # the names the resume file recorded, if any
        )
        self.peers: dict[int, PeerConnection] = {}  # handshaken connections by cid
        self.half_open: set[int] = set()  # cids we dialled whose BT handshake is not complete
        self._commits_inflight = 0
        self._generation = 0
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
        # The parts; each sees this torrent only through its small Protocol (UploadHost, ...).
        self.checker = Checker(
            meta, self.storage, download_dir, resume_path=resume_path,
            jobs_in_flight=config.check_jobs_in_flight, resume_interval_s=config.resume_interval_s, now=now,
        )
        self.dialer = Dialer(
            self, peers=self.peers, half_open=self.half_open, reputation=session.reputation,
            max_peers=config.max_peers, max_half_open=config.max_half_open, max_candidates=config.max_candidates,
            client_addr=None if session.listen_ip in ("0.0.0.0", "::") else (session.listen_ip, session.listen_port),
        )
        self._superseeding = SuperSeeding(  # active while super-seeding (BEP 16)
            self, peers=self.peers, picker=self.picker, num_pieces=meta.num_pieces, rng=rng, name=meta.name
        )
        self.download = Downloader(
            self, peers=self.peers, have=self.have, picker=self.picker, storage=self.storage, stats=self.stats,
            queue_min=config.request_queue_min, queue_max=config.request_queue_max,
            queue_seconds=config.request_queue_seconds, auto_request=config.auto_request,
            disk_retry_s=config.disk_retry_s, need_free_bytes=2 * meta.piece_length,
        )
        self.upload = Uploader(
            self, info_hash=self.info_hash, peers=self.peers, have=self.have, storage=self.storage,
            limits=self.limits, choker=self.choker, stats=self.stats, superseeding=self._superseeding,
            outbox_bytes=config.upload_outbox_bytes, max_requests=config.max_incoming_requests,
            auto_choke=config.auto_choke,
        )
        self.exchange = Exchange(self, peers=self.peers, info_bytes=meta.info_bytes, pex_config=config.pex)

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, now: float) -> None:
        """Open storage, trust resume data or check the files, start announcing."""
        meta = self.meta
        try:
            existed = self.checker.data_exists()  # before open() creates the files
            self.storage.open(create=self.mode is Mode.DOWNLOAD)
        except StorageError as e:
            self.fail(f"cannot open data files: {e}")
            return
        rd = self.checker.load_resume()
        if rd is not None:
            have_from_resume = Bitfield.from_bytes(meta.num_pieces, rd.have)
            self.stats.uploaded = rd.uploaded
            for i in have_from_resume.indexes():
                self._mark_have(i)
            self._enter_transfer(now)
        elif existed:
            self.state = TorrentState.CHECKING
            self.checker.check_all()
            self._pump_check()
        else:
            self._enter_transfer(now)
        self.announcer.start(now=now)

    def _enter_transfer(self, now: float) -> None:
        if self.complete:
            self.state = TorrentState.SEEDING
            if self.stats.completed_at is None:
                self.stats.completed_at = now
        else:
            self.state = TorrentState.DOWNLOADING
        if self.state is TorrentState.SEEDING or self.mode is Mode.DOWNLOAD:
            self.checker.resume_dirty = True
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

    def fail(self, message: str) -> None:
        """Enter the ERROR state (storage trouble, or super-seeding without the data)."""
        log.error("%s: %s", self.meta.name, message)
        self.state = TorrentState.ERROR
        self.error = message

    @property
    def complete(self) -> bool:
        """Every wanted piece (all of them without a file selection) is verified."""
        return self.have.all() if self.wanted is None else self.picker.complete

    @property
    def wanted_bytes(self) -> int:
        """Bytes of the wanted pieces (the whole torrent without a file selection)."""
        if self.wanted is None:
            return self.meta.total_length
        return sum(self.meta.piece_size(i) for i, w in enumerate(self.wanted) if w)

    # ------------------------------------------------------------------ pausing the download side (download.py)

    @property
    def disk_error(self) -> str | None:
        """Set while downloading is paused by a full disk (verified pieces stay, seeding goes on)."""
        return self.download.disk_error

    @property
    def paused_reason(self) -> str | None:
        return self.download.paused_reason

    def pause_download(self, reason: str, *, now: float) -> None:
        """Stop requesting pieces (e.g. outside a download window); seeding and verified data stay."""
        self.download.pause(reason, name=self.meta.name)

    def resume_download(self, *, now: float) -> None:
        self.download.resume(now, name=self.meta.name)

    @property
    def bytes_left(self) -> int:
        if self.complete:
            return 0
        meta = self.meta
        if self.wanted is not None:
            have = self.have
            return sum(meta.piece_size(i) for i, w in enumerate(self.wanted) if w and not have[i])
        missing = meta.num_pieces - self.have.count()
        left = missing * meta.piece_length
        last = meta.num_pieces - 1
        if not self.have[last]:
            left -= meta.piece_length - meta.piece_size(last)
        return left

    def _mark_have(self, index: int) -> None:
        self.have.set(index)
        self.picker.set_have(index)

    # ------------------------------------------------------------------ hash results

    def _pump_check(self) -> None:
        for job in self.checker.jobs(self._generation):
            self.session.hash(job)

    def on_hash_result(self, res: HashResult, *, now: float) -> None:
        match res.tag:
            case CheckJobTag():
                self._check_done(res, now)
            case PieceJobTag():
                self._piece_hashed(res, now)

    def _check_done(self, res: HashResult, now: float) -> None:
        self.checker.job_done()
        self.stats.checked += 1
        if res.ok:
            self._mark_have(res.piece)
        if self.state is TorrentState.CHECKING:
            self._pump_check()
            if self.checker.done:
                log.info("%s: check done, %d/%d pieces", self.meta.name, self.have.count(), self.meta.num_pieces)
                self._enter_transfer(now)
                self.save_resume(now)

    def _piece_hashed(self, res: HashResult, now: float) -> None:
        # A verified piece's bytes were written by the worker (off the event loop); its result is
        # handled even while stopping, so the final resume data includes it.
        self._commits_inflight -= 1
        i = res.piece
        if res.ok and res.written:
            rep = self.session.reputation
            digests = self.download.block_digests(i) if rep.has_ledger(self.info_hash, i) else None
            srcs = self.download.pop_sources(i)
            self.storage.finish_commit(i, written=True)
            self.session.reputation_events(rep.piece_passed(self.info_hash, i, srcs, digests))
            if self.state is TorrentState.DOWNLOADING:
                self._piece_passed(i, now)
            elif self.state is not TorrentState.ERROR:
                self._mark_have(i)
                self.stats.downloaded += self.meta.piece_size(i)
        elif res.ok:
            self.storage.finish_commit(i, written=False)
            self.storage.discard_piece(i)
            self.picker.piece_failed(i)
            if res.write_errno in DISK_FULL_ERRNOS and self.state is TorrentState.DOWNLOADING:
                self.download.disk_full(f"write failed: {res.error}", now, name=self.meta.name)
                self.checker.resume_dirty = True
            else:
                self.fail(f"write failed: {res.error}")
        else:
            self.storage.finish_commit(i, written=False)
            if self.state is TorrentState.DOWNLOADING:
                self._piece_failed(i, now)
            else:
                self.storage.discard_piece(i)
        if self._stopping and self._commits_inflight == 0:
            self._finalize(now)

    def _piece_passed(self, index: int, now: float) -> None:
        self._mark_have(index)
        self.session.emit(EventName.PIECE_VERIFIED, None, self, index=index)
        self.picker.piece_passed(index)
        self.stats.downloaded += self.meta.piece_size(index)
        self.checker.resume_dirty = True
        for peer in self.peers.values():
            if peer.wire is None:
                continue
            if not self.picker.peer_has(peer.cid, index):
                peer.wire.have(index)
                self.session.mark_dirty(peer.cid)
            if peer.wire.am_interested and not self.picker.is_interesting(peer.cid):
                peer.wire.not_interested()
                self.session.mark_dirty(peer.cid)
        if self.complete:
            self._on_complete(now)
        else:
            self.download.fill_all(now)

    def _piece_failed(self, index: int, now: float) -> None:
        blocks = self.block_records(index, self.storage.piece_buffer(index))
        self.storage.discard_piece(index)
        self.picker.piece_failed(index)
        self.stats.hash_failures += 1
        self.stats.wasted += self.meta.piece_size(index)
        srcs = ", ".join(sorted(self.download.pop_sources(index)))
        self.session.emit(EventName.PIECE_FAILED, None, self, index=index, detail=srcs)
        log.warning("%s: piece %d failed its hash check (from %s)", self.meta.name, index, srcs)
        self.session.reputation_events(self.session.reputation.piece_failed(self.info_hash, index, blocks))
        self.download.fill_all(now)

    def block_records(self, index: int, buf: memoryview) -> list[BlockRecord]:
        """Who sent each block of a piece in progress and the SHA-1 of the bytes (smart-ban ledger)."""
        return self.download.block_records(index, buf)

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
        assert peer.wire is not None
        wire = peer.wire
        if self._superseeding.active:
            self._superseeding.attach(peer)  # BEP 16: pretend to have nothing, then offer
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
            wire.ext_handshake(
                our_handshake(
                    reqq=self.config.max_incoming_requests,
                    listen_port=self.session.listen_port,
                    pex=self.exchange.pex_enabled,
                    metadata=True,
                    metadata_size=len(self.meta.info_bytes),
                )
            )
        self.upload.grant_allowed_fast(peer)
        self.dialer.connected(peer.addr)

    def peer_closed(self, peer: PeerConnection, *, now: float) -> None:
        self.half_open.discard(peer.cid)
        if self.peers.pop(peer.cid, None) is None:
            return
        self.picker.peer_gone(peer.cid)
        self.exchange.peer_gone(peer.cid)
        self._superseeding.peer_gone(peer.cid)
        self.upload.peer_gone(peer.cid, now)

    @property
    def candidates(self) -> CandidatePool:
        """Addresses we may dial (dialer.py, candidates.py)."""
        return self.dialer.candidates

    @property
    def private(self) -> bool:
        """BEP 27: no PEX (and no DHT) for this torrent."""
        return self.meta.private

    def own_addresses(self) -> set[Addr]:
        return self.session.own_addresses()

    def peer_saw_us_as(self, ip: str) -> None:
        """A peer's BEP 10 'yourip' (BEP 40 priorities need our address)."""
        self.dialer.peer_saw_us_as(ip, self.session.listen_port)

    def pex_candidates(self, received: PexReceived, via: Addr, *, now: float) -> int:
        """Addresses a peer told us by PEX: into the pool (source PEX, per-source cap), then dial."""
        n = self.dialer.add_pex(received, via=via, own=self.session.own_addresses())
        if n:
            self._connect_more(now)
        return n

    def emit_pex(
        self,
        name: EventName,
        peer: PeerConnection,
        *,
        added: tuple[PexPeer, ...] = (),
        dropped: tuple[Addr, ...] = (),
        added6: tuple[PexPeer, ...] = (),
        dropped6: tuple[Addr, ...] = (),
        addr: str | None = None,
        flags: int | None = None,
    ) -> None:
        q = self.session.events
        if q.enabled:
            rec = EventRecord(name, self, peer, added=added, dropped=dropped, added6=added6, dropped6=dropped6)
            q.push(EventRecord(name, self, peer, addr=addr, flags=flags) if addr is not None else rec)

    def add_candidates(self, addrs: list[Addr], source: PeerSource, *, now: float) -> None:
        self.dialer.add(addrs, source, own=self.session.own_addresses())

    def peer_connect_failed(self, addr: Addr, *, now: float) -> None:
        self.dialer.connect_failed(addr, now)

    def forget_ip(self, ip: str) -> None:
        """A banned IP: never dial it again."""
        self.dialer.forget_ip(ip)

    def _connect_more(self, now: float) -> None:
        if self.state not in (TorrentState.DOWNLOADING, TorrentState.SEEDING) or self._stopping:
            return
        if self.dialer.wants_more():
            seeding = self.state is TorrentState.SEEDING
            self.dialer.connect_more(now, seeding=seeding, dialing=self.session.dialing_addrs())

    # ------------------------------------------------------------------ wire events

    def on_message(self, peer: PeerConnection, msg: object, *, now: float) -> None:  # noqa: C901
        wire = peer.wire
        assert wire is not None
        t = type(msg)
        if self.session.events.enabled and t in _WIRE_EVENTS:
            self.session.emit(_WIRE_EVENTS[t], peer, self, index=msg.index if isinstance(msg, w.Have) else None)
        if self._superseeding.seeder is not None:
            self._superseeding.on_message(peer, msg)
        match msg:
            case w.Piece():  # first: the per-block hot path
                self.download.on_block(peer, msg, now)
            case w.Request():
                self.upload.on_request(peer, msg, now)
            case w.Have(index=index):
                if not self.picker.peer_has(peer.cid, index):
                    self.picker.peer_have(peer.cid, index)
                self.download.update_interest(peer)
                self._check_seed(peer, now)
            case w.BitfieldMsg(bits=bits):
                self.picker.peer_bitfield(peer.cid, bits)
                self.download.update_interest(peer)
                self._check_seed(peer, now)
            case w.HaveAll():
                self.picker.peer_have_all(peer.cid)
                self.download.update_interest(peer)
                self._check_seed(peer, now)
            case w.HaveNone():
                self.picker.peer_have_none(peer.cid)
            case w.Unchoke():
                self.download.fill(peer, now)
            case w.Choke():
                self.download.on_choke(peer)
            case w.Interested():
                peer.last_useful_at = now
                self.upload.on_interested(now)
            case w.NotInterested():
                self.upload.on_not_interested(peer, now)
            case w.Cancel():
                self.upload.on_cancel(peer, msg)
            case w.Reject():
                self.download.on_reject(peer, msg, now)
            case w.AllowedFast():
                self.download.on_allowed_fast(peer, msg, now)
            case w.ExtHandshake(data=data):
                apply_peer_handshake(peer, data)
                self.exchange.on_ext_handshake(peer, now=now)
            case w.Extended(ext_id=ext_id, payload=payload):
                self.exchange.on_extended(peer, ext_id, payload, now=now)
            # Suggest, Port, KeepAlive, other extended messages: nothing to do yet.

    def _check_seed(self, peer: PeerConnection, now: float) -> None:
        if not peer.is_seed and self.picker.peer_is_seed(peer.cid):
            peer.is_seed = True
            if self.complete:
                self.session.close(peer.cid, CloseReason.BOTH_SEEDS, "both sides are seeds")

    @property
    def banned(self) -> set[str]:
        return set(self.session.reputation.banned())

    # ------------------------------------------------------------------ uploading and rate limits (upload.py, ratelimit.py)

    def serve(self, peer: PeerConnection, now: float) -> None:
        """Answer queued requests while the peer's outbox has room (backpressure)."""
        self.upload.serve(peer, now)

    def serve_waiting(self, *, now: float) -> bool:
        """Serve peers whose requests waited for upload tokens, round robin; True if some still wait."""
        return self.upload.serve_waiting(now=now)

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

    # ------------------------------------------------------------------ public API (minibt.Peer, on())

    def on(self, name: str, callback: Callable[[Any], object]) -> None:
        """Call ``callback(event)`` for this torrent's events (the Client delivers them; minibt/events.py)."""
        self.listeners.on(name, callback)

    def off(self, name: str, callback: Callable[[Any], object]) -> None:
        self.listeners.off(name, callback)

    def choke_peer(self, peer: PeerConnection, *, now: float) -> None:
        """Choke ``peer`` on behalf of library code (the built-in choker may undo it if enabled)."""
        self.upload.choke(peer)

    def unchoke_peer(self, peer: PeerConnection, *, now: float) -> None:
        self.upload.unchoke(peer)

    def request_block(self, peer: PeerConnection, index: int, begin: int, length: int, *, now: float) -> None:
        """Request one block from ``peer`` for library code, with the picker's bookkeeping.

        Raises LocalProtocolError when the request is not allowed (see ``minibt.Peer.request``).
        """
        if peer.wire is None or peer.closing:
            raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, "request: the peer is not connected")
        if self.state is not TorrentState.DOWNLOADING:
            raise LocalProtocolError(
                CloseReason.PROTOCOL_VIOLATION, f"request: the torrent is {self.state.value}, not downloading"
            )
        self.download.request(peer, index, begin, length, now=now)

    # ------------------------------------------------------------------ timers

    def tick(self, *, now: float) -> None:
        if self.state in (TorrentState.STOPPED, TorrentState.ERROR):
            return
        if self.download.disk_error is not None:
            self.download.disk_retry(now, name=self.meta.name)
        if self.state is not TorrentState.CHECKING:
            if self.choker.due(now):
                self.upload.rechoke(now, scheduled=True)
            for peer in list(self.peers.values()):
                self._peer_timers(peer, now)
            if now - self._last_connect_at >= 1.0:
                self._last_connect_at = now
                self._connect_more(now)
            self.exchange.tick(now=now)
            if len(self.peers) < 5 and len(self.candidates) == 0:
                self.announcer.want_more_peers(now=now)
            # Not while checking: 'left' is unknown until the check ends, and a seed that announced
            # left=<everything> would be listed as a leecher until its next interval (30 min).
            self._poll_announcer(now)
        if self.checker.save_due(now):
            self.save_resume(now)

    def _peer_timers(self, peer: PeerConnection, now: float) -> None:
        wire = peer.wire
        if wire is None or peer.closing:
            return
        self.download.check_snub(peer, now)
        if wire.am_interested or wire.peer_interested:
            peer.last_useful_at = now
        elif now - peer.last_useful_at > IDLE_TIMEOUT_S:
            self.session.close(peer.cid, CloseReason.IDLE, "neither interested nor interesting for 3 minutes")
            return
        if self.state is TorrentState.DOWNLOADING and not wire.peer_choking:
            self.download.fill(peer, now)

    def _poll_announcer(self, now: float) -> None:
        if self.session.network_paused is not None:
            return  # the announce waits until the bound interface is back (issue 10)
        job = self.announcer.poll(now=now)
        if job is None:
            return
        self.session.announce(self, job, uploaded=self.stats.uploaded, downloaded=self.stats.downloaded,
                              left=self.bytes_left, numwant=self.config.numwant)

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

    # ------------------------------------------------------------------ resume data (checker.py)

    def save_resume(self, now: float) -> None:
        if self.state in (TorrentState.CHECKING, TorrentState.ERROR):
            return
        self.checker.save_resume(
            now,
            have=self.have,
            uploaded=self.stats.uploaded,
            downloaded=self.stats.downloaded,
            wall_time=self.session.wall_time,
        )

    # ------------------------------------------------------------------ super-seeding (BEP 16, superseeding.py)

    @property
    def super_seeding(self) -> bool:
        return self._superseeding.active

    @property
    def superseed(self) -> SuperSeeder | None:
        """The BEP 16 bookkeeping while super-seeding (minibt/superseed.py), else None."""
        return self._superseeding.seeder

    def set_super_seed(self, on: bool, *, now: float) -> None:
        """Switch BEP 16 super-seeding on or off at run time (minibt/superseed.py has the rules).

        On is only valid while seeding a complete torrent (ValueError otherwise).  Peers connected
        before have seen our full bitfield: they are served as before and only count toward piece
        availability.  Off (or the automatic end): every peer is sent a ``have`` for each piece it
        lacks and was never shown, and seeding goes on normally.
        """
        if not on:
            self._superseeding.stop("switched off")
            return
        if self._superseeding.active:
            return
        if self.state is not TorrentState.SEEDING or not self.have.all():
            raise ValueError(f"super-seeding needs a complete torrent that is seeding (it is {self.state.value})")
        self._superseeding.start()

    def _super_seed_from_config(self, now: float) -> None:
        if self.state is TorrentState.SEEDING:
            self.set_super_seed(True, now=now)
        else:
            self.fail(
                f"super-seeding needs complete data ({self.have.count()}/{self.meta.num_pieces} pieces verified)"
            )

    # ------------------------------------------------------------------ services for the parts (UploadHost, ...)

    def dial(self, addr: Addr, source: PeerSource, *, now: float) -> int | None:
        return self.session.dial(self, addr, source, now=now)

    @property
    def downloading(self) -> bool:
        """True while pieces may be requested (not paused by a full disk or by pause_download)."""
        return self.state is TorrentState.DOWNLOADING and not self.download.paused

    def mark_dirty(self, cid: int) -> None:
        """Connection ``cid`` has bytes to send."""
        self.session.mark_dirty(cid)

    def close_peer(self, cid: int, reason: CloseReason, detail: str) -> None:
        self.session.close(cid, reason, detail)

    def emit(self, name: EventName, peer: PeerConnection) -> None:
        """Queue a public event about ``peer`` of this torrent (minibt/events.py)."""
        self.session.emit(name, peer, self)

    def rate_waiting(self) -> None:
        """Some peer's requests wait for upload tokens (the session calls ``serve_waiting`` later)."""
        self.session.rate_waiting(self)

    def verify_piece(self, index: int, writes: tuple[tuple[int, int, memoryview], ...]) -> None:
        """Hash a complete piece; the worker writes it if it matches (result: ``on_hash_result``)."""
        self._commits_inflight += 1
        self.session.hash(
            HashJob(
                piece=index,
                generation=self._generation,
                expected=self.meta.piece_hash(index),
                data=self.storage.piece_buffer(index),
                spans=None,
                tag=PieceJobTag(self.info_hash),
                writes=writes,
            )
        )

    # ------------------------------------------------------------------ reporting

    def status(self, now: float) -> dict[str, object]:
        down = sum(p.down.rate(now) for p in self.peers.values())
        up = sum(p.up.rate(now) for p in self.peers.values())
        wanted = self.wanted_bytes
        have_bytes = wanted - self.bytes_left
        return {
            "name": self.meta.name,
            "info_hash": self.meta.info_hash.hex(),
            "state": self.state.value,
            "error": self.error,
            "progress": have_bytes / wanted if wanted else 1.0,
            "wanted_bytes": wanted,
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
            "disk_error": self.disk_error,
            "paused": self.session.network_paused or self.paused_reason,
        }
