"""A magnet link before its metadata arrives: find peers, fetch the info dict (BEP 9), hand over.

Pure (STYLE.md): driven by the session like a torrent.  :class:`MagnetFetch` dials the magnet's
``x.pe`` peers and the peers its ``tr`` trackers return, speaks just enough of the peer wire to
run the BEP 10 handshake and ``ut_metadata`` (:class:`FetchLink`: every other message is skipped,
unread), feeds a :class:`~minibt.metadata.MetadataFetcher` (several peers, size cap, rejects,
timeouts, SHA-1 check against the info-hash) and rejects metadata requests (we lack it).  Once the
info dict verifies, it is parsed -- and its name and paths sanitised -- by the same code as a
.torrent (:func:`~minibt.metainfo.metainfo_from_info`); the session adds a normal torrent and hands
each fetch connection over to it (a PeerWire fed the frames skipped so far), or -- while the new
torrent checks existing data -- closes it; the peers that served us become its first candidates.

    FETCHING --info dict verified + parsed--> DONE (torrent added)
    FETCHING --stop()--> STOPPED      FETCHING --metadata does not parse--> ERROR
"""

from __future__ import annotations

import enum
import logging
import random
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

import bencode2

from minibt import bencode
from minibt.candidates import CandidatePool
from minibt.errors import BencodeError, CloseReason, MetainfoError, WireError
from minibt.events import EventName, EventRecord
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
from minibt.tracker import AnnounceJob, Announcer, AnnounceResult
from minibt.urls import Addr
from minibt.wire_codec import EXT_HANDSHAKE_ID, EXT_HANDSHAKE_MAX_DEPTH, EXT_HANDSHAKE_MAX_TOKENS, EXTENDED

if TYPE_CHECKING:
    from minibt.session import Session
    from minibt.settings import Mode, TorrentConfig
    from minibt.torrent import Torrent

log = logging.getLogger(__name__)

FETCH_MAX_MESSAGE_BYTES = 1024 * 1024 + 64  # convention (PROTOCOL.md section 5): > 1 MiB frame => disconnect
FETCH_MAX_PEERS = 8  # convention: connections while fetching metadata
FETCH_MAX_HALF_OPEN = 8
FETCH_KEEPALIVE_S = 60.0  # convention: well inside libtorrent's 120 s keep-alive expectation
# Convention: a connection whose BEP 10 handshake offers no usable ut_metadata within this long is
# closed, so peers that cannot help do not hold the few fetch slots.
FETCH_USELESS_AFTER_S = 30.0
# Convention: the peer's bitfield/have/choke... frames kept for the hand-over to the peer wire (a
# bitfield of a 4 GiB torrent in 16 KiB pieces is 32 KiB).  Over the cap, the peer is redialled.
FETCH_REPLAY_MAX_BYTES = 1024 * 1024
METADATA_BAD_PENALTY = 20  # reputation points for a copy that did not hash to the info-hash
UNKNOWN_LEFT = 1  # announce 'left' before the size is known: non-zero, so trackers count us as a leecher
_U32 = struct.Struct(">I")


class FetchState(enum.Enum):
    FETCHING = "fetching_metadata"
    DONE = "done"
    STOPPED = "stopped"
    ERROR = "error"


class FetchLink:
    """The peer wire after the BT handshake while we lack the metadata: BEP 10 messages only.

    ``receive_data`` returns the extended messages as ``(ext_id, payload)``; every other message
    is skipped after its length was checked against the cap.  Raises WireError on an oversized
    frame.  Outgoing bytes collect in an outbox drained by :meth:`data_to_send`.
    """

    def __init__(self, *, now: float) -> None:
        self._buf = bytearray()
        self._out = bytearray()
        self._last_send = now
        self._replay = bytearray()  # the skipped (non-BEP 10) frames, for the hand-over
        self.replay_overflow = False

    def receive_data(self, data: bytes | memoryview) -> list[tuple[int, bytes]]:
        self._buf += data
        buf = self._buf
        out: list[tuple[int, bytes]] = []
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = _U32.unpack_from(buf, pos)
            if n > FETCH_MAX_MESSAGE_BYTES:
                raise WireError(CloseReason.MESSAGE_TOO_LARGE, f"message of {n} bytes while fetching metadata")
            if len(buf) - pos - 4 < n:
                break
            if n >= 2 and buf[pos + 4] == EXTENDED:
                out.append((buf[pos + 5], bytes(buf[pos + 6 : pos + 4 + n])))
            elif n and not self.replay_overflow:
                if len(self._replay) + 4 + n > FETCH_REPLAY_MAX_BYTES:
                    self.replay_overflow = True
                    self._replay = bytearray()
                else:
                    self._replay += buf[pos : pos + 4 + n]
            pos += 4 + n
        del buf[:pos]
        return out

    def extended(self, ext_id: int, payload: bytes, *, now: float) -> None:
        self._out += _U32.pack(2 + len(payload)) + bytes((EXTENDED, ext_id)) + payload
        self._last_send = now

    def hand_over(self) -> tuple[bytes, bytes] | None:
        """For the peer wire taking over: (our unsent bytes, the peer's skipped frames followed by
        any partial frame), or None if the skipped frames were over the cap."""
        if self.replay_overflow:
            return None
        out, replay = bytes(self._out), bytes(self._replay) + bytes(self._buf)
        self._out.clear()
        self._replay.clear()
        self._buf.clear()
        return out, replay

    def keepalive_due(self, now: float) -> bool:
        return now - self._last_send >= FETCH_KEEPALIVE_S

    def keepalive(self, *, now: float) -> None:
        self._out += bytes(4)
        self._last_send = now

    def data_to_send(self, limit: int) -> bytes:
        n = min(limit, len(self._out))
        chunk = bytes(self._out[:n])
        del self._out[:n]
        return chunk

    @property
    def wants_write(self) -> bool:
        return bool(self._out)


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
        session: Session,
        magnet: Magnet,
        download_dir: str,
        *,
        mode: Mode,
        config: TorrentConfig,
        rng: random.Random,
        now: float,
        resume_path: Callable[[Metainfo], str | None] | None = None,
        max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES,
    ) -> None:
        self.session = session
        self.magnet = magnet
        self.info_hash = magnet.info_hash
        self.name = magnet.name or magnet.info_hash_hex
        self.download_dir = download_dir
        self.mode = mode
        self.config = config
        self.state = FetchState.FETCHING
        self.error: str | None = None
        self.torrent: Torrent | None = None
        self.meta: Metainfo | None = None
        self._resume_path = resume_path
        self.fetcher = MetadataFetcher(magnet.info_hash, max_metadata_bytes=max_metadata_bytes)
        self.server = MetadataServer(None)  # rejects every request: we lack the metadata
        self.candidates = CandidatePool(own_addrs=session.own_addresses())
        for addr in magnet.peers:
            self.candidates.add(addr, source=PeerSource.USER)
        self.announcer = Announcer([[t] for t in magnet.trackers], rng, now=now)
        self.links: dict[int, PeerConnection] = {}  # cids past the BT handshake
        self.half_open: set[int] = set()
        self.served_by: dict[Addr, PeerSource] = {}  # dialable addresses of handshaken peers
        self._attached_at: dict[int, float] = {}  # cid -> when; dropped once it offers metadata
        self._last_connect_at = -1.0
        self.announcer.start(now=now)

    # ------------------------------------------------------------------ state

    @property
    def complete(self) -> bool:
        return self.torrent is not None and self.torrent.complete

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
            "paused": self.session.network_paused,
        }

    def add_peers(self, addrs: list[Addr], source: PeerSource) -> None:
        for a in addrs:
            if not self.session.reputation.is_banned(a[0]):
                self.candidates.add(a, source=source)

    # ------------------------------------------------------------------ connections (called by the session)

    def can_accept(self) -> bool:
        """Room for one more (incoming) connection while fetching."""
        return self.state is FetchState.FETCHING and len(self.links) < FETCH_MAX_PEERS

    def attach(self, conn: PeerConnection, *, now: float) -> None:
        """The BT handshake with ``conn`` completed: send our extension handshake."""
        self.half_open.discard(conn.cid)
        link = FetchLink(now=now)
        conn.fetch_link = link
        self.links[conn.cid] = conn
        self._attached_at[conn.cid] = now
        if conn.outgoing:
            self.served_by[conn.addr] = conn.source
        self.candidates.connect_succeeded(conn.addr)
        # No bitfield / Have None yet: the peer wire that takes over after the metadata sends it as
        # our first core message (libtorrent, too, sends its BEP 10 handshake before its bitfield).
        # BEP 9: no metadata_size, since we have none; BEP 10 needs the extension bit (checked by the session).
        hs = our_handshake(reqq=self.config.max_incoming_requests, listen_port=self.session.listen_port, metadata=True)
        link.extended(EXT_HANDSHAKE_ID, bencode2.bencode(hs), now=now)
        self.session.mark_dirty(conn.cid)

    def peer_closed(self, conn: PeerConnection, *, now: float, failed_dial: bool) -> None:
        self.half_open.discard(conn.cid)
        if failed_dial:
            self.candidates.connect_failed(conn.addr, now=now)
        self._attached_at.pop(conn.cid, None)
        if self.links.pop(conn.cid, None) is not None:
            self.fetcher.remove_peer(conn.cid)
            self.server.forget_peer(conn.cid)
            self._ask_all(now)

    def on_data(self, conn: PeerConnection, data: bytes | memoryview, *, now: float) -> None:
        """Bytes after the BT handshake.  Raises RemoteProtocolError (the session closes + penalises)."""
        link = conn.fetch_link
        assert link is not None
        for ext_id, payload in link.receive_data(data):
            if self.state is not FetchState.FETCHING or conn.closing:
                return
            if ext_id == EXT_HANDSHAKE_ID:
                self._on_ext_handshake(conn, payload, now)
            elif ext_id == LOCAL_UT_METADATA_ID:
                self._on_metadata(conn, payload, now)
        if link.wants_write:
            self.session.mark_dirty(conn.cid)

    def _on_ext_handshake(self, conn: PeerConnection, payload: bytes, now: float) -> None:
        try:
            d = bencode.decode(payload, max_depth=EXT_HANDSHAKE_MAX_DEPTH, max_tokens=EXT_HANDSHAKE_MAX_TOKENS)
        except BencodeError:
            return  # a handshake we cannot read is ignored (BEP 10); the 30 s rule closes the peer
        if not isinstance(d, dict):
            return
        apply_peer_handshake(conn, d)
        if not conn.outgoing and conn.listen_port:
            self.served_by[(conn.ip, conn.listen_port)] = PeerSource.INCOMING  # its BEP 10 'p': dialable
        usable = self.fetcher.add_peer(
            conn.cid, ut_metadata=conn.ext_ids.get(METADATA_EXT_NAME), metadata_size=d.get(b"metadata_size")
        )
        if usable:
            self._attached_at.pop(conn.cid, None)
            self._ask(conn, now)

    def _on_metadata(self, conn: PeerConnection, payload: bytes, now: float) -> None:
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
            self._ask_all(now)
        elif msg.msg_type == MSG_DATA and msg.total_size is not None:
            for ev in self.fetcher.on_data(conn.cid, msg.piece, msg.total_size, data, now=now):
                if isinstance(ev, MetadataComplete):
                    self._complete(ev.info_bytes, now)
                    return
                if isinstance(ev, MetadataFailed):
                    self._bad_copy(ev, now)
            self._ask(conn, now)

    def _ask(self, conn: PeerConnection, now: float) -> None:
        link = conn.fetch_link
        their = self.fetcher.ext_id(conn.cid)
        if link is None or their is None or conn.closing:
            return
        for piece in self.fetcher.next_requests(conn.cid, now=now):
            link.extended(their, encode_metadata_msg(MSG_REQUEST, piece), now=now)
        if link.wants_write:
            self.session.mark_dirty(conn.cid)

    def _ask_all(self, now: float) -> None:
        for cid in self.fetcher.askable_peers(now=now):
            conn = self.links.get(cid) if isinstance(cid, int) else None
            if conn is not None:
                self._ask(conn, now)

    def _bad_copy(self, ev: MetadataFailed, now: float) -> None:
        log.warning("%s: fetched metadata does not match the info-hash (from %d peer(s))", self.name, len(ev.suppliers))
        for cid in ev.suppliers:
            conn = self.links.get(cid) if isinstance(cid, int) else None
            if conn is None:
                continue
            if cid == ev.excluded:
                self.session.close(conn.cid, CloseReason.CORRUPT_DATA, "sent metadata that fails the info-hash check")
            self.session.penalize(conn.ip, METADATA_BAD_PENALTY, "metadata failed the info-hash check")
        self._ask_all(now)

    def _complete(self, info_bytes: bytes, now: float) -> None:
        try:
            meta = metainfo_from_info(info_bytes, announce_tiers=[[t] for t in self.magnet.trackers])
        except MetainfoError as e:
            # The bytes hash to the info-hash, so every honest peer has the same unusable dict.
            self.state = FetchState.ERROR
            self.error = f"metadata: {e}"
            log.error("%s: %s", self.name, self.error)
            self._close_all("metadata unusable")
            return
        self.meta = meta
        self.state = FetchState.DONE
        log.info("%s: metadata received (%d bytes), %s", self.name, len(info_bytes), meta.name)
        for cid in list(self.half_open):
            self.session.close(cid, CloseReason.SHUTDOWN, "metadata received; redialled for the download")
        addrs = dict(self.served_by)
        for addr in self.magnet.peers:
            addrs[addr] = PeerSource.USER
        self.session.magnet_done(self, meta, now=now)
        t = self.torrent
        links, self.links = list(self.links.values()), {}
        self._attached_at.clear()
        for conn in links:
            # The connection carries on as a peer connection of the new torrent; if it cannot
            # (the torrent is checking existing data, too much skipped), it is closed and redialled.
            if conn.closing:
                continue
            moved = conn.fetch_link.hand_over() if conn.fetch_link is not None else None
            if t is None or moved is None or not self.session.hand_over(conn, t, moved[0], moved[1], now=now):
                self.session.close(conn.cid, CloseReason.SHUTDOWN, "metadata received; redialled for the download")
        if t is not None:
            by_source: dict[PeerSource, list[Addr]] = {}
            for a, src in addrs.items():
                by_source.setdefault(PeerSource.USER if src is PeerSource.USER else PeerSource.TRACKER, []).append(a)
            for src, lst in by_source.items():
                t.add_candidates(lst, src, now=now)
            for a in self._other_candidates():
                if a not in addrs:
                    t.add_candidates([a], PeerSource.TRACKER, now=now)
            if self.session.events.enabled:
                self.session.events.push(EventRecord(EventName.METADATA_RECEIVED, t, None))

    def _other_candidates(self) -> list[Addr]:
        return [c.addr for c in self.candidates.select(len(self.candidates), now=float("inf"))]

    def _close_all(self, why: str) -> None:
        for cid in list(self.links) + list(self.half_open):
            self.session.close(cid, CloseReason.SHUTDOWN, why)

    def fail(self, message: str) -> None:
        """Enter the ERROR state and close every connection (a contained fault, STYLE.md section 13)."""
        log.error("%s: %s", self.name, message)
        self.state = FetchState.ERROR
        self.error = message
        self._close_all(message)

    def stop(self, *, now: float) -> None:
        if self.state is FetchState.FETCHING:
            self.state = FetchState.STOPPED
            self._close_all("stopping")
            self.announcer.stop(now=now)
            self._poll_announcer(now)

    # ------------------------------------------------------------------ timers

    def tick(self, *, now: float) -> None:
        if self.state is not FetchState.FETCHING:
            return
        dl = self.fetcher.next_deadline()
        if dl is not None and now >= dl:
            self.fetcher.handle_timeout(now=now)
            self._ask_all(now)
        for conn in self.links.values():
            link = conn.fetch_link
            if link is not None and link.keepalive_due(now):
                link.keepalive(now=now)
                self.session.mark_dirty(conn.cid)
        for cid, at in list(self._attached_at.items()):
            if now - at >= FETCH_USELESS_AFTER_S:
                self._attached_at.pop(cid, None)
                self.session.close(cid, CloseReason.IDLE, "offers no ut_metadata (BEP 9) while we fetch metadata")
        if now - self._last_connect_at >= 1.0:
            self._last_connect_at = now
            self._connect_more(now)
        if not self.links and not self.half_open and len(self.candidates) == 0:
            self.announcer.want_more_peers(now=now)
        self._poll_announcer(now)

    def _connect_more(self, now: float) -> None:
        want = min(FETCH_MAX_PEERS - len(self.links) - len(self.half_open), FETCH_MAX_HALF_OPEN - len(self.half_open))
        if want <= 0:
            return
        busy = {c.addr for c in self.links.values()} | self.session.dialing_addrs()
        for cand in self.candidates.select(want, now=now, exclude=busy):
            if self.session.reputation.is_banned(cand.addr[0]):
                continue
            cid = self.session.dial(self, cand.addr, cand.source, now=now)
            if cid is None:
                self.candidates.release(cand.addr)
                break
            self.half_open.add(cid)

    def _poll_announcer(self, now: float) -> None:
        if self.session.network_paused is not None:
            return  # the announce waits until the bound interface is back (issue 10)
        job = self.announcer.poll(now=now)
        if job is None:
            return
        self.session.announce(self, job, uploaded=0, downloaded=0, left=UNKNOWN_LEFT, numwant=self.config.numwant)

    def on_announce_result(
        self, job: AnnounceJob, result: AnnounceResult | None, error: str | None, *, now: float
    ) -> None:
        if result is not None and result.failure is None:
            self.announcer.job_done(job, result, now=now)
            self.add_peers(list(result.peers), PeerSource.TRACKER)
            self._connect_more(now)
        elif result is not None:
            self.announcer.job_done(job, result, now=now)
        else:
            self.announcer.job_failed(job, error or "unknown error", now=now)

    def resume_path(self, meta: Metainfo) -> str | None:
        return None if self._resume_path is None else self._resume_path(meta)
