"""This process's memory as the kernel counts it: peak resident set (VmHWM) and anonymous RSS.

``minibt status`` reports the kernel's peak, not the largest of its own periodic samples: a burst
between two status writes (a few seconds apart) is what the OOM killer sees.  Linux gives VmHWM in
/proc/self/status; elsewhere ``resource.getrusage`` ru_maxrss (KiB on Linux, bytes on macOS).
"""

from __future__ import annotations

import sys

PROC_STATUS = "/proc/self/status"


def proc_status_bytes(path: str = PROC_STATUS) -> dict[str, int]:
    """The ``kB`` fields of a /proc/PID/status file (VmHWM, VmRSS, RssAnon, ...) in bytes; {} if unreadable."""
    out: dict[str, int] = {}
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
                    out[key] = int(parts[0]) * 1024
    except OSError:
        return {}
    return out


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
