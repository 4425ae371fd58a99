"""dht.dat is rewritten only when its bytes change (the runner saves it every 10 minutes; an SD card wears)."""

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
