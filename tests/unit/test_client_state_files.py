"""State written for months on an SD card: dht.dat is rewritten only when its bytes change (the runner saves it
every 10 minutes), and a log file is rotated at ``[log] max_size``."""

from __future__ import annotations

import os
from pathlib import Path

from helpers import FakeClock

from minibt.client import Client
from minibt.settings import SessionConfig


def test_dht_dat_is_written_again_only_when_it_changed(tmp_path: Path, clock: FakeClock) -> None:
    c = Client(bind="127.0.0.1", port=0, state_dir=str(tmp_path), clock=clock,
               config=SessionConfig(dht=True, dht_bootstrap=()))
    try:
        path = tmp_path / "dht.dat"
        c.save_dht()
        first = os.stat(path).st_ino  # write_atomic renames a new file into place: a new inode each write
        c.save_dht()
        assert os.stat(path).st_ino == first
        dht = c.session.dht
        assert dht is not None
        dht.node.table.heard_from(bytes([9]) * 20, ("127.0.0.9", 6881), now=clock.now(), replied=True)
        c.save_dht()
        assert os.stat(path).st_ino != first and path.stat().st_size > 20 + 26
    finally:
        c.close()


def test_a_log_file_is_rotated_at_its_max_size_and_two_old_ones_are_kept(tmp_path: Path) -> None:
    import dataclasses
    import logging

    from minibt.configfile import parse_config
    from minibt.daemon import _setup_logging

    cfg = dataclasses.replace(parse_config("", "c", base_dir=str(tmp_path)), log_file=str(tmp_path / "log" / "m.log"),
                              log_max_bytes=64 << 10)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        _setup_logging(cfg, 0)
        for i in range(5000):  # about 500 KiB of lines
            logging.getLogger("minibt.test").warning("line %d %s", i, "x" * 60)
        names = sorted(p.name for p in (tmp_path / "log").iterdir())
        assert names == ["m.log", "m.log.1", "m.log.2"]
        assert all((tmp_path / "log" / n).stat().st_size <= 64 << 10 for n in names)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
            h.close()
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
