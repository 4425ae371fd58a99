"""Fit the client's memory users into the runner's ``memory_budget`` (pure arithmetic).

What grows with load, and what caps it (issue 10, measured with tools/memswarm.py):
- pieces in memory, per torrent (``TorrentConfig.cache_bytes``; storage.py/download.py): every piece
  from its first request until its commit (buffered, hashing, writing) counts, so the cache bounds the
  pieces in flight across all peers, and with them the outstanding requests;
- per connection: the upload outbox (``TorrentConfig.upload_outbox_bytes``, served while below it),
  one partial wire message (at most a 16 KiB block + 13 bytes, wire.py) and the Python objects;
- hasher threads: one READ_CHUNK buffer each (one thread below 64 MiB, in the base).
The loop reads into one shared buffer (in the base).  What is left after the interpreter's own
footprint is split between the caches and the connection cap, and each only ever shrinks from the
configured values; when even the smallest limits do not fit, ``over_budget_message`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20
# CPython + minibt + psutil + loop buffers + one hasher thread, 'minibt run' seeding one torrent, no
# peers: VmHWM 30.6 MiB on x86-64 (tools/memswarm.py --case idle), rounded up.
BASE_RSS_BYTES = 31 * MiB
MAX_CACHE_PER_TORRENT = 16 * MiB  # the storage.py default; bigger buys little on an SD card
MIN_CACHE_PER_TORRENT = 256 * 1024  # one usual piece; storage.py always lets one piece in, even above it
CACHE_SHARE = 0.45  # of what is left after BASE_RSS_BYTES
CONN_SHARE = 0.40  # the rest is head room for hash buffers, tracker replies and the allocator
CONN_OVERHEAD_BYTES = 64 * 1024  # one partial message, wire/picker/choker state, socket objects
MAX_OUTBOX_BYTES = 256 * 1024  # the TorrentConfig default
MIN_OUTBOX_BYTES = 64 * 1024  # still four blocks in flight per unchoked peer
TORRENT_SLOTS_MIN = 4  # caches are sized for at least this many torrents, so watch-dir additions fit


@dataclass(frozen=True, slots=True)
class Limits:
    cache_bytes: int  # per torrent
    outbox_bytes: int  # per connection
    max_connections: int  # all torrents
    max_peers: int  # per torrent


def fit_budget(budget_bytes: int, *, torrents: int, max_connections: int, max_peers: int) -> Limits:
    """The largest limits (never above the configured ones) whose worst case fits ``budget_bytes``."""
    avail = max(0, budget_bytes - BASE_RSS_BYTES)
    slots = max(torrents, TORRENT_SLOTS_MIN)
    cache = int(avail * CACHE_SHARE) // slots
    cache = max(MIN_CACHE_PER_TORRENT, min(MAX_CACHE_PER_TORRENT, cache))
    conn_bytes = int(avail * CONN_SHARE)
    outbox = MAX_OUTBOX_BYTES
    conns = conn_bytes // (outbox + CONN_OVERHEAD_BYTES)
    while conns < max_connections and outbox > MIN_OUTBOX_BYTES:
        # Prefer more peers with smaller outboxes down to MIN_OUTBOX_BYTES, then fewer peers.
        outbox //= 2
        conns = conn_bytes // (outbox + CONN_OVERHEAD_BYTES)
    conns = max(4, min(max_connections, conns))
    return Limits(cache_bytes=cache, outbox_bytes=outbox, max_connections=conns, max_peers=min(max_peers, conns))


def worst_case_bytes(limits: Limits, *, torrents: int) -> int:
    """What these limits allow at most (the bound fit_budget keeps under the budget)."""
    return (
        BASE_RSS_BYTES
        + limits.cache_bytes * torrents
        + limits.max_connections * (limits.outbox_bytes + CONN_OVERHEAD_BYTES)
    )


def over_budget_message(limits: Limits, budget_bytes: int, *, torrents: int) -> str | None:
    """Why the smallest limits still exceed the budget (None when they fit): say it, never exceed silently."""
    need = worst_case_bytes(limits, torrents=max(torrents, 1))
    if need <= budget_bytes:
        return None
    return (f"memory_budget {budget_bytes / MiB:.0f} MiB is below what {torrents} torrent(s) need at the smallest "
            f"limits ({need / MiB:.1f} MiB: {BASE_RSS_BYTES / MiB:.0f} MiB interpreter base, "
            f"{limits.cache_bytes >> 10} KiB of pieces per downloading torrent, {limits.max_connections} connections "
            f"x {(limits.outbox_bytes + CONN_OVERHEAD_BYTES) >> 10} KiB); raise it or list fewer torrents")
