"""In-process minibt clients for integration tests: a seeding Client on a thread of its own."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import minibt


@contextmanager
def seeding_in_thread(client: minibt.Client, torrent: Path, data_dir: Path, deadline_s: float) -> Iterator[
    minibt.Client
]:
    """Add ``torrent`` to ``client`` as a seed, check its data, then run the client's loop on a thread.

    One Client per thread: the test talks to it only before this starts and after it ends.  The client
    is stopped, its thread joined and the client closed on exit (also when the check fails).
    """
    try:
        t = client.add(str(torrent), str(data_dir), mode="seed")
        deadline = client.clock.now() + deadline_s
        client.run(until=lambda: t.state is not minibt.TorrentState.CHECKING or client.clock.now() > deadline)
        assert t.state is minibt.TorrentState.SEEDING, t.status(client.clock.now())
        th = threading.Thread(target=client.run, name="minibt-seeder", daemon=True)
        th.start()
        try:
            yield client
        finally:
            client.stop()
            th.join(timeout=10)
            assert not th.is_alive(), "the seeder's loop did not stop"
    finally:
        client.close()
