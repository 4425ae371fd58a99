"""Deadline-driven waking (issue 15, idle): without connections the loop sleeps until the nearest real
deadline, in waits of at most 1 s that end exactly on it, and walks the session only then.

A real EventLoop with a FakeClock whose select() is replaced by a recorder: each wait is noted and the
clock advanced by it, so the tests see every timeout the loop asked for and when each tick ran.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from minibt.deadlines import session_deadline, torrent_deadline, wait_timeout
from minibt.loop import IDLE_TICK_S, MAX_TIMEOUT_S, EventLoop
from minibt.metainfo import create_torrent, parse_metainfo
from minibt.peer import PeerSource
from minibt.session import Session
from minibt.settings import SessionConfig, TorrentState
from minibt.torrent import Torrent
from minibt.tracker import AnnounceResult
from minibt.workers import InlineHasher
from tests.helpers import FakeClock


class Recorder:
    """Stands in for ``loop.sel.select``: records the timeout, lets that much fake time pass."""

    def __init__(self, loop: EventLoop, clock: FakeClock) -> None:
        self.clock = clock
        self.real = loop.sel.select
        self.waits: list[float] = []
        self.ticks: list[float] = []  # session.tick times
        loop.sel.select = self.select  # type: ignore[method-assign]
        tick = loop.session.tick

        def counted(*, now: float) -> None:
            self.ticks.append(now)
            tick(now=now)

        loop.session.tick = counted  # type: ignore[method-assign]

    def select(self, timeout: float | None = None) -> list[Any]:
        assert timeout is not None
        self.waits.append(timeout)
        events = self.real(0)  # the hasher's wake-up byte, if any (InlineHasher results)
        if not events:
            self.clock.advance(timeout)
        return events


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1000.0)


def seeded_loop(tmp_path: Path, clock: FakeClock, trackers: list[str]) -> tuple[EventLoop, Torrent]:
    src = tmp_path / "f.bin"
    src.write_bytes(bytes(range(256)) * 300)
    meta = parse_metainfo(create_torrent(str(src), piece_length=16384, trackers=trackers))
    s = Session(rng=random.Random(5), config=SessionConfig(transports=("tcp",), encryption="none"))
    loop = EventLoop(s, clock=clock, hasher=InlineHasher(), bind="127.0.0.1", port=0)
    loop.hasher = InlineHasher(loop.wake)
    t = s.add_torrent(meta, str(tmp_path), mode="seed", resume_path=None, now=clock.now())
    return loop, t


@pytest.fixture
def idle(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[EventLoop, Torrent, Recorder]]:
    loop, t = seeded_loop(tmp_path, clock, trackers=[])
    rec = Recorder(loop, clock)
    try:
        for _ in range(20):  # the start-up check (hash jobs run inline), then settle
            loop.run_once()
            if t.state is TorrentState.SEEDING and not loop.hasher.pending:
                break
        assert t.state is TorrentState.SEEDING
        loop.run_once()  # the tick after the last input
        rec.waits.clear()
        rec.ticks.clear()
        yield loop, t, rec
    finally:
        loop.close()


# ---------------------------------------------------------------------- the pure part


@pytest.mark.parametrize(("until", "want"), [(-3.0, 0.0), (0.0, 0.0), (0.4, 0.4), (1.0, 1.0), (4.5, 0.9),
                                             (2.1, 0.7), (math.inf, 1.0)])
def test_wait_timeout_is_capped_and_lands_on_the_deadline(until: float, want: float) -> None:
    assert wait_timeout(until, 1.0) == pytest.approx(want)


def test_waits_toward_a_far_deadline_end_on_it_at_most_one_a_second() -> None:
    left, n = 7.3, 0
    while left > 1e-9:
        w = wait_timeout(left, 1.0)
        assert 0 < w <= 1.0
        left -= w
        n += 1
    assert n == math.ceil(7.3) and left == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------------- the loop


def test_idle_seed_without_trackers_never_walks_the_session(idle: tuple[EventLoop, Torrent, Recorder]) -> None:
    loop, t, rec = idle
    assert session_deadline(loop.session, rec.clock.now(), poll_at=rec.clock.now() + 1) is None
    for _ in range(300):
        loop.run_once()
    assert rec.ticks == []  # nothing to do: no walk over the session at all
    assert rec.waits == [MAX_TIMEOUT_S] * 300  # STYLE.md 4: a wait is never longer than 1 s


def test_idle_loop_sleeps_until_the_runners_deadline_and_ticks_once_there(
    idle: tuple[EventLoop, Torrent, Recorder],
) -> None:
    loop, _, rec = idle
    start = rec.clock.now()
    due = start + 7.3
    ran: list[float] = []
    while not ran:
        loop.run_once(on_tick=ran.append, tick_deadline=lambda now: due)
    assert ran == [pytest.approx(due)] and rec.ticks == [pytest.approx(due)]
    assert len(rec.waits) == 8 and max(rec.waits) <= MAX_TIMEOUT_S  # 8 waits of 0.9125 s, the last ends on it
    assert sum(rec.waits) == pytest.approx(7.3)


def test_on_tick_without_a_deadline_still_runs_every_second(idle: tuple[EventLoop, Torrent, Recorder]) -> None:
    loop, _, rec = idle
    ran: list[float] = []
    for _ in range(5):
        loop.run_once(on_tick=ran.append)
    assert [b - a for a, b in zip(ran, ran[1:], strict=False)] == [pytest.approx(IDLE_TICK_S)] * (len(ran) - 1)
    assert len(ran) >= 4


def test_an_input_brings_one_tick_within_a_second_then_the_loop_rests(
    idle: tuple[EventLoop, Torrent, Recorder],
) -> None:
    loop, _, rec = idle
    loop.run_once()
    loop.wake()  # e.g. a hash result or a tracker reply: it may have moved a deadline
    for _ in range(10):
        loop.run_once()
    assert len(rec.ticks) == 1
    before = rec.clock.now()
    for _ in range(10):
        loop.run_once()
    assert len(rec.ticks) == 1 and rec.clock.now() - before == pytest.approx(10.0)


def test_candidates_are_dialled_within_a_second(idle: tuple[EventLoop, Torrent, Recorder]) -> None:
    loop, t, rec = idle
    now = rec.clock.now()
    t.add_candidates([("127.0.0.1", 9)], PeerSource.USER, now=now)
    assert torrent_deadline(t, now) == pytest.approx(max(now, t.last_dial_at + 1.0))
    while not loop.counters["dials"]:
        loop.run_once()
    assert rec.clock.now() - now <= 1.0 and len(rec.waits) == 1


def test_the_next_announce_is_the_deadline_and_the_loop_wakes_for_it(tmp_path: Path, clock: FakeClock) -> None:
    loop, t = seeded_loop(tmp_path, clock, trackers=["http://127.0.0.1:9/announce"])
    try:
        for _ in range(20):  # the start-up check; the torrent is not ticked once it seeds (no input since)
            if t.state is TorrentState.SEEDING:
                break
            loop.run_once()
        assert t.state is TorrentState.SEEDING and not loop.trackers.busy
        now = clock.now()
        job = t.announcer.poll(now=now)  # the first announce, answered at once
        assert job is not None
        t.on_announce_result(job, AnnounceResult(interval=1800, min_interval=120, peers=()), None, now=now)
        t.tick(now=now)  # fewer than 5 peers: the next announce comes at min_interval
        nxt = t.announcer.next_deadline()
        assert nxt == pytest.approx(now + 120)
        assert session_deadline(loop.session, now, poll_at=now + 1) == pytest.approx(nxt)
        t.checker.resume_dirty = True  # a dirty resume file is a deadline too (here: none configured)
        assert torrent_deadline(t, now) == pytest.approx(nxt)
    finally:
        loop.close()


def test_a_restart_from_resume_data_seeds_at_once_and_leaves_the_resume_file_alone(
    tmp_path: Path, clock: FakeClock
) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(bytes(range(256)) * 300)
    meta = parse_metainfo(create_torrent(str(src), piece_length=16384))
    resume = str(tmp_path / "f.resume")
    s = Session(rng=random.Random(5), config=SessionConfig(transports=("tcp",), encryption="none"))
    loop = EventLoop(s, clock=clock, hasher=InlineHasher(), bind="127.0.0.1", port=0)
    loop.hasher = InlineHasher(loop.wake)
    try:
        t = s.add_torrent(meta, str(tmp_path), mode="seed", resume_path=resume, now=clock.now())
        for _ in range(20):
            if t.state is TorrentState.SEEDING:
                break
            loop.run_once()
        assert t.state is TorrentState.SEEDING and Path(resume).exists()  # the check's result, saved at once
    finally:
        loop.close()
    saved = Path(resume).read_bytes()
    s2 = Session(rng=random.Random(6), config=SessionConfig(transports=("tcp",), encryption="none"))
    t2 = s2.add_torrent(meta, str(tmp_path), mode="seed", resume_path=resume, now=clock.now())
    assert t2.state is TorrentState.SEEDING and not any(type(a).__name__ == "HashPiece" for a in s2.take_actions())
    assert t2.checker.save_at is None and torrent_deadline(t2, clock.now()) is None  # nothing new to record
    t2.tick(now=clock.now() + 3600)
    assert Path(resume).read_bytes() == saved


def test_with_the_dht_the_idle_wait_is_its_timers_and_next_search(tmp_path: Path, clock: FakeClock) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(bytes(range(256)) * 300)
    meta = parse_metainfo(create_torrent(str(src), piece_length=16384))
    s = Session(rng=random.Random(7), config=SessionConfig(transports=("tcp",), encryption="none", dht=True,
                                                           dht_bootstrap=()))
    now = clock.now()
    s.enable_dht(saved=None, now=now, port=6881)
    t = s.add_torrent(meta, str(tmp_path), mode="seed", resume_path=None, now=now)
    t.state = TorrentState.SEEDING  # (its check is not the point here)
    assert session_deadline(s, now, poll_at=now + 1) == pytest.approx(now)  # never searched: due at once
    s.tick(now=now)  # the search starts (no nodes to ask: it ends at once)
    s.take_actions()
    at = session_deadline(s, now, poll_at=now + 1)
    assert at is not None and now + 1 < at <= now + 60.0  # the node's refresh/expiry checks, not every second
    assert s.dht is not None and s.dht.next_deadline(s.torrents, s.fetches, 6881, now=now) == pytest.approx(at)
