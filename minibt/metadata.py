"""BEP 9 metadata exchange (``ut_metadata``): codec, fetcher and server, all pure.

In scope: :func:`encode_metadata_msg` / :func:`decode_metadata_msg`; :class:`MetadataFetcher`,
which gets the info dict of one torrent in 16 KiB pieces from several peers (size cap, rejects,
timeouts, SHA-1 check against the info-hash, blame and retry on a bad copy); and
:class:`MetadataServer`, which answers requests from our info bytes with flood protection.
Out of scope: BEP 10 framing and the extension handshake (wire.py, session), parsing the info
dict (metainfo.py).  Peers are identified by any hashable key the session chooses (its
connection id).  The SHA-1 of the finished copy (at most ``max_metadata_bytes``) runs inline:
it happens once per attempt and is small next to piece hashing.

Fetch attempt:  vote on metadata_size -> request pieces (spread over peers) -> all pieces in
    -> SHA-1 ok: MetadataComplete
    -> mismatch: MetadataFailed(suppliers); one supplier -> it is excluded; several -> from now on
       each attempt takes every piece from a single peer, so the next bad copy names its sender.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass

from minibt import bencode
from minibt.errors import BencodeError, CloseReason, LocalProtocolError, MetadataError
from minibt.infobytes import InfoBytes
from minibt.sha1 import sha1

METADATA_EXT_NAME = "ut_metadata"  # BEP 9: key in the BEP 10 handshake "m" dict
METADATA_PIECE_LEN = 16384  # BEP 9: metadata is handled in blocks of 16 KiB
MSG_REQUEST = 0  # BEP 9 msg_type values
MSG_DATA = 1
MSG_REJECT = 2
LIBTORRENT_MAX_METADATA_BYTES = 30 * 1024 * 1024  # libtorrent settings_pack max_metadata_size
DEFAULT_MAX_METADATA_BYTES = 8 * 1024 * 1024  # convention: smaller than libtorrent's, for a Pi
METADATA_REQUEST_TIMEOUT_S = 10.0  # convention: then the piece is asked of another peer
METADATA_REJECT_BACKOFF_S = 30.0  # convention: a peer that rejected is not asked for this long
METADATA_MAX_OUTSTANDING_PER_PEER = 4  # convention: requests in flight per peer
METADATA_MAX_PEERS = 500  # convention: peers tracked by one fetcher
METADATA_MAX_DICT_BYTES = 1024  # convention: the bencoded dict in front of a piece (~50 bytes real)
METADATA_MAX_PIECE_INDEX = 1 << 20  # convention: far above any size cap we accept
METADATA_SERVE_WINDOW_S = 60.0  # convention: flood-protection window (BEP 9 "MAY")
METADATA_SERVE_FACTOR = 3  # BEP 9: "typically the number of pieces of metadata times a factor"
METADATA_SERVE_MIN = 8  # convention: floor of the per-window allowance
METADATA_SERVER_MAX_PEERS = 1000  # convention: per-peer flood counters kept (oldest dropped)
_MAX_DEPTH = 4
_MAX_TOKENS = 64

PeerKey = Hashable


@dataclass(frozen=True, slots=True)
class MetadataMsg:
    """A decoded ``ut_metadata`` message header (the piece data travels beside it)."""

    msg_type: int
    piece: int | None  # None only for unknown msg_types that carry no piece
    total_size: int | None = None


@dataclass(frozen=True, slots=True)
class MetadataComplete:
    """All pieces are in and hash to the info-hash."""

    info_bytes: bytes


@dataclass(frozen=True, slots=True)
class MetadataFailed:
    """The assembled copy did not hash to the info-hash; everything was discarded.

    ``suppliers`` sent pieces of the bad copy (penalise them); ``excluded`` sent all of it and
    is not asked again (None when several peers shared the copy).
    """

    suppliers: frozenset[PeerKey]
    excluded: PeerKey | None


MetadataEvent = MetadataComplete | MetadataFailed


def num_metadata_pieces(size: int) -> int:
    return (size + METADATA_PIECE_LEN - 1) // METADATA_PIECE_LEN


def metadata_piece_len(size: int, piece: int) -> int:
    """Length of ``piece`` of metadata of ``size`` bytes: 16 KiB except the last (BEP 9)."""
    return min(METADATA_PIECE_LEN, size - piece * METADATA_PIECE_LEN)


# ---------------------------------------------------------------------------------------- codec


def encode_metadata_msg(msg_type: int, piece: int, total_size: int | None = None, data: bytes = b"") -> bytes:
    """``ut_metadata`` payload: the bencoded dict, then the piece data for a data message."""
    if type(msg_type) is not int or type(piece) is not int or msg_type < 0 or piece < 0:
        raise LocalProtocolError(CloseReason.MALFORMED_MESSAGE, "msg_type and piece must be ints >= 0")
    if (msg_type == MSG_DATA) != (total_size is not None) or (data and msg_type != MSG_DATA):
        raise LocalProtocolError(
            CloseReason.MALFORMED_MESSAGE, "total_size and data go with msg_type 1 (data) only, and it needs total_size"
        )
    d: dict[bytes, int] = {b"msg_type": msg_type, b"piece": piece}
    if total_size is not None:
        d[b"total_size"] = total_size
    return bencode.encode(d) + data


def _dict_end(head: bytes) -> int:
    """Where the bencoded value at the start of ``head`` ends (iterative, depth-capped)."""
    n = len(head)
    pos = 0
    depth = 0
    while True:
        if pos >= n:
            raise MetadataError(
                CloseReason.MALFORMED_MESSAGE,
                f"ut_metadata dict is truncated or longer than {METADATA_MAX_DICT_BYTES} bytes",
            )
        c = head[pos]
        if c in b"dl":
            depth += 1
            if depth > _MAX_DEPTH:
                raise MetadataError(CloseReason.MALFORMED_MESSAGE, "ut_metadata dict nested too deeply")
            pos += 1
            continue
        if c == 0x65:  # b"e"
            if depth == 0:
                raise MetadataError(CloseReason.MALFORMED_MESSAGE, "ut_metadata: unexpected 'e'")
            depth -= 1
            pos += 1
        elif c == 0x69:  # b"i"
            end = head.find(b"e", pos + 1)
            if end < 0:
                pos = n
                continue
            pos = end + 1
        elif 0x30 <= c <= 0x39:
            colon = head.find(b":", pos, pos + 12)
            if colon < 0 or not head[pos:colon].isdigit():
                raise MetadataError(CloseReason.MALFORMED_MESSAGE, "ut_metadata: bad string length")
            pos = colon + 1 + int(head[pos:colon])
            if pos > n:
                continue
        else:
            raise MetadataError(CloseReason.MALFORMED_MESSAGE, f"ut_metadata: unexpected byte 0x{c:02x}")
        if depth == 0:
            return pos


def decode_metadata_msg(payload: bytes | bytearray | memoryview) -> tuple[MetadataMsg, bytes]:
    """Split a ``ut_metadata`` payload into its header and the trailing piece data.

    An unknown msg_type is returned as is (BEP 9: the caller MUST ignore it).  Raises
    MetadataError (only) on malformed input.
    """
    if len(payload) > METADATA_PIECE_LEN + METADATA_MAX_DICT_BYTES:
        raise MetadataError(CloseReason.MESSAGE_TOO_LARGE, f"ut_metadata message of {len(payload)} bytes")
    head = bytes(payload[:METADATA_MAX_DICT_BYTES])
    end = _dict_end(head)
    try:
        d = bencode.decode(head[:end], max_depth=_MAX_DEPTH, max_tokens=_MAX_TOKENS)
    except BencodeError as e:
        raise MetadataError(CloseReason.MALFORMED_MESSAGE, f"ut_metadata dict: {e}") from None
    if not isinstance(d, dict):
        raise MetadataError(CloseReason.MALFORMED_MESSAGE, "ut_metadata message is not a dictionary")
    msg_type = d.get(b"msg_type")
    if type(msg_type) is not int or msg_type < 0:
        raise MetadataError(CloseReason.MALFORMED_MESSAGE, "ut_metadata message without an integer msg_type")
    piece = d.get(b"piece")
    total = d.get(b"total_size")
    known = msg_type in (MSG_REQUEST, MSG_DATA, MSG_REJECT)
    if type(piece) is not int or not 0 <= piece < METADATA_MAX_PIECE_INDEX:
        if known:
            raise MetadataError(CloseReason.MALFORMED_MESSAGE, f"ut_metadata piece {piece!r} is not a valid index")
        piece = None
    if type(total) is not int or not 0 < total <= LIBTORRENT_MAX_METADATA_BYTES:
        if msg_type == MSG_DATA:
            raise MetadataError(CloseReason.MALFORMED_MESSAGE, f"ut_metadata total_size {total!r} is not valid")
        total = None
    return MetadataMsg(msg_type, piece, total), bytes(payload[end:])


# ---------------------------------------------------------------------------------------- fetcher


class _Peer:
    __slots__ = ("ext_id", "size", "outstanding", "backoff_until", "excluded")

    def __init__(self, ext_id: int, size: int) -> None:
        self.ext_id = ext_id
        self.size = size
        self.outstanding: dict[int, float] = {}  # piece -> deadline
        self.backoff_until = 0.0
        self.excluded = False


class MetadataFetcher:
    """Fetches the info dict of one torrent from the peers that advertise ``metadata_size``.

    The session reports each peer's extension handshake (:meth:`add_peer`), asks
    :meth:`next_requests` for the pieces to request from a peer, feeds back data and rejects,
    calls :meth:`handle_timeout` at :meth:`next_deadline`, and after any call that may have freed
    work asks :meth:`askable_peers` (or every peer) for more requests.
    """

    def __init__(
        self,
        info_hash: bytes,
        *,
        max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES,
        request_timeout_s: float = METADATA_REQUEST_TIMEOUT_S,
        reject_backoff_s: float = METADATA_REJECT_BACKOFF_S,
        max_outstanding_per_peer: int = METADATA_MAX_OUTSTANDING_PER_PEER,
    ) -> None:
        if len(info_hash) != 20:
            raise ValueError("info_hash must be 20 bytes")
        if not 0 < max_metadata_bytes <= LIBTORRENT_MAX_METADATA_BYTES:
            raise ValueError(f"max_metadata_bytes must be in 1..{LIBTORRENT_MAX_METADATA_BYTES}")
        if max_outstanding_per_peer < 1 or request_timeout_s <= 0 or reject_backoff_s < 0:
            raise ValueError("bad fetcher limits")
        self.info_hash = bytes(info_hash)
        self._max_bytes = max_metadata_bytes
        self._timeout_s = request_timeout_s
        self._backoff_s = reject_backoff_s
        self._max_out = max_outstanding_per_peer
        self._peers: dict[PeerKey, _Peer] = {}
        self._info: bytes | InfoBytes | None = None
        self._single_source = False
        self._owner: PeerKey | None = None
        self._size: int | None = None
        self._pieces: list[bytes | None] = []
        self._supplier: list[PeerKey | None] = []
        self._in_flight: dict[int, PeerKey] = {}
        self._counts = {
            "attempts": 0,
            "failures": 0,
            "pieces_received": 0,
            "pieces_ignored": 0,
            "rejects": 0,
            "timeouts": 0,
            "peers_unusable": 0,
        }

    # -- state

    @property
    def done(self) -> bool:
        return self._info is not None

    @property
    def info_bytes(self) -> bytes | None:
        return None if self._info is None else bytes(self._info)

    def share_info(self, info: InfoBytes) -> None:
        """Hold the torrent's InfoBytes of the verified bytes instead of them, so that its spill frees them."""
        if self._info is not None and len(info) == len(self._info):
            self._info = info

    @property
    def size(self) -> int | None:
        """The metadata size the current attempt is fetching (None: not started)."""
        return self._size

    def ext_id(self, peer: PeerKey) -> int | None:
        """The peer's ``ut_metadata`` id (to address our requests to it)."""
        p = self._peers.get(peer)
        return None if p is None else p.ext_id

    def stats(self) -> dict[str, int]:
        return {
            **self._counts,
            "peers": len(self._peers),
            "excluded": sum(p.excluded for p in self._peers.values()),
            "have_pieces": sum(x is not None for x in self._pieces),
            "in_flight": len(self._in_flight),
        }

    # -- peers

    def add_peer(self, peer: PeerKey, *, ut_metadata: object, metadata_size: object) -> bool:
        """A peer's extension handshake (``m``/``ut_metadata`` and ``metadata_size``, as sent).

        Returns True if it can be asked for metadata.  A peer without ``ut_metadata``, without
        ``metadata_size`` or announcing more than the size cap is not used.
        """
        if self._info is not None:
            return False
        old = self._peers.get(peer)
        usable = (
            type(ut_metadata) is int
            and 0 < ut_metadata <= 255
            and type(metadata_size) is int
            and 0 < metadata_size <= self._max_bytes
        )
        if not usable or (old is None and len(self._peers) >= METADATA_MAX_PEERS):
            self._counts["peers_unusable"] += 1
            self.remove_peer(peer)
            return False
        assert type(ut_metadata) is int and type(metadata_size) is int
        if old is not None and not old.excluded and old.size == metadata_size:
            old.ext_id = ut_metadata  # a repeated handshake may renumber the extension
            return True
        excluded = old is not None and old.excluded
        self.remove_peer(peer)
        p = _Peer(ut_metadata, metadata_size)
        p.excluded = excluded
        self._peers[peer] = p
        return not excluded

    def remove_peer(self, peer: PeerKey) -> None:
        """The peer disconnected (or stopped offering metadata): its requests are freed."""
        p = self._peers.pop(peer, None)
        if p is None:
            return
        for piece in p.outstanding:
            if self._in_flight.get(piece) == peer:
                del self._in_flight[piece]
        if self._owner == peer:
            self._owner_failed()

    # -- requests

    def _usable(self, p: _Peer, now: float) -> bool:
        return not p.excluded and p.backoff_until <= now

    def _start_attempt(self, now: float) -> bool:
        votes = Counter(p.size for p in self._peers.values() if not p.excluded)
        if not votes:
            return False
        self._size = votes.most_common(1)[0][0]
        n = num_metadata_pieces(self._size)
        self._pieces = [None] * n
        self._supplier = [None] * n
        self._in_flight.clear()
        self._owner = None
        self._counts["attempts"] += 1
        return True

    def _reset_attempt(self) -> None:
        self._size = None
        self._pieces = []
        self._supplier = []
        self._in_flight.clear()
        self._owner = None
        for p in self._peers.values():
            p.outstanding.clear()

    def _owner_failed(self) -> None:
        # Single-source mode: the copy must come from one peer, so start over with another.
        if self._single_source:
            self._reset_attempt()

    def askable_peers(self, *, now: float) -> list[PeerKey]:
        """Peers that :meth:`next_requests` would give work to now (without assigning it)."""
        if self._info is not None:
            return []
        return [k for k, p in self._peers.items() if self._usable(p, now) and len(p.outstanding) < self._max_out]

    def next_requests(self, peer: PeerKey, *, now: float) -> list[int]:
        """Metadata pieces to request from ``peer`` now (they are marked in flight)."""
        p = self._peers.get(peer)
        if self._info is not None or p is None or not self._usable(p, now):
            return []
        if self._size is not None and not any(
            q.size == self._size and not q.excluded for q in self._peers.values()
        ):
            self._reset_attempt()  # nobody left who offers this size: vote again
        if self._size is None and not self._start_attempt(now):
            return []
        size = self._size
        assert size is not None
        if p.size != size:
            return []
        if self._single_source:
            if self._owner is None:
                self._owner = peer
            elif self._owner != peer:
                return []
        missing = [i for i, d in enumerate(self._pieces) if d is None and i not in self._in_flight]
        if not missing:
            return []
        cap = self._max_out - len(p.outstanding)
        if not self._single_source:
            # Spread the pieces over the peers that can serve this size right now.
            sharing = sum(1 for q in self._peers.values() if q.size == size and self._usable(q, now))
            cap = min(cap, max(1, -(-len(self._pieces) // max(1, sharing))))
        chosen = missing[: max(0, cap)]
        for i in chosen:
            p.outstanding[i] = now + self._timeout_s
            self._in_flight[i] = peer
        return chosen

    def on_reject(self, peer: PeerKey, piece: int, *, now: float) -> None:
        """The peer rejected ``piece``: it is asked elsewhere and the peer rests a while."""
        p = self._peers.get(peer)
        if p is None:
            return
        self._counts["rejects"] += 1
        if p.outstanding.pop(piece, None) is not None and self._in_flight.get(piece) == peer:
            del self._in_flight[piece]
        p.backoff_until = now + self._backoff_s
        if self._owner == peer:
            self._owner_failed()

    def handle_timeout(self, *, now: float) -> list[MetadataEvent]:
        """Free requests older than the timeout so other peers get them."""
        for key, p in list(self._peers.items()):
            if 0.0 < p.backoff_until <= now:
                p.backoff_until = 0.0  # rest over; keeps next_deadline() in the future
            expired = [i for i, deadline in p.outstanding.items() if deadline <= now]
            if not expired:
                continue
            self._counts["timeouts"] += len(expired)
            for i in expired:
                del p.outstanding[i]
                if self._in_flight.get(i) == key:
                    del self._in_flight[i]
            p.backoff_until = max(p.backoff_until, now + self._timeout_s)
            if self._owner == key:
                self._owner_failed()
        return []

    def next_deadline(self) -> float | None:
        """Earliest request timeout, or while pieces are missing the end of a peer's rest."""
        if self._info is not None:
            return None
        deadlines = [d for p in self._peers.values() for d in p.outstanding.values()]
        if not self._in_flight:
            deadlines += [p.backoff_until for p in self._peers.values() if not p.excluded and p.backoff_until > 0]
        return min(deadlines, default=None)

    # -- data

    def on_data(
        self, peer: PeerKey, piece: int, total_size: int, data: bytes | bytearray | memoryview, *, now: float
    ) -> list[MetadataEvent]:
        """A data message; returns MetadataComplete or MetadataFailed once all pieces are in.

        Raises MetadataError if the peer contradicts its own ``metadata_size`` or sends a piece
        of the wrong length.  Data we cannot use (unknown peer, finished, other attempt size,
        piece already held, single-source attempt owned by another peer) is ignored.
        """
        p = self._peers.get(peer)
        if self._info is not None or p is None:
            return []
        if total_size != p.size:
            raise MetadataError(
                CloseReason.PROTOCOL_VIOLATION,
                f"ut_metadata total_size {total_size} contradicts metadata_size {p.size} from its handshake",
            )
        if not 0 <= piece < num_metadata_pieces(p.size):
            raise MetadataError(CloseReason.PROTOCOL_VIOLATION, f"ut_metadata piece {piece} out of range")
        want = metadata_piece_len(p.size, piece)
        if len(data) != want:
            raise MetadataError(
                CloseReason.PROTOCOL_VIOLATION, f"ut_metadata piece {piece} has {len(data)} bytes, expected {want}"
            )
        if p.outstanding.pop(piece, None) is not None and self._in_flight.get(piece) == peer:
            del self._in_flight[piece]
        if (
            p.excluded
            or p.size != self._size
            or self._pieces[piece] is not None
            or (self._single_source and self._owner != peer)
        ):
            self._counts["pieces_ignored"] += 1
            return []
        self._pieces[piece] = bytes(data)
        self._supplier[piece] = peer
        self._counts["pieces_received"] += 1
        if any(d is None for d in self._pieces):
            return []
        return [self._verify()]

    def _verify(self) -> MetadataEvent:
        info = b"".join(d for d in self._pieces if d is not None)
        if sha1(info).digest() == self.info_hash:
            self._info = info
            self._pieces, self._supplier = [], []
            self._in_flight.clear()
            for p in self._peers.values():
                p.outstanding.clear()
            return MetadataComplete(info)
        self._counts["failures"] += 1
        suppliers = frozenset(s for s in self._supplier if s is not None)
        excluded: PeerKey | None = None
        if len(suppliers) == 1:
            excluded = next(iter(suppliers))
            if excluded in self._peers:
                self._peers[excluded].excluded = True
        else:
            self._single_source = True
        self._reset_attempt()
        return MetadataFailed(suppliers, excluded)


# ---------------------------------------------------------------------------------------- server


class MetadataServer:
    """Answers ``ut_metadata`` requests from our info bytes (BEP 9).

    Rejects when we lack the metadata, for out-of-range pieces, and -- flood protection -- once a
    peer has made more than ``max(METADATA_SERVE_MIN, METADATA_SERVE_FACTOR * pieces)`` requests
    within ``window_s``.  The info bytes must already be verified against the info-hash.
    """

    def __init__(self, info_bytes: bytes | InfoBytes | None = None, *, window_s: float = METADATA_SERVE_WINDOW_S) -> None:
        self._info: bytes | InfoBytes | None = None  # InfoBytes: a torrent's own, possibly spilled to a file
        self._window_s = window_s
        self._allowance = METADATA_SERVE_MIN
        self._peers: dict[PeerKey, tuple[float, int]] = {}  # peer -> (window start, requests)
        self._counts = {"served": 0, "rejected_no_metadata": 0, "rejected_range": 0, "rejected_flood": 0}
        if info_bytes is not None:
            self.set_info(info_bytes)

    def set_info(self, info_bytes: bytes | InfoBytes) -> None:
        """We now have (verified) metadata to serve."""
        if not len(info_bytes) or len(info_bytes) > LIBTORRENT_MAX_METADATA_BYTES:
            raise ValueError("info bytes empty or too large to serve")
        self._info = info_bytes if isinstance(info_bytes, InfoBytes) else bytes(info_bytes)
        self._allowance = max(METADATA_SERVE_MIN, METADATA_SERVE_FACTOR * num_metadata_pieces(len(info_bytes)))

    @property
    def metadata_size(self) -> int | None:
        """For ``metadata_size`` in our extension handshake (None: do not send it)."""
        return None if self._info is None else len(self._info)

    def forget_peer(self, peer: PeerKey) -> None:
        self._peers.pop(peer, None)

    def on_request(self, peer: PeerKey, piece: int, *, now: float) -> bytes:
        """The ``ut_metadata`` payload answering a request: data, or a reject."""
        start, count = self._peers.pop(peer, (now, 0))
        if now - start >= self._window_s:
            start, count = now, 0
        count += 1
        self._peers[peer] = (start, count)  # re-inserted: most recent last
        if len(self._peers) > METADATA_SERVER_MAX_PEERS:
            del self._peers[next(iter(self._peers))]
        info = self._info
        if info is None:
            self._counts["rejected_no_metadata"] += 1
        elif count > self._allowance:
            self._counts["rejected_flood"] += 1
        elif not 0 <= piece < num_metadata_pieces(len(info)):
            self._counts["rejected_range"] += 1
        else:
            self._counts["served"] += 1
            begin = piece * METADATA_PIECE_LEN
            return encode_metadata_msg(MSG_DATA, piece, len(info), info[begin : begin + METADATA_PIECE_LEN])
        return encode_metadata_msg(MSG_REJECT, max(0, piece))

    def stats(self) -> dict[str, int]:
        return {**self._counts, "peers": len(self._peers)}
