"""A magnet link before its metadata arrives: find peers, fetch the info dict (BEP 9), hand over.

Pure (STYLE.md): driven by the session like a torrent, and like a torrent it returns effects
(effects.py) from each entry point and reads session facts from a
:class:`~minibt.effects.SessionContext`; it holds no reference to the session.
:class:`MagnetFetch` dials the magnet's ``x.pe`` peers and the peers its ``tr`` trackers return,
speaks just enough of the peer wire to run the BEP 10 handshake and ``ut_metadata``
(:class:`~minibt.fetchlink.FetchLink`: every other message is skipped, unread), feeds a
:class:`~minibt.metadata.MetadataFetcher` (several peers, size cap, rejects, timeouts, SHA-1 check
against the info-hash) and rejects metadata requests (we lack it).  Once the info dict verifies, it
is parsed -- and its name and paths sanitised -- by the same code as a .torrent
(:func:`~minibt.metainfo.metainfo_from_info`) and the fetch returns
:class:`~minibt.effects.MetadataDone`: the session adds a normal torrent and hands each fetch
connection (:meth:`MagnetFetch.take_links`) over to it (a PeerWire fed the frames skipped so far),
or -- while the new torrent checks existing data -- closes it; the peers that served us become its
first candidates (:meth:`MagnetFetch.handover_candidates`).

    FETCHING --info dict verified + parsed--> DONE (torrent added)
    FETCHING --stop()--> STOPPED      FETCHING --metadata does not parse--> ERROR
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Callable

import bencode2

from minibt import bencode
from minibt.dialer import CandidatePool
from minibt.effects import (
    WANT_DIALS,
    AnnounceDue,
    ClosePeer,
    DialPeer,
    Effect,
    Flush,
    MetadataDone,
    Penalize,
    SessionContext,
)
from minibt.errors import BencodeError, CloseReason, MetainfoError
from minibt.extension import LOCAL_UT_METADATA_ID, apply_peer_handshake, our_handshake
from minibt.magnet import Magnet
from minibt.metadata import (
    DEFAULT_MAX_METADATA_BYTES,
    METADATA_EXT_NAME,
    MSG_DATA,
    MSG_REJECT,
    MSG_REQUEST,
    MetadataComplete,
    MetadataFailed,
    MetadataFetcher,
    MetadataServer,
    decode_metadata_msg,
    encode_metadata_msg,
)
from minibt.metainfo import Metainfo, metainfo_from_info
from minibt.peer import PeerConnection, PeerSource
from minibt.settings import Encryption, Mode, TorrentConfig
from minibt.tracker import AnnounceJob, Announcer, AnnounceResult
from minibt.urls import Addr
from minibt.wire_codec import EXT_HANDSHAKE_ID, EXT_HANDSHAKE_MAX_DEPTH, EXT_HANDSHAKE_MAX_TOKENS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class AddedTorrent(Protocol):
        """What a fetch reports of the torrent the session added for it (a :class:`minibt.torrent.Torrent`;
        a part never imports the torrent, STYLE.md section 12)."""

        @property
        def complete(self) -> bool: ...

        def status(self, now: float) -> dict[str, object]: ...

log = logging.getLogger(__name__)

FETCH_MAX_PEERS = 8  # convention: connections while fetching metadata
FETCH_MAX_HALF_OPEN = 8
# Convention: a connection whose BEP 10 handshake offers no usable ut_metadata within this long is
# closed, so peers that cannot help do not hold the few fetch slots.
FETCH_USELESS_AFTER_S = 30.0
METADATA_BAD_PENALTY = 20  # reputation points for a copy that did not hash to the info-hash
# convention (like the candidate pool): the handshaken peers' addresses kept for the hand-over, newest last; one
# a connection (a peer repeating its BEP 10 handshake with another 'p' each time replaces its own entry)
MAX_SERVED_BY = 1000
UNKNOWN_LEFT = 1  # announce 'left' before the size is known: non-zero, so trackers count us as a leecher


class FetchState(enum.Enum):
    FETCHING = "fetching_metadata"
    DONE = "done"
    STOPPED = "stopped"
    ERROR = "error"


def torrent_file_bytes(meta: Metainfo) -> bytes:
    """A .torrent for fetched metadata: the exact info bytes (so the info-hash is unchanged)
    plus the magnet's trackers."""
    tiers = [list(t) for t in meta.announce_tiers]
    head = b""
    if tiers and tiers[0]:
        head += b"8:announce" + bencode2.bencode(tiers[0][0].encode())
        head += b"13:announce-list" + bencode2.bencode([[u.encode() for u in tier] for tier in tiers])
    return b"d" + head + b"4:info" + meta.info_bytes + b"e"


class MagnetFetch:
    """One magnet link in the session while its metadata is being fetched."""

    def __init__(
        self,
        magnet: Magnet,
        download_dir: str,
        *,
        mode: Mode,
        config: TorrentConfig,
        rng: random.Random,
        now: float,
        ctx: SessionContext,
        resume_path: Callable[[Metainfo], str | None] | None = None,
        max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES,
    ) -> None:
        self._ctx = ctx
        self.magnet = magnet
        self.info_hash = magnet.info_hash
        self.name = magnet.name or magnet.info_hash_hex
        self.download_dir = download_dir
        self.mode = mode
        self.config = config
        self.state = FetchState.FETCHING
        self.error: str | None = None
        self.torrent: AddedTorrent | None = None  # the minibt.torrent.Torrent, once the metadata arrived
        self.meta: Metainfo | None = None
        self._resume_path = resume_path
        self.fetcher = MetadataFetcher(magnet.info_hash, max_metadata_bytes=max_metadata_bytes)
        self.server = MetadataServer(None)  # rejects every request: we lack the metadata
        self.candidates = CandidatePool(own_addrs=ctx.own_addresses())
        for addr in magnet.peers:
            self.candidates.add(addr, source=PeerSource.USER)
        self.announcer = Announcer([[t] for t in magnet.trackers], rng, now=now)
        self.links: dict[int, PeerConnection] = {}  # cids past the BT handshake
        self.half_open: set[int] = set()
        self.served_by: dict[Addr, PeerSource] = {}  # dialable addresses of handshaken peers (_served)
        self._served_addr: dict[int, Addr] = {}  # cid -> its entry in served_by, while connected
        self._attached_at: dict[int, float] = {}  # cid -> when; dropped once it offers metadata
        self._last_connect_at = -1.0
        self.announcer.start(now=now)

    # ------------------------------------------------------------------ state

    @property
    def complete(self) -> bool:
        return self.torrent is not None and self.torrent.complete

    @property
    def fetching(self) -> bool:
        """Still fetching the metadata (for callers that do not import this module's FetchState)."""
        return self.state is FetchState.FETCHING

    @property
    def failed(self) -> bool:
        """Given up: the metadata could not be fetched or the torrent not added (``error`` says why)."""
        return self.state is FetchState.ERROR

    def status(self, now: float) -> dict[str, object]:
        if self.torrent is not None:
            return self.torrent.status(now)
        st = self.fetcher.stats()
        size = self.fetcher.size
        return {
            "name": self.name,
            "info_hash": self.magnet.info_hash_hex,
            "state": self.state.value,
            "error": self.error,
            "progress": 0.0,
            "metadata_pieces": st["have_pieces"],
            "metadata_size": size,
            "peers": len(self.links),
            "half_open": len(self.half_open),
            "candidates": len(self.candidates),
            "paused": self._ctx.network_paused,
        }

    def add_peers(self, addrs: list[Addr], source: PeerSource) -> None:
        for a in addrs:
            if not self._ctx.reputation.is_banned(a[0]):
                self.candidates.add(a, source=source)

    # ------------------------------------------------------------------ connections (called by the session)

    def can_accept(self) -> bool:
        """Room for one more (incoming) connection while fetching."""
        return self.state is FetchState.FETCHING and len(self.links) < FETCH_MAX_PEERS

    def attach(self, conn: PeerConnection, *, now: float) -> list[Effect]:
        """The BT handshake with ``conn`` completed (its phase is FetchingMetadata): send our
        extension handshake."""
        self.half_open.discard(conn.cid)
        link = conn.fetch_link
        assert link is not None
        self.links[conn.cid] = conn
        self._attached_at[conn.cid] = now
        if conn.outgoing:
            self._served(conn.cid, conn.addr, conn.source)
        self.candidates.connect_succeeded(conn.addr)
        # No bitfield / Have None yet: the peer wire that takes over after the metadata sends it as
        # our first core message (libtorrent, too, sends its BEP 10 handshake before its bitfield).
        # BEP 9: no metadata_size, since we have none; BEP 10 needs the extension bit (checked by the session).
        hs = our_handshake(reqq=self.config.max_incoming_requests, listen_port=self._ctx.listen_port, metadata=True,
                           encryption=(self.config.encryption or self._ctx.encryption) is not Encryption.NONE)
        link.extended(EXT_HANDSHAKE_ID, bencode2.bencode(hs), now=now)
        return [Flush(conn.cid)]

    def peer_closed(self, conn: PeerConnection, *, now: float) -> list[Effect]:
        """``conn`` is gone (torn down by the session); a dial that failed before the handshake backs off."""
        out: list[Effect] = []
        self.half_open.discard(conn.cid)
        if conn.outgoing and conn.handshake is not None:
            self.candidates.connect_failed(conn.addr, now=now)
        self._attached_at.pop(conn.cid, None)
        self._served_addr.pop(conn.cid, None)
        if self.links.pop(conn.cid, None) is not None:
            self.fetcher.remove_peer(conn.cid)
            self.server.forget_peer(conn.cid)
            self._ask_all(now, out)
        return out

    def forget(self, cid: int) -> None:
        """Drop ``cid`` from the tables without any protocol work (after a contained fault)."""
        self.half_open.discard(cid)
        self.links.pop(cid, None)
        self._attached_at.pop(cid, None)
        self._served_addr.pop(cid, None)

    def _served(self, cid: int, addr: Addr, source: PeerSource) -> None:
        """Remember ``addr`` (of connection ``cid``) for the hand-over; bounded (MAX_SERVED_BY)."""
        old = self._served_addr.get(cid)
        if old is not None and old != addr:
            self.served_by.pop(old, None)
        self._served_addr[cid] = addr
        self.served_by.pop(addr, None)
        self.served_by[addr] = source
        while len(self.served_by) > MAX_SERVED_BY:
            del self.served_by[next(iter(self.served_by))]

    def on_data(self, conn: PeerConnection, data: bytes | memoryview, *, now: float) -> list[Effect]:
        """Bytes after the BT handshake.  Raises RemoteProtocolError (the session closes + penalises)."""
        out: list[Effect] = []
        link = conn.fetch_link
        assert link is not None
        for ext_id, payload in link.receive_data(data):
            if self.state is not FetchState.FETCHING or conn.closing:
                return out
            if ext_id == EXT_HANDSHAKE_ID:
                self._on_ext_handshake(conn, payload, now, out)
            elif ext_id == LOCAL_UT_METADATA_ID:
                self._on_metadata(conn, payload, now, out)
        if link.wants_write:
            out.append(Flush(conn.cid))
        return out

    def _on_ext_handshake(self, conn: PeerConnection, payload: bytes, now: float, out: list[Effect]) -> None:
        try:
            d = bencode.decode(payload, max_depth=EXT_HANDSHAKE_MAX_DEPTH, max_tokens=EXT_HANDSHAKE_MAX_TOKENS)
        except BencodeError:
            return  # a handshake we cannot read is ignored (BEP 10); the 30 s rule closes the peer
        if not isinstance(d, dict):
            return
        apply_peer_handshake(conn, d)
        if not conn.outgoing and conn.listen_port:
            self._served(conn.cid, (conn.ip, conn.listen_port), PeerSource.INCOMING)  # its BEP 10 'p': dialable
        usable = self.fetcher.add_peer(
            conn.cid, ut_metadata=conn.ext_ids.get(METADATA_EXT_NAME), metadata_size=d.get(b"metadata_size")
        )
        if usable:
            self._attached_at.pop(conn.cid, None)
            self._ask(conn, now, out)

    def _on_metadata(self, conn: PeerConnection, payload: bytes, now: float, out: list[Effect]) -> None:
        msg, data = decode_metadata_msg(payload)  # MetadataError propagates
        if msg.piece is None:
            return  # unknown msg_type: BEP 9 says ignore
        if msg.msg_type == MSG_REQUEST:
            their = conn.ext_ids.get(METADATA_EXT_NAME, 0)
            link = conn.fetch_link
            if 0 < their <= 255 and link is not None:
                link.extended(their, self.server.on_request(conn.cid, msg.piece, now=now), now=now)
        elif msg.msg_type == MSG_REJECT:
            self.fetcher.on_reject(conn.cid, msg.piece, now=now)
            self._ask_all(now, out)
        elif msg.msg_type == MSG_DATA and msg.total_size is not None:
            for ev in self.fetcher.on_data(conn.cid, msg.piece, msg.total_size, data, now=now):
                match ev:
                    case MetadataComplete(info_bytes=info_bytes):
                        self._complete(info_bytes, out)
                        return
                    case MetadataFailed():
                        self._bad_copy(ev, now, out)
            self._ask(conn, now, out)

    def _ask(self, conn: PeerConnection, now: float, out: list[Effect]) -> None:
        link = conn.fetch_link
        their = self.fetcher.ext_id(conn.cid)
        if link is None or their is None or conn.closing:
            return
        for piece in self.fetcher.next_requests(conn.cid, now=now):
            link.extended(their, encode_metadata_msg(MSG_REQUEST, piece), now=now)
        if link.wants_write:
            out.append(Flush(conn.cid))

    def _ask_all(self, now: float, out: list[Effect]) -> None:
        for cid in self.fetcher.askable_peers(now=now):
            conn = self.links.get(cid) if isinstance(cid, int) else None
            if conn is not None:
                self._ask(conn, now, out)

    def _bad_copy(self, ev: MetadataFailed, now: float, out: list[Effect]) -> None:
        log.warning("%s: fetched metadata does not match the info-hash (from %d peer(s))", self.name, len(ev.suppliers))
        for cid in ev.suppliers:
            conn = self.links.get(cid) if isinstance(cid, int) else None
            if conn is None:
                continue
            if cid == ev.excluded:
                out.append(ClosePeer(conn.cid, CloseReason.CORRUPT_DATA, "sent metadata that fails the info-hash check"))
            out.append(Penalize(conn.ip, METADATA_BAD_PENALTY, "metadata failed the info-hash check"))
        self._ask_all(now, out)

    def _complete(self, info_bytes: bytes, out: list[Effect]) -> None:
        try:
            meta = metainfo_from_info(info_bytes, announce_tiers=[[t] for t in self.magnet.trackers])
        except MetainfoError as e:
            # The bytes hash to the info-hash, so every honest peer has the same unusable dict.
            self.state = FetchState.ERROR
            self.error = f"metadata: {e}"
            log.error("%s: %s", self.name, self.error)
            self._close_all("metadata unusable", out)
            return
        self.meta = meta
        self.fetcher.share_info(meta.info)  # one holder of the bytes, which the torrent's Checker may spill
        self.state = FetchState.DONE
        log.info("%s: metadata received (%d bytes), %s", self.name, len(info_bytes), meta.name)
        for cid in list(self.half_open):
            out.append(ClosePeer(cid, CloseReason.SHUTDOWN, "metadata received; redialled for the download"))
        out.append(MetadataDone(meta))

    def take_links(self) -> list[PeerConnection]:
        """After MetadataDone: the connections past the handshake, for the session to hand over to
        the new torrent (or close); the fetch forgets them."""
        links, self.links = list(self.links.values()), {}
        self._attached_at.clear()
        self._served_addr.clear()
        return links

    def handover_candidates(self) -> list[tuple[PeerSource, list[Addr]]]:
        """After MetadataDone: the new torrent's first candidates -- the peers that served us and the
        magnet's x.pe (source USER), then the fetch's other candidates (source TRACKER)."""
        addrs = dict(self.served_by)
        for addr in self.magnet.peers:
            addrs[addr] = PeerSource.USER
        by_source: dict[PeerSource, list[Addr]] = {}
        for a, src in addrs.items():
            by_source.setdefault(PeerSource.USER if src is PeerSource.USER else PeerSource.TRACKER, []).append(a)
        out = list(by_source.items())
        for a in self._other_candidates():
            if a not in addrs:
                out.append((PeerSource.TRACKER, [a]))
        return out

    def _other_candidates(self) -> list[Addr]:
        return [c.addr for c in self.candidates.select(len(self.candidates), now=float("inf"))]

    def _close_all(self, why: str, out: list[Effect]) -> None:
        for cid in list(self.links) + list(self.half_open):
            out.append(ClosePeer(cid, CloseReason.SHUTDOWN, why))

    def fail(self, message: str) -> list[Effect]:
        """Enter the ERROR state and close every connection (a contained fault, STYLE.md section 13)."""
        log.error("%s: %s", self.name, message)
        self.state = FetchState.ERROR
        self.error = message
        out: list[Effect] = []
        self._close_all(message, out)
        return out

    def stop(self, *, now: float) -> list[Effect]:
        out: list[Effect] = []
        if self.state is FetchState.FETCHING:
            self.state = FetchState.STOPPED
            self._close_all("stopping", out)
            self.announcer.stop(now=now)
            self._poll_announcer(now, out)
        return out

    # ------------------------------------------------------------------ timers

    def tick(self, *, now: float) -> list[Effect]:
        out: list[Effect] = []
        if self.state is not FetchState.FETCHING:
            return out
        dl = self.fetcher.next_deadline()
        if dl is not None and now >= dl:
            self.fetcher.handle_timeout(now=now)
            self._ask_all(now, out)
        for conn in self.links.values():
            link = conn.fetch_link
            if link is not None and link.keepalive_due(now):
                link.keepalive(now=now)
                out.append(Flush(conn.cid))
        for cid, at in list(self._attached_at.items()):
            if now - at >= FETCH_USELESS_AFTER_S:
                self._attached_at.pop(cid, None)
                out.append(ClosePeer(cid, CloseReason.IDLE, "offers no ut_metadata (BEP 9) while we fetch metadata"))
        if now - self._last_connect_at >= 1.0:
            self._last_connect_at = now
            out.extend(self._want_dials())
        if not self.links and not self.half_open and len(self.candidates) == 0:
            self.announcer.want_more_peers(now=now)
        self._poll_announcer(now, out)
        return out

    def _want_dials(self) -> list[Effect]:
        room = min(FETCH_MAX_PEERS - len(self.links) - len(self.half_open), FETCH_MAX_HALF_OPEN - len(self.half_open))
        return [WANT_DIALS] if room > 0 and len(self.candidates) and self.state is FetchState.FETCHING else []

    def connect_more(self, *, now: float, slots: int, dialing: set[Addr]) -> list[Effect]:
        """Answer to WantDials: DialPeer effects within ``slots`` more connections; ``dialing``: every
        address the session is dialling."""
        out: list[Effect] = []
        want = min(
            FETCH_MAX_PEERS - len(self.links) - len(self.half_open), FETCH_MAX_HALF_OPEN - len(self.half_open), slots
        )
        if want <= 0 or self.state is not FetchState.FETCHING:
            return out
        busy = {c.addr for c in self.links.values()} | dialing
        for cand in self.candidates.select(want, now=now, exclude=busy):
            if self._ctx.reputation.is_banned(cand.addr[0]):
                continue
            out.append(DialPeer(cand.addr, cand.source, cand.flags))
        return out

    def dial_attempt_failed(self, addr: Addr, *, now: float) -> list[Effect]:
        """One transport of a dial failed (the next is being tried): nothing to do for a magnet fetch."""
        return []

    def dial_started(self, cid: int) -> None:
        """The session opened connection ``cid`` for one of our DialPeer effects."""
        self.half_open.add(cid)

    def _poll_announcer(self, now: float, out: list[Effect]) -> None:
        if self._ctx.network_paused is not None:
            return  # the announce waits until the bound interface is back (issue 10)
        job = self.announcer.poll(now=now)
        if job is None:
            return
        out.append(AnnounceDue(job, 0, 0, UNKNOWN_LEFT, self.config.numwant))

    def on_announce_result(
        self, job: AnnounceJob, result: AnnounceResult | None, error: str | None, *, now: float
    ) -> list[Effect]:
        if result is not None and result.failure is None:
            self.announcer.job_done(job, result, now=now)
            self.add_peers(list(result.peers), PeerSource.TRACKER)
            return self._want_dials()
        if result is not None:
            self.announcer.job_done(job, result, now=now)
        else:
            self.announcer.job_failed(job, error or "unknown error", now=now)
        return []

    def resume_path(self, meta: Metainfo) -> str | None:
        return None if self._resume_path is None else self._resume_path(meta)
