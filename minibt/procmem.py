"""This process's memory as the kernel counts it: peak resident set (VmHWM) and anonymous RSS; and handing the
C heap's free pages back (:func:`release_free_memory`).

``minibt status`` reports the kernel's peak, not the largest of its own periodic samples: a burst
between two status writes (a few seconds apart) is what the OOM killer sees.  Linux gives VmHWM in
/proc/self/status; elsewhere ``resource.getrusage`` ru_maxrss (KiB on Linux, bytes on macOS).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PROC_STATUS = "/proc/self/status"


def _status_fields(path: str) -> dict[str, list[str]] | None:
    """Each line of a /proc/PID/status file as ``key: [words]``; None if unreadable."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return {key: rest.split() for key, _, rest in (line.partition(":") for line in f)}
    except OSError:
        return None


def proc_status_bytes(path: str = PROC_STATUS) -> dict[str, int]:
    """The ``kB`` fields of a /proc/PID/status file (VmHWM, VmRSS, RssAnon, ...) in bytes; {} if unreadable."""
    fields = _status_fields(path) or {}
    return {key: int(parts[0]) * 1024 for key, parts in fields.items()
            if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit()}


def process_sample(path: str = PROC_STATUS) -> tuple[int, float, int] | None:
    """(resident bytes, CPU seconds of all threads, OS threads) of this process from /proc, as psutil's
    ``memory_info().rss``, ``cpu_times()`` and ``num_threads()`` give them, without importing psutil
    (1.5 MiB of a daemon's memory, with the modules it brings).  None where /proc is missing."""
    fields = _status_fields(path)
    if fields is None:
        return None
    rss, threads = fields.get("VmRSS", []), fields.get("Threads", [])
    if (len(rss) != 2 or rss[1] != "kB" or not rss[0].isdigit() or len(threads) != 1 or not threads[0].isdigit()
            or threads[0] == "0"):
        return None
    t = os.times()  # the process's user and system time, every thread's (times(2))
    return int(rss[0]) * 1024, t.user + t.system, int(threads[0])


def peak_rss_bytes(path: str = PROC_STATUS) -> int:
    """The process's peak resident set size: VmHWM, else ru_maxrss, else 0."""
    hwm = proc_status_bytes(path).get("VmHWM")
    if hwm is not None:
        return hwm
    try:
        import resource
    except ImportError:  # not a Unix
        return 0
    maxrss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return maxrss if sys.platform == "darwin" else maxrss * 1024


_trim: Any = None  # glibc's malloc_trim once looked up; False where there is none


def release_free_memory() -> bool:
    """Hand the C heap's free pages back to the kernel (glibc ``malloc_trim(0)``); True if any went back.

    A torrent's set-up makes large short-lived buffers (the .torrent file, its decoded piece hashes, the
    info dict before checker.py spills it: 1.3 MB each at 16 GiB).  glibc serves such a request from the heap
    once a freed mapping of that size has raised its mmap threshold, and then keeps the freed pages resident:
    1.25 MiB of a 16 GiB torrent's 13.8 MiB anonymous memory, idle, until this call (measured 2026-12-07).
    False, doing nothing, where the C library has no ``malloc_trim`` (musl, macOS).
    """
    global _trim
    if _trim is None:
        try:
            import ctypes

            fn = ctypes.CDLL(None).malloc_trim
            fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
            _trim = fn
        except (OSError, AttributeError):
            _trim = False
    return bool(_trim(0)) if _trim else False
