"""The runner at rest (issue 15, idle): it asks the loop to wake only for its real deadlines, and it
rewrites the status file only when something in it changed (touching its mtime every STATUS_HEARTBEAT_S)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeClock
from test_runner_logic import FakeTorrent, make_cfg, make_runner

from minibt.runner import STATUS_HEARTBEAT_S, Runner
from minibt.settings import TorrentState
from minibt.statusfile import STATUS_NAME, format_status, read_status


def seeding_cfg(tmp_path: Path, n: int, **kw: Any) -> Any:
    cfg = make_cfg(tmp_path, n, **kw)
    (tmp_path / "dl").mkdir(exist_ok=True)
    return dataclasses.replace(cfg, torrents=tuple(dataclasses.replace(e, mode="seed") for e in cfg.torrents))


@pytest.fixture
def fixed_process(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Process figures set by the test: its own RSS and CPU use must not decide when the file changes."""
    proc: dict[str, Any] = {"rss_bytes": 30 << 20, "peak_rss_bytes": 31 << 20, "cpu_percent": 0.1, "cpu_seconds": 1.0,
                            "threads": 3}
    monkeypatch.setattr(Runner, "_process_info", lambda self: dict(proc))
    return proc


def mark(path: str) -> None:
    """Plant a marker in the status file: a rewrite by the runner drops it, a touch keeps it."""
    with open(path) as f:
        doc = json.load(f)
    with open(path, "w") as f:
        json.dump({**doc, "marker": True}, f)
    os.utime(path, (1.0, 1.0))


def rewritten(path: str) -> bool:
    with open(path) as f:
        return "marker" not in json.load(f)


def test_status_file_is_rewritten_only_when_it_changed_and_touched_for_the_heartbeat(
    tmp_path: Path, clock: FakeClock, fixed_process: dict[str, Any]
) -> None:
    cfg = seeding_cfg(tmp_path, 2)
    r, client, _ = make_runner(tmp_path, cfg, clock)
    r.start()
    started = clock.now()
    path = os.path.join(cfg.state_dir, STATUS_NAME)
    mark(path)
    steps = int(STATUS_HEARTBEAT_S // cfg.status_interval_s) - 1
    for i in range(steps):  # seeding time and CPU seconds tick, CPU use flickers; nothing else changes
        fixed_process.update(cpu_seconds=1.0 + i, cpu_percent=(0.1, 1.2)[i % 2], rss_bytes=(30 << 20) + i * 4096)
        clock.advance(cfg.status_interval_s)
        r.tick(clock.now())
    assert not rewritten(path) and os.stat(path).st_mtime == 1.0
    fixed_process.update(cpu_percent=0.0)
    clock.advance(cfg.status_interval_s)
    r.tick(clock.now())
    assert not rewritten(path)
    fixed_process.update(cpu_percent=45.0)  # busy: a figure worth showing
    clock.advance(cfg.status_interval_s)
    r.tick(clock.now())
    assert rewritten(path)
    mark(path)
    t: FakeTorrent = client.added[0]
    t.stats = type("S", (), {"uploaded": 16384})()  # a peer took a piece
    clock.advance(cfg.status_interval_s)
    r.tick(clock.now())
    assert rewritten(path)
    doc = read_status(path)
    assert doc is not None and doc["torrents"][0]["uploaded"] == 16384
    assert doc["updated_at"] == pytest.approx(clock.wall())
    assert doc["torrents"][0]["seed_seconds"] == pytest.approx(clock.now() - started)  # fresh in each write
    mark(path)
    written_at = clock.now()
    while clock.now() - written_at < STATUS_HEARTBEAT_S - cfg.status_interval_s:
        clock.advance(cfg.status_interval_s)
        r.tick(clock.now())
    assert not rewritten(path) and os.stat(path).st_mtime == 1.0
    clock.advance(cfg.status_interval_s)
    r.tick(clock.now())  # the heartbeat: the same content, so the file is only touched
    assert not rewritten(path) and os.stat(path).st_mtime > 1.0
    # `minibt status` takes the age from the later of updated_at and the mtime: a live daemon stays fresh
    head = format_status(doc, now_wall=doc["updated_at"] + 3600, pid_alive=True, touched_at=doc["updated_at"] + 3599)[0]
    assert "running, port 6881" in head and "updated 1 s ago" in head
    head = format_status(doc, now_wall=doc["updated_at"] + 3600, pid_alive=False)[0]
    assert "not running" in head and "updated 3600 s ago" in head


def test_a_steady_seed_wakes_the_loop_for_the_status_only(tmp_path: Path, clock: FakeClock) -> None:
    cfg = seeding_cfg(tmp_path, 3)
    r, client, _ = make_runner(tmp_path, cfg, clock)
    r.start()
    now = clock.now()
    assert r.next_deadline(now) == pytest.approx(now + cfg.status_interval_s)  # not every second
    r.reload_requested = True  # SIGHUP (daemon.py also wakes the loop)
    assert r.next_deadline(now) <= now + 1.0
    r.reload_requested = False
    client.added[1].state = TorrentState.CHECKING  # e.g. a recheck: the on-complete hook waits on it
    assert r.next_deadline(now) <= now + 1.0


def test_a_download_keeps_the_once_a_second_checks(tmp_path: Path, clock: FakeClock) -> None:
    cfg = make_cfg(tmp_path, 1)  # download mode
    r, _, _ = make_runner(tmp_path, cfg, clock)
    r.start()
    r.tick(clock.now())
    assert r.next_deadline(clock.now()) == pytest.approx(clock.now() + 1.0)


def test_seed_time_stop_is_a_deadline_and_is_met_exactly(tmp_path: Path, clock: FakeClock) -> None:
    cfg = seeding_cfg(tmp_path, 1, seed_time_s=100.0)
    r, client, _ = make_runner(tmp_path, cfg, clock)
    r.start()
    start = clock.now()
    r.tick(start)
    job = next(iter(r.jobs.values()))
    wakes = 0
    while job.finished is None:  # the loop sleeps from one deadline to the next
        clock.jump_to(r.next_deadline(clock.now()))
        r.tick(clock.now())
        wakes += 1
    assert clock.now() == pytest.approx(start + 100.0) and "seeded for 100 s" in job.finished
    assert wakes == 100 // cfg.status_interval_s  # the status refreshes; no once-a-second checks


def test_a_seed_ratio_is_checked_when_uploads_moved(tmp_path: Path, clock: FakeClock) -> None:
    cfg = seeding_cfg(tmp_path, 1, seed_ratio=1.0)
    r, client, _ = make_runner(tmp_path, cfg, clock)
    r.start()
    clock.advance(1.0)
    r.tick(clock.now())
    assert r.next_deadline(clock.now()) == pytest.approx(r._next_status)
    client.added[0].stats = type("S", (), {"uploaded": 50_000})()  # more than the 40000-byte payload
    assert r.next_deadline(clock.now()) == pytest.approx(clock.now() + 1.0)
    clock.advance(1.0)
    r.tick(clock.now())
    assert next(iter(r.jobs.values())).finished is not None


def test_a_jobs_state_key_is_worked_out_once_for_an_absolute_directory(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner asks for every job's key at each status refresh: an absolute directory's is remembered (a SHA-1
    each time was a third of an idle seeder's Python), a relative one follows the working directory, and the
    memory is bounded."""
    from minibt import runplan, sha1
    from minibt.sha1 import sha1 as real

    real()  # the back end is chosen on first use: every SHA-1 after this one goes through sha1._factory
    calls: list[bytes] = []
    factory = sha1._factory

    def counting(data: bytes = b"") -> Any:
        calls.append(data)
        return factory(data)

    ih = "ab" * 20
    want = f"{ih}-{real(str(tmp_path).encode()).hexdigest()[:8]}"
    monkeypatch.setattr(sha1, "_factory", counting)
    monkeypatch.setattr(runplan, "_KEYS", {})
    assert [runplan.state_key(ih, str(tmp_path)) for _ in range(5)] == [want] * 5
    assert len(calls) == 1
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    rel_a = runplan.state_key(ih, "dl")
    monkeypatch.chdir(tmp_path / "b")
    rel_b = runplan.state_key(ih, "dl")
    assert rel_a == f"{ih}-{real(str(tmp_path / 'a' / 'dl').encode()).hexdigest()[:8]}" != rel_b
    monkeypatch.setattr(runplan, "_KEYS_MAX", 3)
    for i in range(10):
        runplan.state_key(f"{i:040x}", str(tmp_path))
        assert len(runplan._KEYS) <= 3


class TickingDht:
    """The DHT's status: its traffic counters move with every datagram, its table now and then."""

    def __init__(self) -> None:
        self.counts = {"nodes": 80, "good": 60, "store_info_hashes": 2, "queries_in": 0, "responses_in": 0}

    def stats(self, now: float) -> dict[str, int]:
        return dict(self.counts)

    def status(self, info_hash: bytes) -> None:
        return None


def test_dht_traffic_alone_does_not_rewrite_the_status_file(
    tmp_path: Path, clock: FakeClock, fixed_process: dict[str, Any]
) -> None:
    """On an SD card: a node pinging us every few seconds rewrote (and fsynced) status.json at every refresh."""
    cfg = seeding_cfg(tmp_path, 1)
    r, client, _ = make_runner(tmp_path, cfg, clock)
    dht = TickingDht()
    client.session.dht = dht
    r.start()
    path = os.path.join(cfg.state_dir, STATUS_NAME)
    mark(path)
    for _ in range(int(STATUS_HEARTBEAT_S // cfg.status_interval_s) - 1):
        dht.counts["queries_in"] += 3
        dht.counts["responses_in"] += 1
        clock.advance(cfg.status_interval_s)
        r.tick(clock.now())
    assert not rewritten(path)
    dht.counts["nodes"] += 1  # what `minibt status` shows changed
    clock.advance(cfg.status_interval_s)
    r.tick(clock.now())
    assert rewritten(path)
    doc = read_status(path)
    assert doc is not None and doc["dht"]["nodes"] == 81 and doc["dht"]["queries_in"] == dht.counts["queries_in"]


def test_seeding_time_rewrites_the_runner_state_once_per_interval_for_all_torrents(
    tmp_path: Path, clock: FakeClock, fixed_process: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 seeds whose saved seeding times differ: each crossed its own 10-minute mark at another moment, and the
    file was rewritten 96 times an hour; now at most once per SEED_TIME_SAVE_S (and seeding time is kept)."""
    from minibt.runner import SEED_TIME_SAVE_S
    from minibt.statusfile import read_json, write_json_atomic

    cfg = seeding_cfg(tmp_path, 20)
    r, client, _ = make_runner(tmp_path, cfg, clock)
    r.start()
    for i, job in enumerate(r.jobs.values()):
        job.seed_s = i * 31.0  # as if loaded from an earlier run
    for t in client.added:
        t.state = TorrentState.SEEDING
    writes: list[str] = []
    monkeypatch.setattr("minibt.runner.write_json_atomic",
                        lambda p, o: (writes.append(os.path.basename(p)), write_json_atomic(p, o)))
    hour, start = 3600.0, clock.now()
    while clock.now() - start < hour:
        clock.advance(cfg.status_interval_s)
        r.tick(clock.now())
    n = writes.count("runner-state.json")
    assert 1 <= n <= hour / SEED_TIME_SAVE_S + 1
    saved = read_json(os.path.join(cfg.state_dir, "runner-state.json"))
    assert min(v["seed_s"] for v in saved.values()) >= hour - SEED_TIME_SAVE_S - 2 * cfg.status_interval_s
