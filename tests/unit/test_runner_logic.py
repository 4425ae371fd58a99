"""runner.py decisions, budget.py and statusfile.py, without sockets: FakeClock and a stand-in client."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeClock

from minibt.budget import (
    BASE_RSS_BYTES,
    MIN_CACHE_PER_TORRENT,
    fit_budget,
    over_budget_message,
    worst_case_bytes,
)
from minibt.configfile import Config, Schedule, TorrentEntry, parse_config, parse_window
from minibt.faults import Faults
from minibt.metainfo import create_torrent, load_metainfo
from minibt.runner import Runner
from minibt.runplan import (
    EXIT_FAIL,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_TIME_UP,
    JobOutcome,
    hook_argv,
    in_windows,
    once_exit_code,
    plan_reload,
    seconds_until,
    stop_reason,
)
from minibt.settings import TorrentState
from minibt.statusfile import RunLock, format_status, read_json, write_json_atomic

MIB = 1 << 20


# ---------------------------------------------------------------------- pure functions


def test_windows_and_until() -> None:
    night = (parse_window("22:00-06:00"),)
    assert in_windows((), 12 * 3600)  # no windows: always
    assert in_windows(night, 23 * 3600) and in_windows(night, 5 * 3600 + 3599)
    assert not in_windows(night, 6 * 3600) and not in_windows(night, 12 * 3600)
    assert seconds_until(6 * 60, 5 * 3600 + 1800) == 1800
    assert seconds_until(6 * 60, 7 * 3600) == 23 * 3600
    assert seconds_until(6 * 60, 6 * 3600) == 86400  # the same minute: tomorrow, not now


def entry(**kw: Any) -> TorrentEntry:
    return TorrentEntry(source="/x.torrent", dir="/d", **kw)


def test_stop_conditions() -> None:
    assert stop_reason(entry(), uploaded=10**9, size=1, seeding_s=10**9) is None  # none set: seed forever
    e = entry(seed_ratio=2.0, seed_time_s=3600.0)
    assert stop_reason(e, uploaded=199, size=100, seeding_s=3599) is None
    assert stop_reason(e, uploaded=200, size=100, seeding_s=0) == "seed ratio 2.00 >= 2"
    assert stop_reason(e, uploaded=0, size=100, seeding_s=3600) == "seeded for 3600 s >= 3600 s"


def test_once_exit_codes() -> None:
    done, todo, bad = JobOutcome(True, None), JobOutcome(False, None), JobOutcome(False, "disk on fire")
    assert once_exit_code([], time_up=False) == EXIT_OK
    assert once_exit_code([done, done], time_up=False) == EXIT_OK
    assert once_exit_code([done, todo], time_up=False) is None
    assert once_exit_code([done, todo], time_up=True) == EXIT_TIME_UP
    assert once_exit_code([done, bad], time_up=False) == EXIT_FAIL
    assert once_exit_code([todo, bad], time_up=False) is None  # the others still get their time
    assert once_exit_code([todo, bad], time_up=True) == EXIT_FAIL
    assert (EXIT_OK, EXIT_FAIL, EXIT_TIME_UP, EXIT_LOCKED) == (0, 1, 3, 75)


def test_reload_plan_keeps_unchanged_torrents() -> None:
    def e(ih: str, **kw: Any) -> TorrentEntry:
        kw.setdefault("dir", "/d")
        return TorrentEntry(source="magnet:?xt=urn:btih:" + ih, magnet=_magnet(ih), **kw)

    old = {x.key[0]: x for x in (e("aa" * 20), e("bb" * 20), e("cc" * 20), e("dd" * 20))}
    new = [e("aa" * 20), e("bb" * 20, seed_ratio=3.0), e("cc" * 20, mode="seed"), e("ee" * 20)]
    plan = plan_reload(old, new)
    assert plan.remove == ("cc" * 20, "dd" * 20)
    assert [x.key[0] for x in plan.add] == ["cc" * 20, "ee" * 20]  # cc: mode changed, re-added
    assert [x.key[0] for x in plan.update] == ["bb" * 20]


def _magnet(ih: str) -> Any:
    from minibt.magnet import parse_magnet

    return parse_magnet("magnet:?xt=urn:btih:" + ih)


def test_hook_argv_is_a_list_never_a_shell_string() -> None:
    name = "evil; rm -rf ~ $(reboot)"
    assert hook_argv(("/usr/bin/notify", "--done"), name, "/d/" + name) == ["/usr/bin/notify", "--done", name, "/d/" + name]


# ---------------------------------------------------------------------- budget


@pytest.mark.parametrize("budget_mib", [32, 48, 96, 256])
@pytest.mark.parametrize("torrents", [1, 5, 40])
def test_budget_limits_fit_and_only_shrink(budget_mib: int, torrents: int) -> None:
    budget = budget_mib * MIB
    lim = fit_budget(budget, torrents=torrents, max_connections=100, max_peers=30)
    assert lim.max_connections <= 100 and lim.max_peers <= 30 and lim.cache_bytes <= 16 * MIB
    assert lim.max_connections >= 4 and lim.cache_bytes >= MIN_CACHE_PER_TORRENT
    fits = worst_case_bytes(lim, torrents=max(torrents, 4)) <= budget
    assert fits or lim.cache_bytes == MIN_CACHE_PER_TORRENT
    assert (over_budget_message(lim, budget, torrents=max(torrents, 4)) is None) == fits


def test_forty_mib_fits_one_download_and_twenty_seeding_torrents() -> None:
    """The issue-10 cases: a 40 MiB budget fits them; 32 MiB with 40 torrents is refused with the numbers."""
    one = fit_budget(40 * MIB, torrents=1, max_connections=100, max_peers=30)
    assert over_budget_message(one, 40 * MIB, torrents=1) is None
    twenty = fit_budget(40 * MIB, torrents=20, max_connections=100, max_peers=50)
    assert over_budget_message(twenty, 40 * MIB, torrents=20) is None
    tight = fit_budget(32 * MIB, torrents=40, max_connections=100, max_peers=30)
    msg = over_budget_message(tight, 32 * MIB, torrents=40)
    assert msg is not None and "32 MiB" in msg and "40 torrent(s)" in msg


@pytest.mark.parametrize("utp", [False, True])
def test_seeding_torrents_take_tables_but_no_piece_cache(utp: bool) -> None:
    # A seed only reads blocks from disk as they are asked for: twenty of them leave more room for
    # connections than twenty downloads, and their worst case still fits the budget.
    kw = dict(max_connections=200, max_peers=50, num_pieces=64, piece_length=256 * 1024, utp=utp)
    as_seeds = fit_budget(40 * MIB, torrents=0, seeds=20, **kw)  # type: ignore[arg-type]
    as_downloads = fit_budget(40 * MIB, torrents=20, **kw)  # type: ignore[arg-type]
    assert as_seeds.max_connections > as_downloads.max_connections
    assert worst_case_bytes(as_seeds, torrents=4, seeds=20) <= 40 * MIB
    assert over_budget_message(as_seeds, 40 * MIB, torrents=0, seeds=20) is None


def test_budget_shrinks_with_less_memory() -> None:
    big = fit_budget(256 * MIB, torrents=5, max_connections=200, max_peers=50)
    small = fit_budget(48 * MIB, torrents=5, max_connections=200, max_peers=50)
    assert small.cache_bytes < big.cache_bytes
    assert small.max_connections < big.max_connections
    assert small.outbox_bytes <= big.outbox_bytes
    assert fit_budget(BASE_RSS_BYTES, torrents=1, max_connections=100, max_peers=30).max_connections == 4


# ---------------------------------------------------------------------- state files and the lock


def test_atomic_json_and_damaged_files_read_as_none(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    write_json_atomic(str(p), {"a": 1})
    assert read_json(str(p)) == {"a": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["s.json"]  # no temp file left behind
    p.write_bytes(b'{"a": ')  # truncated by a power cut
    assert read_json(str(p)) is None
    p.write_bytes(b"\0" * 100)  # transmission#650
    assert read_json(str(p)) is None
    assert read_json(str(tmp_path / "absent.json")) is None


def test_lock_is_exclusive_and_released_on_close(tmp_path: Path) -> None:
    a, b = RunLock(str(tmp_path / "state")), RunLock(str(tmp_path / "state"))
    assert a.acquire()
    assert not b.acquire()
    assert open(a.path).read().strip() == str(os.getpid())
    a.release()
    assert b.acquire()
    b.release()


def test_format_status_lines() -> None:
    st = {"mode": "daemon", "pid": 1, "running": True, "listen_port": 6881, "updated_at": 100.0,
          "process": {"rss_bytes": 30 * MIB, "peak_rss_bytes": 31 * MIB, "cpu_percent": 2.5, "cpu_seconds": 1.2},
          "limits": {"memory_budget_bytes": 96 * MIB, "upload_limit_bps": None, "download_limit_bps": 1024.0},
          "torrents": [{"name": "a", "state": "downloading", "progress": 0.5, "rate_down": 2048, "rate_up": 0,
                        "peers": 3, "ratio": 0.25, "disk_error": "disk full: write failed"}]}
    lines = format_status(st, now_wall=103.0, pid_alive=True)
    assert lines[0] == "minibt daemon pid 1: running, port 6881; updated 3 s ago"
    assert "memory 30.0 MiB (peak 31.0 MiB, budget 96.0 MiB), cpu 2.5%" in lines[1]
    assert lines[2] == "limits up unlimited, down 1.0 KiB/s"
    assert lines[3].startswith("a: downloading  50.0%  down 2.0 KiB/s") and "PAUSED: disk full" in lines[3]
    assert "not running" in format_status(st, now_wall=103.0, pid_alive=False)[0]


def test_format_status_shows_fields_of_the_wrong_type_as_missing() -> None:
    """A damaged or foreign status file: ``minibt status`` prints what it can and never fails on the content."""
    good = {"mode": "daemon", "pid": 1, "running": True, "listen_port": 6881, "updated_at": 100.0,
            "process": {"rss_bytes": 30 * MIB, "cpu_percent": 2.5},
            "torrents": [{"name": "a", "state": "seeding", "progress": 1.0, "ratio": 1.5}]}
    assert format_status(good, now_wall=103.0, pid_alive=True)[3].startswith("a: seeding     100.0%")
    bad = {"updated_at": "yesterday", "process": [1], "limits": {"upload_limit_bps": "fast"},
           "torrents": ["a", 5, {"name": "b", "progress": "half", "ratio": [2], "rate_down": "x"}]}
    lines = format_status(bad, now_wall=103.0, pid_alive=False)
    assert lines[0] == "minibt ? pid None: not running (last status shown); updated 103 s ago"
    assert lines[1] == "memory - (peak -, budget -), cpu 0.0% (0 s)" and lines[2] == "limits up unlimited, down unlimited"
    assert lines[3] == "b: None           -    down -/s  up 0 B/s  peers 0  ratio 0.00"
    for doc in ({"torrents": 5}, {"torrents": "abc"}, {"updated_at": None}, {"updated_at": 10**400},
                {"updated_at": float("nan")}, {"process": {"rss_bytes": 1e309, "cpu_percent": True}}):
        assert format_status(doc, now_wall=0.0, pid_alive=False)[-1] == "no torrents"
    lone = json.loads('{"torrents": [{"name": "\\ud800x"}]}')  # a lone surrogate: no terminal can print it
    line = format_status(lone, now_wall=0.0, pid_alive=False)[3]
    assert line.startswith("\\ud800x: ") and line.encode("utf-8")


def test_pid_alive_takes_any_value() -> None:
    from minibt.statusfile import pid_alive

    assert pid_alive(os.getpid())
    for pid in (0, -1, True, "1", 1.0, None, 2**31, 2**70):
        assert not pid_alive(pid), pid


def test_damaged_runner_state_records_are_reset_not_fatal() -> None:
    from minibt.runplan import persisted_jobs

    ok = {"seed_s": 12.5, "hook_done": True, "finished": "seed ratio 1.00 >= 1", "finished_for": [1.0, None]}
    assert persisted_jobs({"k": ok}) == ({"k": ok}, 0)
    assert persisted_jobs({"k": {**ok, "finished": None, "finished_for": None, "seed_s": 3}}) == (
        {"k": {**ok, "finished": None, "finished_for": None, "seed_s": 3.0}}, 0)
    assert persisted_jobs(None) == ({}, 0)  # no file, or not JSON (a write cut short)
    assert persisted_jobs([1, 2]) == ({}, 1)
    reset = {"seed_s": 0.0, "hook_done": False, "finished": None, "finished_for": None}
    for bad in ({"seed_s": "x"}, {"seed_s": -1}, {"seed_s": float("nan")}, {"seed_s": float("inf")}, {"seed_s": True},
                {"seed_s": 10**400}, {"hook_done": "yes"}, {"finished": 3}, {"finished_for": "1"}):
        assert persisted_jobs({"k": bad}) == ({"k": reset}, 1), bad
    assert persisted_jobs({"k": "x", "j": ok}) == ({"j": ok}, 1)


# ---------------------------------------------------------------------- the Runner against a stand-in client


class FakeStats:
    uploaded = 0


class FakeTorrent:
    def __init__(self, meta: Any, mode: str) -> None:
        self.meta = meta
        self.mode = mode
        self.state = TorrentState.DOWNLOADING if mode == "download" else TorrentState.SEEDING
        self.stats = FakeStats()
        self.error: str | None = None
        self.paused: str | None = None

    @property
    def complete(self) -> bool:
        return self.state is TorrentState.SEEDING

    def pause_download(self, reason: str, *, now: float) -> None:
        self.paused = reason

    def resume_download(self, *, now: float) -> None:
        self.paused = None

    def status(self, now: float) -> dict[str, object]:
        return {"name": self.meta.name, "state": self.state.value, "uploaded": self.stats.uploaded}


class FakeReputation:
    def __init__(self) -> None:
        self.bans: dict[str, str] = {}

    def banned(self) -> dict[str, str]:
        return dict(self.bans)


class FakeSession:
    def __init__(self) -> None:
        self.reputation = FakeReputation()
        self.removed: list[bytes] = []
        self.faults = Faults()
        self.dht = None  # the runner tests run without the DHT

    def ban(self, ip: str, why: str) -> None:
        self.reputation.bans[ip] = why

    def remove_torrent(self, ih: bytes, *, now: float) -> bool:
        self.removed.append(ih)
        return True


class FakeClient:
    port = 6881
    paused_reason: str | None = None

    def save_dht(self) -> None:
        pass

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.session = FakeSession()
        self.added: list[FakeTorrent] = []
        self.limits: tuple[Any, Any] = (None, None)

    def add(self, meta: Any, d: str, *, mode: str, peers: Any, config: Any) -> FakeTorrent:
        t = FakeTorrent(meta, mode)
        self.added.append(t)
        return t

    def set_rate_limits(self, *, up: Any, down: Any) -> None:
        self.limits = (up, down)

    def rate_limits(self) -> tuple[Any, Any]:
        return self.limits


def make_cfg(tmp_path: Path, n: int, **kw: Any) -> Config:
    entries = []
    for i in range(n):
        data = tmp_path / f"p{i}.bin"
        data.write_bytes(bytes([i]) * 40000)
        tp = tmp_path / f"p{i}.torrent"
        tp.write_bytes(create_torrent(str(data), trackers=[], piece_length=16384))
        entries.append(TorrentEntry(source=str(tp), dir=str(tmp_path / "dl"), mode="download",
                                    meta=load_metainfo(str(tp)), **kw))
    base = parse_config("", "c", base_dir=str(tmp_path))
    return dataclasses.replace(base, state_dir=str(tmp_path / "state"), torrents=tuple(entries))


def make_runner(tmp_path: Path, cfg: Config, clock: FakeClock, *, once: bool = False,
                sod: list[float] | None = None) -> tuple[Runner, FakeClient, list[list[str]]]:
    spawned: list[list[str]] = []
    client = FakeClient(clock)
    local = sod if sod is not None else [12 * 3600.0]
    lim = fit_budget(cfg.memory_budget_bytes, torrents=len(cfg.torrents), max_connections=100, max_peers=30)
    r = Runner(cfg, client, once=once, deadline=clock.now() + 60 if once else None, limits=lim,  # type: ignore[arg-type]
               local_seconds=lambda wall: local[0], spawn=lambda argv: spawned.append(argv) or _Done())
    os.makedirs(cfg.state_dir, exist_ok=True)
    return r, client, spawned


class _Done:
    args = ["hook"]

    def poll(self) -> int:
        return 0


def test_completion_runs_hook_once_and_stop_condition_stops_seeding(tmp_path: Path, clock: FakeClock) -> None:
    cfg = make_cfg(tmp_path, 1, seed_ratio=1.0, on_complete=("/bin/notify",))
    r, client, spawned = make_runner(tmp_path, cfg, clock)
    r.start()
    (t,) = client.added
    clock.advance(1.0)
    r.tick(clock.now())
    assert spawned == []
    t.state = TorrentState.SEEDING
    clock.advance(1.0)
    r.tick(clock.now())
    assert spawned == [["/bin/notify", t.meta.name, os.path.join(cfg.torrents[0].dir, t.meta.name)]]
    clock.advance(1.0)
    r.tick(clock.now())
    assert len(spawned) == 1  # once per download
    t.stats.uploaded = t.meta.total_length
    clock.advance(1.0)
    r.tick(clock.now())
    assert client.session.removed == [t.meta.info_hash]
    st = read_json(os.path.join(cfg.state_dir, "runner-state.json"))
    (rec,) = st.values()
    assert rec["hook_done"] is True and rec["finished"].startswith("seed ratio 1.00")
    # A restart remembers both: no second hook, not seeded again.
    r2, client2, spawned2 = make_runner(tmp_path, cfg, clock)
    r2.start()
    clock.advance(2.0)
    r2.tick(clock.now())
    assert client2.added == [] and spawned2 == []
    assert r2.status()["torrents"][0]["state"] == "finished"
    # A changed stop condition starts it again (and still no second hook).
    cfg3 = dataclasses.replace(cfg, torrents=(dataclasses.replace(cfg.torrents[0], seed_ratio=3.0),))
    r3, client3, spawned3 = make_runner(tmp_path, cfg3, clock)
    r3.start()
    assert len(client3.added) == 1
    client3.added[0].state = TorrentState.SEEDING
    clock.advance(1.0)
    r3.tick(clock.now())
    assert spawned3 == [] and client3.session.removed == []


def test_download_window_pauses_and_alt_rates_switch(tmp_path: Path, clock: FakeClock) -> None:
    cfg = dataclasses.replace(
        make_cfg(tmp_path, 1), upload_limit_bps=1e6, download_limit_bps=2e6,
        schedule=Schedule(download_windows=(parse_window("01:00-07:00"),), alt_windows=(parse_window("08:00-23:00"),),
                          alt_upload_limit_bps=1e5, alt_download_limit_bps=2e5),
    )
    sod = [3 * 3600.0]
    r, client, _ = make_runner(tmp_path, cfg, clock, sod=sod)
    r.start()
    (t,) = client.added
    assert t.paused is None and client.limits == (1e6, 2e6)
    sod[0] = 9 * 3600.0
    clock.advance(1.0)
    r.tick(clock.now())
    assert t.paused is not None and "01:00-07:00" in t.paused
    assert client.limits == (1e5, 2e5)
    sod[0] = 23 * 3600.0 + 60
    clock.advance(1.0)
    r.tick(clock.now())
    assert client.limits == (1e6, 2e6) and t.paused is not None
    sod[0] = 1 * 3600.0
    clock.advance(1.0)
    r.tick(clock.now())
    assert t.paused is None


def test_once_done_only_when_every_download_is_complete_or_time_is_up(tmp_path: Path, clock: FakeClock) -> None:
    cfg = make_cfg(tmp_path, 2)
    r, client, _ = make_runner(tmp_path, cfg, clock, once=True)
    r.start()
    a, b = client.added
    assert not r.done()
    a.state = TorrentState.SEEDING
    assert not r.done()
    b.state = TorrentState.SEEDING
    assert r.done() and r.once_result(clock.now()) == EXIT_OK
    b.state = TorrentState.DOWNLOADING
    clock.advance(61)
    assert r.done() and r.once_result(clock.now()) == EXIT_TIME_UP
    b.state, b.error = TorrentState.ERROR, "write failed: EIO"
    assert r.once_result(clock.now()) == EXIT_FAIL


def test_status_and_bans_are_written_and_bans_reloaded(tmp_path: Path, clock: FakeClock) -> None:
    cfg = make_cfg(tmp_path, 1)
    r, client, _ = make_runner(tmp_path, cfg, clock)
    r.start()
    client.session.ban("10.0.0.9", "sent bad data")
    clock.advance(cfg.status_interval_s)
    r.tick(clock.now())
    st = read_json(os.path.join(cfg.state_dir, "status.json"))
    assert st["pid"] == os.getpid() and st["torrents"][0]["mode"] == "download"
    assert st["process"]["rss_bytes"] > 0 and st["limits"]["memory_budget_bytes"] == cfg.memory_budget_bytes
    assert json.load(open(os.path.join(cfg.state_dir, "bans.json"))) == {"10.0.0.9": "sent bad data"}
    r2, client2, _ = make_runner(tmp_path, cfg, clock)
    r2.start()
    assert client2.session.reputation.banned() == {"10.0.0.9": "sent bad data (remembered)"}


def test_a_damaged_runner_state_file_does_not_stop_the_runner(tmp_path: Path, clock: FakeClock) -> None:
    cfg = make_cfg(tmp_path, 2, seed_ratio=1.0, on_complete=("/bin/notify",))
    r, client, _ = make_runner(tmp_path, cfg, clock)
    r.start()
    r.save_state(force=True)
    path = os.path.join(cfg.state_dir, "runner-state.json")
    keys = sorted(read_json(path))
    doc = {keys[0]: {"seed_s": "x", "hook_done": [1], "finished": 7, "finished_for": None},
           keys[1]: {"seed_s": 30.0, "hook_done": True, "finished": "seed ratio 1.00 >= 1", "finished_for": [1.0, None]},
           "other": ["not a record"]}
    write_json_atomic(path, doc)
    r2, client2, spawned = make_runner(tmp_path, cfg, clock)
    r2.start()  # neither record stops it
    assert len(client2.added) == 1  # the damaged record's torrent starts afresh; the stopped one stays stopped
    r2.save_state(force=True)
    saved = read_json(path)
    assert saved[keys[1]]["seed_s"] == 30.0 and saved[keys[1]]["finished"].startswith("seed ratio")
    assert saved[keys[0]]["seed_s"] == 0.0 and saved[keys[0]]["hook_done"] is False and "other" not in saved


def test_a_long_bans_file_loads_at_most_the_ban_table(tmp_path: Path, clock: FakeClock) -> None:
    cfg = make_cfg(tmp_path, 1)
    os.makedirs(cfg.state_dir, exist_ok=True)
    written = {f"10.0.{i >> 8}.{i & 255}": "sent bad data" for i in range(1500)}
    write_json_atomic(os.path.join(cfg.state_dir, "bans.json"), written)
    r, client, _ = make_runner(tmp_path, cfg, clock)
    r.start()
    banned = client.session.reputation.banned()
    assert len(banned) == 1024 and set(banned) <= set(written)  # reputation.MAX_BANS: not 1,500 bans and log lines
    assert set(banned.values()) == {"sent bad data (remembered)"}


def test_status_command_reads_the_runner_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from minibt.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text('[client]\nstate_dir = "state"\n')
    assert main(["status", "-c", str(cfg)]) == 1
    assert "no status in" in capsys.readouterr().err
    (tmp_path / "state").mkdir()
    doc = {"mode": "once", "pid": os.getpid(), "running": True, "listen_port": 1, "updated_at": 0.0,
           "torrents": [{"name": "t", "state": "seeding", "progress": 1.0, "ratio": 2.0, "finished": "seed ratio 2.00 >= 2"}]}
    write_json_atomic(str(tmp_path / "state" / "status.json"), doc)
    assert main(["status", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"minibt once pid {os.getpid()}: running, port 1" in out and "t: finished" in out and "(seed ratio 2.00 >= 2)" in out
    assert main(["status", "-c", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == doc


def test_run_arguments_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from minibt.cli import main

    for argv in (["run", "-c", "x", "--max-time", "2s"], ["run", "-c", "x", "--once", "--until", "25:00"],
                 ["run", "-c", "x", "--once", "--max-time", "0"], ["run", "-c", "x", "--once", "--max-time", "1s", "--until", "01:00"]):
        with pytest.raises(SystemExit) as ei:
            main(argv)
        assert ei.value.code == 2
    assert main(["run", "-c", str(tmp_path / "absent.toml"), "--once"]) == 2
    assert "absent.toml: no such file" in capsys.readouterr().err


def test_a_fault_on_one_watch_dir_file_is_contained_and_the_next_file_is_added(
    tmp_path: Path, clock: FakeClock
) -> None:
    # STYLE.md section 13: one watch-dir file never stops the daemon.  The fault is planted in the
    # client's add() for one torrent (a stand-in for any bug a crafted file may reach).
    watch = tmp_path / "watch"
    watch.mkdir()
    src = make_cfg(tmp_path, 2)
    for e in src.torrents:
        shutil.copy(e.source, watch / os.path.basename(e.source))
    cfg = dataclasses.replace(src, torrents=(), watch_dir=str(watch))
    r, client, _ = make_runner(tmp_path, cfg, clock, once=True)
    bad_name = src.torrents[0].meta.name
    real_add = client.add

    def add(meta: Any, d: str, **kw: Any) -> Any:
        if meta.name == bad_name:
            raise RuntimeError("planted")
        return real_add(meta, d, **kw)

    client.add = add  # type: ignore[method-assign]
    r.start()
    assert [t.meta.name for t in client.added] == [src.torrents[1].meta.name]
    assert client.session.faults.stats()["watch_file"] == 1
    assert r.status()["faults"]["watch_file"] == 1


def test_a_watch_dir_torrent_over_16_mib_is_kept_whole(tmp_path: Path, clock: FakeClock) -> None:
    # The copy the runner keeps once came from a 16 MiB read: a bigger (valid) .torrent was cut, and the
    # next start could not load it.  A 17 MiB comment makes one.
    from minibt.bencode import decode, encode

    watch = tmp_path / "watch"
    watch.mkdir()
    src = make_cfg(tmp_path, 1)
    top = decode(Path(src.torrents[0].source).read_bytes())
    top[b"comment"] = b"x" * (17 << 20)
    big = encode(top)
    (watch / "big.torrent").write_bytes(big)
    cfg = dataclasses.replace(src, torrents=(), watch_dir=str(watch))
    r, client, _ = make_runner(tmp_path, cfg, clock, once=True)
    r.start()
    (t,) = client.added
    kept = Path(r._watched_dir()) / (t.meta.info_hash.hex() + ".torrent")
    assert kept.read_bytes() == big
    assert load_metainfo(str(kept)).info_hash == t.meta.info_hash
    assert (watch / "big.torrent.added").exists()
