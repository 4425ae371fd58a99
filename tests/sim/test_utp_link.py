"""Two UtpMux endpoints over a simulated UDP link driven by a FakeClock (STYLE.md P6).

The link has per-direction delay, jitter (reordering), loss, duplication, an MTU and an optional
rate-limited bottleneck with a tail-drop queue.  Time only moves by jumping to the next arrival or
the next machine deadline; nothing sleeps.  Counters are asserted within bands
(libtorrent ``simulation/test_utp.cpp``).
"""

from __future__ import annotations

import heapq
import itertools
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from helpers import FakeClock

from minibt import utp_mux
from minibt.urls import Addr
from minibt.utp import (
    Connected,
    ConnectionTimedOut,
    DataReceived,
    IncomingConnection,
    MuxEvent,
    UtpConnection,
    UtpState,
)
from minibt.utp_codec import Payload
from minibt.utp_config import UtpConfig
from minibt.utp_mux import UtpMux

KiB = 1024
MiB = 1024 * KiB
A_ADDR = ("10.0.0.1", 6881)
B_ADDR = ("10.0.0.2", 6881)


@dataclass(frozen=True)
class LinkSpec:
    """One direction of the path."""

    delay_s: float = 0.02
    jitter_s: float = 0.0  # extra uniform delay per datagram: reorders
    loss: float = 0.0
    dup: float = 0.0
    mtu: int = 1472  # UDP payload bytes (Ethernet: 1500 - IPv4 20 - UDP 8); larger: dropped with DF, else fragmented
    rate_Bps: float | None = None  # bottleneck serialisation rate; None: unlimited
    queue_s: float = 1.0  # bottleneck buffer in seconds of queueing before tail drop


@dataclass
class Link:
    spec: LinkSpec
    rng: random.Random
    busy_until: float = 0.0
    queue_delays: list[tuple[float, float]] = field(default_factory=list)  # (time, queueing delay)
    sent: int = 0
    dropped: int = 0
    fragmented: int = 0

    def transit(self, size: int, now: float, df: bool = False) -> list[float]:
        """Arrival times of one datagram sent at ``now`` (empty: lost; two: duplicated).

        Over the MTU: dropped with don't-fragment (DF), else sent as IP fragments, each of which may be lost.
        """
        s = self.spec
        self.sent += 1
        fragments = -(-size // s.mtu)
        if df and fragments > 1:
            self.dropped += 1
            return []
        if fragments > 1:
            self.fragmented += 1
        if any(self.rng.random() < s.loss for _ in range(fragments)):
            self.dropped += 1
            return []
        depart = now
        if s.rate_Bps is not None:
            start = max(now, self.busy_until)
            if start - now > s.queue_s:
                self.dropped += 1
                return []
            self.queue_delays.append((now, start - now))
            self.busy_until = depart = start + size / s.rate_Bps
        times = [depart + s.delay_s + self.rng.random() * s.jitter_s]
        if self.rng.random() < s.dup:
            times.append(depart + s.delay_s + self.rng.random() * s.jitter_s)
        return times


class Endpoint:
    def __init__(self, name: str, addr: tuple[str, int], rng: random.Random, config: UtpConfig, offset_s: float):
        self.name = name
        self.addr = addr
        self.mux = UtpMux(rng, config=config)
        self.offset_s = offset_s  # this host's clock = sim clock + offset (clock skew)
        self.conn: UtpConnection | None = None
        self.received = bytearray()
        self.events: list[MuxEvent] = []
        self.to_send = b""
        self.sent = 0
        self.collect = False  # in-order bytes into conn.received (as utp_peers.py asks), not DataReceived

    def take_collected(self) -> None:
        c = self.conn
        if c is not None and c.received:
            self.received += c.received
            c.received = bytearray()

    def handle(self, events: list[MuxEvent]) -> None:
        for key, ev in events:
            self.events.append((key, ev))
            if isinstance(ev, IncomingConnection):
                self.conn = ev.conn
                if self.collect:
                    ev.conn.received = bytearray()
            elif isinstance(ev, DataReceived):
                self.received += ev.data

    def feed_app(self) -> None:
        """The application: keep the connection's send buffer full."""
        c = self.conn
        if c is not None and self.sent < len(self.to_send) and c.state is not UtpState.CLOSED:
            self.sent += c.send(memoryview(self.to_send)[self.sent : self.sent + 256 * KiB])

    def count(self, kind: type) -> int:
        return sum(isinstance(ev, kind) for _, ev in self.events)


class Sim:
    def __init__(
        self,
        clock: FakeClock,
        seed: int,
        ab: LinkSpec,
        ba: LinkSpec | None = None,
        config: UtpConfig | None = None,
        b_offset_s: float = 0.0,
    ) -> None:
        cfg = config or UtpConfig()
        self.clock = clock
        self.a = Endpoint("a", A_ADDR, random.Random(seed), cfg, 0.0)
        self.b = Endpoint("b", B_ADDR, random.Random(seed + 1), cfg, b_offset_s)
        self.links = {"a": Link(ab, random.Random(seed + 2)), "b": Link(ba or ab, random.Random(seed + 3))}
        self.heap: list[tuple[float, int, str, bytes]] = []
        self.seq = itertools.count()
        self.peer = {"a": self.b, "b": self.a}

    def t(self, ep: Endpoint) -> float:
        return self.clock.now() + ep.offset_s

    def pump_out(self) -> None:
        for ep in (self.a, self.b):
            ep.feed_app()
            link = self.links[ep.name]
            dst = self.peer[ep.name].name
            for out in ep.mux.datagrams_to_send(now=self.t(ep)):
                for at in link.transit(len(out.data), self.clock.now(), out.dont_fragment):
                    heapq.heappush(self.heap, (at, next(self.seq), dst, out.data))

    def step(self) -> None:
        self.pump_out()
        cands = [self.heap[0][0]] if self.heap else []
        for ep in (self.a, self.b):
            d = ep.mux.next_deadline()
            if d is not None:
                cands.append(d - ep.offset_s)
        assert cands, "simulation stalled: nothing in flight and no deadline"
        self.clock.jump_to_next(*cands)
        now = self.clock.now()
        due: dict[str, list[bytes]] = {"a": [], "b": []}  # what each side reads at once, in arrival order
        while self.heap and self.heap[0][0] <= now:
            _, _, dst, data = heapq.heappop(self.heap)
            due[dst].append(data)
        touched = {name for name, datas in due.items() if datas}
        for name in touched:  # as utp_peers.UtpPeers.receive_batch hands a read's datagrams to the mux
            ep = self.a if name == "a" else self.b
            datas = due[name]
            srcs = [self.peer[name].addr] * len(datas)
            i = 0
            while i < len(datas):
                evs: list[MuxEvent] = []
                i = ep.mux.receive_run(datas, srcs, i, evs, now=self.t(ep))
                ep.handle(evs)
        for ep in (self.a, self.b):
            ep.take_collected()
            if ep.name in touched:
                ep.mux.socket_drained(now=self.t(ep))
            d = ep.mux.next_deadline()
            if d is not None and d - ep.offset_s <= now:
                ep.handle(ep.mux.handle_timeout(now=self.t(ep)))

    def run(self, until: Callable[[], bool], max_s: float) -> None:
        end = self.clock.now() + max_s
        while not until():
            assert self.clock.now() < end, f"not done after {max_s} simulated seconds"
            self.step()

    def connect(self) -> None:
        self.a.conn = self.a.mux.connect(B_ADDR, now=self.t(self.a))
        if self.a.collect:
            self.a.conn.received = bytearray()
        self.run(lambda: self.a.count(Connected) == 1, max_s=10)


def _payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("loss", [0.0, 0.01, 0.05])
def test_transfer_byte_exact_both_directions_under_loss(clock: FakeClock, loss: float) -> None:
    """Data flows both ways at once; every datagram (data and ACK) on either link may be lost."""
    size = 3 * MiB
    sim = Sim(clock, seed=7, ab=LinkSpec(delay_s=0.02, loss=loss))
    sim.connect()
    sim.a.to_send = _payload(size, 1)
    sim.run(lambda: sim.b.conn is not None and sim.b.conn.state is UtpState.CONNECTED, max_s=5)
    sim.b.to_send = _payload(size, 2)
    sim.run(lambda: len(sim.b.received) == size and len(sim.a.received) == size, max_s=300)
    assert bytes(sim.b.received) == sim.a.to_send
    assert bytes(sim.a.received) == sim.b.to_send
    assert sim.a.conn is not None and sim.b.conn is not None
    for s in (sim.a.conn.stats(), sim.b.conn.stats()):
        check_loss_counters(s, loss, size)
    assert sim.a.count(ConnectionTimedOut) == sim.b.count(ConnectionTimedOut) == 0


def check_loss_counters(s: dict[str, float], loss: float, size: int) -> None:
    data_packets = size / UtpConfig().payload_bytes
    if loss == 0.0:
        assert s["retransmits"] == s["timeouts"] == s["fast_retransmits"] == 0
        return
    lost = loss * data_packets
    # each lost packet is resent about once (resends get lost too, a few are spurious) ...
    assert 0.5 * lost <= s["retransmits"] <= 2 * lost + 10
    # ... mostly found by duplicate ACKs / SACK, rarely by the retransmission timer
    assert s["fast_retransmits"] >= 0.6 * s["retransmits"]
    assert s["timeouts"] <= 0.15 * lost + 3


def test_one_way_transfer_at_5_percent_loss(clock: FakeClock) -> None:
    """Only ST_STATE (with SACK) flows back: ACK loss and SACK-driven recovery without piggybacking."""
    size = 4 * MiB
    sim = Sim(clock, seed=9, ab=LinkSpec(delay_s=0.03, loss=0.05))
    sim.connect()
    sim.a.to_send = _payload(size, 6)
    sim.run(lambda: len(sim.b.received) == size, max_s=300)
    assert bytes(sim.b.received) == sim.a.to_send
    assert sim.a.conn is not None and sim.b.conn is not None
    check_loss_counters(sim.a.conn.stats(), 0.05, size)
    sb = sim.b.conn.stats()
    assert sb["acks_sent"] <= 0.8 * sb["packets_received"]  # ACKs coalesce per receive batch


def test_transfer_survives_reordering_and_duplication(clock: FakeClock) -> None:
    size = 2 * MiB
    spec = LinkSpec(delay_s=0.015, jitter_s=0.01, dup=0.02, loss=0.01)
    sim = Sim(clock, seed=11, ab=spec)
    sim.connect()
    sim.a.to_send = _payload(size, 3)
    sim.run(lambda: len(sim.b.received) == size, max_s=300)
    assert bytes(sim.b.received) == sim.a.to_send
    assert sim.b.conn is not None
    sb = sim.b.conn.stats()
    assert sb["dup_packets"] > 0  # duplicated datagrams were recognised, not delivered twice
    assert sb["reorder_bytes"] == 0


@pytest.mark.parametrize("mtu", [1472, 1300, 1250])
def test_mtu_probes_find_the_largest_payload_the_path_carries(clock: FakeClock, mtu: int) -> None:
    """Ethernet (1472 UDP bytes), a tunnel (1300) and a tight path (1250): uTP starts at 1200 payload
    bytes and its DF probes settle within 16 bytes of the largest size that fits (ceiling 1400)."""
    sim = Sim(clock, seed=11, ab=LinkSpec(delay_s=0.01, mtu=mtu))
    sim.connect()
    sim.a.to_send = _payload(4 * MiB, 6)
    sim.run(lambda: len(sim.b.received) == 4 * MiB, max_s=120)
    assert bytes(sim.b.received) == sim.a.to_send
    assert sim.a.conn is not None
    s = sim.a.conn.stats()
    best = min(1400, mtu - 20)  # no SACK without reordering: a datagram is the 20-byte header + payload
    assert best - 16 <= s["mtu_payload"] <= best
    assert s["mtu_probes"] >= 3
    assert s["timeouts"] == 0
    assert s["retransmits"] == s["mtu_probes_lost"]  # only lost probes were resent (as fragments)
    if mtu - 20 >= 1400:
        assert s["mtu_probes_lost"] == 0


def test_path_below_the_floor_is_carried_by_fragments_and_probes_stop(clock: FakeClock) -> None:
    """MTU 1000: 1220-byte datagrams go as IP fragments; every DF probe is lost and the search ends."""
    sim = Sim(clock, seed=5, ab=LinkSpec(delay_s=0.01, mtu=1000))
    sim.connect()
    sim.a.to_send = _payload(4 * MiB, 4)
    sim.run(lambda: len(sim.b.received) == 4 * MiB, max_s=120)
    assert bytes(sim.b.received) == sim.a.to_send
    assert sim.a.conn is not None
    s = sim.a.conn.stats()
    assert s["mtu_payload"] == 1200 and s["mtu_probes_lost"] == s["mtu_probes"] > 0
    assert s["mtu_ceiling"] < 1216  # converged: each size was lost twice (1300, 1250, 1225, 1212)
    assert s["mtu_probes"] == 8
    assert sim.links["a"].fragmented > 100

    clock2 = FakeClock()  # a payload that fits: nothing is fragmented but the resent probes
    sim2 = Sim(clock2, seed=5, ab=LinkSpec(delay_s=0.01, mtu=1000), config=UtpConfig(payload_bytes=950))
    sim2.connect()
    sim2.a.to_send = _payload(1 * MiB, 4)
    sim2.run(lambda: len(sim2.b.received) == 1 * MiB, max_s=60)
    assert bytes(sim2.b.received) == sim2.a.to_send
    assert sim2.a.conn is not None
    s2 = sim2.a.conn.stats()
    assert 950 <= s2["mtu_payload"] <= 980
    assert sim2.links["a"].fragmented == s2["mtu_probes_lost"]


@pytest.mark.parametrize("b_offset_s", [0.0, -4294.967296 * 7 - 0.05])
def test_ledbat_keeps_bottleneck_queue_near_target(clock: FakeClock, b_offset_s: float) -> None:
    """A 2 Mbit/s uplink with a 1 s buffer (bufferbloat): uTP should sit near 100 ms of queue.

    The second case skews the receiver's clock so that timestamp differences wrap around 2**32.
    """
    rate = 250_000.0
    up = LinkSpec(delay_s=0.025, rate_Bps=rate, queue_s=1.0)
    sim = Sim(clock, seed=3, ab=up, ba=LinkSpec(delay_s=0.025), b_offset_s=b_offset_s)
    sim.connect()
    start = clock.now()
    sim.a.to_send = _payload(16 * MiB, 5)
    sim.run(lambda: clock.now() - start >= 15.0, max_s=20)  # warm-up: slow start and its overshoot
    got_warm = len(sim.b.received)
    sim.run(lambda: clock.now() - start >= 40.0, max_s=30)
    delays = [d for t, d in sim.links["a"].queue_delays if t >= start + 15.0]
    assert 0.05 <= statistics.median(delays) <= 0.15
    assert max(delays) < 0.3
    goodput = (len(sim.b.received) - got_warm) / 25.0
    assert goodput >= 0.9 * rate * 1200 / 1220  # the link stays busy (payload share of each datagram)
    assert bytes(sim.b.received) == sim.a.to_send[: len(sim.b.received)]
    assert sim.a.conn is not None
    sa = sim.a.conn.stats()
    assert sa["timeouts"] == 0 and sa["retransmits"] == 0  # the 1 s buffer never overflows
    assert 50_000 <= sa["our_delay_us"] <= 150_000
    assert 20_000 <= sa["max_window"] <= 60_000  # ~ rate * (RTT + target) = 250 kB/s * 0.15 s


class GeneralPathOnly(UtpConnection):
    """Every received packet through receive_packet: what the mux's short path (take_run) must equal."""

    def take_run(self, datas: Sequence[Payload], addrs: Sequence[Addr], i: int, addr: Addr, now: float) -> int:
        return i


def _recorded_run(clock: FakeClock, spec: LinkSpec,
                  collect: bool = False) -> tuple[list[tuple[float, str, bytes]], list[object], dict[str, float]]:
    """A lossy, reordering two-way transfer; every datagram on the wire, every event but DataReceived, B's
    final counters.  ``collect``: both sides take in-order bytes from ``conn.received`` (utp_peers.py's way)."""
    sim = Sim(clock, seed=21, ab=spec)
    sim.a.collect = sim.b.collect = collect
    wire: list[tuple[float, str, bytes]] = []
    push = heapq.heappush

    def record(heap: list[tuple[float, int, str, bytes]], item: tuple[float, int, str, bytes]) -> None:
        wire.append((item[0], item[2], item[3]))
        push(heap, item)

    heapq_push = heapq.heappush
    heapq.heappush = record  # type: ignore[assignment]
    try:
        sim.connect()
        sim.a.to_send = _payload(MiB, 31)
        sim.run(lambda: sim.b.conn is not None and sim.b.conn.state is UtpState.CONNECTED, max_s=5)
        sim.b.to_send = _payload(MiB // 4, 32)
        sim.run(lambda: len(sim.b.received) == MiB and len(sim.a.received) == MiB // 4, max_s=300)
    finally:
        heapq.heappush = heapq_push
    assert bytes(sim.b.received) == sim.a.to_send and bytes(sim.a.received) == sim.b.to_send
    events = [(ep.name, k, type(ev).__name__) for ep in (sim.a, sim.b) for k, ev in ep.events
              if not isinstance(ev, DataReceived)]
    assert collect or sum(isinstance(ev, DataReceived) for _, ev in sim.b.events) > 100
    assert not collect or not any(isinstance(ev, DataReceived) for ep in (sim.a, sim.b) for _, ev in ep.events)
    assert sim.b.conn is not None
    return wire, events, sim.b.conn.stats()


@pytest.mark.parametrize("spec", [LinkSpec(delay_s=0.02, loss=0.02), LinkSpec(delay_s=0.015, dup=0.02, loss=0.01),
                                  LinkSpec(delay_s=0.015, jitter_s=0.01, dup=0.02, loss=0.01)])
def test_the_in_order_short_path_changes_nothing_on_the_wire(monkeypatch: pytest.MonkeyPatch, spec: LinkSpec) -> None:
    """The same seeded transfer three ways: bytes collected in ``conn.received`` with the mux's short path
    for in-order data (what utp_peers.py runs), the same without the short path, and DataReceived events
    (no short path either).  Every datagram (bytes and send time), every other event and every counter
    must be identical, and so must the bytes each side received (checked in _recorded_run)."""
    taken = {"short": 0, "runs": 0}
    take = UtpConnection.take_run

    def counting(self: UtpConnection, datas: Sequence[Payload], addrs: Sequence[Addr], i: int, *a: Any) -> int:
        j = take(self, datas, addrs, i, *a)
        taken["short"] += j - i
        taken["runs"] += j - i > 1
        return j

    monkeypatch.setattr(UtpConnection, "take_run", counting)
    short = _recorded_run(FakeClock(), spec, collect=True)
    # The comparison means something: the short path took these packets, several at once where datagrams
    # arrive together (without jitter: a window's packets sent at once arrive at once, losses and duplicates
    # among them end runs).
    assert taken["short"] >= 150 and (spec.jitter_s or taken["runs"] >= 20), taken
    events = _recorded_run(FakeClock(), spec)
    monkeypatch.setattr(utp_mux, "UtpConnection", GeneralPathOnly)
    taken["short"] = 0
    general = _recorded_run(FakeClock(), spec, collect=True)
    assert taken["short"] == 0
    assert short[0] == general[0] == events[0]
    assert short[1] == general[1] == events[1]
    assert short[2] == general[2] == events[2]
