"""runner.py watch dir: only names still in the directory are remembered between polls."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

from helpers import FakeClock
from test_runner_logic import make_cfg, make_runner

from minibt.configfile import Config
from minibt.runner import Runner
from minibt.settings import TorrentState

INTERVAL_S = 30.0


def watching(tmp_path: Path, clock: FakeClock, n: int, **cfg: Any) -> tuple[Config, Path, Runner, Any]:
    """A started runner with a watch dir and no torrents of its own; ``n`` torrents made for dropping there."""
    src = make_cfg(tmp_path, n)
    watch = tmp_path / "watch"
    watch.mkdir()
    config = dataclasses.replace(src, torrents=(), watch_dir=str(watch), watch_interval_s=INTERVAL_S, **cfg)
    r, client, _ = make_runner(tmp_path, config, clock)
    r.start()
    return src, watch, r, client


def test_a_file_dropped_again_under_a_taken_name_is_taken_again(tmp_path: Path, clock: FakeClock) -> None:
    src, watch, r, client = watching(tmp_path, clock, 2)

    def poll(times: int) -> None:
        for _ in range(times):
            clock.advance(INTERVAL_S)
            r.tick(clock.now())

    shutil.copy(src.torrents[0].source, watch / "a.torrent")
    poll(2)  # seen by one poll, taken by the next (size and mtime unchanged)
    assert [t.meta.name for t in client.added] == [src.torrents[0].meta.name]
    os.rename(watch / "a.torrent.added", watch / "first.added")  # the user tidies up
    poll(3)
    shutil.copy(src.torrents[1].source, watch / "a.torrent")  # another torrent, the same file name
    poll(2)
    assert [t.meta.name for t in client.added] == [t.meta.name for t in src.torrents]
    assert (watch / "a.torrent.added").exists() and not (watch / "a.torrent").exists()


def test_watch_names_that_are_gone_are_forgotten(tmp_path: Path, clock: FakeClock) -> None:
    src, watch, r, client = watching(tmp_path, clock, 1)
    for i in range(20):  # files taken, and files gone before their second poll (a copy given up)
        shutil.copy(src.torrents[0].source, watch / f"t{i}.torrent")
        (watch / f"partial{i}.torrent").write_bytes(b"d8:announce")
        clock.advance(INTERVAL_S)
        r.tick(clock.now())
        (watch / f"partial{i}.torrent").unlink()
        clock.advance(INTERVAL_S)
        r.tick(clock.now())
    clock.advance(INTERVAL_S)
    r.tick(clock.now())
    assert len(client.added) == 1  # the same torrent: the other 19 copies say "already running"
    assert len(list(watch.glob("t*.torrent.added"))) == 20
    # no public counter holds these: the two private sets are what the fix bounds
    assert r._watch_seen == set() and r._watch_sizes == {}


def test_watch_dir_torrents_stop_at_the_configured_ratio_and_time(tmp_path: Path, clock: FakeClock) -> None:
    """``watch_seed_ratio`` / ``watch_seed_time`` are the stop conditions of what the watch dir brings, also after
    a restart (the copies in state_dir/watched); without them such a torrent seeds on."""
    src, watch, r, client = watching(tmp_path, clock, 2, watch_seed_ratio=1.0, watch_seed_time_s=3600.0)
    cfg = r.cfg
    shutil.copy(src.torrents[0].source, watch / "a.torrent")
    for _ in range(2):
        clock.advance(INTERVAL_S)
        r.tick(clock.now())
    (t,) = client.added
    (job,) = r.jobs.values()
    assert (job.entry.seed_ratio, job.entry.seed_time_s) == (1.0, 3600.0)
    t.state = TorrentState.SEEDING
    t.stats.uploaded = t.meta.total_length
    clock.advance(1.0)
    r.tick(clock.now())
    assert client.session.removed == [t.meta.info_hash]  # its ratio reached: it stops
    r.save_state(force=True)
    r2, client2, _ = make_runner(tmp_path, cfg, clock)
    r2.start()
    assert client2.added == []  # the watched copy comes back finished, under the same stop condition
    unlimited = dataclasses.replace(cfg, watch_seed_ratio=None, watch_seed_time_s=None)
    r3, client3, _ = make_runner(tmp_path, unlimited, clock)
    r3.start()
    (job3,) = r3.jobs.values()
    assert (job3.entry.seed_ratio, job3.entry.seed_time_s) == (None, None) and len(client3.added) == 1
