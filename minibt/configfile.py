"""The runner's configuration file: TOML (``tomllib``) -> frozen dataclasses, validated once.

``load_config(path)`` reads the whole file and checks every key before anything starts: an
unknown key, a wrong type, a missing file or a bad value raises :class:`ConfigError` naming the
file, the key (``torrent[2].seed_ratio``) and what was expected.  The defaults of the dataclasses
below are exactly the values written in ``config/minibt.toml`` (a unit test holds them equal), so
the documented example is also the built-in default.  Relative paths are relative to the config
file's directory; ``~`` is expanded.  Pure: no sockets, threads or clock (file existence checks only).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from minibt.errors import ConfigError, MagnetError, MetainfoError
from minibt.ifwatch import valid_interface_name
from minibt.magnet import Magnet, parse_magnet
from minibt.metainfo import Metainfo, load_metainfo
from minibt.settings import Encryption, Mode, Transport, to_transports, valid_transports
from minibt.units import (
    parse_duration,
    parse_hhmm,
    parse_rate,
    parse_size,
)
from minibt.urls import parse_host_port

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MODES = tuple(m.value for m in Mode)
LOG_LEVELS = ("debug", "info", "warning", "error")
MIN_MEMORY_BUDGET = 32 << 20  # below this the interpreter alone does not fit (measured ~25 MiB RSS)
DEFAULT_MEMORY_BUDGET = 96 << 20  # a 512 MiB Pi Zero 2 keeps ~400 MiB for the OS, page cache and others

MAX_KEY_DOTS = 100  # convention: the config's deepest key has one dot; tomllib is quadratic in this
MAX_SEED_RATIO = 1_000_000  # convention: upload a million times the torrent; larger means a typo


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Minutes after local midnight, [start, end); end < start wraps past midnight (22:00-06:00)."""

    start_min: int
    end_min: int

    def contains(self, minute_of_day: int) -> bool:
        if self.start_min == self.end_min:
            return False
        if self.start_min < self.end_min:
            return self.start_min <= minute_of_day < self.end_min
        return minute_of_day >= self.start_min or minute_of_day < self.end_min

    def __str__(self) -> str:
        return f"{self.start_min // 60:02d}:{self.start_min % 60:02d}-{self.end_min // 60:02d}:{self.end_min % 60:02d}"


@dataclass(frozen=True, slots=True)
class TorrentEntry:
    """One ``[[torrent]]`` table."""

    source: str  # absolute .torrent path, or a magnet URI
    dir: str  # absolute download directory
    mode: Mode = Mode.DOWNLOAD
    files: tuple[str, ...] | None = None  # file selection: paths inside the torrent; None = every file
    file_indexes: tuple[int, ...] | None = None  # the same as indexes into meta.files
    seed_ratio: float | None = None  # stop seeding at uploaded/size >= this
    seed_time_s: float | None = None  # stop seeding after this long seeding
    on_complete: tuple[str, ...] | None = None  # argv; None = the global hook; () = no hook
    peers: tuple[tuple[str, int], ...] = ()  # peers to dial directly (LAN, tests)
    encryption: Encryption | None = None  # this torrent's MSE/PE policy; None = the [client] one
    magnet: Magnet | None = None  # parsed when source is a magnet URI
    meta: Metainfo | None = field(default=None, compare=False, repr=False)  # parsed .torrent

    @property
    def is_magnet(self) -> bool:
        return self.magnet is not None

    @property
    def key(self) -> tuple[str, str]:
        """Identity for reloads: (info-hash hex, download dir)."""
        ih = self.magnet.info_hash if self.magnet is not None else (self.meta.info_hash if self.meta else b"")
        return ih.hex(), self.dir


@dataclass(frozen=True, slots=True)
class Schedule:
    """``[schedule]``: download windows and the alternative (lower) rate-limit window."""

    download_windows: tuple[TimeWindow, ...] = ()  # empty = download at any time
    alt_windows: tuple[TimeWindow, ...] = ()  # while inside, the alt limits replace the normal ones
    alt_upload_limit_bps: float | None = None
    alt_download_limit_bps: float | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """The whole runner configuration (the defaults are those of config/minibt.toml)."""

    path: str | None = None
    listen_port: int = 6881
    bind: str = "0.0.0.0"
    interface: str | None = None  # SO_BINDTODEVICE for every socket; networking pauses while it is down
    state_dir: str = "~/.local/state/minibt"
    download_dir: str = "~/Downloads"
    max_connections: int = 100
    max_peers_per_torrent: int = 30
    upload_limit_bps: float | None = None
    download_limit_bps: float | None = None
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET
    transports: tuple[Transport, ...] = (Transport.TCP, Transport.UTP)
    dht: bool = True  # Mainline DHT (BEP 5); never for private torrents
    dht_bootstrap: tuple[tuple[str, int], ...] | None = None  # None: MINIBT_DHT_BOOTSTRAP or the public routers
    dht_read_only: bool = False  # BEP 43: search, answer nothing (metered links)
    encryption: Encryption = Encryption.PREFERRED  # MSE/PE: none, preferred or required
    holepunch: bool = True  # BEP 55: relay for peers behind NATs, reach NATed peers through a relay (needs uTP)
    pex: bool = True  # BEP 11 peer exchange (never for private torrents)
    log_level: str = "info"
    log_file: str | None = None
    log_max_bytes: int = 16 << 20  # a log file is rotated at this size (two old ones kept); 0: never (logrotate)
    watch_dir: str | None = None
    watch_interval_s: float = 30.0
    watch_seed_ratio: float | None = None  # the stop conditions of torrents taken from the watch dir (None: seed on)
    watch_seed_time_s: float | None = None
    status_interval_s: float = 5.0
    resume_interval_s: float = 30.0
    disk_retry_s: float = 30.0
    on_complete: tuple[str, ...] | None = None
    schedule: Schedule = Schedule()
    torrents: tuple[TorrentEntry, ...] = ()


# ---------------------------------------------------------------------- value parsers


def parse_window(text: str) -> TimeWindow:
    """"HH:MM-HH:MM" (end may be 24:00; an end before the start wraps past midnight)."""
    start, sep, end = text.partition("-")
    if not sep:
        raise ValueError(f"bad window {text!r}, expected HH:MM-HH:MM")
    s, e = parse_hhmm(start), parse_hhmm(end)
    if s == 1440:
        raise ValueError(f"bad window {text!r}: a window cannot start at 24:00")
    if s == e:
        raise ValueError(f"empty window {text!r}")
    return TimeWindow(s, e)


def parse_peer_addr(text: str) -> tuple[str, int]:
    """``host:port``, ``ipv4:port`` or ``[ipv6]:port`` (urls.parse_host_port); ValueError otherwise."""
    try:
        return parse_host_port(text)
    except ValueError as e:
        raise ValueError(f"bad peer {text[:80]!r}, expected HOST:PORT: {e}") from None


# ---------------------------------------------------------------------- the checker


class _Reader:
    """Takes keys out of one TOML table, reporting errors with the file and the dotted key."""

    def __init__(self, file: str, prefix: str, table: dict[str, Any]) -> None:
        self.file = file
        self.prefix = prefix
        self.table = dict(table)

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def error(self, key: str, msg: str) -> ConfigError:
        return ConfigError(self.file, self.name(key), msg)

    def take(self, key: str, types: type | tuple[type, ...], expected: str) -> Any:
        if key not in self.table:
            return None
        v = self.table.pop(key)
        if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise self.error(key, f"expected {expected}, got a boolean")
        if not isinstance(v, types):
            raise self.error(key, f"expected {expected}, got {type(v).__name__} {v!r}")
        return v

    def convert(self, key: str, types: type | tuple[type, ...], expected: str, fn: Any) -> Any:
        v = self.take(key, types, expected)
        if v is None:
            return None
        try:
            return fn(v)
        except ValueError as e:
            raise self.error(key, f"expected {expected}: {e}") from None

    def str_list(self, key: str, expected: str) -> tuple[str, ...] | None:
        v = self.take(key, list, expected)
        if v is None:
            return None
        if not all(isinstance(x, str) for x in v):
            raise self.error(key, f"expected {expected} (every item a string)")
        return tuple(v)

    def finish(self) -> None:
        for key in self.table:
            raise self.error(key, "unknown key (check the spelling; see config/minibt.toml)")


def _path(base: str, p: str) -> str:
    p = os.path.expanduser(p)
    return os.path.normpath(p if os.path.isabs(p) else os.path.join(base, p))


def _positive_int(lo: int, hi: int) -> Any:
    def f(v: int) -> int:
        if not lo <= v <= hi:
            raise ValueError(f"{str(v)[:40]} is out of range")
        return v

    return f


def _hook(r: _Reader, key: str) -> tuple[str, ...] | None:
    argv = r.str_list(key, "a command as a list of strings, e.g. [\"/usr/local/bin/notify\", \"--done\"]")
    if argv and not argv[0]:
        raise r.error(key, "expected a command list whose first item is the program")
    return argv


def _windows(r: _Reader, key: str) -> tuple[TimeWindow, ...]:
    items = r.str_list(key, 'a list of "HH:MM-HH:MM" strings')
    out = []
    for s in items or ():
        try:
            out.append(parse_window(s))
        except ValueError as e:
            raise r.error(key, f"expected a list of \"HH:MM-HH:MM\" strings: {e}") from None
    return tuple(out)


def _schedule(file: str, table: dict[str, Any]) -> Schedule:
    r = _Reader(file, "schedule.", table)
    rate = (str, int)
    s = Schedule(
        download_windows=_windows(r, "download_windows"),
        alt_windows=_windows(r, "alt_rate_windows"),
        alt_upload_limit_bps=r.convert("alt_upload_limit", rate, "a rate such as \"200KiB\" (0 = unlimited)", parse_rate),
        alt_download_limit_bps=r.convert("alt_download_limit", rate, "a rate such as \"500KiB\" (0 = unlimited)", parse_rate),
    )
    r.finish()
    return s


def torrent_file_names(meta: Metainfo) -> list[str]:
    """The names ``files = [...]`` uses: paths inside the torrent joined by "/" (the name itself if single-file)."""
    if not meta.multi_file:
        return [meta.name]
    return ["/".join(f.path) for f in meta.files]


def _select_files(r: _Reader, files: tuple[str, ...], meta: Metainfo | None, mode: Mode) -> tuple[int, ...]:
    if meta is None:
        raise r.error("files", "file selection needs a .torrent source (a magnet's file list is not known yet)")
    if mode is not Mode.DOWNLOAD:
        raise r.error("files", "file selection is for mode = \"download\" (a seed serves the files it has)")
    if not files:
        raise r.error("files", "expected at least one file (leave the key out to download every file)")
    names = torrent_file_names(meta)
    index = {n: i for i, n in enumerate(names) if not meta.files[i].pad}
    out = []
    for name in files:
        i = index.get(name.strip("/"))
        if i is None:
            shown = ", ".join(repr(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
            raise r.error("files", f"no file {name!r} in the torrent (its files: {shown})")
        out.append(i)
    return tuple(sorted(set(out)))


def _torrent(file: str, base: str, i: int, table: object, default_dir: str) -> TorrentEntry:
    if not isinstance(table, dict):
        raise ConfigError(file, f"torrent[{i}]", "expected a table ([[torrent]])")
    r = _Reader(file, f"torrent[{i}].", table)
    source = r.take("source", str, "a .torrent path or a magnet URI")
    if not source:
        raise r.error("source", "missing: expected a .torrent path or a magnet URI")
    magnet: Magnet | None = None
    meta: Metainfo | None = None
    if source.startswith("magnet:"):
        try:
            magnet = parse_magnet(source)
        except MagnetError as e:
            raise r.error("source", f"expected a valid magnet URI: {e}") from None
    else:
        source = _path(base, source)
        if not os.path.isfile(source):
            raise r.error("source", f"{source}: no such file (expected a .torrent file)")
        try:
            meta = load_metainfo(source)
        except (MetainfoError, OSError) as e:
            raise r.error("source", f"{source}: not a valid .torrent file: {e}") from None
    mode_name = r.take("mode", str, f"one of {', '.join(MODES)}") or Mode.DOWNLOAD.value
    if mode_name not in MODES:
        raise r.error("mode", f"expected one of {', '.join(MODES)}, got {mode_name!r}")
    mode = Mode(mode_name)
    d = r.take("dir", str, "a directory path")
    directory = _path(base, d) if d else default_dir
    # A missing dir is not an error here: the runner waits for it (a share that mounts late, runplan.dir_problem).
    if mode is Mode.SEED and magnet is not None:
        raise r.error("mode", "a magnet source cannot be seeded before its data is downloaded; use mode = \"download\"")
    files = r.str_list("files", "a list of file paths inside the torrent")
    file_indexes = _select_files(r, files, meta, mode) if files is not None else None
    ratio = r.take("seed_ratio", (int, float), "a number >= 0 (0 = no ratio limit)")
    if ratio is not None and not (0 <= ratio <= MAX_SEED_RATIO):  # also False for nan; no float(huge int)
        raise r.error("seed_ratio", f"expected a number >= 0 and <= {MAX_SEED_RATIO}, got {str(ratio)[:40]}")
    seed_time = r.convert("seed_time", (str, int, float), "a duration such as \"48h\" (0 = no time limit)", parse_duration)
    peers = r.str_list("peers", 'a list of "HOST:PORT" strings')
    try:
        peer_addrs = tuple(parse_peer_addr(p) for p in peers or ())
    except ValueError as e:
        raise r.error("peers", str(e)) from None
    hook = _hook(r, "on_complete")
    enc = _encryption(r)
    r.finish()
    return TorrentEntry(
        source=source, dir=directory, mode=mode, files=files, file_indexes=file_indexes,
        seed_ratio=float(ratio) if ratio else None, seed_time_s=seed_time or None,
        on_complete=hook, peers=peer_addrs, encryption=Encryption(enc) if enc is not None else None,
        magnet=magnet, meta=meta,
    )


def _encryption(r: _Reader) -> str | None:
    enc = r.take("encryption", str, "one of none, preferred, required")
    if enc is not None and enc not in [e.value for e in Encryption]:
        raise r.error("encryption", f"expected one of none, preferred, required, got {enc[:40]!r}")
    return str(enc) if enc is not None else None


def _check_key_depth(text: str, file: str) -> None:
    """Refuse absurdly deep dotted keys before tomllib, whose time grows with the square of the depth."""
    for n, line in enumerate(text.splitlines(), 1):
        key = line if line.lstrip().startswith("[") else line.partition("=")[0]
        if key.count(".") > MAX_KEY_DOTS:
            raise ConfigError(file, None, f"line {n}: a key with more than {MAX_KEY_DOTS} dots")


def parse_config(text: str, file: str = "<config>", *, base_dir: str | None = None) -> Config:
    """Validate TOML text; ConfigError(file, key, what was expected) on the first problem."""
    import tomllib  # only here: `download --timeout 1h` parses a duration with this module, no TOML

    _check_key_depth(text, file)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, None, f"not valid TOML: {e}") from None
    except (ValueError, RecursionError) as e:  # an integer of > 4300 digits; arrays nested too deeply
        raise ConfigError(file, None, f"not valid TOML: {str(e)[:120]}") from None
    base = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(file))
    top = _Reader(file, "", doc)
    client = _Reader(file, "client.", top.take("client", dict, "a table [client]") or {})
    log = _Reader(file, "log.", top.take("log", dict, "a table [log]") or {})
    schedule = _schedule(file, top.take("schedule", dict, "a table [schedule]") or {})
    torrents_raw = top.take("torrent", list, "an array of tables [[torrent]]") or []
    top.finish()
    d = Config()
    rate = (str, int)
    port = client.convert("listen_port", int, "a port number 0..65535", _positive_int(0, 65535))
    bind = client.take("bind", str, "an IP address to listen on")
    if bind is not None:
        try:
            ipaddress.ip_address(bind)
        except ValueError:
            raise client.error("bind", f"expected an IP address to listen on, got {bind[:80]!r}") from None
    interface = client.take("interface", str, "a network interface name such as \"wg0\" (\"\" = any)")
    if interface and not valid_interface_name(interface):
        raise client.error("interface", f"expected a network interface name such as \"wg0\", got {interface[:80]!r}")
    state_dir = client.take("state_dir", str, "a directory path")
    download_dir = client.take("download_dir", str, "a directory path")
    max_conn = client.convert("max_connections", int, "an integer 1..10000", _positive_int(1, 10000))
    max_peers = client.convert("max_peers_per_torrent", int, "an integer 1..1000", _positive_int(1, 1000))
    up = client.convert("upload_limit", rate, "a rate such as \"500KiB\" (0 = unlimited)", parse_rate)
    down = client.convert("download_limit", rate, "a rate such as \"2MiB\" (0 = unlimited)", parse_rate)
    budget = client.convert("memory_budget", rate, "a size such as \"96MiB\"", parse_size)
    if budget is not None and budget < MIN_MEMORY_BUDGET:
        raise client.error("memory_budget", f"expected at least {MIN_MEMORY_BUDGET >> 20}MiB, got {budget} bytes")
    transports = client.str_list("transports", "a list of \"tcp\" and \"utp\"")
    if transports is not None and not valid_transports(transports):
        raise client.error("transports", f"expected a non-empty list of distinct \"tcp\"/\"utp\", got {list(transports)}")
    transport_order = to_transports(transports) if transports is not None else None
    dht = client.take("dht", bool, "true or false")
    dht_ro = client.take("dht_read_only", bool, "true or false")
    holepunch = client.take("holepunch", bool, "true or false")
    pex = client.take("pex", bool, "true or false")
    enc = _encryption(client)
    boot = client.str_list("dht_bootstrap", "a list of \"host:port\" DHT nodes to join through")
    try:
        dht_bootstrap = tuple(parse_peer_addr(b) for b in boot) if boot is not None else None
    except ValueError as e:
        raise client.error("dht_bootstrap", str(e)) from None
    watch_dir = client.take("watch_dir", str, "a directory path (\"\" = off)")
    watch_ratio = client.take("watch_seed_ratio", (int, float), "a number >= 0 (0 = no ratio limit)")
    if watch_ratio is not None and not (0 <= watch_ratio <= MAX_SEED_RATIO):  # also False for nan
        raise client.error("watch_seed_ratio",
                           f"expected a number >= 0 and <= {MAX_SEED_RATIO}, got {str(watch_ratio)[:40]}")
    watch_time = client.convert("watch_seed_time", (str, int, float), "a duration such as \"48h\" (0 = no time limit)",
                                parse_duration)
    durations = {}
    for key in ("watch_interval", "status_interval", "resume_interval", "disk_retry_interval"):
        v = client.convert(key, (str, int, float), "a duration such as \"30s\"", parse_duration)
        if v is not None and v < 1:
            raise client.error(key, f"expected a duration of at least 1s, got {v}s")
        durations[key] = v
    hook = _hook(client, "on_complete")
    client.finish()
    level = log.take("level", str, f"one of {', '.join(LOG_LEVELS)}")
    if level is not None and level.lower() not in LOG_LEVELS:
        raise log.error("level", f"expected one of {', '.join(LOG_LEVELS)}, got {level!r}")
    log_file = log.take("file", str, "a file path (\"\" = stderr)")
    log_max = log.convert("max_size", rate, "a size such as \"16MiB\" (0 = never rotate)", parse_size)
    if log_max is not None and 0 < log_max < 64 << 10:
        raise log.error("max_size", f"expected 0 or at least 64KiB, got {log_max} bytes")
    log.finish()
    ddir = _path(base, download_dir) if download_dir else _path(base, d.download_dir)
    if watch_dir:
        watch_dir = _path(base, watch_dir)  # polled; while missing the runner says so and retries
    entries = tuple(_torrent(file, base, i, t, ddir) for i, t in enumerate(torrents_raw))
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        ih = entry.key[0]
        if ih in seen:
            raise ConfigError(
                file, f"torrent[{i}].source", f"the same torrent (info-hash {ih}) as torrent[{seen[ih]}]"
            )
        seen[ih] = i

    def pick(v: Any, default: Any) -> Any:
        return default if v is None else v

    return Config(
        path=file,
        listen_port=pick(port, d.listen_port),
        bind=pick(bind, d.bind),
        interface=interface or None,
        state_dir=_path(base, state_dir or d.state_dir),
        download_dir=ddir,
        max_connections=pick(max_conn, d.max_connections),
        max_peers_per_torrent=pick(max_peers, d.max_peers_per_torrent),
        upload_limit_bps=up,
        download_limit_bps=down,
        memory_budget_bytes=pick(budget, d.memory_budget_bytes),
        transports=pick(transport_order, d.transports),
        dht=pick(dht, d.dht),
        dht_bootstrap=dht_bootstrap,
        dht_read_only=pick(dht_ro, d.dht_read_only),
        encryption=Encryption(enc) if enc is not None else d.encryption,
        holepunch=pick(holepunch, d.holepunch),
        pex=pick(pex, d.pex),
        log_level=(level or d.log_level).lower(),
        log_file=_path(base, log_file) if log_file else None,
        log_max_bytes=d.log_max_bytes if log_max is None else int(log_max),
        watch_dir=watch_dir or None,
        watch_interval_s=pick(durations["watch_interval"], d.watch_interval_s),
        watch_seed_ratio=float(watch_ratio) if watch_ratio else None,
        watch_seed_time_s=watch_time or None,
        status_interval_s=pick(durations["status_interval"], d.status_interval_s),
        resume_interval_s=pick(durations["resume_interval"], d.resume_interval_s),
        disk_retry_s=pick(durations["disk_retry_interval"], d.disk_retry_s),
        on_complete=hook or None,
        schedule=schedule,
        torrents=entries,
    )


def load_config(path: str) -> Config:
    """Read and validate a config file; ConfigError if it is missing, unreadable or invalid."""
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 20)
    except FileNotFoundError:
        raise ConfigError(path, None, "no such file (expected a TOML config file; see config/minibt.toml)") from None
    except OSError as e:
        raise ConfigError(path, None, f"cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(path, None, "not UTF-8 text (TOML files are UTF-8)") from None
    return parse_config(text, path)
