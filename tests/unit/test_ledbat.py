from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minibt.errors import ConfigError
from minibt.ledbat import Ledbat, LedbatConfig

LINEAR = LedbatConfig(slow_start=False, initial_window_bytes=30_000)
PKT = 1000


def one_rtt(cc: Ledbat, *, delay_us: int, now: float, saturated: bool = True) -> float:
    """Ack one window's worth of packets with the given queueing delay; returns the window change."""
    for _ in range(3):  # fill the noise filter with this RTT's delay
        cc.on_delay_sample(50_000 + delay_us, now=now)
    before = cc.max_window
    acked = 0
    while acked < before:
        cc.on_delay_sample(50_000 + delay_us, now=now)
        inflight = cc.max_window if saturated else 0  # the sender refills the window after each ACK
        cc.on_ack(bytes_acked=PKT, bytes_in_flight=inflight, packet_bytes=PKT, now=now)
        acked += PKT
    return cc.max_window - before


def primed(config: LedbatConfig = LINEAR, now: float = 0.0) -> Ledbat:
    cc = Ledbat(config, now=now)
    cc.on_delay_sample(50_000, now=now)  # base delay: 50 ms of propagation (and clock offset)
    return cc


def test_our_delay_is_sample_minus_base() -> None:
    cc = Ledbat(LINEAR, now=0.0)
    assert cc.our_delay_us is None and cc.base_delay_us is None
    for s in (70_000, 50_000, 90_000, 95_000, 93_000):
        cc.on_delay_sample(s, now=1.0)
    assert cc.base_delay_us == 50_000
    assert cc.our_delay_us == 90_000 - 50_000  # minimum of the last 3 samples (noise filter)


def test_zero_sample_means_no_sample() -> None:
    cc = Ledbat(LINEAR, now=0.0)
    cc.on_delay_sample(0, now=0.0)  # BEP 29: 0 before the peer has a measurement
    assert cc.base_delay_us is None


def test_base_delay_is_a_two_minute_sliding_minimum() -> None:
    cc = Ledbat(LINEAR, now=0.0)
    cc.on_delay_sample(50_000, now=0.0)
    cc.on_delay_sample(80_000, now=30.0)
    cc.on_delay_sample(90_000, now=61.0)  # second minute: the first minute's minimum still counts
    assert cc.base_delay_us == 50_000
    cc.on_delay_sample(95_000, now=121.0)  # third minute: the first minute has slid out
    assert cc.base_delay_us == 90_000
    cc.on_delay_sample(97_000, now=300.0)  # silent for > 2 minutes: only the new sample
    assert cc.base_delay_us == 97_000


def test_delays_compare_modulo_2_32() -> None:
    cc = Ledbat(LINEAR, now=0.0)
    base = 0xFFFF_FF00
    for s in (base, base + 10, base + 20):
        cc.on_delay_sample(s & 0xFFFF_FFFF, now=0.0)
    for _ in range(3):
        cc.on_delay_sample((base + 60_000) & 0xFFFF_FFFF, now=1.0)  # past the wrap
    assert cc.base_delay_us == base
    assert cc.our_delay_us == 60_000


def test_growth_below_target_is_capped_at_gain_per_rtt() -> None:
    cc = primed()
    growth = one_rtt(cc, delay_us=0, now=1.0)
    assert 0.9 * 3000 <= growth <= 3000  # libtorrent utp_gain_factor
    half = one_rtt(cc, delay_us=50_000, now=2.0)
    assert 0.4 * 3000 <= half <= 0.5 * 3000  # scaled by off_target / target


def test_window_shrinks_above_target_and_holds_at_target() -> None:
    cc = primed()
    assert one_rtt(cc, delay_us=100_000, now=1.0) == 0
    shrink = one_rtt(cc, delay_us=200_000, now=2.0)
    assert -1.1 * 3000 <= shrink <= -0.9 * 3000  # (the window shrinks during the RTT: slightly > gain)


def test_application_limited_window_does_not_grow() -> None:
    cc = primed()
    assert one_rtt(cc, delay_us=0, now=1.0, saturated=False) == 0


def test_loss_halves_once_per_rtt() -> None:
    cc = primed()
    w = cc.max_window
    assert cc.on_loss(rtt_s=0.2, now=10.0)
    assert cc.max_window == w // 2
    assert not cc.on_loss(rtt_s=0.2, now=10.1)  # same window of data
    assert cc.on_loss(rtt_s=0.2, now=10.25)
    assert cc.max_window == w // 4


def test_timeout_drops_to_minimum_packet_and_slow_start_recovers() -> None:
    cc = primed(LedbatConfig(initial_window_bytes=40_000))
    cc.on_timeout(now=5.0)
    assert cc.max_window == 150  # BEP 29 'timeouts'
    assert cc.stats()["slow_start"] == 1
    rtts = 0
    while cc.stats()["slow_start"]:
        one_rtt(cc, delay_us=0, now=6.0 + rtts)
        rtts += 1
    assert rtts <= 5  # slow start back to ssthresh = half the old window
    assert 20_000 <= cc.max_window <= 20_000 + 3000  # plus at most one RTT of linear gain


def test_slow_start_doubles_until_delay_reaches_target() -> None:
    cc = primed(LedbatConfig(initial_window_bytes=3000))
    sizes = []
    for rtt in range(5):
        one_rtt(cc, delay_us=10_000, now=1.0 + rtt)
        sizes.append(cc.max_window)
    assert sizes == [3000 * 2 ** (i + 1) for i in range(5)]
    cc.on_delay_sample(50_000 + 120_000, now=7.0)
    cc.on_delay_sample(50_000 + 120_000, now=7.0)
    cc.on_delay_sample(50_000 + 120_000, now=7.0)
    before = cc.max_window
    cc.on_ack(bytes_acked=PKT, bytes_in_flight=before, packet_bytes=PKT, now=7.0)
    assert cc.stats()["slow_start"] == 0 and cc.max_window < before


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 0xFFFF_FFFF), st.integers(1, 50_000)), max_size=60))
def test_window_stays_within_bounds(ops: list[tuple[int, int, int]]) -> None:
    cfg = LedbatConfig(max_window_bytes=200_000)
    cc = Ledbat(cfg, now=0.0)
    now = 0.0
    for op, sample, acked in ops:
        now += 0.05
        if op == 0:
            cc.on_delay_sample(sample, now=now)
        elif op == 1:
            cc.on_ack(bytes_acked=acked, bytes_in_flight=cc.max_window, packet_bytes=1200, now=now)
        elif op == 2:
            cc.on_loss(rtt_s=0.1, now=now)
        else:
            cc.on_timeout(now=now)
        assert cfg.min_window_bytes <= cc.max_window <= cfg.max_window_bytes


@pytest.mark.parametrize(
    "kwargs",
    [dict(target_delay_us=0), dict(loss_multiplier=1.0), dict(min_window_bytes=0), dict(initial_window_bytes=10)],
)
def test_bad_config_raises(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        LedbatConfig(**kwargs)  # type: ignore[arg-type]


class _OneSampleAtATime:
    """The base-delay bookkeeping as the per-packet code had it (one sample per call): the oracle for
    Ledbat.on_delay_samples, which takes a run of packets' samples at one ``now``."""

    def __init__(self, now: float) -> None:
        self.hist: list[int] = []
        self.bucket_start = now
        self.recent: list[int] = []
        self.base: int | None = None

    def sample(self, s: int, now: float) -> None:
        s &= 0xFFFFFFFF
        if s == 0:
            return
        before = lambda a, b: ((a - b) & 0xFFFFFFFF) > 0x7FFFFFFF  # noqa: E731
        elapsed = now - self.bucket_start
        if not self.hist or elapsed >= 60.0:
            if not self.hist:
                self.bucket_start = now
            else:
                steps = int(elapsed // 60.0)
                if steps >= 2:
                    self.hist.clear()
                self.bucket_start += 60.0 * steps
            self.hist.append(s)
            del self.hist[:-2]
            self.base = self.hist[0]
            for v in self.hist:
                if before(v, self.base):
                    self.base = v
        else:
            if before(s, self.hist[-1]):
                self.hist[-1] = s
            if self.base is None or before(s, self.base):
                self.base = s
        self.recent = (self.recent + [s])[-3:]


@given(st.lists(st.tuples(st.sampled_from([0.0, 0.001, 1.0, 30.0, 59.999, 60.0, 61.0, 130.0, 400.0]),
                          st.lists(st.one_of(st.integers(0, 2**32 - 1), st.just(0), st.integers(2**32 - 50, 2**32 - 1),
                                             st.integers(1, 100)), max_size=12)),
                max_size=25))
def test_a_run_of_samples_at_once_equals_them_one_by_one(batches: list[tuple[float, list[int]]]) -> None:
    from minibt import ledbat

    assert (ledbat.BASE_DELAY_BUCKET_S, ledbat.BASE_DELAY_BUCKETS, ledbat.DELAY_FILTER_SAMPLES) == (60.0, 2, 3)
    now = 5.0
    cc, ref = Ledbat(LINEAR, now=now), _OneSampleAtATime(now)
    for step, samples in batches:
        now += step
        cc.on_delay_samples(samples, now=now)
        for s in samples:
            ref.sample(s, now)
        assert (cc._hist, cc._base, list(cc._recent), cc._bucket_start) == (ref.hist, ref.base, ref.recent,
                                                                          ref.bucket_start)


@pytest.mark.parametrize("run", [
    [10, 10 + 2**31], [10 + 2**31, 10],  # exactly half the circle apart: wrapping order is not plain order
    [10, 10 + 2**31 - 1], [10 + 2**31 - 1, 10],  # just inside half: plain order
    [2**32 - 5, 3, 2**32 - 1],  # across the wrap
    [5, 7, 6], [7, 5 + 2**31, 6 + 2**31, 9],
])
def test_a_run_at_the_edges_of_half_the_circle_equals_it_one_by_one(run: list[int]) -> None:
    """Where a run of samples may skip the sample-by-sample minimum (plain ``min`` within half the 32-bit circle)."""
    for first in (None, 1, 2**31 + 20):  # no history yet, or a base delay before the run
        now = 5.0
        cc, ref = Ledbat(LINEAR, now=now), _OneSampleAtATime(now)
        if first is not None:
            cc.on_delay_samples([first], now=now)
            ref.sample(first, now)
        cc.on_delay_samples(run, now=now + 1.0)
        for s in run:
            ref.sample(s, now + 1.0)
        assert (cc._hist, cc._base, list(cc._recent)) == (ref.hist, ref.base, ref.recent)
