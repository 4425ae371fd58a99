"""Atomic state files (status, bans, runner state) and ``minibt status``.

A file is replaced with temp file + fsync + rename + fsync of the directory, so after a power
cut it holds either the old or the new content, never a mix or NULs (transmission#650).  A
missing or damaged file reads as None.  ``format_status`` turns the runner's status JSON into
the lines ``minibt status`` prints.
"""

from __future__ import annotations

import json
from typing import Any

from minibt.storage import write_atomic as write_atomic  # the one atomic writer (also resume data)

MAX_STATE_FILE_BYTES = 16 << 20  # never read a bigger state file into memory


def write_json_atomic(path: str, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: str) -> Any:
    """The JSON in ``path``, or None if it is missing, too big or not valid JSON."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_STATE_FILE_BYTES + 1)
    except OSError:
        return None
    if len(raw) > MAX_STATE_FILE_BYTES:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _limit(v: float | None) -> str:
    return "unlimited" if not v else f"{_bytes(v)}/s"


def format_status(st: dict[str, Any], *, now_wall: float, pid_alive: bool) -> list[str]:
    """Human-readable lines for one status JSON document."""
    lines = []
    age = now_wall - float(st.get("updated_at", 0.0))
    running = st.get("running") and pid_alive
    head = f"minibt {st.get('mode', '?')} pid {st.get('pid')}: " + (
        f"running, port {st.get('listen_port')}" if running else "not running (last status shown)"
    )
    lines.append(head + f"; updated {age:.0f} s ago")
    proc = st.get("process") or {}
    lim = st.get("limits") or {}
    lines.append(
        f"memory {_bytes(proc.get('rss_bytes'))} (peak {_bytes(proc.get('peak_rss_bytes'))}, "
        f"budget {_bytes(lim.get('memory_budget_bytes'))}), cpu {float(proc.get('cpu_percent') or 0):.1f}% "
        f"({proc.get('cpu_seconds', 0)} s)"
    )
    lines.append(
        f"limits up {_limit(lim.get('upload_limit_bps'))}, down {_limit(lim.get('download_limit_bps'))}"
        + (" (alternative window)" if lim.get("alt_rates") else "")
    )
    for t in st.get("torrents") or []:
        prog = t.get("progress")
        pct = "   -  " if prog is None else f"{float(prog) * 100:5.1f}%"
        state = str(t.get("state"))
        if t.get("finished"):
            state = "finished"
        extra = ""
        if t.get("disk_error"):
            extra = f"  PAUSED: {t['disk_error']}"
        elif t.get("paused"):
            extra = f"  paused: {t['paused']}"
        elif t.get("error"):
            extra = f"  ERROR: {t['error']}"
        elif t.get("finished"):
            extra = f"  ({t['finished']})"
        lines.append(
            f"{t.get('name')}: {state:11s} {pct}  down {_bytes(t.get('rate_down') or 0)}/s  "
            f"up {_bytes(t.get('rate_up') or 0)}/s  peers {t.get('peers', 0)}  ratio {float(t.get('ratio') or 0):.2f}"
            + extra
        )
    if not st.get("torrents"):
        lines.append("no torrents")
    return lines
