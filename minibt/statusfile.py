"""Atomic state files (status, bans, runner state) and ``minibt status``.

A file is replaced with temp file + fsync + rename + fsync of the directory, so after a power
cut it holds either the old or the new content, never a mix or NULs (transmission#650).  A
missing or damaged file reads as None.  ``format_status`` turns the runner's status JSON into
the lines ``minibt status`` prints.

Who may read them: the state dir is made 0750 and the JSON state files 0640 with the state dir's
group, so the Pi's administrator reads ``minibt status`` once in the daemon's group (the daemon runs
as its own user under systemd).  Resume data and the copies of watched torrents stay 0600: nothing
but the daemon reads them.  ``minibt status`` needs only the state dir; ``status_state_dir`` finds it
even in a config file that was edited into an invalid state while the daemon runs on the old one.
"""

from __future__ import annotations

import fcntl
import grp
import json
import math
import os
import re
import stat
import tomllib

from minibt.configfile import Config, load_config
from minibt.durable import write_atomic  # the one atomic writer (also resume data)
from minibt.errors import ConfigError
from minibt.metainfo import read_capped

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_STATE_FILE_BYTES = 16 << 20  # never read a bigger state file into memory
MAX_STATE_DEPTH = 32  # containers nested deeper: not a file the runner wrote (its own are at most 4 deep)
STATE_DIR_MODE = 0o750  # owner writes, the daemon's group (the administrator) reads, others nothing
STATE_FILE_MODE = 0o640  # status.json, runner-state.json, bans.json: no secrets in them
LOCK_NAME = "minibt.lock"
STATUS_NAME = "status.json"  # written by the runner, read by `minibt status`


def ensure_state_dir(path: str) -> None:
    """Create the state dir 0750 if missing; an existing one keeps its mode and group."""
    os.makedirs(path, mode=STATE_DIR_MODE, exist_ok=True)


def write_json_atomic(path: str, obj: Any) -> None:
    """A state file, group-readable (STATE_FILE_MODE) with the group of the state dir."""
    data = (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()
    write_atomic(path, data, mode=STATE_FILE_MODE, group_of_dir=True)


class RunLock:
    """``flock`` on a file in the state dir: released by the kernel when the process dies."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> bool:
        """True if we hold the lock now; False (at once) if another process holds it."""
        ensure_state_dir(os.path.dirname(self.path))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last fd drops the flock
            self._fd = None


# ---------------------------------------------------------------------- reading, for `minibt status`


class StatusUnreadable(Exception):
    """The status file exists (or may) but this user may not read it; ``str()`` says what to do."""


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def permission_advice(path: str) -> str:
    """What a user who got EACCES on ``path`` (or its directory) can do about it."""
    try:
        st = os.stat(path)
        where = path
    except OSError:  # the state dir itself is closed to us: its group is the one to join
        where = os.path.dirname(path)
        try:
            st = os.stat(where)
        except OSError:
            return f"permission denied reading {path}"
    group = _group_name(st.st_gid)
    in_group = st.st_gid == os.getegid() or st.st_gid in os.getgroups()
    if in_group and stat.S_ISREG(st.st_mode) and not st.st_mode & stat.S_IRGRP:
        return (f"permission denied reading {path}: it is mode {stat.S_IMODE(st.st_mode):04o}, not readable by "
                f"group {group}; restart the daemon (this minibt writes it 0640)")
    return (f"permission denied reading {path}: add your user to group {group} "
            f"(sudo usermod -aG {group} $USER, then log in again)")


def read_status(path: str) -> dict[str, Any] | None:
    """The status document, None if missing or damaged; StatusUnreadable if access is denied."""
    try:
        with open(path, "rb") as f:
            raw = read_capped(f, MAX_STATE_FILE_BYTES)
    except PermissionError:
        raise StatusUnreadable(permission_advice(path)) from None
    except OSError:
        return None
    if len(raw) > MAX_STATE_FILE_BYTES:
        return None
    doc = parse_json(raw)
    return doc if isinstance(doc, dict) else None


def parse_json(raw: bytes) -> Any:
    """A state file's JSON document, or None if it is not JSON (a write cut short, a damaged card) or is nested
    deeper than MAX_STATE_DEPTH (the runner's own files are a few levels deep; ``json`` recurses per level, so
    a file of ``[[[[...`` would otherwise raise RecursionError, and printing one just under the limit too)."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    todo = [(doc, 0)]
    while todo:
        v, depth = todo.pop()
        if isinstance(v, dict | list):
            if depth >= MAX_STATE_DEPTH:
                return None
            todo.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return doc


_STATE_DIR_LINE = re.compile(r"""^\s*state_dir\s*=\s*(?:"([^"\\]*)"|'([^']*)')\s*(?:#.*)?$""")
_TABLE_LINE = re.compile(r"^\s*\[+\s*([^\]]*?)\s*\]+\s*(?:#.*)?$")
_NOT_FOUND = object()


def pid_alive(pid: object) -> bool:
    """Whether a process ``pid`` exists (the status file's writer), without psutil (a 15 ms import).

    Signal 0 checks without sending anything; a process of another user answers EPERM, and it exists.
    """
    if type(pid) is not int or pid <= 0:  # 0 and -1 would name a process group, not a process
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except (OSError, OverflowError):  # ESRCH: no such process; a pid out of range (OverflowError past a C int)
        return False
    return True


def _state_dir_in_text(text: str) -> object:
    """``client.state_dir`` of a config file that failed validation: a str, None (not set) or _NOT_FOUND."""
    try:
        doc = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError, RecursionError):
        doc = None
    if doc is not None:
        client = doc.get("client", {})
        if not isinstance(client, dict):
            return _NOT_FOUND
        sd = client.get("state_dir")
        return sd if sd is None or isinstance(sd, str) else _NOT_FOUND
    # Not TOML at all: one plain `state_dir = "..."` line in [client], else (no such key anywhere) the default.
    table, found = "", []
    for line in text.splitlines():
        m = _TABLE_LINE.match(line)
        if m:
            table = m.group(1)
            continue
        m = _STATE_DIR_LINE.match(line)
        if m and table == "client":
            found.append(m.group(1) if m.group(1) is not None else m.group(2))
    if len(found) == 1:
        return found[0]
    return None if not found and "state_dir" not in text else _NOT_FOUND


def status_state_dir(config_path: str | None, *, cwd: str) -> tuple[str, str | None]:
    """(state dir, warning or None) for ``minibt status -c config_path``.

    A valid file gives its state dir.  An invalid one (edited while the daemon runs on its previous
    config) still gives the state dir it names, with a one-line warning; ConfigError if the file is
    missing or unreadable, or if its state dir cannot be told.
    """
    if config_path is None:
        return _default_state_dir(cwd), None
    try:
        return load_config(config_path).state_dir, None
    except ConfigError as e:
        err = e
    try:
        with open(config_path, "rb") as f:
            text = f.read(1 << 20).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        raise err from None
    sd = _state_dir_in_text(text)
    if sd is _NOT_FOUND or (isinstance(sd, str) and not sd):
        raise ConfigError(config_path, None, f"invalid ({err.key + ': ' if err.key else ''}{err.msg}), and the "
                          "state dir cannot be told from it: fix the file to see the status")
    base = os.path.dirname(os.path.abspath(config_path))
    state_dir = _default_state_dir(base) if sd is None else _resolve(base, str(sd))
    return state_dir, f"warning: {err}; showing the status in {state_dir} (the daemon keeps running on the " \
                      "config it loaded last)"


def _resolve(base: str, p: str) -> str:
    p = os.path.expanduser(p)
    return os.path.normpath(p if os.path.isabs(p) else os.path.join(base, p))


def _default_state_dir(base: str) -> str:
    return _resolve(base, Config().state_dir)


def read_json(path: str) -> Any:
    """The JSON in ``path``, or None if it is missing, too big, not valid JSON or nested too deep (parse_json)."""
    try:
        with open(path, "rb") as f:
            raw = read_capped(f, MAX_STATE_FILE_BYTES)
    except OSError:
        return None
    if len(raw) > MAX_STATE_FILE_BYTES:
        return None
    return parse_json(raw)


def _num(v: object) -> float | None:
    """A finite number from a status document (a damaged or foreign file may hold anything there), else None."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        f = float(v) if not isinstance(v, int) or -(2**1023) < v < 2**1023 else math.inf
        return f if math.isfinite(f) else None
    return None


def _obj(v: object) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _bytes(n: object) -> str:
    v = _num(n)
    if v is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} TiB"  # pragma: no cover - the loop returns at TiB


def _limit(v: object) -> str:
    return "unlimited" if not _num(v) else f"{_bytes(v)}/s"


def format_status(st: dict[str, Any], *, now_wall: float, pid_alive: bool, touched_at: float = 0.0) -> list[str]:
    """Human-readable lines for one status JSON document; ``touched_at``: the file's mtime (the runner
    touches it while the content stays the same, runner.STATUS_HEARTBEAT_S).  A field of the wrong type
    (a damaged file, another version's) shows as missing: ``minibt status`` never fails on the content."""
    lines = []
    age = now_wall - max(_num(st.get("updated_at")) or 0.0, touched_at)
    running = st.get("running") and pid_alive
    head = f"minibt {st.get('mode', '?')} pid {st.get('pid')}: " + (
        f"running, port {st.get('listen_port')}" if running else "not running (last status shown)"
    )
    lines.append(head + f"; updated {age:.0f} s ago")
    proc = _obj(st.get("process"))
    lim = _obj(st.get("limits"))
    lines.append(
        f"memory {_bytes(proc.get('rss_bytes'))} (peak {_bytes(proc.get('peak_rss_bytes'))}, "
        f"budget {_bytes(lim.get('memory_budget_bytes'))}), cpu {_num(proc.get('cpu_percent')) or 0:.1f}% "
        f"({proc.get('cpu_seconds', 0)} s)"
    )
    lines.append(
        f"limits up {_limit(lim.get('upload_limit_bps'))}, down {_limit(lim.get('download_limit_bps'))}"
        + (" (alternative window)" if lim.get("alt_rates") else "")
    )
    dht = st.get("dht")
    if isinstance(dht, dict):
        lines.append(f"dht: {dht.get('nodes', 0)} nodes in the table ({dht.get('good', 0)} good), "
                     f"{dht.get('store_info_hashes', 0)} info-hashes stored for others")
    torrents = st.get("torrents")
    torrents = [t for t in torrents if isinstance(t, dict)] if isinstance(torrents, list) else []
    for t in torrents:
        prog = _num(t.get("progress"))
        pct = "   -  " if prog is None else f"{prog * 100:5.1f}%"
        state = str(t.get("state"))
        if t.get("finished"):
            state = "finished"
        extra = ""
        if t.get("disk_error"):
            extra = f"  PAUSED: {t['disk_error']}"
        elif t.get("paused"):
            extra = f"  paused: {t['paused']}"
        elif t.get("waiting"):
            extra = f"  {t['waiting']}"
        elif t.get("error"):
            extra = f"  ERROR: {t['error']}"
        elif t.get("finished"):
            extra = f"  ({t['finished']})"
        if t.get("encrypted_peers"):
            extra += f"  ({t['encrypted_peers']} encrypted)"
        dht = t.get("dht")
        if isinstance(dht, dict):  # the last DHT search for this torrent
            extra += f"  dht: {dht.get('peers_found', 0)} peers found" + ("" if dht.get("done") else " (searching)")
        lines.append(
            f"{t.get('name')}: {state:11s} {pct}  down {_bytes(t.get('rate_down') or 0)}/s  "
            f"up {_bytes(t.get('rate_up') or 0)}/s  peers {t.get('peers', 0)}  ratio {_num(t.get('ratio')) or 0:.2f}"
            + extra
        )
    if not torrents:
        lines.append("no torrents")
    watch = st.get("watch_dir")
    if isinstance(watch, dict) and watch.get("waiting"):
        lines.append(f"watch dir {watch.get('path')}: {watch['waiting']}")
    # JSON may carry lone surrogates ("\\ud800"), which no terminal encoding prints: shown escaped instead
    return [line.encode("utf-8", "backslashreplace").decode("utf-8") for line in lines]
