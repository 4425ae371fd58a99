"""Containment of faults while handling outside input (STYLE.md section 13).

An unexpected exception while handling one connection's bytes, one datagram, one tracker
transaction, one DNS lookup, one worker job, one watch-dir file or one library callback is a bug
in minibt, but one that a remote party may be able to trigger at will.  It must end that one thing
and never the process.  The code at each boundary catches it, closes what the input belonged to
(with ``CloseReason.INTERNAL_ERROR`` for a connection), and hands the exception to
:class:`Faults`, which logs its traceback once at error level and counts it per kind for the
session stats.  A fault that repeats from the same place is counted every time but logged again
only at powers of two, so a peer that can trigger one cannot flood the log.
"""

from __future__ import annotations

import enum
import logging
import traceback

log = logging.getLogger(__name__)

MAX_SIGNATURES = 256  # distinct fault places remembered for log de-duplication (bounded memory)


class FaultKind(enum.Enum):
    """What the faulting input was; each kind is counted separately in :meth:`Faults.stats`."""

    PEER = "peer"  # one connection's input or output (TCP or uTP)
    DATAGRAM = "datagram"  # one UDP datagram (uTP, tracker)
    TRACKER = "tracker"  # one tracker transaction
    DNS = "dns"  # one name lookup's result
    WORKER = "worker"  # one worker-pool job's result (piece hash, check)
    TORRENT = "torrent"  # one torrent's or magnet fetch's timers
    ACCEPT = "accept"  # one accepted connection
    WATCH_FILE = "watch_file"  # one file in the runner's watch directory
    CALLBACK = "callback"  # one library callback


def _signature(kind: FaultKind, exc: BaseException) -> tuple[str, str, str, int]:
    """Where the fault was raised: kind, exception type and the innermost frame."""
    tb = exc.__traceback__
    where, line = "?", 0
    while tb is not None:
        where, line = tb.tb_frame.f_code.co_filename, tb.tb_lineno
        tb = tb.tb_next
    return (kind.value, type(exc).__name__, where, line)


def describe(exc: BaseException) -> str:
    """A short one-line detail for a close reason or an error field."""
    text = str(exc).replace("\n", " ")
    if len(text) > 200:
        text = text[:200] + "..."
    return f"internal error: {type(exc).__name__}: {text}" if text else f"internal error: {type(exc).__name__}"


class Faults:
    """Counts contained faults per kind; logs each one's traceback (once per place)."""

    def __init__(self) -> None:
        self._counts = {k: 0 for k in FaultKind}
        self._seen: dict[tuple[str, str, str, int], int] = {}

    def record(self, kind: FaultKind, what: str, exc: BaseException) -> str:
        """Count and log one contained fault; returns the detail for a close reason.

        ``what`` names the thing that was closed ("peer 1.2.3.4:6881 (#7)", a tracker URL...).
        """
        self._counts[kind] += 1
        detail = describe(exc)
        sig = _signature(kind, exc)
        n = self._seen.get(sig, 0) + 1
        if n == 1 and len(self._seen) >= MAX_SIGNATURES:
            self._seen.clear()
        self._seen[sig] = n
        if n == 1:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
            log.error("contained fault (%s) in %s, closed it: %s\n%s", kind.value, what, detail, tb)
        elif n & (n - 1) == 0:
            log.error("contained fault (%s) in %s, closed it: %s (seen %d times from %s:%d)",
                      kind.value, what, detail, n, sig[2], sig[3])
        return detail

    @property
    def places(self) -> int:
        """How many distinct fault places are remembered (bounded by MAX_SIGNATURES)."""
        return len(self._seen)

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def stats(self) -> dict[str, int]:
        """``{kind: count}`` for every kind, plus ``total``."""
        out = {k.value: v for k, v in self._counts.items()}
        out["total"] = self.total
        return out
