"""The config-file runner: ``minibt run -c FILE [--once [--max-time D | --until HH:MM]]``.

Daemon mode seeds every seed entry, downloads download entries and then seeds them until their
stop condition (seed ratio / seed time), polls the watch dir, reloads the config on SIGHUP and
stops cleanly on SIGTERM/SIGINT.  ``--once`` (for cron) works on the download entries only and
exits with one of the EXIT_* codes below.  Every run holds an ``flock`` on ``state_dir/minibt.lock``.

The decisions (windows, stop conditions, reload plans, exit codes) are pure functions in runplan.py
(imported from there); ``Runner`` applies them to a :class:`minibt.client.Client` from the loop's ``on_tick`` (the loop stays
the only socket user; time comes from the client's clock).  Status, bans and runner state are
JSON files written atomically (temp, fsync, rename) by statusfile.py.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

from minibt.budget import Limits
from minibt.client import Client
from minibt.clock import local_seconds_of_day
from minibt.configfile import Config, TorrentEntry, load_config
from minibt.durable import write_atomic
from minibt.errors import ConfigError, MagnetError, MetainfoError, MinibtError
from minibt.faults import FaultKind
from minibt.magnet import Magnet, parse_magnet
from minibt.metainfo import DEFAULT_MAX_METAINFO_BYTES, Metainfo, load_metainfo, parse_metainfo, read_capped
from minibt.peer import PeerSource
from minibt.procmem import peak_rss_bytes, process_sample
from minibt.reputation import MAX_BANS
from minibt.runplan import (
    DirWait,
    JobOutcome,
    dir_problem,
    hook_argv,
    in_windows,
    once_exit_code,
    persisted_jobs,
    plan_reload,
    state_key,
    stop_reason,
)
from minibt.settings import Mode, TorrentConfig, TorrentState
from minibt.statusfile import STATUS_NAME, read_json, write_json_atomic
from minibt.torrent import Torrent

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from typing import Any

    from minibt.magnetfetch import MagnetFetch

log = logging.getLogger(__name__)

STATE_NAME = "runner-state.json"
BANS_NAME = "bans.json"
DHT_SAVE_S = 600.0  # convention: dht.dat (DHT id and table) is rewritten at most every 10 min (SD-card wear)
SEED_TIME_SAVE_S = 600  # convention: seeding time alone rewrites runner-state.json at most every 10 min (wear)
# The status file is rewritten (temp, fsync, rename) only when its content changed, fields that only tick
# left out: the time, seeding seconds, CPU seconds; RSS and its peak count by the MiB, CPU use by 5 % steps
# (an idle daemon's periodic work, the DHT's refresh, makes it flicker between 0 and 1 %).  While
# nothing changes its mtime is touched (no write, no fsync) this often: `minibt status` shows that age.
STATUS_HEARTBEAT_S = 60.0
_TORRENT_TICKING = ("seed_seconds",)
WATCHED_DIR = "watched"  # copies of watch-dir torrents, so they survive a restart
MAGNET_META_DIR = "magnets"  # metadata fetched for magnet sources, so a rerun need not fetch it again


# ---------------------------------------------------------------------- the runner


@dataclass(slots=True)
class Job:
    """One torrent the runner manages."""

    entry: TorrentEntry
    info_hash: bytes
    meta: Metainfo | None  # None while a magnet link's metadata is being fetched
    torrent: Torrent | None = None
    fetch: MagnetFetch | None = None  # a magnet link still fetching its metadata (BEP 9)
    seed_s: float = 0.0  # seeding time so far, over all runs
    hook_done: bool = False  # on_complete ran (persisted: runs once per download)
    finished: str | None = None  # stop condition reached (persisted: not seeded again)
    error: str | None = None  # could not be added
    wait: DirWait | None = None  # its directory is missing (a share not mounted yet): retried
    checked_up: int = -1  # uploaded bytes when the seed-ratio stop condition was last checked

    @property
    def ih(self) -> str:
        return self.info_hash.hex()

    @property
    def name(self) -> str:
        if self.meta is not None:
            return self.meta.name
        m = self.entry.magnet
        return (m.name if m is not None else None) or self.ih

    @property
    def key(self) -> str:
        return state_key(self.ih, self.entry.dir)


class Runner:
    """Applies a Config to a Client; driven by ``tick(now)`` from the loop."""

    def __init__(
        self,
        cfg: Config,
        client: Client,
        *,
        once: bool,
        deadline: float | None,
        limits: Limits,
        local_seconds: Callable[[float], float] = local_seconds_of_day,
        spawn: Callable[[list[str]], Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.once = once
        self.deadline = deadline
        self.limits = limits
        self._local_seconds = local_seconds
        self._spawn = spawn or _spawn_hook
        self.jobs: dict[str, Job] = {}  # by info-hash hex
        self._removing: dict[str, Job] = {}
        self._pending_add: list[TorrentEntry] = []
        self._hooks: list[Any] = []
        self._persist, damaged = persisted_jobs(read_json(os.path.join(cfg.state_dir, STATE_NAME)))
        if damaged:
            log.warning("%s: %d damaged torrent records (their seeding time, completion hook or stop reset)",
                        os.path.join(cfg.state_dir, STATE_NAME), damaged)
        self._saved_state: dict[str, Any] | None = None
        self._saved_seed: dict[str, float] = {}  # seeding times as last written
        self._state_saved_at = -math.inf
        self._saved_bans: dict[str, str] | None = None
        self._dht_saved_at = 0.0
        self._watch_sizes: dict[str, tuple[int, int]] = {}
        self._watch_seen: set[str] = set()
        self._watch_wait: DirWait | None = None  # the watch dir is missing or unreadable
        now = client.clock.now()
        self._last_tick = now
        self._next_status = now
        self._next_watch = now
        self._next_second = now
        self._status_seen: Any = None  # the last written status without its ticking fields
        self._status_at = now  # when the status file was last written
        self._alt_active: bool | None = None
        self.reload_requested = False
        self.stop_signal: str | None = None
        self.started_wall = client.clock.wall()
        self.peak_rss = 0
        self._proc: Any = None  # psutil's Process, where /proc is missing
        self._sampled = False
        self._cpu_sample = (now, 0.0)  # (clock.now(), process CPU seconds) of the last status
        self._cpu_percent = 0.0

    # ------------------------------------------------------------------ set-up

    def start(self) -> None:
        self._load_bans()
        entries = [e for e in self.cfg.torrents if not self.once or e.mode == Mode.DOWNLOAD]
        for e in entries:
            self._add(e)
        for e in self._watched_entries():
            if e.key[0] not in self.jobs:
                self._add(e)
        if self.cfg.watch_dir:
            self._poll_watch()
        now = self.client.clock.now()
        self._apply_schedule(now, force=True)
        self.write_status()
        self.save_state()
        self._next_status = now + self.cfg.status_interval_s

    def torrent_config(self, entry: TorrentEntry) -> TorrentConfig:
        lim = self.limits
        return TorrentConfig(
            max_peers=lim.max_peers, cache_bytes=lim.cache_bytes, upload_outbox_bytes=lim.outbox_bytes,
            max_incoming_requests=lim.incoming_requests, max_candidates=lim.max_candidates,
            resume_interval_s=self.cfg.resume_interval_s, disk_retry_s=self.cfg.disk_retry_s,
            wanted_files=entry.file_indexes, encryption=entry.encryption,
        )

    def _magnet_meta_path(self, info_hash: bytes) -> str:
        return os.path.join(self.cfg.state_dir, MAGNET_META_DIR, info_hash.hex() + ".torrent")

    def _add(self, entry: TorrentEntry) -> None:
        meta = entry.meta
        if meta is None and entry.magnet is not None:
            # A magnet whose metadata an earlier run fetched: start from the saved copy (no refetch).
            try:
                meta = load_metainfo(self._magnet_meta_path(entry.magnet.info_hash))
                if meta.info_hash != entry.magnet.info_hash:
                    meta = None
            except (MetainfoError, OSError):
                meta = None
        if meta is None and entry.magnet is None:
            log.error("%s: no metadata", entry.source)
            return
        info_hash = meta.info_hash if meta is not None else entry.magnet.info_hash  # type: ignore[union-attr]
        job = Job(entry, info_hash, meta)
        st = self._persist.get(job.key)
        if st is not None:
            job.seed_s = st["seed_s"]
            job.hook_done = st["hook_done"]
            fin = st["finished"]
            same_stop = st["finished_for"] == [entry.seed_ratio, entry.seed_time_s]
            # A torrent that reached its stop condition stays stopped until that condition is changed.
            job.finished = fin if isinstance(fin, str) and same_stop and not self.once else None
        self.jobs[job.ih] = job
        if job.finished is not None and not self.once:
            log.info("%s: not started: finished seeding earlier (%s)", job.name, job.finished)
            return
        self._start(job)

    def _start(self, job: Job) -> None:
        """Add ``job``'s torrent to the client, or wait (and retry) while its directory is missing."""
        entry, now = job.entry, self.client.clock.now()
        problem = dir_problem(entry, isdir=os.path.isdir)
        if problem is None and entry.mode == Mode.DOWNLOAD:
            try:
                os.makedirs(entry.dir, exist_ok=True)
            except OSError as e:
                problem = (entry.dir, f"cannot be created ({e.strerror or e})")
        if problem is not None:
            if job.wait is None:
                job.wait = DirWait(*problem, since=now, retry_s=self.cfg.disk_retry_s)
                log.warning("%s: %s", job.name, job.wait.describe(now))
            else:
                job.wait.still_waiting(*problem, now=now)
            return
        if job.wait is not None:
            log.info("%s: directory %s is there now: starting", job.name, job.wait.path)
            job.wait = None
        try:
            if job.meta is None:
                assert entry.magnet is not None
                job.fetch = self.client.add_magnet(entry.magnet, entry.dir, peers=entry.peers,
                                                   config=self.torrent_config(entry))
            else:
                job.torrent = self.client.add(job.meta, entry.dir, mode=entry.mode, peers=entry.peers,
                                              config=self.torrent_config(entry))
        except (OSError, ValueError, MinibtError) as e:
            job.error = str(e)
            log.error("%s: cannot start: %s", job.name, e)
            return
        log.info("%s: added (%s, %s%s)", job.name, entry.mode, entry.dir,
                 ", fetching the metadata" if job.fetch is not None else "")

    def _magnets_resolved(self) -> None:
        """Magnet jobs whose metadata arrived become ordinary torrents; keep the metadata for reruns."""
        for job in self.jobs.values():
            f = job.fetch
            if f is None:
                continue
            t = self.client.session.torrents.get(f.info_hash) if f.torrent is not None else None
            if t is not None:
                job.fetch = None
                job.torrent = t
                job.meta = t.meta
                log.info("%s: metadata received from the swarm", job.name)
                path = self._magnet_meta_path(job.info_hash)
                try:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    from minibt.magnetfetch import torrent_file_bytes  # loaded by the fetch already

                    write_atomic(path, torrent_file_bytes(job.meta))
                except OSError as e:
                    log.warning("%s: cannot keep the fetched metadata in %s: %s", job.name, path, e)
            elif f.failed and job.error is None:
                job.error = f"metadata: {f.error}"

    # ------------------------------------------------------------------ the tick

    def tick(self, now: float) -> None:
        dt = max(0.0, now - self._last_tick)
        self._last_tick = now
        for job in self.jobs.values():
            t = job.torrent
            if t is not None and t.state is TorrentState.SEEDING and job.finished is None:
                job.seed_s += dt
        if self.reload_requested:
            self.reload_requested = False
            self.reload()
        if now >= self._next_second:
            self._next_second = now + 1.0
            self._each_second(now)
        if self.cfg.watch_dir and now >= self._next_watch:
            self._next_watch = now + self.cfg.watch_interval_s
            self._poll_watch()
        if now >= self._next_status:
            self._next_status = now + self.cfg.status_interval_s
            self.write_status(now=now)
            self.save_state()

    def next_deadline(self, now: float) -> float:
        """When ``tick`` next has work (the loop's idle wait, loop.py): the status and the watch dir
        at their intervals; the once-a-second checks only while one of them can find something."""
        at = self._next_status
        if self.cfg.watch_dir:
            at = min(at, self._next_watch)
        if self.once and self.deadline is not None:
            at = min(at, self.deadline)
        if self._each_second_needed():
            return min(at, self._next_second)
        for job in self.jobs.values():  # a seed-time stop condition: exactly when it is reached
            t, limit = job.torrent, job.entry.seed_time_s
            if t is not None and limit is not None and job.finished is None and t.state is TorrentState.SEEDING:
                at = min(at, max(self._next_second, now + limit - job.seed_s))
        return at

    def _each_second_needed(self) -> bool:
        """Can ``_each_second`` find work (anything but a steady seed waits on it)?"""
        if self.reload_requested or self._removing or self._pending_add or self._hooks or self.cfg.schedule.alt_windows:
            return True  # (download windows matter to unfinished downloads only: those are below)
        for job in self.jobs.values():
            t = job.torrent
            if job.wait is not None or job.fetch is not None:
                return True
            if t is None or job.finished is not None or t.state in (TorrentState.STOPPED, TorrentState.ERROR):
                continue
            if t.state is not TorrentState.SEEDING or not t.complete:
                return True  # downloading or checking: the on-complete hook waits on it
            if job.entry.seed_ratio is not None and t.stats.uploaded != job.checked_up:
                return True
        return False

    def _fire_hooks(self) -> None:
        """on_complete, once per download, as soon as every piece is verified (data synced by then)."""
        for job in self.jobs.values():
            t = job.torrent
            if t is not None and t.complete and t.state is TorrentState.SEEDING and job.entry.mode == Mode.DOWNLOAD \
                    and not job.hook_done:
                job.hook_done = True
                self._run_hook(job)
                self.save_state()

    def _each_second(self, now: float) -> None:
        for job in self.jobs.values():
            if job.wait is not None and job.wait.due(now):
                self._start(job)
        self._magnets_resolved()
        self._fire_hooks()
        for job in self.jobs.values():
            t = job.torrent
            if t is None:
                continue
            if not self.once and job.finished is None and t.state is TorrentState.SEEDING:
                job.checked_up = t.stats.uploaded
                why = stop_reason(job.entry, uploaded=t.stats.uploaded, size=t.meta.total_length, seeding_s=job.seed_s)
                if why is not None:
                    log.info("%s: stop condition reached (%s): seeding stopped", t.meta.name, why)
                    job.finished = why
                    self._removing[job.ih] = job
                    self.save_state()
        for ih, job in list(self._removing.items()):
            if self.client.session.remove_torrent(job.info_hash, now=now):
                del self._removing[ih]
                job.torrent = None
                if job.finished is None:
                    self.jobs.pop(ih, None)
        for entry in list(self._pending_add):
            if entry.key[0] not in self._removing:
                self._pending_add.remove(entry)
                self._add(entry)
        self._apply_schedule(now)
        self._hooks = [p for p in self._hooks if not _reaped(p)]

    def _apply_schedule(self, now: float, *, force: bool = False) -> None:
        sched = self.cfg.schedule
        sod = self._local_seconds(self.client.clock.wall())
        may_download = in_windows(sched.download_windows, sod)
        for job in self.jobs.values():
            t = job.torrent
            if t is None or t.complete or t.state in (TorrentState.STOPPED, TorrentState.ERROR):
                continue
            if may_download:
                t.resume_download(now=now)
            else:
                windows = ", ".join(str(w) for w in sched.download_windows)
                t.pause_download(f"outside the download windows ({windows})", now=now)
        alt = bool(sched.alt_windows) and in_windows(sched.alt_windows, sod)
        if force or alt != self._alt_active:
            self._alt_active = alt
            up, down = (
                (sched.alt_upload_limit_bps, sched.alt_download_limit_bps)
                if alt else (self.cfg.upload_limit_bps, self.cfg.download_limit_bps)
            )
            self.client.set_rate_limits(up=up, down=down)
            if not force or alt:
                log.info("rate limits now %s: up %s, down %s B/s", "alternative" if alt else "normal", up, down)

    def _run_hook(self, job: Job) -> None:
        hook = job.entry.on_complete if job.entry.on_complete is not None else self.cfg.on_complete
        if not hook:
            return
        path = os.path.join(job.entry.dir, job.name)
        argv = hook_argv(hook, job.name, path)
        try:
            self._hooks.append(self._spawn(argv))
            log.info("%s: on_complete started: %s", job.name, argv)
        except OSError as e:
            log.error("%s: on_complete %s failed to start: %s", job.name, argv[0], e)

    # ------------------------------------------------------------------ --once

    def outcomes(self) -> list[JobOutcome]:
        outs = []
        for job in self.jobs.values():
            if job.entry.mode != Mode.DOWNLOAD:
                continue
            t = job.torrent
            if t is None and (job.fetch is not None or job.wait is not None) and job.error is None:
                outs.append(JobOutcome(False, None))  # still fetching the metadata / waiting for its dir
            elif t is None:
                outs.append(JobOutcome(False, job.error or "not started"))
            else:
                err = t.error if t.state is TorrentState.ERROR else None
                outs.append(JobOutcome(t.complete and t.state is TorrentState.SEEDING, err))
        return outs

    def once_result(self, now: float) -> int | None:
        time_up = self.deadline is not None and now >= self.deadline
        return once_exit_code(self.outcomes(), time_up=time_up or self.stop_signal is not None)

    def done(self) -> bool:
        """For Client.run(until=...): --once has its answer."""
        if not self.once or self.once_result(self.client.clock.now()) is None:
            return False
        self._fire_hooks()
        return True

    # ------------------------------------------------------------------ SIGHUP

    def reload(self) -> None:
        path = self.cfg.path
        if path is None:
            return
        try:
            new = load_config(path)
        except ConfigError as e:
            log.error("reload refused, keeping the running configuration: %s", e)
            return
        for key in ("listen_port", "bind", "interface", "state_dir", "transports", "memory_budget_bytes",
                    "max_connections"):
            if getattr(new, key) != getattr(self.cfg, key):
                log.warning("reload: %s changed; it takes effect at the next restart", key)
        old_entries = {ih: j.entry for ih, j in self.jobs.items() if not j.entry.source.startswith(self._watched_dir())}
        entries = [e for e in new.torrents if not self.once or e.mode == Mode.DOWNLOAD]
        plan = plan_reload(old_entries, entries)
        for ih in plan.remove:
            job = self.jobs.pop(ih)
            log.info("reload: %s removed from the config: stopping it", job.name)
            if job.torrent is not None or job.fetch is not None:
                job.finished = None
                self._removing[ih] = job
        for upd in plan.update:
            job = self.jobs[upd.key[0]]
            job.entry = upd
            if job.torrent is not None and upd.peers:
                job.torrent.add_candidates(list(upd.peers), PeerSource.USER, now=self.client.clock.now())
        self._pending_add.extend(plan.add)
        self.cfg = dataclasses.replace(
            new, listen_port=self.cfg.listen_port, bind=self.cfg.bind, interface=self.cfg.interface,
            state_dir=self.cfg.state_dir,
            transports=self.cfg.transports, memory_budget_bytes=self.cfg.memory_budget_bytes,
        )
        set_log_level(self.cfg.log_level)
        self._apply_schedule(self.client.clock.now(), force=True)
        log.info("reloaded %s: %d removed, %d added, %d updated", path, len(plan.remove), len(plan.add), len(plan.update))

    # ------------------------------------------------------------------ the watch dir

    def _watched_dir(self) -> str:
        return os.path.join(self.cfg.state_dir, WATCHED_DIR)

    def _watched_entries(self) -> list[TorrentEntry]:
        d = self._watched_dir()
        out: list[TorrentEntry] = []
        try:
            names = sorted(os.listdir(d))
        except OSError:
            return out
        for n in names:
            if n.endswith(".torrent"):
                path = os.path.join(d, n)
                try:
                    meta = load_metainfo(path)
                except (MetainfoError, OSError) as e:
                    log.warning("ignoring %s: %s", path, e)
                    continue
                except Exception as e:
                    self.client.session.faults.record(FaultKind.WATCH_FILE, path, e)
                    continue
                out.append(self._watch_entry(path, meta=meta))
            elif n.endswith(".magnet"):
                path = os.path.join(d, n)
                try:
                    with open(path, encoding="utf-8") as f:
                        m = parse_magnet(f.read(64 << 10).strip())
                except (OSError, UnicodeDecodeError, MagnetError) as e:
                    log.warning("ignoring %s: %s", path, e)
                    continue
                out.append(self._watch_entry(path, magnet=m))
        return out

    def _watch_entry(self, source: str, *, meta: Metainfo | None = None, magnet: Magnet | None = None) -> TorrentEntry:
        """A torrent taken from the watch dir: downloaded to ``download_dir``, then seeded until the config's
        ``watch_seed_ratio`` / ``watch_seed_time`` (by default, on and on)."""
        cfg = self.cfg
        return TorrentEntry(source=source, dir=cfg.download_dir, mode=Mode.DOWNLOAD, meta=meta, magnet=magnet,
                            seed_ratio=cfg.watch_seed_ratio, seed_time_s=cfg.watch_seed_time_s)

    def _poll_watch(self) -> None:
        """Pick up new .torrent/.magnet files once their size stopped changing between two polls."""
        wd = self.cfg.watch_dir
        if not wd:
            return
        now = self.client.clock.now()
        try:
            names = sorted(os.listdir(wd))
        except OSError as e:  # a share not mounted yet: said once, in the status, and tried every interval
            why = "missing" if isinstance(e, FileNotFoundError) else f"unreadable ({e.strerror or e})"
            if self._watch_wait is None:
                self._watch_wait = DirWait(wd, why, since=now, retry_s=self.cfg.watch_interval_s)
                log.warning("watch dir: %s", self._watch_wait.describe(now))
            else:
                self._watch_wait.still_waiting(wd, why, now=now)
            return
        if self._watch_wait is not None:
            log.info("watch dir %s is there now", wd)
            self._watch_wait = None
        # only names still there are remembered: a taken file is renamed away, and one dropped again
        # later under the same name is new; a file gone before its second poll is forgotten
        present = set(names)
        self._watch_seen &= present
        for gone in self._watch_sizes.keys() - present:
            del self._watch_sizes[gone]
        for n in names:
            if not (n.endswith(".torrent") or n.endswith(".magnet")) or n in self._watch_seen:
                continue
            path = os.path.join(wd, n)
            try:
                st = os.stat(path)
            except OSError:
                continue
            sig = (st.st_size, st.st_mtime_ns)
            if self._watch_sizes.get(n) != sig:
                self._watch_sizes[n] = sig  # new or still being written: look again next poll
                if not self.once:
                    continue
            self._watch_sizes.pop(n, None)
            self._watch_seen.add(n)
            try:
                self._take_watch_file(path)
            except Exception as e:  # one watch-dir file never stops the daemon (STYLE.md section 13)
                self.client.session.faults.record(FaultKind.WATCH_FILE, path, e)
                if os.path.exists(path):
                    _rename(path, path + ".invalid")

    def _take_watch_file(self, path: str) -> None:
        if path.endswith(".magnet"):
            self._take_watch_magnet(path)
            return
        try:
            with open(path, "rb") as f:
                raw = read_capped(f, DEFAULT_MAX_METAINFO_BYTES)
            meta = parse_metainfo(raw)  # the bytes the copy below keeps (a read of 16 MiB once cut bigger ones)
        except (MetainfoError, OSError) as e:
            log.error("watch dir: %s is not a valid .torrent file: %s", path, e)
            _rename(path, path + ".invalid")
            return
        if meta.info_hash.hex() in self.jobs:
            log.info("watch dir: %s is already running", path)
            _rename(path, path + ".added")
            return
        copy = os.path.join(self._watched_dir(), meta.info_hash.hex() + ".torrent")
        try:
            os.makedirs(self._watched_dir(), exist_ok=True)
            write_atomic(copy, raw)
        except OSError as e:
            log.error("watch dir: cannot keep a copy of %s in %s (trying again later): %s", path, copy, e)
            self._watch_seen.discard(os.path.basename(path))
            return
        _rename(path, path + ".added")
        log.info("watch dir: %s added (%s)", meta.name, path)
        self._add(self._watch_entry(copy, meta=meta))

    def _take_watch_magnet(self, path: str) -> None:
        """A ``*.magnet`` file (one magnet URI): kept in the state dir like a watched .torrent."""
        try:
            with open(path, encoding="utf-8") as f:
                uri = f.read(64 << 10).strip()
            m = parse_magnet(uri)
        except (OSError, UnicodeDecodeError, MagnetError) as e:
            log.error("watch dir: %s: not a valid magnet URI: %s", path, e)
            _rename(path, path + ".invalid")
            return
        if m.info_hash.hex() in self.jobs:
            log.info("watch dir: %s is already running", path)
            _rename(path, path + ".added")
            return
        copy = os.path.join(self._watched_dir(), m.info_hash.hex() + ".magnet")
        try:
            os.makedirs(self._watched_dir(), exist_ok=True)
            write_atomic(copy, uri.encode())
        except OSError as e:
            log.error("watch dir: cannot keep a copy of %s in %s (trying again later): %s", path, copy, e)
            self._watch_seen.discard(os.path.basename(path))
            return
        _rename(path, path + ".added")
        log.info("watch dir: magnet %s added (%s)", m.name or m.info_hash.hex(), path)
        self._add(self._watch_entry(copy, magnet=m))

    # ------------------------------------------------------------------ state files

    def _load_bans(self) -> None:
        bans = read_json(os.path.join(self.cfg.state_dir, BANS_NAME))
        if isinstance(bans, dict):  # at most MAX_BANS of them (a longer list: an older minibt's, or not minibt's)
            for ip, why in list(bans.items())[-MAX_BANS:]:
                if isinstance(ip, str) and isinstance(why, str):
                    self.client.session.ban(ip, why if why.endswith("(remembered)") else f"{why} (remembered)")

    def save_state(self, *, force: bool = False) -> None:
        d = self.cfg.state_dir
        state = dict(self._persist)
        for job in self.jobs.values():
            state[job.key] = {"seed_s": round(job.seed_s, 1), "hook_done": job.hook_done, "finished": job.finished,
                              "finished_for": [job.entry.seed_ratio, job.entry.seed_time_s]}
        self._persist = state
        bans = self.client.session.reputation.banned()
        try:
            # Rewritten only when something changed (SD-card wear): the status file is the one that ticks.  Seeding
            # time alone: at most every SEED_TIME_SAVE_S for all the torrents together, not for each one.
            now = self.client.clock.now()
            kept = {k: {**v, "seed_s": None} for k, v in state.items()}
            if force or kept != self._saved_state or (now - self._state_saved_at >= SEED_TIME_SAVE_S and any(
                    state[k]["seed_s"] != self._saved_seed.get(k) for k in state)):
                write_json_atomic(os.path.join(d, STATE_NAME), state)
                self._saved_state, self._state_saved_at = kept, now
                self._saved_seed = {k: v["seed_s"] for k, v in state.items()}
            if bans != self._saved_bans:
                write_json_atomic(os.path.join(d, BANS_NAME), bans)
                self._saved_bans = bans
        except OSError as e:
            log.warning("could not save runner state: %s", e)
        if force or self.client.clock.now() - self._dht_saved_at >= DHT_SAVE_S:
            self._dht_saved_at = self.client.clock.now()
            self.client.save_dht()  # our id and table, so a restart rejoins in seconds (dht.dat)

    def status(self) -> dict[str, Any]:
        client = self.client
        now = client.clock.now()
        proc = self._process_info()
        torrents = []
        for job in self.jobs.values():
            t = job.torrent
            size = job.meta.total_length if job.meta is not None else 0
            if t is not None:
                st: dict[str, Any] = dict(t.status(now))
            elif job.fetch is not None:
                st = dict(job.fetch.status(now))
            elif job.wait is not None:
                st = {"name": job.name, "info_hash": job.ih, "state": "waiting", "waiting": job.wait.describe(now),
                      "error": None, "total_bytes": size, "progress": None}
            else:
                st = {"name": job.name, "info_hash": job.ih, "state": "finished" if job.finished else "error",
                      "error": job.error, "total_bytes": size, "progress": None}
            up = t.stats.uploaded if t is not None else 0
            dht = client.session.dht
            st["dht"] = dht.status(bytes.fromhex(job.ih)) if dht is not None else None  # the last DHT search
            st.update({
                "mode": job.entry.mode, "dir": job.entry.dir, "source": job.entry.source,
                "ratio": up / size if size else 0.0,
                "seed_seconds": round(job.seed_s, 1), "finished": job.finished,
            })
            torrents.append(st)
        up_limit, down_limit = client.rate_limits()
        return {
            "version": 1, "pid": os.getpid(), "running": self.stop_signal is None, "mode": "once" if self.once else "daemon",
            "config": self.cfg.path, "listen_port": client.port, "started_at": self.started_wall,
            "paused": client.paused_reason,
            "updated_at": client.clock.wall(), "process": proc,
            "limits": {**dataclasses.asdict(self.limits), "memory_budget_bytes": self.cfg.memory_budget_bytes,
                       "upload_limit_bps": up_limit, "download_limit_bps": down_limit,
                       "alt_rates": bool(self._alt_active)},
            "torrents": torrents,
            "watch_dir": None if not self.cfg.watch_dir else {
                "path": self.cfg.watch_dir,
                "waiting": self._watch_wait.describe(now) if self._watch_wait is not None else None},
            "faults": client.session.faults.stats(),
            "dht": client.session.dht.stats(now) if client.session.dht is not None else None,
        }

    def _process_info(self) -> dict[str, Any]:
        now = self.client.clock.now()
        first, self._sampled = not self._sampled, True
        sample = process_sample()  # /proc: the daemon needs no psutil (1.5 MiB) on Linux
        if sample is None:
            import psutil

            if self._proc is None:
                self._proc = psutil.Process()
            p = self._proc
            cpu = p.cpu_times()
            sample = (int(p.memory_info().rss), float(cpu.user + cpu.system), int(p.num_threads()))
        rss, cpu_s, threads = sample
        # The kernel's peak: a burst between two samples is what the OOM killer sees.
        self.peak_rss = max(self.peak_rss, rss, peak_rss_bytes())
        if first:
            self._cpu_sample = (now, cpu_s)
        # CPU % over the time since the previous sample (at least 1 s apart, else the last figure stays).
        last_now, last_cpu = self._cpu_sample
        if now - last_now >= 1.0:
            self._cpu_percent = 100.0 * (cpu_s - last_cpu) / (now - last_now)
            self._cpu_sample = (now, cpu_s)
        return {"rss_bytes": rss, "peak_rss_bytes": self.peak_rss, "cpu_percent": round(self._cpu_percent, 1),
                "cpu_seconds": round(cpu_s, 2), "threads": threads}

    def write_status(self, *, now: float | None = None) -> None:
        """Write the status file; with ``now`` (the periodic refresh) only if something other than its
        ticking fields changed or STATUS_HEARTBEAT_S have passed since it was last written."""
        doc = self.status()
        path = os.path.join(self.cfg.state_dir, STATUS_NAME)
        proc = doc["process"]
        dht = doc["dht"]  # its traffic counters tick with every datagram: only what `minibt status` shows counts
        seen = {**doc, "updated_at": None, "process": (proc["rss_bytes"] >> 20, proc["peak_rss_bytes"] >> 20,
                                                      int(proc["cpu_percent"]) // 5, proc["threads"]),
                "torrents": [{k: v for k, v in t.items() if k not in _TORRENT_TICKING} for t in doc["torrents"]],
                "dht": dht and (dht.get("nodes"), dht.get("good"), dht.get("store_info_hashes"))}
        try:
            if now is not None and seen == self._status_seen:
                if now - self._status_at >= STATUS_HEARTBEAT_S:
                    self._status_at = now
                    os.utime(path)  # alive: the mtime says so, without a write
                return
            write_json_atomic(path, doc)
        except OSError as e:
            log.warning("could not write status: %s", e)
            return
        self._status_seen = seen
        self._status_at = self.client.clock.now() if now is None else now


def _reaped(p: Any) -> bool:
    rc = p.poll()
    if rc is None:
        return False
    (log.info if rc == 0 else log.warning)("on_complete %s exited with %s", p.args[0], rc)
    return True


def _spawn_hook(argv: list[str]) -> subprocess.Popen[bytes]:
    import subprocess  # only for a completion hook (0.46 MiB a daemon without one does not spend)

    # A list, never a shell string: torrent names cannot inject commands.
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, close_fds=True, start_new_session=True)


def _rename(src: str, dst: str) -> None:
    try:
        os.replace(src, dst)
    except OSError as e:
        log.warning("cannot rename %s: %s", src, e)


def set_log_level(level: str) -> None:
    logging.getLogger().setLevel(getattr(logging, level.upper()))
