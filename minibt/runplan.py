"""The config-file runner's decisions, as pure functions (no I/O, no clock, no client).

Time windows, ``--until`` arithmetic, stop conditions (seed ratio / seed time), what a SIGHUP reload
changes, the ``--once`` exit code, runner-state keys, the completion hook's argv, and when a torrent
waits for its directory (a share that mounts after the daemon started) and when it tries again.  runner.py
applies them; tests/unit/test_runner_logic.py checks them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from minibt.settings import Mode
from minibt.sha1 import sha1

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: `download` (cli.py imports the exit codes) needs no config-file parser
    from typing import Any

    from minibt.configfile import TimeWindow, TorrentEntry

DAY_S = 86400.0

EXIT_OK = 0  # --once: every download entry complete and verified; daemon: stopped by a signal
EXIT_FAIL = 1  # anything else that went wrong (a torrent in error, cannot listen, ...)
EXIT_CONFIG = 2  # the config file (or a command-line value) is wrong; nothing was started
EXIT_TIME_UP = 3  # --once: --max-time/--until reached (or interrupted); progress saved, a rerun resumes
EXIT_LOCKED = 75  # another run holds the lock (EX_TEMPFAIL); exited at once, touched nothing


# ---------------------------------------------------------------------- pure decisions


def in_windows(windows: Iterable[TimeWindow], seconds_of_day: float) -> bool:
    """True if the local time is inside one of ``windows`` (no windows: always)."""
    ws = tuple(windows)
    minute = int(seconds_of_day // 60) % 1440
    return not ws or any(w.contains(minute) for w in ws)


def seconds_until(minute_of_day: int, seconds_of_day: float) -> float:
    """Seconds from ``seconds_of_day`` to the next local ``minute_of_day`` (0 < result <= 1 day)."""
    delta = (minute_of_day * 60 - seconds_of_day) % DAY_S
    return delta if delta > 0 else DAY_S


def stop_reason(entry: TorrentEntry, *, uploaded: int, size: int, seeding_s: float) -> str | None:
    """Why seeding of ``entry`` should stop now, or None."""
    ratio = uploaded / size if size else 0.0
    if entry.seed_ratio is not None and ratio >= entry.seed_ratio:
        return f"seed ratio {ratio:.2f} >= {entry.seed_ratio:g}"
    if entry.seed_time_s is not None and seeding_s >= entry.seed_time_s:
        return f"seeded for {seeding_s:.0f} s >= {entry.seed_time_s:.0f} s"
    return None


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a config reload changes in the running torrents."""

    remove: tuple[str, ...]  # info-hash hex of torrents to stop and drop
    add: tuple[TorrentEntry, ...]  # new entries (including replaced ones, added once the old is gone)
    update: tuple[TorrentEntry, ...]  # same torrent, dir, mode and files: new stop conditions/hook/peers in place


def plan_reload(old: Mapping[str, TorrentEntry], new: Iterable[TorrentEntry]) -> ReloadPlan:
    """What a SIGHUP changes: torrents whose info-hash, dir, mode and file selection are unchanged keep running."""
    remove: list[str] = []
    add: list[TorrentEntry] = []
    update: list[TorrentEntry] = []
    new_by_ih = {e.key[0]: e for e in new}
    for ih, e in old.items():
        n = new_by_ih.get(ih)
        if n is None:
            remove.append(ih)
        elif n.dir != e.dir or n.mode != e.mode or n.file_indexes != e.file_indexes:
            remove.append(ih)
            add.append(n)
        elif n != e:
            update.append(n)
    add.extend(e for ih, e in new_by_ih.items() if ih not in old)
    return ReloadPlan(tuple(remove), tuple(add), tuple(update))


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How a cron run's torrent ended."""

    complete: bool  # every piece verified
    error: str | None  # a fatal error (not a full disk: that pauses)


def once_exit_code(outcomes: Iterable[JobOutcome], *, time_up: bool) -> int | None:
    """The --once exit code, or None while there is still work and time."""
    outs = list(outcomes)
    pending = [o for o in outs if not o.complete and o.error is None]
    if pending and not time_up:
        return None
    if any(o.error is not None for o in outs):
        return EXIT_FAIL
    return EXIT_TIME_UP if pending else EXIT_OK


_KEYS: dict[tuple[str, str], str] = {}  # state_key's answers for absolute directories (at most _KEYS_MAX)
_KEYS_MAX = 4096


def state_key(info_hash_hex: str, directory: str) -> str:
    """The runner-state key (the same tag as Client.resume_path uses).  The runner asks for every job's at each
    status refresh: a SHA-1 through ctypes each time was a third of an idle seeder's Python (50 torrents, py-spy),
    so an absolute directory's key is remembered (a relative one depends on the working directory)."""
    key = _KEYS.get((info_hash_hex, directory))
    if key is None:
        key = f"{info_hash_hex}-{sha1(os.path.abspath(directory).encode()).hexdigest()[:8]}"
        if os.path.isabs(directory):
            if len(_KEYS) >= _KEYS_MAX:
                _KEYS.clear()
            _KEYS[(info_hash_hex, directory)] = key
    return key


def persisted_jobs(doc: object) -> tuple[dict[str, dict[str, Any]], int]:
    """The runner's per-torrent records from ``runner-state.json`` with every field checked, and how many
    records were damaged (not a record at all, or a field of the wrong type: that field is reset).

    A record is ``{"seed_s": seconds seeded, "hook_done": bool, "finished": why it stopped or None,
    "finished_for": [seed_ratio, seed_time_s] it stopped under}``.  A file cut short by a power cut is not
    JSON and reads as no records (statusfile.read_json); one whose content is of another shape (a damaged
    card, a hand edit, another version) must not stop ``minibt run`` from starting either: a damaged
    seeding time counts from zero, a damaged hook flag reads as not run, a damaged stop as not stopped."""
    out: dict[str, dict[str, Any]] = {}
    damaged = 0
    if not isinstance(doc, dict):
        return out, 0 if doc is None else 1
    for key, rec in doc.items():
        if not isinstance(rec, dict):
            damaged += 1
            continue
        seed_s, hook, fin, fin_for = (rec.get(k) for k in ("seed_s", "hook_done", "finished", "finished_for"))
        ok_seed = isinstance(seed_s, int | float) and not isinstance(seed_s, bool) and 0 <= seed_s < 1e15
        if not ok_seed or not isinstance(hook, bool) or not (fin is None or isinstance(fin, str)) or not (
                fin_for is None or isinstance(fin_for, list)):
            damaged += 1
        out[key] = {"seed_s": float(seed_s) if ok_seed and math.isfinite(seed_s) else 0.0,  # type: ignore[arg-type]
                    "hook_done": hook is True,
                    "finished": fin if isinstance(fin, str) else None,
                    "finished_for": fin_for if isinstance(fin_for, list) else None}
    return out, damaged


def hook_argv(hook: tuple[str, ...], name: str, path: str) -> list[str]:
    """The completion hook's argv: the command, then the torrent's name and data path (no shell)."""
    return [*hook, name, path]


def dir_problem(entry: TorrentEntry, *, isdir: Callable[[str], bool]) -> tuple[str, str] | None:
    """(directory, what is wrong) that keeps ``entry`` from starting now, or None.

    A seed needs its data dir.  A download needs its dir or the dir's parent, where the dir is created:
    below a missing parent (the mount point of a share not mounted yet) it would land on the SD card.
    """
    if entry.mode == Mode.SEED:
        return None if isdir(entry.dir) else (entry.dir, "missing")
    parent = os.path.dirname(entry.dir)
    if isdir(entry.dir) or isdir(parent):
        return None
    return parent, "missing"


@dataclass(slots=True)
class DirWait:
    """A torrent (or the watch dir) waiting for a directory: looked at again every ``retry_s``."""

    path: str
    reason: str  # "missing", or why it could not be created
    since: float  # clock.now() when the wait began
    retry_s: float
    next_check: float = 0.0

    def __post_init__(self) -> None:
        self.next_check = self.since + self.retry_s

    def due(self, now: float) -> bool:
        return now >= self.next_check

    def still_waiting(self, path: str, reason: str, *, now: float) -> None:
        """A retry at ``now`` found the directory still unusable: next try one interval later."""
        self.path, self.reason = path, reason
        self.next_check = now + self.retry_s

    def describe(self, now: float) -> str:
        return (f"waiting: directory {self.path} {self.reason}, retrying every {self.retry_s:g} s "
                f"(for {max(0.0, now - self.since):.0f} s)")
