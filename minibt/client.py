"""The library entry point: a ``Client`` owns a Session, a Hasher and an EventLoop.

    from minibt.client import Client
    with Client(port=0) as c:
        t = c.add("file.torrent", "/data", mode="download", peers=[("127.0.0.1", 6881)])
        c.run(until=lambda: t.complete)
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Iterable
from types import TracebackType

from minibt.clock import Clock, MonotonicClock
from minibt.hasher import Hasher
from minibt.loop import EventLoop
from minibt.metainfo import Metainfo, load_metainfo
from minibt.peer import Addr, PeerSource
from minibt.session import Session, SessionConfig
from minibt.torrent import Torrent


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "minibt")


class Client:
    """A running BitTorrent client (one listen port, any number of torrents)."""

    def __init__(
        self,
        *,
        bind: str = "0.0.0.0",
        port: int = 0,
        state_dir: str | None = None,
        config: SessionConfig | None = None,
        rng: random.Random | None = None,
        clock: Clock | None = None,
        hash_threads: int = 2,
    ) -> None:
        self.clock: Clock = clock or MonotonicClock()
        self.rng = rng or random.Random(int.from_bytes(os.urandom(8), "big"))
        self.state_dir = state_dir
        self.session = Session(rng=self.rng, config=config, wall_clock=self.clock.wall)
        wake: list[Callable[[], None]] = []
        self.hasher = Hasher(
            threads=hash_threads, notify=lambda: wake[0]() if wake else None, max_pending=256
        )
        self.loop = EventLoop(self.session, clock=self.clock, hasher=self.hasher, bind=bind, port=port)
        wake.append(self.loop.wake)
        self.port = self.loop.open()
        self._closed = False

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def resume_path(self, meta: Metainfo, download_dir: str) -> str | None:
        if self.state_dir is None:
            return None
        os.makedirs(self.state_dir, exist_ok=True)
        # One record per (torrent, download dir): the same torrent may live in two places.
        tag = hashlib.sha1(os.path.abspath(download_dir).encode()).hexdigest()[:8]
        return os.path.join(self.state_dir, f"{meta.info_hash.hex()}-{tag}.resume")

    def add(
        self,
        torrent: str | Metainfo,
        download_dir: str,
        *,
        mode: str = "download",
        peers: Iterable[Addr] = (),
    ) -> Torrent:
        meta = load_metainfo(torrent) if isinstance(torrent, str) else torrent
        download_dir = os.path.abspath(download_dir)
        now = self.clock.now()
        t = self.session.add_torrent(
            meta, download_dir, mode=mode, resume_path=self.resume_path(meta, download_dir), now=now
        )
        plist = list(peers)
        if plist:
            t.add_candidates(plist, PeerSource.USER, now=now)
        return t

    def run(self, *, until: Callable[[], bool] | None = None, on_tick: Callable[[float], None] | None = None) -> None:
        self.loop.run(until=until, on_tick=on_tick)

    def stop(self) -> None:
        """Signal-safe: make run() return."""
        self.loop.request_stop()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.loop.shutdown()
        finally:
            self.loop.close()
            self.hasher.close()
