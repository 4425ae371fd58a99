"""Shared test helpers: a fake clock and small utilities (STYLE.md section 9)."""

from __future__ import annotations


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
