"""LEDBAT congestion control for uTP (BEP 29 'congestion control'; RFC 6817), as a plug-in.

Pure (aioquic ``congestion/`` split): :class:`Ledbat` is fed one-way delay samples (the peer's
``timestamp_difference_microseconds`` echo), acked byte counts, losses and timeouts, each with a
keyword-only ``now``, and exposes ``max_window`` (bytes the connection may have in flight).

* base delay: sliding minimum over 2 minutes, kept as per-minute minima (BEP 29); delays are 32-bit
  wrapping microseconds compared modulo 2**32, so clock offsets and wrap-around are harmless;
* growth: ``gain * off_target/target * bytes_acked/max_window`` per ACK, i.e. at most ``gain`` bytes
  per RTT (libtorrent ``utp_gain_factor``), only while the window is actually the limit;
* loss: ``max_window *= 0.5`` at most once per RTT; timeout: ``max_window`` = minimum packet (BEP 29);
* slow start: ON by default, like libtorrent: while the queueing delay is below target and no loss
  was seen, the window grows by max(bytes acked, linear gain) (doubling per RTT).  It ends at the
  first loss, when the delay reaches the target, or at ``ssthresh``; after a timeout it restarts from
  the minimum window up to half the old window (TCP-style ssthresh).  Unlike libtorrent it does not
  end merely because linear gain is larger (true for any window below the gain factor, e.g. right
  after a timeout), so a connection recovers from a timeout in a few RTTs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from minibt.errors import ConfigError
from minibt.utp_codec import TS_MASK

TARGET_DELAY_US = 100_000  # BEP 29 CCONTROL_TARGET; libtorrent utp_target_delay 100 ms
GAIN_BYTES_PER_RTT = 3000  # libtorrent utp_gain_factor (BEP 29 MAX_CWND_INCREASE_PACKETS_PER_RTT, in bytes)
LOSS_MULTIPLIER = 0.5  # BEP 29 (2012 revision: 0.78 -> 0.5); libtorrent utp_loss_multiplier 50 %
MIN_WINDOW_BYTES = 150  # BEP 29 'timeouts'/'packet sizes': the smallest packet size
INITIAL_WINDOW_BYTES = 3000  # minibt convention: about two full packets
MAX_WINDOW_BYTES = 1024 * 1024  # minibt convention: bounded like the send buffer
BASE_DELAY_BUCKET_S = 60.0  # BEP 29: base delay over the last two minutes, one minimum per minute
BASE_DELAY_BUCKETS = 2  # BEP 29: two minutes
CWND_REDUCE_INTERVAL_S = 0.1  # libtorrent utp_cwnd_reduce_timer: at most one loss cut per max(rtt, 100 ms)
DELAY_FILTER_SAMPLES = 3  # RFC 6817 section 3.4.2 'current delay' noise filter (minibt: min of 3)


@dataclass(frozen=True, slots=True)
class LedbatConfig:
    """Congestion-control parameters (bytes and microseconds)."""

    target_delay_us: int = TARGET_DELAY_US
    gain_bytes_per_rtt: int = GAIN_BYTES_PER_RTT
    loss_multiplier: float = LOSS_MULTIPLIER
    min_window_bytes: int = MIN_WINDOW_BYTES
    initial_window_bytes: int = INITIAL_WINDOW_BYTES
    max_window_bytes: int = MAX_WINDOW_BYTES
    slow_start: bool = True

    def __post_init__(self) -> None:
        if self.target_delay_us <= 0:
            raise ConfigError(None, "utp.target_delay_us", "must be > 0")
        if self.gain_bytes_per_rtt <= 0:
            raise ConfigError(None, "utp.gain_bytes_per_rtt", "must be > 0")
        if not 0.0 < self.loss_multiplier < 1.0:
            raise ConfigError(None, "utp.loss_multiplier", "must be in (0, 1)")
        if not 0 < self.min_window_bytes <= self.initial_window_bytes <= self.max_window_bytes:
            raise ConfigError(None, "utp.window", "need 0 < min <= initial <= max window bytes")


def _before32(a: int, b: int) -> bool:
    """True if 32-bit wrapping value ``a`` is below ``b``."""
    return ((a - b) & TS_MASK) > 0x7FFFFFFF


def _min32(start: int, values: list[int], lo: int = -1, hi: int = -1) -> int:
    """The lowest of ``start`` and ``values`` in wrapping order, as a running minimum by :func:`_before32`.
    ``lo``, ``hi``: ``min(values)`` and ``max(values)`` if known.  Values that all lie within half the 32-bit
    circle of each other (a run of delay samples does) are in plain integer order there: then ``min``."""
    if lo < 0:
        lo, hi = min(values), max(values)
    if (hi if hi > start else start) - (lo if lo < start else start) <= 0x7FFFFFFF:
        return lo if lo < start else start
    low = start
    for v in values:
        if ((v - low) & TS_MASK) > 0x7FFFFFFF:
            low = v
    return low


class Ledbat:
    """One connection's send window (``max_window``) under LEDBAT."""

    __slots__ = (
        "_cfg",
        "_cwnd",
        "_ssthresh",
        "_slow_start",
        "_hist",
        "_bucket_start",
        "_recent",
        "_base",
        "_last_cut",
        "_cuts",
        "_timeouts",
        "_min_seen",
    )

    def __init__(self, config: LedbatConfig | None = None, *, now: float) -> None:
        self._cfg = config or LedbatConfig()
        self._cwnd = float(self._cfg.initial_window_bytes)
        self._ssthresh = float(self._cfg.max_window_bytes)
        self._slow_start = self._cfg.slow_start
        self._hist: list[int] = []  # per-minute minima of the raw samples, newest last
        self._bucket_start = now
        self._recent: deque[int] = deque(maxlen=DELAY_FILTER_SAMPLES)
        self._base: int | None = None
        self._last_cut = -1e18
        self._cuts = 0
        self._timeouts = 0
        self._min_seen = self._cwnd

    @property
    def max_window(self) -> int:
        """Bytes that may be in flight."""
        return int(self._cwnd)

    @property
    def base_delay_us(self) -> int | None:
        return self._base

    @property
    def our_delay_us(self) -> int | None:
        """Filtered queueing delay (sample minus base delay), None before the first sample.

        Computed when asked (by :meth:`on_ack` and stats), not for every received packet: both inputs,
        the last samples and the base delay, change only in :meth:`on_delay_sample`, so the value is
        the same.  A receiving connection takes a sample per data packet and asks for none.
        """
        recent = self._recent
        if not recent or self._base is None:
            return None
        low = recent[0]
        for v in recent:
            if ((v - low) & TS_MASK) > 0x7FFFFFFF:
                low = v
        d = (low - self._base) & TS_MASK
        return d if d <= 0x7FFFFFFF else 0

    def on_delay_sample(self, sample_us: int, *, now: float) -> None:
        """Record one ``timestamp_difference_microseconds`` echo (0 means 'no sample': skip it)."""
        self.on_delay_samples((sample_us,), now=now)

    def on_delay_samples(self, samples: Iterable[int], *, now: float) -> None:
        """Record echoes in arrival order, as :meth:`on_delay_sample` each (uTP takes a run of packets at once).
        All at one ``now``, so at most the first one starts a new bucket of the base delay history."""
        kept = samples if type(samples) is list else list(samples)
        if not kept:
            return
        if min(kept) <= 0 or max(kept) > TS_MASK:  # a 0 (no sample) or wider than 32 bits: the general way
            kept = [s & TS_MASK for s in kept]
            if 0 in kept:
                kept = [s for s in kept if s]
            if not kept:
                return
        hist, i = self._hist, 0
        elapsed = now - self._bucket_start
        if not hist or elapsed >= BASE_DELAY_BUCKET_S:
            if not hist:
                self._bucket_start = now
            else:
                steps = int(elapsed // BASE_DELAY_BUCKET_S)
                if steps >= BASE_DELAY_BUCKETS:
                    hist.clear()  # nothing heard for two minutes or more: every minimum is stale
                self._bucket_start += BASE_DELAY_BUCKET_S * steps
            hist.append(kept[0])
            if len(hist) > BASE_DELAY_BUCKETS:
                del hist[0]
            self._base, i = _min32(hist[0], hist), 1
        if i < len(kept):  # the bucket's minimum and the base delay
            rest = kept[i:] if i else kept
            lo, hi = min(rest), max(rest)
            hist[-1] = _min32(hist[-1], rest, lo, hi)
            self._base = _min32(self._base if self._base is not None else rest[0], rest, lo, hi)
        self._recent.extend(kept[-DELAY_FILTER_SAMPLES:])

    def on_ack(self, *, bytes_acked: int, bytes_in_flight: int, packet_bytes: int, now: float) -> None:
        """Grow or shrink the window for ``bytes_acked`` newly acknowledged bytes.

        ``bytes_in_flight`` is the in-flight count before this ACK; the window only moves while it
        was the limit (``in_flight + packet > max_window``), as in libtorrent.
        """
        if bytes_acked <= 0:
            return
        cfg = self._cfg
        target = cfg.target_delay_us
        delay = self.our_delay_us or 0
        if delay >= target:
            self._slow_start = False
        if bytes_in_flight + packet_bytes <= self._cwnd:
            return  # application-limited: don't inflate a window nobody uses
        delay_factor = (target - delay) / target
        window_factor = bytes_acked / max(self._cwnd, float(bytes_acked))
        gain = cfg.gain_bytes_per_rtt * delay_factor * window_factor
        if self._slow_start:
            gain = max(gain, float(bytes_acked))
            if self._cwnd + gain >= self._ssthresh:
                self._slow_start = False
                gain = max(self._ssthresh - self._cwnd, 0.0)
        cwnd = self._cwnd + gain
        self._cwnd = min(max(cwnd, float(cfg.min_window_bytes)), float(cfg.max_window_bytes))
        if self._cwnd < self._min_seen:
            self._min_seen = self._cwnd

    def on_loss(self, *, rtt_s: float, now: float) -> bool:
        """A packet was lost: multiply the window by the loss factor, once per RTT. True if cut."""
        if now - self._last_cut < max(rtt_s, CWND_REDUCE_INTERVAL_S):
            return False
        cfg = self._cfg
        self._cwnd = max(self._cwnd * cfg.loss_multiplier, float(cfg.min_window_bytes))
        self._ssthresh = self._cwnd
        self._slow_start = False
        self._last_cut = now
        self._cuts += 1
        self._min_seen = min(self._min_seen, self._cwnd)
        return True

    def on_timeout(self, *, now: float) -> None:
        """Retransmission timeout: the window drops to the smallest packet (BEP 29 'timeouts')."""
        cfg = self._cfg
        self._ssthresh = max(self._cwnd * cfg.loss_multiplier, 2.0 * cfg.min_window_bytes)
        self._cwnd = float(cfg.min_window_bytes)
        self._slow_start = cfg.slow_start
        self._last_cut = now
        self._timeouts += 1
        self._min_seen = min(self._min_seen, self._cwnd)

    def stats(self) -> dict[str, float]:
        return {
            "cwnd": self._cwnd,
            "cwnd_min": self._min_seen,
            "ssthresh": self._ssthresh,
            "slow_start": float(self._slow_start),
            "base_delay_us": float(self._base if self._base is not None else -1),
            "our_delay_us": float(-1 if (d := self.our_delay_us) is None else d),
            "loss_cuts": float(self._cuts),
            "cc_timeouts": float(self._timeouts),
        }
