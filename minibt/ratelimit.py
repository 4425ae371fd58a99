"""Token buckets for the upload and download rate limits (issue 3).

Pure: every call takes ``now`` (seconds on the injected clock); nothing here reads a clock or
touches a socket.  A :class:`TokenBucket` fills at ``rate_bps`` bytes per second up to
``burst_bytes``; a :class:`RateLimiter` joins the global bucket and a torrent's own bucket, so one
transfer pays both (a torrent limit can only be stricter than the global one, never looser).

What is counted: **payload bytes only** (the block data of ``piece`` messages), in both
directions.  Upload: the torrent takes tokens before it queues a block.  Download: the loop reads
a socket only while the connection's limiter has tokens (``Session.read_quota``) and the session
charges the payload bytes the read delivered.  Headers, requests, haves, keep-alives and
handshakes are not charged (under 0.5 % of the traffic with 16 KiB blocks), so the limit is what a
receiver measures as its payload rate.  (libtorrent counts all bytes by default; with payload only,
"1 MiB/s" means 1 MiB/s of file data on both ends.)

A rate of ``None`` or ``0`` means unlimited (as in libtorrent's settings and the CLI).
"""

from __future__ import annotations

import enum
import math

UNLIMITED = 1 << 62  # available() of an unlimited bucket: more than any read or block
DEFAULT_BURST_S = 0.25  # convention (minibt): a bucket holds a quarter second of its rate ...
MIN_BURST_BYTES = 64 * 1024  # ... but at least four 16 KiB blocks (BEP 3 block size)
# Convention (minibt): a transfer paused for tokens resumes once 10 ms of its rate has accrued (at
# least one block), so even a fast limit wakes the loop at most ~100 times a second.
WAKE_QUANTUM_S = 0.01
# Tokens are floats: at a deadline from next_refill_deadline() the refill can fall short of the
# target by rounding (rate * ulp(now), far below a byte).  Counting a token within this many bytes
# of the target as there keeps a caller that sleeps until the deadline from spinning.
TOKEN_EPS = 0.5


class Keep(enum.Enum):
    """Sentinel type for "leave this limit as it is" in ``set_rate_limits``."""

    KEEP = "keep"


KEEP = Keep.KEEP


def normalize_rate(rate_bps: float | None) -> float | None:
    """``None``, ``0`` and infinity mean unlimited (``None``); a negative or NaN rate is a ValueError."""
    if rate_bps is None:
        return None
    rate = float(rate_bps)
    if math.isnan(rate) or rate < 0:
        raise ValueError(f"rate limit must be >= 0 bytes/s (0 = unlimited), got {rate_bps!r}")
    if rate == 0 or math.isinf(rate):
        return None
    return rate


def default_burst(rate_bps: float | None) -> int:
    """Bucket size for a rate: DEFAULT_BURST_S of it, at least MIN_BURST_BYTES."""
    if rate_bps is None:
        return MIN_BURST_BYTES
    return max(MIN_BURST_BYTES, int(rate_bps * DEFAULT_BURST_S))


class TokenBucket:
    """Bytes that may be transferred now; refills continuously at ``rate_bps``.

    A new bucket (and one switched from unlimited to limited) starts full.  ``charge`` may drive the
    bucket below zero (a debt paid back before anything else passes), so the long-run average never
    exceeds the rate: bytes passed in any interval of length T <= burst + rate * T (+ one oversize
    transfer, see ``consume``).
    """

    __slots__ = ("_rate", "_burst", "_burst_auto", "_tokens", "_last", "_consumed")

    def __init__(self, rate_bps: float | None, *, burst_bytes: int | None = None, now: float) -> None:
        self._rate = normalize_rate(rate_bps)
        self._burst_auto = burst_bytes is None
        self._burst = self._check_burst(burst_bytes) if burst_bytes is not None else default_burst(self._rate)
        self._tokens = float(self._burst)
        self._last = now
        self._consumed = 0

    @staticmethod
    def _check_burst(burst_bytes: int) -> int:
        if burst_bytes <= 0:
            raise ValueError(f"burst_bytes must be > 0, got {burst_bytes}")
        return int(burst_bytes)

    # -- introspection -------------------------------------------------------------------
    @property
    def rate_bps(self) -> float | None:
        return self._rate

    @property
    def burst_bytes(self) -> int:
        return self._burst

    @property
    def limited(self) -> bool:
        return self._rate is not None

    def stats(self) -> dict[str, float]:
        """``rate_bps`` (0 = unlimited), ``burst_bytes``, ``tokens`` (may be negative: a debt), ``consumed``."""
        return {
            "rate_bps": self._rate or 0.0,
            "burst_bytes": float(self._burst),
            "tokens": self._tokens,
            "consumed": float(self._consumed),
        }

    # -- commands ------------------------------------------------------------------------
    def _refill(self, now: float) -> None:
        dt = now - self._last
        if dt > 0:
            self._last = now
            assert self._rate is not None
            tokens = self._tokens + dt * self._rate
            self._tokens = tokens if tokens < self._burst else float(self._burst)

    def set_rate(self, rate_bps: float | None, *, now: float, burst_bytes: int | None = None) -> None:
        """Change the rate at run time; tokens earned so far at the old rate are kept (up to the new burst)."""
        rate = normalize_rate(rate_bps)
        if burst_bytes is not None:
            self._burst = self._check_burst(burst_bytes)
            self._burst_auto = False
        elif self._burst_auto:
            self._burst = default_burst(rate)
        if self._rate is None:
            self._tokens = float(self._burst)  # from unlimited: start full, like a new bucket
            self._last = max(self._last, now)
        else:
            self._refill(now)
            self._tokens = min(self._tokens, float(self._burst))
        self._rate = rate

    def available(self, *, now: float) -> int:
        """Whole bytes that may pass now (``UNLIMITED`` without a limit)."""
        if self._rate is None:
            return UNLIMITED
        self._refill(now)
        tokens = self._tokens + TOKEN_EPS
        return int(tokens) if tokens > 0 else 0

    def can_consume(self, n: int, *, now: float) -> bool:
        """Whether ``consume(n)`` would succeed now."""
        if self._rate is None:
            return True
        self._refill(now)
        return self._tokens + TOKEN_EPS >= (n if n <= self._burst else self._burst)

    def consume(self, n: int, *, now: float) -> bool:
        """All or nothing: take ``n`` tokens if there are enough.

        A transfer larger than the whole bucket passes once the bucket is full and leaves a debt;
        otherwise it could never pass.
        """
        if n < 0:
            raise ValueError(f"cannot consume {n} bytes")
        if not self.can_consume(n, now=now):
            return False
        self._tokens -= n
        self._consumed += n
        return True

    def take(self, n: int, *, now: float) -> int:
        """As many of ``n`` bytes as there are tokens for; returns how many were taken."""
        if n < 0:
            raise ValueError(f"cannot take {n} bytes")
        k = min(n, self.available(now=now))
        if self._rate is not None:
            self._tokens -= k
        self._consumed += k
        return k

    def charge(self, n: int, *, now: float) -> None:
        """Take ``n`` tokens unconditionally (bytes that already passed); may leave a debt."""
        if n < 0:
            raise ValueError(f"cannot charge {n} bytes")
        self._consumed += n
        if self._rate is None:
            return
        self._refill(now)
        self._tokens -= n

    def next_refill_deadline(self, n: int, *, now: float) -> float:
        """The earliest time at which ``consume(n)`` can succeed (``now`` if it can already)."""
        if self._rate is None:
            return now
        self._refill(now)
        need = min(n, self._burst) - self._tokens
        if need <= 0:
            return now
        base = max(now, self._last)
        return max(base + need / self._rate, math.nextafter(base, math.inf))


class RateLimiter:
    """Several buckets that must all pay for a transfer: (global, torrent) or just (global,)."""

    __slots__ = ("buckets",)

    def __init__(self, *buckets: TokenBucket) -> None:
        if not buckets:
            raise ValueError("a RateLimiter needs at least one bucket")
        self.buckets = buckets

    @property
    def limited(self) -> bool:
        return any(b.limited for b in self.buckets)

    @property
    def burst_bytes(self) -> int:
        """The smallest burst of the limited buckets (``UNLIMITED`` if none is limited)."""
        return min((b.burst_bytes for b in self.buckets if b.limited), default=UNLIMITED)

    def available(self, *, now: float) -> int:
        return min(b.available(now=now) for b in self.buckets)

    def quantum(self, min_bytes: int) -> int:
        """How many tokens a paused transfer should wait for: WAKE_QUANTUM_S of the strictest rate,
        at least ``min_bytes``, at most the smallest burst."""
        rates = [b.rate_bps for b in self.buckets if b.rate_bps is not None]
        if not rates:
            return min_bytes
        return min(self.burst_bytes, max(min_bytes, int(min(rates) * WAKE_QUANTUM_S)))

    def consume(self, n: int, *, now: float) -> bool:
        """All or nothing, from every bucket at once."""
        if n < 0:
            raise ValueError(f"cannot consume {n} bytes")
        if not all(b.can_consume(n, now=now) for b in self.buckets):
            return False
        for b in self.buckets:
            b.charge(n, now=now)
        return True

    def take(self, n: int, *, now: float) -> int:
        if n < 0:
            raise ValueError(f"cannot take {n} bytes")
        k = min(n, self.available(now=now))
        for b in self.buckets:
            b.charge(k, now=now)
        return k

    def charge(self, n: int, *, now: float) -> None:
        for b in self.buckets:
            b.charge(n, now=now)

    def next_refill_deadline(self, n: int, *, now: float) -> float:
        return max(b.next_refill_deadline(n, now=now) for b in self.buckets)


class TransferLimits:
    """One torrent's own buckets joined with the global ones, and its peers waiting for upload tokens.

    ``up``/``down`` are the limiters a transfer pays (global + torrent).  ``up_gated`` is a plain
    attribute (refreshed by ``refresh()`` whenever any limit changes) so an unlimited torrent pays
    one attribute test per served block.  ``waiting`` maps the connection ids whose queued requests
    wait for upload tokens to the size of their next block, oldest first (served round robin).
    """

    __slots__ = ("up_bucket", "down_bucket", "up", "down", "up_gated", "waiting")

    def __init__(
        self,
        global_up: TokenBucket,
        global_down: TokenBucket,
        *,
        up_bps: float | None,
        down_bps: float | None,
        now: float,
    ) -> None:
        self.up_bucket = TokenBucket(up_bps, now=now)
        self.down_bucket = TokenBucket(down_bps, now=now)
        self.up = RateLimiter(global_up, self.up_bucket)
        self.down = RateLimiter(global_down, self.down_bucket)
        self.up_gated = self.up.limited
        self.waiting: dict[int, int] = {}

    def refresh(self) -> None:
        self.up_gated = self.up.limited

    def set_rates(self, *, up: float | None | Keep = KEEP, down: float | None | Keep = KEEP, now: float) -> None:
        """This torrent's own limits (bytes/s; None or 0 = unlimited); ``KEEP`` leaves one as it is."""
        if not isinstance(up, Keep):
            self.up_bucket.set_rate(up, now=now)
        if not isinstance(down, Keep):
            self.down_bucket.set_rate(down, now=now)
        self.refresh()

    def wait(self, key: int, need: int) -> None:
        """``key`` could not send its next block of ``need`` bytes for lack of tokens (to the back of the line)."""
        self.waiting.pop(key, None)
        self.waiting[key] = need

    def wake_at(self, block_len: int, *, now: float) -> float | None:
        """When the first waiting peer can send its block (and at least a quantum of ``block_len``
        has accrued); None if nobody waits."""
        if not self.waiting:
            return None
        need = max(self.up.quantum(block_len), next(iter(self.waiting.values())))
        return self.up.next_refill_deadline(need, now=now)
