"""Fit the client's memory users into the runner's ``memory_budget`` (pure arithmetic).

Every structure that grows with peers or torrents is a named term below, each measured at its cap
with tracemalloc by tests/unit/test_budget_accounting.py (issue 10); the whole process is measured
with tools/memswarm.py.  Per connection: objects, receive buffer, upload outbox, incoming request
queue, outstanding requests, the picker's per-peer bytes, PEX state and, with uTP, its send and
reorder buffers.  Per torrent: the piece cache, the picker's per-piece arrays and the candidate
pool.  Per session: reputation scores, the smart-ban ledger and the DHT node; per connection with
encryption on, the MSE/PE handshake or RC4 state.  What is left after the interpreter's
own footprint is split between the caches and the connections; the outbox, the request queue we
advertise (BEP 10 'reqq') and the uTP buffers shrink before the connection cap does, and nothing
grows past the configured values.  When even the smallest limits do not fit, ``over_budget_message``
says so.  Not covered: the magnet metadata fetch phase (magnetfetch.py, up to 8 links of 1 MiB
frames plus the 8 MiB metadata cap) and the library API's event queue (off in ``minibt run``).
"""

from __future__ import annotations

from dataclasses import dataclass

from minibt.utp import REORDER_MIN_AVG_PAYLOAD
from minibt.wire_codec import BLOCK_LEN, MAX_EXT_LEN

KiB = 1 << 10
MiB = 1 << 20
# CPython + minibt + psutil + loop buffers (one 256 KiB TCP read buffer, one UDP datagram) + one hasher
# thread, 'minibt run' seeding one torrent, no peers: VmHWM 30.6 MiB on x86-64 (memswarm --case idle).
# Kept as it was when the daemon stopped loading psutil, subprocess and a file log handler on Linux
# (about 2.5 MiB less, 2026-12-07): head room, not a figure to shave.
BASE_RSS_BYTES = 31 * MiB
# A budget's most per torrent (the CLI default is 1 MiB: storage.py); bigger buys little on an SD card.
MAX_CACHE_PER_TORRENT = 16 * MiB
MIN_CACHE_PER_TORRENT = 256 * KiB  # one usual piece; storage.py always lets one piece in, even above it
CACHE_SHARE = 0.45  # of what is left after the base and the per-torrent tables
CONN_SHARE = 0.40  # the rest is head room for hash buffers, tracker replies and the allocator
MAX_OUTBOX_BYTES = 256 * KiB  # the TorrentConfig default
MIN_OUTBOX_BYTES = 64 * KiB  # still four blocks in flight per unchoked peer
MAX_INCOMING_REQUESTS = 500  # TorrentConfig.max_incoming_requests default (we advertise it as 'reqq')
MIN_INCOMING_REQUESTS = 64  # 1 MiB asked of us at once: a full pipe at 10 MB/s and 100 ms
REQUEST_QUEUE_MAX = 1000  # TorrentConfig.request_queue_max: our outstanding requests per peer
MAX_UTP_BUFFER_BYTES = 1024 * KiB  # the UtpConfig default of each of send_buffer_bytes, reorder_buffer_bytes
MIN_UTP_BUFFER_BYTES = 64 * KiB  # a 64 KiB window: 1.3 MB/s at 50 ms per connection
TORRENT_SLOTS_MIN = 4  # caches are sized for at least this many torrents, so watch-dir additions fit

# ---- measured terms (tests/unit/test_budget_accounting.py grows each to its cap; measured in brackets)
# PeerConnection + PeerWire (two 256-entry message counters) + the kept BEP 10 keys + 32 allowed-fast
# pieces each way + loop socket object and session/choker entries [12.8 KiB without the last two].
CONN_OBJECTS_BYTES = 16 * KiB
PEX_CONN_BYTES = 24 * KiB  # PexSender advertising 50 peers + PexReceiver with 50 learned [21.7 KiB]
INCOMING_REQUEST_BYTES = 176  # one queued request in PeerConnection.requests_in (a tuple in a dict) [171 B]
OUTSTANDING_REQUEST_BYTES = 256  # one block we requested, in the picker's per-peer and per-piece maps [~218 B]
PICKER_PEER_FIXED_BYTES = 512  # _PeerState; plus one byte per piece (picker.py keeps 0/1 bytes, not bits)
PICKER_PIECE_BYTES = 20  # per piece per torrent: availability, order and position int arrays, 4 bytearrays [16.3 B]
CANDIDATE_BYTES = 448  # one address in a CandidatePool [388 KiB at its 1000-address cap]
MAX_CANDIDATES = 1000  # TorrentConfig.max_candidates default
MIN_CANDIDATES = 200  # still four times a usual tracker reply (numwant 50)
# Reputation at MAX_IPS scores + MAX_LEDGER_RECORDS smart-ban records [605 KiB], closed_log (200), bans.
SESSION_TABLES_BYTES = 1 * MiB
UTP_CONN_FIXED_BYTES = 8 * KiB  # UtpConnection, Ledbat, counters [5.7 KiB; both buffers full: 1.14x their size]
UTP_SEND_FACTOR = 9 / 8  # queued bytes plus one _Sent (~100 B) per 1200-byte packet
UTP_REORDER_ENTRY_BYTES = 80  # dict slot + bytes header per held packet; at most reorder // 256 of them [~70 B]
# The DHT node (dht.py) at its caps: announced peers 500 info-hashes x 50 (IPv6), a routing table, 32
# searches, 256 transactions, a full outbox of answers [2.8 MiB without the last two].
DHT_BYTES = 4 * MiB
# MSE/PE (mse.py, rc4.py), policy preferred or required: an MSE machine mid-handshake, or after it the
# two RC4 keystreams (2 KiB OpenSSL state each) [responder mid-handshake 8.3 KiB, streams 5.0 KiB].
MSE_CONN_BYTES = 12 * KiB


def wire_frame_bytes(num_pieces: int) -> int:
    """Largest frame a PeerWire buffers: a piece, a bitfield or an extended message (wire.py)."""
    return 4 + max(9 + BLOCK_LEN, 1 + (num_pieces + 7) // 8, 2 + MAX_EXT_LEN)


def wire_recv_bytes(num_pieces: int) -> int:
    """The receive buffer holds one partial frame; a bytearray keeps its allocation until what it
    holds falls below half of it, so up to twice the largest frame stays allocated."""
    return 2 * wire_frame_bytes(num_pieces)


def utp_conn_bytes(buffer_bytes: int) -> int:
    """One uTP connection with ``buffer_bytes`` of send buffer and as many of reorder buffer, plus as
    many in-order bytes a download limit may hold back (utp_peers.py; they shrink the window too)."""
    if buffer_bytes <= 0:
        return 0
    reorder = buffer_bytes + (buffer_bytes // REORDER_MIN_AVG_PAYLOAD) * UTP_REORDER_ENTRY_BYTES
    return UTP_CONN_FIXED_BYTES + int(buffer_bytes * UTP_SEND_FACTOR) + reorder + buffer_bytes


def conn_bytes(*, num_pieces: int, piece_length: int, cache_bytes: int, outbox_bytes: int,
               incoming_requests: int, utp_buffer_bytes: int, encryption: bool = False) -> int:
    """Worst case of one peer connection, term by term (``encryption``: MSE/PE may run on it)."""
    # Our requests to one peer are distinct blocks of pieces in flight, which the cache bounds
    # (storage.py lets one piece in even above it).
    outstanding = min(REQUEST_QUEUE_MAX, max(cache_bytes, piece_length) // BLOCK_LEN)
    return (
        CONN_OBJECTS_BYTES
        + PEX_CONN_BYTES
        + wire_recv_bytes(num_pieces)
        + outbox_bytes + 13 + BLOCK_LEN  # served while below the cap: one block frame can overshoot it
        + 68 + 5 + (num_pieces + 7) // 8  # handshake + bitfield waiting to be sent
        + incoming_requests * INCOMING_REQUEST_BYTES
        + outstanding * OUTSTANDING_REQUEST_BYTES
        + PICKER_PEER_FIXED_BYTES + num_pieces
        + utp_conn_bytes(utp_buffer_bytes)
        + (MSE_CONN_BYTES if encryption else 0)
    )


def torrent_bytes(num_pieces: int, max_candidates: int = MAX_CANDIDATES) -> int:
    """Per-torrent tables, the piece cache aside."""
    return num_pieces * PICKER_PIECE_BYTES + max_candidates * CANDIDATE_BYTES


@dataclass(frozen=True, slots=True)
class Limits:
    """The per-torrent and per-connection limits a memory budget allows."""

    cache_bytes: int  # per torrent
    outbox_bytes: int  # per connection
    max_connections: int  # all torrents
    max_peers: int  # per torrent
    incoming_requests: int = MAX_INCOMING_REQUESTS  # per connection: TorrentConfig.max_incoming_requests
    utp_buffer_bytes: int = 0  # UtpConfig send_buffer_bytes and reorder_buffer_bytes; 0 without uTP
    conn_bytes: int = 0  # the worst case of one connection at these limits
    torrent_bytes: int = 0  # per-torrent tables besides the cache
    max_candidates: int = MAX_CANDIDATES  # per torrent: TorrentConfig.max_candidates


def fit_budget(budget_bytes: int, *, torrents: int, max_connections: int, max_peers: int,
               num_pieces: int = 0, piece_length: int = 0, utp: bool = False, seeds: int = 0,
               dht: bool = False, encryption: bool = False) -> Limits:
    """The largest limits (never above the configured ones) whose worst case fits ``budget_bytes``.

    ``torrents``: the downloading ones (each gets a piece cache); ``seeds``: torrents that only seed
    (their tables, but no cache: uploads read blocks from disk as they are requested).
    ``num_pieces`` and ``piece_length``: of the largest torrent (0 when unknown, e.g. a magnet);
    ``utp``: uTP is among the transports, so every connection may carry its buffers; ``dht``: the
    DHT node runs (DHT_BYTES); ``encryption``: a policy other than none (MSE_CONN_BYTES per connection).
    """
    slots = max(torrents, TORRENT_SLOTS_MIN)
    tables = slots + max(0, seeds)
    # Many torrents: fewer addresses kept per torrent, down to MIN_CANDIDATES, before anything else.
    cands = MAX_CANDIDATES
    while cands > MIN_CANDIDATES and tables * torrent_bytes(num_pieces, cands) > budget_bytes // 16:
        cands = max(MIN_CANDIDATES, cands // 2)
    per_torrent = torrent_bytes(num_pieces, cands)
    session = SESSION_TABLES_BYTES + (DHT_BYTES if dht else 0)
    avail = max(0, budget_bytes - BASE_RSS_BYTES - session - tables * per_torrent)
    cache = int(avail * CACHE_SHARE) // slots
    cache = max(MIN_CACHE_PER_TORRENT, min(MAX_CACHE_PER_TORRENT, cache))
    # When the smallest caches take more than their share (many torrents), connections get what they leave.
    share = min(int(avail * CONN_SHARE), int(max(0, avail - slots * cache) * CONN_SHARE / (1 - CACHE_SHARE)))
    outbox, reqs, ubuf = MAX_OUTBOX_BYTES, MAX_INCOMING_REQUESTS, MAX_UTP_BUFFER_BYTES if utp else 0

    def cost() -> int:
        return conn_bytes(num_pieces=num_pieces, piece_length=piece_length, cache_bytes=cache,
                          outbox_bytes=outbox, incoming_requests=reqs, utp_buffer_bytes=ubuf, encryption=encryption)

    conns = share // cost()
    while conns < max_connections:
        # More peers with smaller windows: uTP buffers, then the outbox, then the request queue.
        if ubuf > MIN_UTP_BUFFER_BYTES:
            ubuf //= 2
        elif outbox > MIN_OUTBOX_BYTES:
            outbox //= 2
        elif reqs > MIN_INCOMING_REQUESTS:
            reqs = max(MIN_INCOMING_REQUESTS, reqs // 2)
        else:
            break
        conns = share // cost()
    conns = max(4, min(max_connections, conns))
    return Limits(cache_bytes=cache, outbox_bytes=outbox, max_connections=conns, max_peers=min(max_peers, conns),
                  incoming_requests=reqs, utp_buffer_bytes=ubuf, conn_bytes=cost(), torrent_bytes=per_torrent,
                  max_candidates=cands)


def worst_case_bytes(limits: Limits, *, torrents: int, seeds: int = 0) -> int:
    """What these limits allow at most (the bound fit_budget keeps under the budget); ``torrents``
    downloading (cache and tables), ``seeds`` only seeding (tables)."""
    return (
        BASE_RSS_BYTES
        + SESSION_TABLES_BYTES
        + (limits.cache_bytes + limits.torrent_bytes) * torrents
        + limits.torrent_bytes * seeds
        + limits.max_connections * limits.conn_bytes
    )


def over_budget_message(limits: Limits, budget_bytes: int, *, torrents: int, seeds: int = 0) -> str | None:
    """Why the smallest limits still exceed the budget (None when they fit): say it, never exceed silently."""
    need = worst_case_bytes(limits, torrents=max(torrents, 1), seeds=seeds)
    if need <= budget_bytes:
        return None
    return (f"memory_budget {budget_bytes / MiB:.0f} MiB is below what {torrents + seeds} torrent(s) need at the smallest "
            f"limits ({need / MiB:.1f} MiB: {BASE_RSS_BYTES / MiB:.0f} MiB interpreter base, "
            f"{limits.cache_bytes >> 10} KiB of pieces per downloading torrent, {limits.max_connections} connections "
            f"x {limits.conn_bytes >> 10} KiB); raise it or list fewer torrents")
