"""A torrent's directory or the watch dir missing at start (a share that mounts late): wait and retry."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from helpers import FakeClock
from test_runner_logic import make_cfg, make_runner

from minibt.configfile import TorrentEntry
from minibt.runplan import DirWait, dir_problem
from minibt.statusfile import format_status


def test_dir_problem_seed_needs_its_dir_download_needs_the_parent() -> None:
    present = {"/srv/torrents", "/srv"}
    seed = TorrentEntry(source="/x.torrent", dir="/srv/torrents/film", mode="seed")
    assert dir_problem(seed, isdir=present.__contains__) == ("/srv/torrents/film", "missing")
    assert dir_problem(seed, isdir=lambda p: True) is None
    down = TorrentEntry(source="/x.torrent", dir="/srv/torrents/film", mode="download")
    assert dir_problem(down, isdir=present.__contains__) is None  # the runner creates film/ in the share
    # The share is not mounted: creating /mnt/share/film would write to the SD card below the mount point.
    late = TorrentEntry(source="/x.torrent", dir="/mnt/share/film", mode="download")
    assert dir_problem(late, isdir=present.__contains__) == ("/mnt/share", "missing")


def test_dir_wait_retries_once_per_interval(clock: FakeClock) -> None:
    clock.advance(100.0)
    w = DirWait("/srv/x", "missing", since=clock.now(), retry_s=30.0)
    assert not w.due(clock.now())
    clock.advance(29.9)
    assert not w.due(clock.now())
    clock.advance(0.1)
    assert w.due(clock.now())
    w.still_waiting("/srv/x", "cannot be created (Read-only file system)", now=clock.now())
    assert not w.due(clock.now() + 29.0) and w.due(clock.now() + 30.0)
    assert w.describe(clock.now()) == (
        "waiting: directory /srv/x cannot be created (Read-only file system), retrying every 30 s (for 30 s)"
    )


def test_seed_entry_waits_for_its_dir_then_starts_when_it_appears(tmp_path: Path, clock: FakeClock) -> None:
    src = make_cfg(tmp_path, 1)
    share = tmp_path / "share"
    e = dataclasses.replace(src.torrents[0], mode="seed", dir=str(share))
    cfg = dataclasses.replace(src, torrents=(e,), disk_retry_s=10.0)
    r, client, _ = make_runner(tmp_path, cfg, clock)
    r.start()
    assert client.added == []
    st = r.status()["torrents"][0]
    assert st["state"] == "waiting" and st["error"] is None
    assert st["waiting"].startswith(f"waiting: directory {share} missing, retrying every 10 s")
    line = format_status(r.status(), now_wall=client.clock.wall(), pid_alive=True)[3]
    assert "waiting" in line and f"directory {share} missing" in line
    clock.advance(5.0)
    r.tick(clock.now())
    assert client.added == []
    share.mkdir()
    clock.advance(4.0)
    r.tick(clock.now())
    assert client.added == []  # checked again only once the retry interval has passed
    clock.advance(1.0)
    r.tick(clock.now())
    assert [t.mode for t in client.added] == ["seed"]
    assert r.status()["torrents"][0]["state"] == "seeding"


def test_download_under_a_missing_mount_point_waits_and_once_counts_it_pending(tmp_path: Path, clock: FakeClock) -> None:
    src = make_cfg(tmp_path, 1)
    mount = tmp_path / "mnt"
    e = dataclasses.replace(src.torrents[0], dir=str(mount / "dl"))
    cfg = dataclasses.replace(src, torrents=(e,), disk_retry_s=10.0)
    r, client, _ = make_runner(tmp_path, cfg, clock, once=True)
    r.start()
    assert client.added == [] and not mount.exists()
    assert r.outcomes()[0].error is None and not r.done()  # pending, not failed
    mount.mkdir()
    clock.advance(10.0)
    r.tick(clock.now())
    assert len(client.added) == 1 and (mount / "dl").is_dir()


def test_missing_watch_dir_is_shown_and_polled_until_it_appears(tmp_path: Path, clock: FakeClock) -> None:
    src = make_cfg(tmp_path, 1)
    watch = tmp_path / "watch"
    cfg = dataclasses.replace(src, torrents=(), watch_dir=str(watch), watch_interval_s=30.0)
    r, client, _ = make_runner(tmp_path, cfg, clock)
    r.start()
    wd = r.status()["watch_dir"]
    assert wd["path"] == str(watch) and wd["waiting"].startswith(f"waiting: directory {watch} missing")
    assert f"watch dir {watch}: waiting" in format_status(r.status(), now_wall=0.0, pid_alive=True)[-1]
    watch.mkdir()
    shutil.copy(src.torrents[0].source, watch / "a.torrent")
    for _ in range(2):  # seen by one poll, taken by the next (size and mtime unchanged)
        clock.advance(30.0)
        r.tick(clock.now())
    assert r.status()["watch_dir"]["waiting"] is None
    assert len(client.added) == 1 and os.path.exists(watch / "a.torrent.added")
