"""The library entry point: a ``Client`` owns a Session, a Hasher and an EventLoop.

    from minibt.client import Client
    with Client(port=0) as c:
        t = c.add("file.torrent", "/data", mode="download", peers=[("127.0.0.1", 6881)])
        c.run(until=lambda: t.complete)

    # a magnet link (BEP 9): the handle gets .torrent once the metadata arrived and verified
        m = c.add("magnet:?xt=urn:btih:...&x.pe=127.0.0.1:6881", "/data")
        c.run(until=lambda: m.complete)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType

from minibt.clock import MonotonicClock
from minibt.durable import write_atomic
from minibt.events import Event
from minibt.handles import Dispatcher, Peer
from minibt.loop import EventLoop
from minibt.magnet import MAGNET_PREFIX, Magnet, parse_magnet
from minibt.metainfo import Metainfo, load_metainfo
from minibt.peer import PeerSource
from minibt.procmem import release_free_memory
from minibt.ratelimit import KEEP, Keep
from minibt.session import Session
from minibt.settings import SessionConfig, TorrentConfig, parse_mode, to_transports
from minibt.sha1 import sha1
from minibt.torrent import Torrent
from minibt.urls import Addr
from minibt.workers import Hasher

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import overload

    from minibt.clock import Clock
    from minibt.magnetfetch import MagnetFetch  # loaded by add_magnet (session.py)
    from minibt.utp_config import UtpConfig  # loaded by utp_peers only when uTP runs

log = logging.getLogger(__name__)


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
        transports: Sequence[str] | None = None,
        utp_config: UtpConfig | None = None,
        interface: str | None = None,
    ) -> None:
        """``transports`` overrides ``config.transports``: outgoing preference order, e.g. ("utp", "tcp").

        ``bind`` is the source address of every socket (listener, peers, uTP/UDP, trackers);
        ``interface`` binds them all to that device (SO_BINDTODEVICE), and networking pauses while it
        is down or gone (see :attr:`paused_reason`).
        """
        self.clock: Clock = clock or MonotonicClock()
        self.rng = rng or random.Random(int.from_bytes(os.urandom(8), "big"))
        self.state_dir = state_dir
        if transports is not None:
            config = dataclasses.replace(config or SessionConfig(), transports=to_transports(tuple(transports)))
        self.session = Session(rng=self.rng, config=config, wall_clock=self.clock.wall)
        wake: list[Callable[[], None]] = []
        self.hasher = Hasher(
            threads=hash_threads, notify=lambda: wake[0]() if wake else None, max_pending=256
        )
        self.loop = EventLoop(
            self.session, clock=self.clock, hasher=self.hasher, bind=bind, port=port, utp_config=utp_config,
            interface=interface,
        )
        wake.append(self.loop.wake_for_result)
        self.loop.open()
        self._closed = False
        self._dht_written: bytes | None = None  # what dht.dat holds since we last wrote it
        if self.session.config.dht:  # BEP 5: rejoin from dht.dat (our id and the nodes we knew), else bootstrap
            self.session.enable_dht(saved=self._read_dht_state(), now=self.clock.now(), port=self.loop.udp_port)
        # Public API events: the session queues them, the loop hands over before each flush.
        self.dispatcher = Dispatcher(self.session)
        self.loop.before_flush = self.dispatch_events

    @property
    def port(self) -> int:
        """The listen port (0 while a bound interface that was missing at start has not appeared)."""
        return self.loop.port

    @property
    def paused_reason(self) -> str | None:
        """Why networking is paused, e.g. "interface wg0 is down"; None while it runs."""
        return self.loop.paused_reason

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
        tag = sha1(os.path.abspath(download_dir).encode()).hexdigest()[:8]
        return os.path.join(self.state_dir, f"{meta.info_hash.hex()}-{tag}.resume")

    if TYPE_CHECKING:  # typing.overload (typing is not loaded at run time)

        @overload
        def add(
            self,
            torrent: Metainfo,
            download_dir: str,
            *,
            mode: str = "download",
            peers: Iterable[Addr] = (),
            config: TorrentConfig | None = None,
            super_seed: bool = False,
        ) -> Torrent: ...

        @overload
        def add(
            self,
            torrent: str,
            download_dir: str,
            *,
            mode: str = "download",
            peers: Iterable[Addr] = (),
            config: TorrentConfig | None = None,
            super_seed: bool = False,
        ) -> Torrent | MagnetFetch: ...

    def add(
        self,
        torrent: str | Metainfo,
        download_dir: str,
        *,
        mode: str = "download",
        peers: Iterable[Addr] = (),
        config: TorrentConfig | None = None,
        super_seed: bool = False,
    ) -> Torrent | MagnetFetch:
        """Add a torrent: a .torrent path, a Metainfo, or a magnet URI (then see :meth:`add_magnet`).

        ``super_seed`` turns on BEP 16 super-seeding (mode='seed' only, else ValueError).
        """
        if isinstance(torrent, str) and torrent[: len(MAGNET_PREFIX)].lower() == MAGNET_PREFIX:
            if super_seed:
                raise ValueError("super-seeding needs the complete data, not a magnet link")
            return self.add_magnet(torrent, download_dir, peers=peers, config=config)
        meta = load_metainfo(torrent) if isinstance(torrent, str) else torrent
        if super_seed:
            config = dataclasses.replace(config or self.session.config.torrent, super_seed=True)
        download_dir = os.path.abspath(download_dir)
        now = self.clock.now()
        t = self.session.add_torrent(
            meta, download_dir, mode=parse_mode(mode), resume_path=self.resume_path(meta, download_dir), now=now,
            config=config,
        )
        plist = list(peers)
        if plist:
            t.add_candidates(plist, PeerSource.USER, now=now)
        release_free_memory()  # the set-up's large temporaries: freed, but resident until then (procmem.py)
        return t

    def add_magnet(
        self,
        magnet: str | Magnet,
        download_dir: str,
        *,
        peers: Iterable[Addr] = (),
        config: TorrentConfig | None = None,
    ) -> MagnetFetch:
        """Add a magnet link (BEP 9): dial its ``x.pe`` peers (and ``peers``), announce to its ``tr``
        trackers, fetch and verify the info dict, then download it like a .torrent.

        Raises MagnetError for a malformed URI.  The returned handle's ``torrent`` is None until the
        metadata arrived (event ``metadata_received``); ``complete`` is True once the data is.
        """
        m = parse_magnet(magnet) if isinstance(magnet, str) else magnet
        download_dir = os.path.abspath(download_dir)
        f = self.session.add_magnet(
            m, download_dir, now=self.clock.now(), config=config,
            resume_path=lambda meta: self.resume_path(meta, download_dir),
        )
        plist = list(peers)
        if plist:
            f.add_peers(plist, PeerSource.USER)
        return f

    def run(self, *, until: Callable[[], bool] | None = None, on_tick: Callable[[float], None] | None = None,
            tick_deadline: Callable[[float], float | None] | None = None) -> None:
        """Run the loop; ``on_tick(now)`` runs with the session's timers, and at the latest at
        ``tick_deadline(now)`` if given (else at least once a second)."""
        self.loop.run(until=until, on_tick=on_tick, tick_deadline=tick_deadline)

    # ------------------------------------------------------------------ public API: events and peers

    def on(self, name: str, callback: Callable[[Event[Torrent, Peer]], object]) -> None:
        """Call ``callback(event)`` for every event of this client (names: minibt.EventName).

        Callbacks run on the loop's thread after each iteration; peer callbacks first, then torrent,
        then client ones.  An exception in a callback is logged and never stops the loop.
        """
        self.dispatcher.listeners.on(name, callback)

    def off(self, name: str, callback: Callable[[Event[Torrent, Peer]], object]) -> None:
        self.dispatcher.listeners.off(name, callback)

    def dispatch_events(self) -> int:
        """Deliver queued events now (the loop does this every iteration); returns how many."""
        return self.dispatcher.dispatch()

    def peers(self, torrent: Torrent | None = None) -> list[Peer]:
        """Every live connection (of ``torrent`` only, if given), handshaking ones included."""
        s = self.session
        return [
            Peer.of(c, s)
            for c in list(s.conns.values())
            if torrent is None or s.torrent_of(c.cid) is torrent
        ]

    # ------------------------------------------------------------------ rate limits (issue 3)

    def set_rate_limits(
        self,
        *,
        up: float | None | Keep = KEEP,
        down: float | None | Keep = KEEP,
        torrent: Torrent | None = None,
    ) -> None:
        """Change the upload/download limits (payload bytes/s; None or 0 = unlimited) at run time.

        Global limits without ``torrent``, else that torrent's own (both apply); an omitted direction
        keeps its limit.  Call from the loop's thread (e.g. an ``on_tick`` or ``on()`` callback) or
        while ``run()`` is not running.
        """
        now = self.clock.now()
        if torrent is None:
            self.session.set_rate_limits(up=up, down=down, now=now)
        else:
            torrent.set_rate_limits(up=up, down=down, now=now)

    def rate_limits(self, torrent: Torrent | None = None) -> tuple[float | None, float | None]:
        """(upload, download) limits in bytes/s, global or of ``torrent``; None = unlimited."""
        return self.session.rate_limits() if torrent is None else torrent.rate_limits()

    def stop(self) -> None:
        """Signal-safe: make run() return."""
        self.loop.request_stop()

    def _dht_path(self) -> str | None:
        from minibt.dhtservice import DHT_FILE  # with the DHT, which loads the module anyway

        return os.path.join(self.state_dir, DHT_FILE) if self.state_dir else None

    def _read_dht_state(self) -> bytes | None:
        from minibt.dhtservice import MAX_DHT_FILE_BYTES

        path = self._dht_path()
        try:
            if path is not None:
                with open(path, "rb") as f:
                    return f.read(MAX_DHT_FILE_BYTES)
        except OSError:
            pass
        return None

    def save_dht(self) -> None:
        """Write our DHT node id and table to ``state_dir/dht.dat`` (atomically; a failure is logged)."""
        if self.session.dht is None:
            return
        path = self._dht_path()
        if path is None:
            return
        data = self.session.dht.save()
        if data == self._dht_written:
            return  # the same bytes again: no write (SD-card wear; the runner saves every 10 minutes)
        try:
            os.makedirs(self.state_dir or ".", exist_ok=True)
            write_atomic(path, data)
            self._dht_written = data
        except OSError as e:
            log.warning("cannot write %s: %s", path, e)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.save_dht()
            self.loop.shutdown()
            self.dispatch_events()  # the disconnects of the shutdown itself
        finally:
            self.loop.close()
            self.hasher.close()
