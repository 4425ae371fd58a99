"""Token buckets and the global+torrent limiter over a fake clock (exact arithmetic)."""

from __future__ import annotations

import random

import pytest
from helpers import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from minibt.ratelimit import (
    DEFAULT_BURST_S,
    MIN_BURST_BYTES,
    TOKEN_EPS,
    UNLIMITED,
    WAKE_QUANTUM_S,
    RateLimiter,
    TokenBucket,
    TransferLimits,
    default_burst,
    normalize_rate,
)

KIB = 1024


def test_new_bucket_starts_full_and_refills_at_rate(clock: FakeClock) -> None:
    b = TokenBucket(64 * KIB, burst_bytes=32 * KIB, now=clock.now())
    assert b.available(now=clock.now()) == 32 * KIB
    assert b.consume(32 * KIB, now=clock.now())
    assert b.available(now=clock.now()) == 0
    clock.advance(0.25)  # 0.25 s * 64 KiB/s = 16 KiB
    assert b.available(now=clock.now()) == 16 * KIB
    clock.advance(0.125)
    assert b.available(now=clock.now()) == 24 * KIB


def test_burst_caps_tokens_after_idle(clock: FakeClock) -> None:
    b = TokenBucket(1000, burst_bytes=5000, now=clock.now())
    b.take(5000, now=clock.now())
    clock.advance(3600)
    assert b.available(now=clock.now()) == 5000


def test_consume_is_all_or_nothing(clock: FakeClock) -> None:
    b = TokenBucket(1000, burst_bytes=4000, now=clock.now())
    assert b.consume(3000, now=clock.now())
    assert not b.consume(1001, now=clock.now())
    assert b.available(now=clock.now()) == 1000  # the refused consume took nothing
    assert b.consume(1000, now=clock.now())
    assert not b.consume(1, now=clock.now())


def test_take_gives_what_is_there(clock: FakeClock) -> None:
    b = TokenBucket(1000, burst_bytes=4000, now=clock.now())
    assert b.take(2500, now=clock.now()) == 2500
    assert b.take(2500, now=clock.now()) == 1500
    assert b.take(10, now=clock.now()) == 0
    clock.advance(0.5)
    assert b.take(10_000, now=clock.now()) == 500


def test_charge_leaves_a_debt_that_blocks_until_repaid(clock: FakeClock) -> None:
    b = TokenBucket(1000, burst_bytes=2000, now=clock.now())
    b.charge(5000, now=clock.now())  # 2000 - 5000 = -3000
    assert b.available(now=clock.now()) == 0
    assert b.next_refill_deadline(1000, now=clock.now()) == clock.now() + 4.0
    clock.advance(3.0)
    assert b.available(now=clock.now()) == 0
    clock.advance(1.0)
    assert b.available(now=clock.now()) == 1000


def test_oversize_transfer_passes_when_bucket_full(clock: FakeClock) -> None:
    b = TokenBucket(1000, burst_bytes=2000, now=clock.now())
    assert b.consume(5000, now=clock.now())  # full bucket: an oversize block may pass, leaving a debt
    assert not b.consume(5000, now=clock.now())
    assert b.next_refill_deadline(5000, now=clock.now()) == clock.now() + 5.0  # -3000 -> 2000 (full)
    clock.advance(5.0)
    assert b.consume(5000, now=clock.now())


def test_next_refill_deadline(clock: FakeClock) -> None:
    b = TokenBucket(2048, burst_bytes=8192, now=clock.now())
    t0 = clock.now()
    assert b.next_refill_deadline(100, now=t0) == t0
    b.take(8192, now=t0)
    assert b.next_refill_deadline(1024, now=t0) == t0 + 0.5
    assert b.next_refill_deadline(10**9, now=t0) == t0 + 4.0  # capped at a full bucket
    clock.jump_to(t0 + 0.5)
    assert b.consume(1024, now=clock.now())


def test_unlimited_bucket(clock: FakeClock) -> None:
    for rate in (None, 0, 0.0, float("inf")):
        b = TokenBucket(rate, now=clock.now())
        assert not b.limited and b.rate_bps is None
        assert b.available(now=clock.now()) == UNLIMITED
        assert b.consume(10**12, now=clock.now())
        assert b.take(12345, now=clock.now()) == 12345
        b.charge(10**12, now=clock.now())
        assert b.next_refill_deadline(10**9, now=clock.now()) == clock.now()
        assert b.stats()["consumed"] == 2 * 10**12 + 12345


def test_invalid_rates_and_sizes_rejected(clock: FakeClock) -> None:
    for bad in (-1, -0.5, float("nan")):
        with pytest.raises(ValueError):
            TokenBucket(bad, now=clock.now())
    with pytest.raises(ValueError):
        TokenBucket(1000, burst_bytes=0, now=clock.now())
    b = TokenBucket(1000, now=clock.now())
    for op in (b.consume, b.take, b.charge):
        with pytest.raises(ValueError):
            op(-1, now=clock.now())


def test_default_burst() -> None:
    assert default_burst(None) == MIN_BURST_BYTES
    assert default_burst(1000) == MIN_BURST_BYTES
    assert default_burst(8 << 20) == int((8 << 20) * DEFAULT_BURST_S)
    assert TokenBucket(8 << 20, now=0.0).burst_bytes == default_burst(8 << 20)
    assert normalize_rate(0) is None and normalize_rate(1.5) == 1.5


def test_set_rate_keeps_earned_tokens_and_switches_rate(clock: FakeClock) -> None:
    b = TokenBucket(1000, burst_bytes=10_000, now=clock.now())
    b.take(10_000, now=clock.now())
    clock.advance(2.0)  # +2000 at the old rate
    b.set_rate(4000, now=clock.now())
    assert b.rate_bps == 4000
    assert b.available(now=clock.now()) == 2000
    clock.advance(0.5)  # +2000 at the new rate
    assert b.available(now=clock.now()) == 4000


def test_set_rate_lower_burst_clamps_tokens(clock: FakeClock) -> None:
    b = TokenBucket(1 << 20, now=clock.now())  # auto burst: 256 KiB
    assert b.available(now=clock.now()) == 256 * KIB
    b.set_rate(100 * KIB, now=clock.now())  # auto burst follows the rate: max(25 KiB, 64 KiB)
    assert b.burst_bytes == MIN_BURST_BYTES
    assert b.available(now=clock.now()) == MIN_BURST_BYTES
    b.set_rate(100 * KIB, now=clock.now(), burst_bytes=1000)
    assert b.burst_bytes == 1000 and b.available(now=clock.now()) == 1000
    b.set_rate(8 << 20, now=clock.now())  # an explicit burst stays
    assert b.burst_bytes == 1000


def test_set_rate_unlimited_and_back_starts_full(clock: FakeClock) -> None:
    b = TokenBucket(1000, burst_bytes=3000, now=clock.now())
    b.take(3000, now=clock.now())
    b.set_rate(0, now=clock.now())
    assert not b.limited
    assert b.consume(10**9, now=clock.now())
    clock.advance(1.0)
    b.set_rate(500, now=clock.now())
    assert b.available(now=clock.now()) == 3000
    assert b.take(5000, now=clock.now()) == 3000
    clock.advance(1.0)
    assert b.available(now=clock.now()) == 500


def test_stale_now_does_not_refill_or_rewind(clock: FakeClock) -> None:
    b = TokenBucket(1000, burst_bytes=3000, now=clock.now())
    b.take(3000, now=clock.now())
    t = clock.now()
    assert b.available(now=t + 1.0) == 1000
    assert b.available(now=t + 0.5) == 1000  # an older now neither refills nor removes tokens
    assert b.next_refill_deadline(2000, now=t + 0.5) == t + 2.0
    assert b.available(now=t + 2.0) == 2000


def test_limiter_takes_from_every_bucket(clock: FakeClock) -> None:
    glob = TokenBucket(10_000, burst_bytes=10_000, now=clock.now())
    own = TokenBucket(1000, burst_bytes=2000, now=clock.now())
    lim = RateLimiter(glob, own)
    assert lim.limited and lim.burst_bytes == 2000
    assert lim.available(now=clock.now()) == 2000
    assert lim.consume(1500, now=clock.now())
    assert glob.available(now=clock.now()) == 8500 and own.available(now=clock.now()) == 500
    assert not lim.consume(600, now=clock.now())
    assert glob.available(now=clock.now()) == 8500  # all or nothing: the global bucket paid nothing
    assert lim.take(600, now=clock.now()) == 500
    assert lim.next_refill_deadline(1000, now=clock.now()) == clock.now() + 1.0
    lim.charge(100, now=clock.now())
    assert glob.available(now=clock.now()) == 7900


def test_limiter_stricter_global_bucket_wins(clock: FakeClock) -> None:
    glob = TokenBucket(1000, burst_bytes=1000, now=clock.now())
    own = TokenBucket(None, now=clock.now())
    lim = RateLimiter(glob, own)
    assert lim.limited and lim.burst_bytes == 1000
    assert lim.take(5000, now=clock.now()) == 1000
    assert lim.next_refill_deadline(500, now=clock.now()) == clock.now() + 0.5
    glob.set_rate(None, now=clock.now())
    assert not lim.limited and lim.burst_bytes == UNLIMITED
    assert lim.available(now=clock.now()) == UNLIMITED


def test_limiter_needs_a_bucket() -> None:
    with pytest.raises(ValueError):
        RateLimiter()


def test_steady_demand_gets_exactly_the_rate(clock: FakeClock) -> None:
    """A sender that retries at each refill deadline moves rate * T (+ the initial burst) bytes."""
    rate, block = 100 * KIB, 16 * KIB
    b = TokenBucket(rate, now=clock.now())
    t0 = clock.now()
    sent = 0
    while clock.now() < t0 + 30.0:
        while b.consume(block, now=clock.now()):
            sent += block
        clock.jump_to(b.next_refill_deadline(block, now=clock.now()))
    expected = rate * (clock.now() - t0) + b.burst_bytes
    assert expected - block <= sent <= expected


@settings(max_examples=200, deadline=None)
@given(
    rate=st.integers(1, 10_000_000),
    burst=st.integers(1, 1_000_000),
    ops=st.lists(
        st.tuples(st.sampled_from(["consume", "take", "set"]), st.integers(0, 2_000_000), st.floats(0, 2.0)),
        max_size=60,
    ),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: int, burst: int, ops: list[tuple[str, int, float]]
) -> None:
    """Invariant: consumed <= burst + integral of the rate + one oversize transfer (max op size),
    give or take TOKEN_EPS (rounding tolerance)."""
    r = random.Random(rate ^ burst)
    now = 0.0
    b = TokenBucket(rate, burst_bytes=burst, now=now)
    allowance = float(burst)
    cur_rate = float(rate)
    passed = 0
    biggest = 0
    for op, n, dt in ops:
        now += dt
        allowance += cur_rate * dt
        if op == "consume":
            if b.consume(n, now=now):
                passed += n
                biggest = max(biggest, n)
        elif op == "take":
            passed += b.take(n, now=now)
        else:
            cur_rate = float(r.randint(1, 10_000_000))
            b.set_rate(cur_rate, now=now, burst_bytes=burst)
        assert passed <= allowance + biggest + TOKEN_EPS + 1e-9 * allowance


def test_quantum_wakes_fast_limits_less_often(clock: FakeClock) -> None:
    slow = RateLimiter(TokenBucket(100 * KIB, now=clock.now()))
    assert slow.quantum(16 * KIB) == 16 * KIB  # 10 ms of 100 KiB/s is less than a block
    fast = RateLimiter(TokenBucket(None, now=clock.now()), TokenBucket(100 << 20, now=clock.now()))
    assert fast.quantum(16 * KIB) == int((100 << 20) * WAKE_QUANTUM_S)
    tiny = RateLimiter(TokenBucket(100 << 20, burst_bytes=20 * KIB, now=clock.now()))
    assert tiny.quantum(16 * KIB) == 20 * KIB  # never more than the bucket holds
    assert RateLimiter(TokenBucket(None, now=clock.now())).quantum(16 * KIB) == 16 * KIB


def test_transfer_limits_wait_line_and_wake_time(clock: FakeClock) -> None:
    glob_up, glob_down = TokenBucket(None, now=clock.now()), TokenBucket(None, now=clock.now())
    lim = TransferLimits(glob_up, glob_down, up_bps=None, down_bps=None, now=clock.now())
    assert not lim.up_gated and lim.wake_at(16 * KIB, now=clock.now()) is None
    lim.set_rates(up=64 * KIB, now=clock.now())
    assert lim.up_gated and lim.up_bucket.rate_bps == 64 * KIB and lim.down_bucket.rate_bps is None
    assert lim.up.take(10**9, now=clock.now()) == 64 * KIB  # empty the bucket (burst 64 KiB)
    lim.wait(7, 32 * KIB)  # its next block is bigger than the usual 16 KiB
    lim.wait(8, 16 * KIB)
    lim.wait(7, 32 * KIB)  # waited again: to the back of the line
    assert list(lim.waiting) == [8, 7]
    assert lim.wake_at(16 * KIB, now=clock.now()) == clock.now() + 0.25  # 16 KiB at 64 KiB/s, for cid 8
    del lim.waiting[8]
    assert lim.wake_at(16 * KIB, now=clock.now()) == clock.now() + 0.5  # cid 7 needs 32 KiB
    glob_up.set_rate(1000, now=clock.now())  # a stricter global limit gates the torrent too
    lim.set_rates(up=None, now=clock.now())
    lim.refresh()
    assert lim.up_gated
    glob_up.set_rate(None, now=clock.now())
    lim.refresh()
    assert not lim.up_gated
