"""runner.py watch dir: only names still in the directory are remembered between polls."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from helpers import FakeClock
from test_runner_logic import make_cfg, make_runner

INTERVAL_S = 30.0


def test_a_file_dropped_again_under_a_taken_name_is_taken_again(tmp_path: Path, clock: FakeClock) -> None:
    src = make_cfg(tmp_path, 2)
    watch = tmp_path / "watch"
    watch.mkdir()
    cfg = dataclasses.replace(src, torrents=(), watch_dir=str(watch), watch_interval_s=INTERVAL_S)
    r, client, _ = make_runner(tmp_path, cfg, clock)
    r.start()

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
    src = make_cfg(tmp_path, 1)
    watch = tmp_path / "watch"
    watch.mkdir()
    cfg = dataclasses.replace(src, torrents=(), watch_dir=str(watch), watch_interval_s=INTERVAL_S)
    r, client, _ = make_runner(tmp_path, cfg, clock)
    r.start()
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
