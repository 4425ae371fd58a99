"""The session's rate limits (issue 3, ratelimit.py): the global buckets and the throttling state.

Payload bytes only, both directions.  Upload: a torrent's upload side takes tokens before queueing
a block; peers that found none wait in the torrent's TransferLimits, the torrent is remembered
here (``waiting``) and the loop calls ``Session.on_rate_refill`` at :meth:`RateControl.wake_at`.
Download: the loop reads a socket only up to :meth:`RateControl.read_quota` (0: stop reading until
:meth:`RateControl.read_retry_at`); the payload a read delivered is charged afterwards
(:meth:`RateControl.charge`).  With no download limit anywhere, ``down_limited`` is False and
neither the loop nor the session does any of this.  Pure: no clock, ``now`` comes in.
"""

from __future__ import annotations

from collections.abc import Iterable

from minibt.ratelimit import KEEP, Keep, RateLimiter, TokenBucket
from minibt.torrent import Torrent
from minibt.wire_codec import BLOCK_LEN

READ_MIN_BYTES = 16384  # a throttled socket is read again once a 16 KiB block (BEP 3) fits the limit


class RateControl:
    """The global upload/download buckets, the fast-path flag, and the torrents waiting for tokens."""

    def __init__(self, up_bps: float | None, down_bps: float | None, *, now: float) -> None:
        self.global_up = TokenBucket(up_bps, now=now)
        self.global_down = TokenBucket(down_bps, now=now)
        self._global_only = RateLimiter(self.global_down)  # connections not bound to a torrent yet
        self.waiting: dict[bytes, Torrent] = {}  # torrents with peers waiting for upload tokens
        self.down_limited = self.global_down.limited

    def set_rates(self, *, up: float | None | Keep = KEEP, down: float | None | Keep = KEEP, now: float) -> None:
        if not isinstance(up, Keep):
            self.global_up.set_rate(up, now=now)
        if not isinstance(down, Keep):
            self.global_down.set_rate(down, now=now)

    def rates(self) -> tuple[float | None, float | None]:
        return self.global_up.rate_bps, self.global_down.rate_bps

    def changed(self, torrents: Iterable[Torrent]) -> None:
        """Recompute the fast-path flags after any limit (global or a torrent's) changed."""
        ts = list(torrents)
        self.down_limited = self.global_down.limited or any(t.limits.down_bucket.limited for t in ts)
        for t in ts:
            t.limits.refresh()

    def _down(self, t: Torrent | None) -> RateLimiter:
        return t.limits.down if t is not None else self._global_only

    def read_quota(self, t: Torrent | None, *, now: float) -> int:
        """Bytes a connection of ``t`` may read now; 0 = pause reading until ``read_retry_at``."""
        lim = self._down(t)
        q = lim.available(now=now)
        return q if q >= min(READ_MIN_BYTES, lim.burst_bytes) else 0

    def read_retry_at(self, t: Torrent | None, *, now: float) -> float:
        """When ``read_quota(t)`` will be non-zero again (at the current limits)."""
        lim = self._down(t)
        return lim.next_refill_deadline(lim.quantum(READ_MIN_BYTES), now=now)

    def charge(self, t: Torrent | None, n: int, *, now: float) -> None:
        """A read delivered ``n`` payload bytes to a connection of ``t``."""
        self._down(t).charge(n, now=now)

    def wake_at(self, *, now: float) -> float | None:
        """When the waiting torrents may serve again (None: nothing waits for tokens)."""
        best: float | None = None
        for t in self.waiting.values():
            at = t.limits.wake_at(BLOCK_LEN, now=now)
            if at is None:
                return now  # nothing left to wait for: let on_rate_refill drop it
            if best is None or at < best:
                best = at
        return best
