"""One torrent: storage, picker, choker, announcer and its peers, wired together.

Pure in the STYLE.md sense: no sockets, threads or clock.  Inputs come from the session, one entry
point per input kind, each taking ``now`` (wire messages of attached peers, hash results, tracker
results, ``tick``); each returns the effects (effects.py) the session is to carry out, and bytes are
queued on the peers' wire machines.  Commands from library code (``set_super_seed``,
``pause_download``, ``choke_peer``, ...) queue their effects until the session collects them
(:meth:`Torrent.take_pending`, on its next ``take_actions``).  What it needs to know of the session
it reads from a :class:`~minibt.effects.SessionContext`; it holds no reference to the session.
Here: the life cycle, routing wire messages, piece verification results, timers, announces.  The
rest is done by parts this torrent owns, which append effects to the ``out`` list they are given
and know nothing above them: checker.py (hash check, resume file), dialer.py (whom to dial),
download.py (request pipeline, received blocks), upload.py (choking, serving requests),
superseed.py (BEP 16), extension.py (BEP 10: ut_pex, serving ut_metadata; holepunch.py, BEP 55).

States::

    CHECKING --all (or resume's unflushed) pieces checked--> DOWNLOADING --last piece verified--> SEEDING
        \\__________________ resume data valid ______________________________________/
    any --stop()--> STOPPED        any --storage error--> ERROR
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import random
from collections.abc import Callable, Iterable

from minibt import effects as fx
from minibt import wire_codec as w
from minibt.bitfield import Bitfield
from minibt.checker import Checker, CheckJobTag
from minibt.choker import Choker
from minibt.dialer import CandidatePool, Dialer
from minibt.download import Downloader, PieceJobTag
from minibt.errors import CloseReason, LocalProtocolError, StorageError
from minibt.events import WIRE_EVENTS, EventName, Listeners
from minibt.extension import ExtensionRouter, apply_peer_handshake, our_handshake
from minibt.handshake import supports_dht
from minibt.holepunch import Holepunch, HpMessage
from minibt.metainfo import Metainfo
from minibt.peer import PeerConnection, PeerSource
from minibt.picker import PiecePicker
from minibt.ratelimit import KEEP, Keep, TokenBucket, TransferLimits
from minibt.settings import Encryption, Mode, TorrentConfig, TorrentState, TorrentStats, parse_mode
from minibt.storage import Storage, bytes_left, plan_names, wanted_bytes, wanted_pieces
from minibt.tracker import AnnounceJob, Announcer, AnnounceResult
from minibt.upload import SuperSeeding, Uploader
from minibt.urls import Addr
from minibt.wire import BlocksReceived, RequestsReceived
from minibt.workers import CallResult, HashResult

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from minibt.superseed import SuperSeeder

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 180.0  # neither interested nor interesting for 3 minutes => disconnect
# A write that fails with one of these pauses downloading (verified data stays, seeding goes on)
# and is retried every disk_retry_s once the disk has room for a piece again; other errors are fatal.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})



class Torrent:
    """All per-torrent state; driven by :class:`minibt.session.Session`, which carries out its effects."""

    def __init__(self, meta: Metainfo, download_dir: str, *, mode: Mode, resume_path: str | None,
                 config: TorrentConfig, rng: random.Random, now: float, ctx: fx.SessionContext,
                 global_up: TokenBucket, global_down: TokenBucket) -> None:
        mode = parse_mode(mode)
        if config.super_seed and mode is not Mode.SEED:
            raise ValueError("super-seeding (BEP 16) is for seeding a complete torrent (mode='seed')")
        self._ctx = ctx
        self.meta = meta
        self.info_hash = meta.info_hash
        self.download_dir = download_dir
        self.mode = mode
        self.resume_path = resume_path
        self.config = config
        self.rng = rng
        self._state = TorrentState.STOPPED
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
        self._stopping = False
        self.last_dial_at = 0.0
        self._now = now  # the latest time an input brought (for library commands without one)
        self._pending: list[fx.Effect] = []  # effects of library commands, collected by take_pending()
        self.completed_event_sent = False
        self.limits = TransferLimits(
            global_up, global_down, up_bps=config.upload_limit_bps, down_bps=config.download_limit_bps, now=now
        )
        self.listeners = Listeners(ctx.events)  # callbacks for this torrent's events (called by the Client only)
        # The parts: each appends its effects to the `out` list it is given and holds nothing above it.
        self.checker = Checker(
            meta, self.storage, download_dir, resume_path=resume_path,
            jobs_in_flight=config.check_jobs_in_flight, resume_interval_s=config.resume_interval_s, now=now,
        )
        self.dialer = Dialer(
            peers=self.peers, half_open=self.half_open, reputation=ctx.reputation,
            max_peers=config.max_peers, max_half_open=config.max_half_open, max_candidates=config.max_candidates,
            client_addr=ctx.client_addr,
        )
        self._superseeding = SuperSeeding(  # active while super-seeding (BEP 16)
            peers=self.peers, picker=self.picker, num_pieces=meta.num_pieces, rng=rng, name=meta.name
        )
        self.download = Downloader(
            meta=meta, peers=self.peers, have=self.have, picker=self.picker, storage=self.storage, stats=self.stats,
            queue_min=config.request_queue_min, queue_max=config.request_queue_max,
            queue_seconds=config.request_queue_seconds, auto_request=config.auto_request,
            disk_retry_s=config.disk_retry_s, need_free_bytes=2 * meta.piece_length, reserve_max=config.reserve_max,
        )
        self.upload = Uploader(
            info_hash=self.info_hash, peers=self.peers, have=self.have, storage=self.storage,
            limits=self.limits, choker=self.choker, stats=self.stats, superseeding=self._superseeding,
            outbox_bytes=config.upload_outbox_bytes, max_requests=config.max_incoming_requests,
            auto_choke=config.auto_choke,
        )
        self.extensions = ExtensionRouter(
            peers=self.peers, info_bytes=meta.info, private=meta.private or not ctx.pex, pex_config=config.pex,
            holepunch=Holepunch(peers=self.peers, ctx=ctx, enabled=ctx.holepunch, candidate_via=self._pex_source),
        )

    @property
    def state(self) -> TorrentState:
        return self._state

    @state.setter
    def state(self, st: TorrentState) -> None:
        self._state = st
        self.download.active = st is TorrentState.DOWNLOADING

    @property
    def has_pending(self) -> bool:
        """Library commands queued effects since the last take_pending()."""
        return bool(self._pending)

    def take_pending(self) -> list[fx.Effect]:
        """The effects library commands queued since the last call (the session carries them out)."""
        out, self._pending = self._pending, []
        return out

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, now: float) -> list[fx.Effect]:
        """Open storage, trust resume data or check the files, start announcing."""
        self._now = now
        out: list[fx.Effect] = []
        meta = self.meta
        try:
            existed = self.checker.data_exists()  # before open() creates the files
            self.storage.open(create=self.mode is Mode.DOWNLOAD)
        except StorageError as e:
            self.fail(f"cannot open data files: {e}")
            return out
        rd = self.checker.load_resume()
        if rd is not None:
            self.stats.uploaded = rd.uploaded
            for i in Bitfield.from_bytes(meta.num_pieces, rd.have).indexes():
                self._mark_have(i)
        elif existed:
            self.checker.check_all()
        if not self.checker.done:  # a full check, or the pieces resume data could not trust (Checker.load_resume)
            self.state = TorrentState.CHECKING
            self._pump_check(out)
        else:
            self._enter_transfer(now, out)
            if rd is not None:  # the file says it all (but pending pieces): not rewritten until something changes
                self.checker.resume_dirty = bool(rd.pending)
        self.announcer.start(now=now)
        return out

    def _enter_transfer(self, now: float, out: list[fx.Effect]) -> None:
        if self.complete:
            self.state = TorrentState.SEEDING
            if self.stats.completed_at is None:
                self.stats.completed_at = now
        else:
            self.state = TorrentState.DOWNLOADING
        if self.state is TorrentState.SEEDING or self.mode is Mode.DOWNLOAD:
            self.checker.resume_dirty = True
        if self.config.super_seed and self.superseed is None:
            if self.state is TorrentState.SEEDING:
                self._set_super_seed(True, out)
            else:
                have, n = self.have.count(), self.meta.num_pieces
                self.fail(f"super-seeding needs complete data ({have}/{n} pieces verified)")

    def stop(self, *, now: float) -> list[fx.Effect]:
        """Announce 'stopped', close every peer, save resume data, close files."""
        self._now = now
        out: list[fx.Effect] = []
        if self._stopping:
            return out
        self._stopping = True
        for cid in [*self.peers, *self.half_open]:
            out.append(fx.ClosePeer(cid, CloseReason.SHUTDOWN, "stopping"))
        if self.state is not TorrentState.ERROR:
            self.announcer.stop(now=now)
            self._poll_announcer(now, out)
        self._finalize_when_idle(now)  # else the last commit or save result will (the loop waits for them)
        return out

    def _finalize_when_idle(self, now: float) -> None:
        if self._stopping and not self.storage.commits_in_flight and not self.checker.save_in_flight:
            self._finalize(now)

    def _finalize(self, now: float) -> None:
        if self.state is TorrentState.STOPPED:
            return
        self.save_resume(now, sync=False)  # the next start flushes or checks what this leaves unflushed
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
        return wanted_bytes(self.meta, self.wanted)

    @property
    def bytes_left(self) -> int:
        return 0 if self.complete else bytes_left(self.meta, self.have, self.wanted)

    def _mark_have(self, index: int) -> None:
        self.have.set(index)
        self.picker.set_have(index)

    # ------------------------------------------------------------------ pausing the download side (download.py)

    @property
    def disk_error(self) -> str | None:
        """Set while downloading is paused by a full disk (verified pieces stay, seeding goes on)."""
        return self.download.disk_error

    @property
    def paused_reason(self) -> str | None:
        return self.download.paused_reason

    @property
    def downloading(self) -> bool:
        """True while pieces may be requested (not paused by a full disk or by pause_download)."""
        return self.download.downloading

    def pause_download(self, reason: str, *, now: float) -> None:
        """Stop requesting pieces (e.g. outside a download window); seeding and verified data stay."""
        self.download.pause(reason, name=self.meta.name, out=self._pending)

    def resume_download(self, *, now: float) -> None:
        self.download.resume(now, name=self.meta.name, out=self._pending)

    # ------------------------------------------------------------------ hash results

    def _pump_check(self, out: list[fx.Effect]) -> None:
        for job in self.checker.jobs(0):
            out.append(fx.HashPiece(job))

    def on_hash_result(self, res: HashResult | CallResult, *, now: float) -> list[fx.Effect]:
        """A hash job's result, or a background resume save's (a CallResult tagged with its SaveResume)."""
        self._now = now
        out: list[fx.Effect] = []
        match res:
            case HashResult(tag=CheckJobTag()) if res.tag is self.checker.tag:  # not a removed namesake's
                self._check_done(res, now, out)
            case HashResult(tag=PieceJobTag()) if res.tag is self.download.tag:
                self._piece_hashed(res, now, out)
            case CallResult(tag=fx.SaveResume()):
                self.checker.save_done(res.error)
                self._finalize_when_idle(now)
        return out

    def _check_done(self, res: HashResult, now: float, out: list[fx.Effect]) -> None:
        self.checker.job_done()
        self.stats.checked += 1
        if res.ok:
            self._mark_have(res.piece)
        if self.state is TorrentState.CHECKING:
            self._pump_check(out)
            if self.checker.done:
                log.info("%s: check done, %d/%d pieces", self.meta.name, self.have.count(), self.meta.num_pieces)
                self._enter_transfer(now, out)
                self.save_resume(now, out)

    def _piece_hashed(self, res: HashResult, now: float, out: list[fx.Effect]) -> None:
        # A verified piece's bytes were written by the worker (off the event loop); its result is
        # handled even while stopping, so the final resume data includes it.
        i = res.piece
        if res.ok and res.written:
            ledger = self._ctx.reputation.has_ledger(self.info_hash, i)
            digests = self.download.block_digests(i) if ledger else None
            srcs = self.download.pop_sources(i)
            self.storage.finish_commit(i, written=True)
            out.append(fx.PiecePassed(self.info_hash, i, frozenset(srcs), digests))
            if self.state is TorrentState.DOWNLOADING:
                self._piece_passed(i, now, out)
            elif self.state is not TorrentState.ERROR:
                self._mark_have(i)
                self.stats.downloaded += self.meta.piece_size(i)
        elif res.ok:
            self.storage.finish_commit(i, written=False)
            self.storage.discard_piece(i)
            self.picker.piece_failed(i)
            if res.write_errno in DISK_FULL_ERRNOS and self.state is TorrentState.DOWNLOADING:
                self.download.disk_full(f"write failed: {res.error}", now, name=self.meta.name, out=out)
                self.checker.resume_dirty = True
            else:
                self.fail(f"write failed: {res.error}")
        else:
            self.storage.finish_commit(i, written=False)
            if self.state is TorrentState.DOWNLOADING:
                self._piece_failed(i, now, out)
            else:
                self.storage.discard_piece(i)
        self._finalize_when_idle(now)

    def _piece_passed(self, index: int, now: float, out: list[fx.Effect]) -> None:
        self._mark_have(index)
        if self._ctx.events.enabled:  # built only for a listener: a download without one checks 4,096 pieces a GiB
            out.append(fx.Emit(EventName.PIECE_VERIFIED, index=index))
        self.picker.piece_passed(index)
        self.stats.downloaded += self.meta.piece_size(index)
        self.checker.resume_dirty = True
        for peer in self.peers.values():
            if peer.wire is None:
                continue
            if not self.picker.peer_has(peer.cid, index):
                peer.wire.have(index)
                out.append(fx.Flush(peer.cid))
            if peer.wire.am_interested and not self.picker.is_interesting(peer.cid):
                peer.wire.not_interested()
                out.append(fx.Flush(peer.cid))
        if self.complete:
            self._on_complete(now, out)
        else:
            self.download.fill_all(now, out)

    def _piece_failed(self, index: int, now: float, out: list[fx.Effect]) -> None:
        blocks = self.download.block_records(index, self.storage.piece_buffer(index))
        self.storage.discard_piece(index)
        self.picker.piece_failed(index)
        self.stats.hash_failures += 1
        self.stats.wasted += self.meta.piece_size(index)
        srcs = ", ".join(sorted(self.download.pop_sources(index)))
        out.append(fx.Emit(EventName.PIECE_FAILED, index=index, detail=srcs))
        log.warning("%s: piece %d failed its hash check (from %s)", self.meta.name, index, srcs)
        out.append(fx.PieceFailed(self.info_hash, index, blocks))
        self.download.fill_all(now, out)

    def _on_complete(self, now: float, out: list[fx.Effect]) -> None:
        self.state = TorrentState.SEEDING
        self.stats.completed_at = now
        log.info("%s: download complete", self.meta.name)
        out.append(fx.Emit(EventName.TORRENT_COMPLETE))
        self.save_resume(now, out, sync=False)  # not waiting for the disk (Checker.save_resume)
        if not self.completed_event_sent:
            self.completed_event_sent = True
            self.announcer.completed(now=now)
        for peer in self.peers.values():
            if peer.is_seed:
                out.append(fx.ClosePeer(peer.cid, CloseReason.BOTH_SEEDS, "both sides are seeds"))

    # ------------------------------------------------------------------ peers joining / leaving

    def can_accept_peer(self) -> bool:
        return len(self.peers) < self.config.max_peers and self.state in (TorrentState.DOWNLOADING, TorrentState.SEEDING)

    def attach(self, peer: PeerConnection, *, now: float, ext_handshake_seen: bool = False) -> list[fx.Effect]:
        """The BT handshake with ``peer`` is complete (its phase is Active): start the wire.

        ``ext_handshake_seen``: its BEP 10 handshake came before (a magnet fetch's connection)."""
        self._now = now
        out: list[fx.Effect] = [fx.Flush(peer.cid)]
        self.half_open.discard(peer.cid)
        self.peers[peer.cid] = peer
        wire = peer.wire
        assert wire is not None
        if self._superseeding.active:
            self._superseeding.attach(peer, out)  # BEP 16: pretend to have nothing, then offer
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
                    listen_port=self._ctx.listen_port,
                    pex=self.extensions.pex_enabled,
                    metadata=True,
                    metadata_size=len(self.meta.info),
                    encryption=(self.config.encryption or self._ctx.encryption) is not Encryption.NONE,
                    holepunch=self.extensions.holepunch.enabled,
                )
            )
        if self._ctx.dht_port and supports_dht(peer.reserved) and not self.meta.private:
            wire.port(self._ctx.dht_port)  # BEP 5: both sides set the DHT bit
        self.upload.grant_allowed_fast(peer)
        self.dialer.connected(peer.addr)
        if ext_handshake_seen:
            self._ext_handshake(peer, now, out)
        return out

    def peer_closed(self, peer: PeerConnection, *, now: float) -> list[fx.Effect]:
        """``peer`` is gone (its connection torn down by the session); a failed dial backs off."""
        self._now = now
        out: list[fx.Effect] = []
        if peer.wire is None and peer.outgoing:
            self.extensions.holepunch.dial_failed(peer.addr, now=now, out=out)  # BEP 55: ask its PEX source
            self.dialer.connect_failed(peer.addr, now)
        self.half_open.discard(peer.cid)
        if self.peers.pop(peer.cid, None) is None:
            return out
        self.picker.peer_gone(peer.cid)
        self.extensions.peer_gone(peer.cid)
        self._superseeding.peer_gone(peer.cid, out)
        self.upload.peer_gone(peer.cid, now, out)
        return out

    def dial_attempt_failed(self, addr: Addr, *, now: float) -> list[fx.Effect]:
        """One transport of a dial to ``addr`` failed; the next is being tried.  BEP 55 may ask a relay now."""
        out: list[fx.Effect] = []
        self.extensions.holepunch.dial_failed(addr, now=now, out=out)
        return out

    def forget(self, cid: int) -> None:
        """Drop ``cid`` from the peer tables without any protocol work (after a contained fault)."""
        self.peers.pop(cid, None)
        self.half_open.discard(cid)

    def _pex_source(self, addr: Addr) -> tuple[Addr | None, int]:
        c = self.dialer.candidates.get(addr)
        return (None, 0) if c is None or c.source is not PeerSource.PEX else (c.via, c.flags)

    @property
    def candidates(self) -> CandidatePool:
        """Addresses we may dial (dialer.py)."""
        return self.dialer.candidates

    def add_candidates(self, addrs: Iterable[Addr], source: PeerSource, *, now: float) -> None:
        """Addresses to dial from a peer source (the user, a tracker, DHT, ...); a command: the dials
        follow on the session's next take_actions()."""
        self._now = now
        self._pending += self._candidates(addrs, source)

    def _candidates(self, addrs: Iterable[Addr], source: PeerSource) -> list[fx.Effect]:
        self.dialer.add(list(addrs), source, own=self._ctx.own_addresses())
        return self._want_dials()

    def forget_ip(self, ip: str) -> None:
        """A banned IP: never dial it again."""
        self.dialer.forget_ip(ip)

    def _want_dials(self) -> list[fx.Effect]:
        if self.state not in (TorrentState.DOWNLOADING, TorrentState.SEEDING) or self._stopping:
            return []
        return [fx.WANT_DIALS] if self.dialer.wants_more() else []

    def connect_more(self, *, now: float, slots: int, dialing: set[Addr]) -> list[fx.Effect]:
        """Answer to WantDials: DialPeer effects within ``slots`` more connections; ``dialing``: every
        address the session is dialling."""
        self._now = now
        out: list[fx.Effect] = []
        if self.state in (TorrentState.DOWNLOADING, TorrentState.SEEDING) and not self._stopping:
            seeding = self.state is TorrentState.SEEDING
            self.dialer.connect_more(now, seeding=seeding, dialing=dialing, slots=slots, out=out)
        return out

    def dial_started(self, cid: int) -> None:
        """The session opened connection ``cid`` for one of our DialPeer effects."""
        self.dialer.dial_started(cid)

    # ------------------------------------------------------------------ wire messages

    def on_message(self, peer: PeerConnection, msg: object, *, now: float) -> list[fx.Effect]:  # noqa: C901
        """One message from an attached peer.  RemoteProtocolError propagates (the session closes
        the connection and penalises the IP)."""
        out: list[fx.Effect] = []
        # The per-block hot path (no public event): a run of blocks (Session) or a lone Piece (a replay).
        blocks = msg.blocks if type(msg) is BlocksReceived else (
            ((msg.index, msg.begin, msg.data),) if type(msg) is w.Piece else None)
        if blocks is not None:
            try:
                self.download.on_blocks(peer, blocks, now, out)
            except StorageError as e:
                self.fail(str(e))
            return out
        if self._ctx.events.enabled:
            name = WIRE_EVENTS.get(type(msg))
            if name is not None:
                out.append(fx.Emit(name, peer, index=msg.index if isinstance(msg, w.Have) else None))
        if self._superseeding.seeder is not None:
            self._superseeding.on_message(peer, msg, out)
        match msg:
            case w.Request() | RequestsReceived():
                try:
                    self.upload.on_request(peer, msg, now, out)
                except StorageError as e:
                    self.fail(f"read failed: {e}")
            case w.Have(index=index):
                if not self.picker.peer_has(peer.cid, index):
                    self.picker.peer_have(peer.cid, index)
                self.download.update_interest(peer)
                self._check_seed(peer, out)
            case w.BitfieldMsg(bits=bits):
                self.picker.peer_bitfield(peer.cid, bits)
                self.download.update_interest(peer)
                self._check_seed(peer, out)
            case w.HaveAll():
                self.picker.peer_have_all(peer.cid)
                self.download.update_interest(peer)
                self._check_seed(peer, out)
            case w.HaveNone():
                self.picker.peer_have_none(peer.cid)
            case w.Unchoke():
                self.download.on_unchoke(peer, now, out)
            case w.Choke():
                self.download.on_choke(peer)
            case w.Interested():
                peer.last_useful_at = now
                self.upload.on_interested(now, out)
            case w.NotInterested():
                self.upload.on_not_interested(peer, now, out)
            case w.Cancel():
                self.upload.on_cancel(peer, msg)
            case w.Reject():
                self.download.on_reject(peer, msg, now, out)
            case w.AllowedFast():
                self.download.on_allowed_fast(peer, msg, now, out)
            case w.ExtHandshake(data=data):
                apply_peer_handshake(peer, data)
                self._ext_handshake(peer, now, out)
            case w.Port(port=port) if 0 < port < 65536:  # BEP 5: the peer's DHT node
                out.append(fx.NodeHint((peer.ip, port)))
            case w.Extended(ext_id=ext_id, payload=payload):
                got = self.extensions.on_extended(peer, ext_id, payload, now=now, out=out)
                if got is not None:  # ut_pex: into the pool (source PEX, per-source cap), then dial
                    received, via = got
                    if self.dialer.add_pex(received, via=via, own=self._ctx.own_addresses()):
                        out.extend(self._want_dials())
            # Suggest, KeepAlive, other extended messages: nothing to do yet.
        return out

    def _ext_handshake(self, peer: PeerConnection, now: float, out: list[fx.Effect]) -> None:
        yourip = peer.ext.get(b"yourip")
        if isinstance(yourip, bytes) and len(yourip) in (4, 16):  # BEP 10 'yourip': BEP 40 priorities
            self.dialer.peer_saw_us_as(seen := str(ipaddress.ip_address(yourip)), self._ctx.listen_port)
            out.append(fx.SeenAs(seen))
        self.extensions.on_ext_handshake(peer, own=self._ctx.own_addresses(), now=now, out=out)

    def _check_seed(self, peer: PeerConnection, out: list[fx.Effect]) -> None:
        if not peer.is_seed and self.picker.peer_is_seed(peer.cid):
            peer.is_seed = True
            if self.complete:
                out.append(fx.ClosePeer(peer.cid, CloseReason.BOTH_SEEDS, "both sides are seeds"))

    @property
    def banned(self) -> set[str]:
        return set(self._ctx.reputation.banned())

    # ------------------------------------------------------------------ uploading and rate limits (upload.py, ratelimit.py)

    def serve(self, peer: PeerConnection, *, now: float) -> list[fx.Effect]:
        """The peer's socket drained: answer queued requests while its outbox has room (backpressure)."""
        self._now = now
        out: list[fx.Effect] = []
        try:
            self.upload.serve(peer, now, out)
        except StorageError as e:
            self.fail(f"read failed: {e}")
        return out

    def serve_waiting(self, *, now: float) -> tuple[bool, list[fx.Effect]]:
        """Serve peers whose requests waited for upload tokens, round robin; (some still wait, effects)."""
        self._now = now
        out: list[fx.Effect] = []
        try:
            waiting = self.upload.serve_waiting(now=now, out=out)
        except StorageError as e:
            self.fail(f"read failed: {e}")
            waiting = False
        return waiting, out

    def set_rate_limits(self, *, up: float | None | Keep = KEEP, down: float | None | Keep = KEEP,
                        now: float | None = None) -> None:
        """This torrent's own upload/download limits in payload bytes/s (None or 0 = unlimited).

        The global limits apply as well.  Takes effect at once; ``now`` defaults to the latest time
        an input brought.
        """
        self.limits.set_rates(up=up, down=down, now=self._now if now is None else now)
        self._pending.append(fx.LIMITS_CHANGED)

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
        self.upload.choke(peer, self._pending)

    def unchoke_peer(self, peer: PeerConnection, *, now: float) -> None:
        self.upload.unchoke(peer, self._pending)

    def request_block(self, peer: PeerConnection, index: int, begin: int, length: int, *, now: float) -> None:
        """Request one block from ``peer`` for library code, with the picker's bookkeeping.

        Raises LocalProtocolError when the request is not allowed (see ``minibt.Peer.request``).
        """
        if peer.wire is None or peer.closing:
            raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION, "request: the peer is not connected")
        if self.state is not TorrentState.DOWNLOADING:
            raise LocalProtocolError(CloseReason.PROTOCOL_VIOLATION,
                                     f"request: the torrent is {self.state.value}, not downloading")
        self.download.request(peer, index, begin, length, now=now, out=self._pending)

    def send_pex(self, peer: PeerConnection, added: Iterable[object] = (), dropped: Iterable[object] = (),
                 added6: Iterable[object] = (), dropped6: Iterable[object] = (), *, now: float) -> None:
        """An explicit ut_pex message for library code; raises LocalProtocolError if not allowed now."""
        self.extensions.send_pex(peer, added, dropped, added6, dropped6, now=now, out=self._pending)

    def send_hp(self, peer: PeerConnection, msg: HpMessage) -> None:
        """A BEP 55 message from library code (``peer.send_hp_*``); LocalProtocolError without ut_holepunch."""
        self.extensions.holepunch.send(peer, msg, self._pending)

    def pex_poll_now(self, peer: PeerConnection, *, now: float) -> None:
        """After a ``peer.pex`` control call: send a PEX message at once if the rate limit allows."""
        self.extensions.poll_now(peer, now=now, out=self._pending)

    # ------------------------------------------------------------------ timers

    def tick(self, *, now: float) -> list[fx.Effect]:
        self._now = now
        out: list[fx.Effect] = []
        if self.state in (TorrentState.STOPPED, TorrentState.ERROR):
            return out
        if self.download.disk_error is not None:
            self.download.disk_retry(now, name=self.meta.name, out=out)
        if self.state is not TorrentState.CHECKING:
            if self.choker.due(now):
                self.upload.rechoke(now, out, scheduled=True)
            for peer in self.peers.values():
                self._peer_timers(peer, now, out)
            if now - self.last_dial_at >= 1.0:
                self.last_dial_at = now
                out.extend(self._want_dials())
            self.extensions.tick(now=now, out=out)
            if len(self.peers) < 5 and len(self.candidates) == 0:
                self.announcer.want_more_peers(now=now)
            # Not while checking: 'left' is unknown until the check ends, and a seed that announced
            # left=<everything> would be listed as a leecher until its next interval (30 min).
            self._poll_announcer(now, out)
        if self.checker.save_due(now):
            self.save_resume(now, out)
        return out

    def _peer_timers(self, peer: PeerConnection, now: float, out: list[fx.Effect]) -> None:
        wire = peer.wire
        if wire is None or peer.closing:
            return
        self.download.check_snub(peer, now, out)
        if wire.am_interested or wire.peer_interested:
            peer.last_useful_at = now
        elif now - peer.last_useful_at > IDLE_TIMEOUT_S:
            out.append(fx.ClosePeer(peer.cid, CloseReason.IDLE, "neither interested nor interesting for 3 minutes"))
            return
        if self.state is TorrentState.DOWNLOADING and not wire.peer_choking:
            self.download.fill(peer, now, out)

    def _poll_announcer(self, now: float, out: list[fx.Effect]) -> None:
        if self._ctx.network_paused is not None:
            return  # the announce waits until the bound interface is back (issue 10)
        job = self.announcer.poll(now=now)
        if job is None:
            return
        out.append(fx.AnnounceDue(job, self.stats.uploaded, self.stats.downloaded, self.bytes_left, self.config.numwant))

    def on_announce_result(self, job: AnnounceJob, result: AnnounceResult | None, error: str | None, *,
                           now: float) -> list[fx.Effect]:
        self._now = now
        if result is not None and result.failure is None:
            self.announcer.job_done(job, result, now=now)
            return self._candidates(result.peers, PeerSource.TRACKER)
        msg = error or (result.failure if result is not None else None) or "unknown error"
        if result is not None:
            self.announcer.job_done(job, result, now=now)
        else:
            self.announcer.job_failed(job, msg, now=now)
        log.info("%s: tracker %s: %s", self.meta.name, job.url, msg)
        return []

    # ------------------------------------------------------------------ resume data (checker.py)

    def save_resume(self, now: float, out: list[fx.Effect] | None = None, *, sync: bool = True) -> None:
        """Save the resume file: in a worker when ``out`` takes the job (SaveResume), else here and now."""
        if self.state in (TorrentState.CHECKING, TorrentState.ERROR):
            return
        job = self.checker.save_resume(now, have=self.have, uploaded=self.stats.uploaded,
                                       downloaded=self.stats.downloaded, wall_time=self._ctx.wall_time,
                                       background=out is not None, sync=sync)
        if job is not None and out is not None:
            out.append(fx.SaveResume(self.info_hash, job))

    # ------------------------------------------------------------------ super-seeding (BEP 16, superseed.py)

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
        self._set_super_seed(on, self._pending)

    def _set_super_seed(self, on: bool, out: list[fx.Effect]) -> None:
        can = self.state is TorrentState.SEEDING and self.have.all()
        self._superseeding.switch(on, allowed=can, state=self.state.value, out=out)

    # ------------------------------------------------------------------ reporting

    def status(self, now: float) -> dict[str, object]:
        down = sum(p.down.rate(now) for p in self.peers.values())
        up = sum(p.up.rate(now) for p in self.peers.values())
        wanted = self.wanted_bytes
        have_bytes = wanted - self.bytes_left
        return {
            "name": self.meta.name, "info_hash": self.meta.info_hash.hex(), "state": self.state.value,
            "error": self.error, "progress": have_bytes / wanted if wanted else 1.0, "wanted_bytes": wanted,
            "have_pieces": self.have.count(), "num_pieces": self.meta.num_pieces, "checked": self.stats.checked,
            "bytes_left": self.bytes_left, "total_bytes": self.meta.total_length, "rate_down": down, "rate_up": up,
            "uploaded": self.stats.uploaded, "downloaded": self.stats.downloaded, "wasted": self.stats.wasted,
            "hash_failures": self.stats.hash_failures, "peers": len(self.peers),
            "encrypted_peers": sum(p.encrypted for p in self.peers.values()),  # RC4 after MSE/PE
            "half_open": len(self.half_open), "candidates": len(self.candidates),
            "banned": sorted(self._ctx.reputation.banned()), "super_seeding": self.superseed is not None,
            "disk_error": self.disk_error, "paused": self._ctx.network_paused or self.paused_reason,
        }
