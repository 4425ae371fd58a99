"""Shared test helpers: a fake clock and small utilities (STYLE.md section 9)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from minibt.client import Client


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
