"""TrackerIO's UDP tables stay bounded (STYLE.md section 7): a dead BEP 15 tracker asked again every
round, and thousands of trackers used once.  A fake UDP socket and the fake clock; no real sends."""

from __future__ import annotations

import random
import selectors
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from helpers import FakeClock

from minibt.faults import Faults
from minibt.netif import Source
from minibt.tracker import (
    JOB_TIMEOUT_S,
    RETRY_BACKOFF_MAX_S,
    AnnounceJob,
    AnnounceParams,
    Announcer,
    AnnounceResult,
)
from minibt.trackerio import UDP_IDLE_KEEP_S, UDP_IDLE_TRACKERS_MAX, TrackerIO
from minibt.workers import InlineHasher

DEAD = ("10.9.9.9", 6969)
DEAD_URL = f"udp://{DEAD[0]}:{DEAD[1]}"


@dataclass
class FakeUdp:
    """The loop's UDP socket: records what is sent."""

    sent: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        self.sent.append((bytes(data), addr))
        return len(data)


@dataclass
class Recorder:
    """What TrackerIO uses of the Session; results go to the torrent's Announcer, if it has one."""

    rng: random.Random = field(default_factory=lambda: random.Random(7))
    faults: Faults = field(default_factory=Faults)
    announcers: dict[bytes, Announcer] = field(default_factory=dict)
    results: list[tuple[bytes, AnnounceJob, AnnounceResult | None, str | None, float]] = field(default_factory=list)

    def on_announce_result(
        self, info_hash: bytes, job: AnnounceJob, result: AnnounceResult | None, error: str | None, *, now: float
    ) -> None:
        self.results.append((info_hash, job, result, error, now))
        a = self.announcers.get(info_hash)
        if a is not None and result is not None:
            a.job_done(job, result, now=now)
        elif a is not None:
            a.job_failed(job, error or "?", now=now)


@dataclass
class Rig:
    io: TrackerIO
    session: Recorder
    udp: FakeUdp
    clock: FakeClock
    alive: set[tuple[str, int]] = field(default_factory=set)  # trackers that answer
    served: int = 0

    def announce(self, info_hash: bytes, job: AnnounceJob) -> None:
        params = AnnounceParams(info_hash, b"p" * 20, 6881, 0, 0, 100, job.event, key=1)
        self.io.announce(info_hash, job, params, self.clock.now())
        self.serve()

    def tick(self) -> None:
        self.io.tick(self.clock.now())
        self.serve()

    def serve(self) -> None:
        """Answer, at once, every datagram sent to a live tracker (BEP 15 connect and announce)."""
        while self.served < len(self.udp.sent):
            data, addr = self.udp.sent[self.served]
            self.served += 1
            if addr not in self.alive:
                continue
            if len(data) == 16:  # connect
                reply = struct.pack("!IIQ", 0, struct.unpack_from("!I", data, 12)[0], 0x5EED)
            else:  # announce: interval 1800, 0 leechers, 1 seeder, no peers
                reply = struct.pack("!IIIII", 1, struct.unpack_from("!I", data, 12)[0], 1800, 0, 1)
            assert self.io.receive_datagram(memoryview(reply), addr, self.clock.now())


@pytest.fixture
def rig() -> Iterator[Rig]:
    sel = selectors.DefaultSelector()
    udp = FakeUdp()
    session = Recorder()
    io = TrackerIO(
        session,  # type: ignore[arg-type]
        sel=sel, hasher=InlineHasher(), source=Source.from_bind("0.0.0.0"), bind="0.0.0.0",  # type: ignore[arg-type]
        paused_reason=lambda: None, udp_socket=lambda: udp, udp_addr=lambda a: a,  # type: ignore[arg-type, return-value]
        udp_reaches=lambda ip: ":" not in ip,
    )
    try:
        yield Rig(io, session, udp, FakeClock())
    finally:
        io.close()
        sel.close()


def test_dead_udp_tracker_queue_bounded_when_asked_every_round(rig: Rig) -> None:
    """Ten torrents share one tracker that never answers, for a simulated day and a half; each
    Announcer gives up after JOB_TIMEOUT_S and asks again next round (issue: 13,650 queued jobs)."""
    clock, torrents = rig.clock, 10
    hashes = [bytes([i]) * 20 for i in range(torrents)]
    for i, ih in enumerate(hashes):
        rig.session.announcers[ih] = Announcer([[DEAD_URL]], random.Random(i), now=clock.now())
        rig.session.announcers[ih].start(now=clock.now())
    issued: dict[tuple[bytes, int], tuple[AnnounceJob, float]] = {}

    def step(active: list[bytes], *, revive: bool = False) -> list[tuple[bytes, AnnounceJob]]:
        """One loop iteration: the torrents' timers, the trackers' tick, then the Announce actions
        (``revive``: the tracker starts answering when a job is asked for)."""
        now = clock.now()
        jobs = [(ih, j) for ih in active if (j := rig.session.announcers[ih].poll(now=now)) is not None]
        rig.tick()
        if revive and jobs:
            rig.alive.add(DEAD)
        for ih, job in jobs:
            issued[(ih, job.seq)] = (job, now)
            rig.announce(ih, job)
        reported = {(ih, job.seq) for ih, job, _, _, _ in rig.session.results}
        assert len(set(issued) - reported) <= torrents  # at most one live job per torrent
        stats = rig.io.stats()
        assert stats["udp_pending"] < torrents and stats["udp_active"] <= 1 and stats["udp_idle"] <= 1
        clock.jump_to_next(rig.io.next_deadline(), *(rig.session.announcers[ih].next_deadline() for ih in active))
        return jobs

    end = clock.now() + 1.5 * 86400
    while clock.now() < end:
        step(hashes)
    assert len(issued) > 40 * torrents  # every torrent kept asking
    for ih, job, result, error, now in rig.session.results:  # each job ends within its own timeout
        assert result is None and error is not None and now - issued[(ih, job.seq)][1] <= job.timeout_s
    # Nine torrents go away; their jobs are over within JOB_TIMEOUT_S.  Then the tracker comes back
    # as the remaining torrent asks again: that fresh job goes on the wire at once and is answered.
    quiet_at = clock.now() + JOB_TIMEOUT_S
    while clock.now() < quiet_at:
        step(hashes[:1])
    while True:
        asked_at = clock.now()
        if step(hashes[:1], revive=True):
            break
        assert clock.now() < quiet_at + RETRY_BACKOFF_MAX_S + JOB_TIMEOUT_S
    [status] = rig.session.announcers[hashes[0]].status()
    assert status["last_ok_at"] == asked_at and status["last_error"] is None
    assert not rig.io.busy and rig.io.stats()["udp_pending"] == 0


def test_udp_job_replaced_by_newer_job_of_same_torrent(rig: Rig) -> None:
    a, b = b"a" * 20, b"b" * 20
    rig.announce(b, AnnounceJob(DEAD_URL, "started", seq=1))  # runs
    rig.announce(a, AnnounceJob(DEAD_URL, "started", seq=1))  # queued behind it
    assert len(rig.udp.sent) == 1 and rig.session.results == []
    rig.clock.advance(50.0)
    rig.tick()
    rig.announce(a, AnnounceJob(DEAD_URL, "started", seq=2))  # the queued one is stale now
    rig.announce(b, AnnounceJob(DEAD_URL, "stopped", timeout_s=10.0, seq=2))  # so is the running one
    superseded = [(ih, job.seq, error) for ih, job, _, error, _ in rig.session.results]
    assert superseded == [(a, 1, "superseded by a newer announce"), (b, 1, "superseded by a newer announce")]
    assert len(rig.udp.sent) == 3  # 15 s retransmission, then b's stopped announce at once
    assert rig.io.stats()["udp_pending"] == 1
    rig.clock.advance(10.0)
    rig.tick()  # b's stopped job ends at its 10 s; then a's goes on the wire
    assert [(ih, job.seq, error) for ih, job, _, error, _ in rig.session.results[2:]] == [(b, 2, "timed out")]
    assert len(rig.udp.sent) == 4 and rig.io.stats()["udp_pending"] == 0


def test_thousands_of_udp_trackers_used_once_are_forgotten(rig: Rig) -> None:
    """A torrent lists 3000 udp:// trackers: it asks each once, a second apart; every other one
    answers, the rest never do."""
    n, ih, timeout_s = 3000, b"t" * 20, 5.0
    addrs = [(f"10.{i // 250}.{i % 250}.1", 6969) for i in range(n)]
    rig.alive.update(addrs[::2])
    for i, addr in enumerate(addrs):
        rig.clock.advance(1.0)
        rig.tick()
        rig.announce(ih, AnnounceJob(f"udp://{addr[0]}:{addr[1]}", "started", timeout_s, seq=i))
        stats = rig.io.stats()
        assert stats["udp_active"] <= timeout_s + 1 and stats["udp_idle"] <= UDP_IDLE_TRACKERS_MAX
    assert len(rig.session.results) >= n - timeout_s
    # BEP 15: a tracker used a moment ago is still known: its connection id is used again.
    sent = len(rig.udp.sent)
    rig.announce(ih, AnnounceJob(f"udp://{addrs[-2][0]}:{addrs[-2][1]}", "started", timeout_s, seq=n))
    assert [len(d) for d, _ in rig.udp.sent[sent:]] == [98]  # an announce, no connect
    rig.clock.advance(timeout_s)
    rig.tick()  # the last (dead) tracker's job times out; it is idle from now on
    rig.clock.advance(UDP_IDLE_KEEP_S)
    rig.tick()
    stats = rig.io.stats()
    assert stats["udp_active"] == stats["udp_idle"] == 0 and not rig.io.busy and rig.io.next_deadline() is None
    jobs = [job.seq for _, job, _, _, _ in rig.session.results]
    assert sorted(jobs) == list(range(n + 1))  # each job reported exactly once
    errors = {error for _, job, _, error, _ in rig.session.results if job.seq % 2}
    assert errors == {"timed out"}
