"""Shared test helpers (STYLE.md section 9).

* :class:`FakeClock`: time moves only when told to; ``jump_to_next`` jumps to the earliest deadline
  (the step every fake loop takes: simnet.SimNet, test_ratelimit_sim.Pipe, test_utp_link.Sim);
* :func:`pump`: hand one stream machine's outbox to another (``data_to_send`` -> ``receive_data``);
* :func:`run_client_until`: drive an in-process Client (real sockets) until a condition or a deadline;
* :func:`seeding_in_thread`: an in-process Client seeding one torrent from a thread of its own.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from minibt.client import Client
    from minibt.metainfo import Metainfo
    from minibt.torrent import Torrent


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, dt: float) -> None:
        assert dt >= 0
        self._now += dt

    def jump_to(self, t: float) -> None:
        assert t >= self._now
        self._now = t

    def jump_to_next(self, *deadlines: float | None, end: float = math.inf) -> bool:
        """Jump to the earliest of ``deadlines`` (None: no deadline), never backwards.

        When that is past ``end`` (or there is no deadline and ``end`` is finite), jump to ``end``
        instead and return False: the caller's time budget is spent.
        """
        earliest = min((d for d in deadlines if d is not None), default=math.inf)
        if earliest > end:
            self.jump_to(end)
            return False
        assert earliest < math.inf, "nothing scheduled and no end: the clock would jump to infinity"
        self.jump_to(max(self._now, earliest))
        return True


class StreamMachine(Protocol):
    """The stream half of the machine contract (STYLE.md section 3)."""

    def data_to_send(self) -> bytes: ...

    def receive_data(self, data: bytes, *, now: float) -> list[Any]: ...


def take_frames(buf: bytes) -> tuple[list[bytes], bytes]:
    """The whole peer-wire frames at the start of ``buf`` (a leading BT handshake skipped) as their
    bodies (message id first), and the bytes left over."""
    if buf.startswith(b"\x13BitTorrent"):
        buf = buf[68:]
    frames, pos = [], 0
    while len(buf) - pos >= 4:
        n = int.from_bytes(buf[pos : pos + 4], "big")
        if len(buf) - pos < 4 + n:
            break
        frames.append(buf[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return frames, buf[pos:]


def pump(src: StreamMachine, dst: StreamMachine, *, now: float = 0.0) -> list[Any]:
    """Deliver everything ``src`` has to send to ``dst`` in one piece; ``dst``'s events."""
    return dst.receive_data(src.data_to_send(), now=now)


def run_client_until(client: Client, pred: Callable[[], object], what: str, deadline: float,
                     extra: Callable[[], str] = lambda: "") -> float:
    """Drive an in-process client (real sockets) until ``pred()`` or the absolute monotonic ``deadline``.

    Returns the seconds it took; raises AssertionError with the tail of the client's close log and
    ``extra()`` when the deadline passes first.
    """
    t0 = time.monotonic()
    client.run(until=lambda: bool(pred()) or time.monotonic() >= deadline)
    if not pred():
        log = "\n".join(f"  {c}" for c in client.session.closed_log[-20:])
        raise AssertionError(f"timed out waiting for {what}\nclosed_log tail:\n{log}\n{extra()}")
    return time.monotonic() - t0


@contextlib.contextmanager
def seeding_in_thread(seeder: Client, meta: Metainfo, seed_dir: str, timeout_s: float = 30.0) -> Iterator[Torrent]:
    """``seeder`` seeds ``meta`` from ``seed_dir``, its loop in a thread; yields the torrent once its check
    is done (SEEDING).  On exit the loop stops, the thread is joined and ``seeder`` closed."""
    from minibt.settings import TorrentState

    stop, seeding = threading.Event(), threading.Event()
    st = seeder.add(meta, seed_dir, mode="seed")

    def tick(now: float) -> None:
        if st.state is TorrentState.SEEDING:
            seeding.set()

    thread = threading.Thread(target=seeder.run, kwargs={"until": stop.is_set, "on_tick": tick}, daemon=True)
    thread.start()
    try:
        assert seeding.wait(timeout_s), "the seeder's check"
        yield st
    finally:
        stop.set()
        seeder.loop.wake()
        thread.join(10)
        seeder.close()
