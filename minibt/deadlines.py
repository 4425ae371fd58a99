"""When a session with no open connection next has work: the loop's idle wait (loop.py).

While connections are open the loop ticks every ``TICK_S`` and walks the whole session.  Without
any, most of that walk finds nothing to do (a seedbox between peers), so the loop sleeps until the
nearest *real* deadline instead, read from the machines' own timers (STYLE.md section 4):

* a torrent: its tracker announce (or the in-flight announce's timeout), a dirty resume file's
  save time, the disk-full retry, the next dial while it has candidates (with peers or half-open
  connections the session has connections, and the loop ticks every ``TICK_S`` anyway);
* the session: every torrent above, the DHT (its node's query timeouts, bucket refresh, store expiry
  and bootstrap retry; the next search that is due: dhtservice.py), plus ``poll_at`` (once a second)
  while a magnet fetch runs (its timers are many and short: polled, as before).

Everything here only reads state: pure functions of the session and ``now``.  Inputs that change a
machine's timers (a datagram, a tracker reply, a hash result) reach the loop as I/O events, and the
loop ticks once soon after any of them (``loop.py``), so a deadline moved by an input is never missed.
"""

from __future__ import annotations

import math

from minibt.settings import TorrentState

TYPE_CHECKING = False
if TYPE_CHECKING:
    from minibt.session import Session
    from minibt.torrent import Torrent

DIAL_EVERY_S = 1.0  # torrent.py: _want_dials runs at most once a second


def wait_timeout(until_s: float, max_s: float) -> float:
    """select()'s timeout for a deadline ``until_s`` seconds away, at most ``max_s`` (STYLE.md 4).

    A farther deadline is reached in equal steps (4.5 s: five waits of 0.9 s), so the wake-ups the
    cap adds land on the deadline instead of one more just before it: at most one a second.
    """
    if until_s <= 0.0:
        return 0.0
    if until_s <= max_s:
        return until_s
    if until_s > 1e6 * max_s:  # no deadline at all
        return max_s
    return until_s / math.ceil(until_s / max_s)


def earliest(*deadlines: float | None) -> float | None:
    """The smallest deadline that is not None (None: no deadline at all)."""
    return min((d for d in deadlines if d is not None), default=None)


def _min(a: float | None, b: float | None) -> float | None:
    return a if b is None or (a is not None and a <= b) else b


def torrent_deadline(t: Torrent, now: float, *, network_paused: bool = False) -> float | None:
    """When ``t.tick`` next has something to do (None: never, until an input arrives).

    Called for every torrent on every idle wake-up: plain comparisons, no generators (~1 us).
    """
    state = t.state
    if state is TorrentState.STOPPED or state is TorrentState.ERROR:
        return None
    at = t.checker.save_at
    if t.download.disk_error is not None:
        at = _min(at, t.download.disk_retry_at)
    if state is TorrentState.CHECKING:
        return at  # the check advances on hash results (I/O events)
    if t.peers or t.half_open:
        return now  # connections: the loop's fixed tick (handshake, snub, keep-alive, PEX, choker timers)
    if len(t.candidates):
        at = _min(at, t.last_dial_at + DIAL_EVERY_S)
    if not network_paused:  # paused: the announce waits for the interface (ifwatch)
        at = _min(at, t.announcer.next_deadline())
    return at


def session_deadline(s: Session, now: float, *, poll_at: float) -> float | None:
    """The earliest deadline of every torrent of ``s``; at the latest ``poll_at`` while something is polled."""
    if s.conns:
        return now
    at = None
    if any(f.fetching for f in s.fetches.values()):
        at = poll_at
    if s.dht is not None:
        at = _min(at, s.dht.next_deadline(s.torrents, s.fetches, s.listen_port, now=now))
    paused = s.network_paused is not None
    for t in s.torrents.values():
        d = torrent_deadline(t, now, network_paused=paused)
        if d is not None and (at is None or d < at):
            at = d
    return at
