"""Time source: the only module that reads the system clock (STYLE.md section 4)."""

from __future__ import annotations

import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class Clock(Protocol):
        def now(self) -> float:
            """Monotonic seconds."""
            ...

        def wall(self) -> float:
            """Seconds since the epoch (for logs, resume files and tracker stats only)."""
            ...


class MonotonicClock:
    """The real clock."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def cpu_seconds(self) -> float:
        return time.process_time()


def local_seconds_of_day(wall: float) -> float:
    """Seconds after local midnight at epoch time ``wall`` (download windows, ``--until HH:MM``)."""
    tm = time.localtime(wall)
    return tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec + (wall % 1.0)
