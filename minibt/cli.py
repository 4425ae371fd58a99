"""Command line: ``minibt download|seed|create|info|verify|run|status``.

Exit codes: 0 success; 1 failure (network, disk, interrupted download); 2 bad input
(malformed .torrent, bad arguments, bad config file).  ``run --once`` adds 3 (time up, progress
saved) and 75 (another run holds the lock); see minibt/runner.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Sequence

from minibt import __version__
from minibt.errors import (
    ConfigError,
    EncryptionUnavailable,
    MagnetError,
    MetainfoError,
    MinibtError,
    StorageError,
)
from minibt.ifwatch import valid_interface_name
from minibt.magnet import MAGNET_PREFIX, Magnet, parse_magnet
from minibt.metainfo import Metainfo, create_torrent, describe, load_metainfo
from minibt.runplan import EXIT_FAIL, EXIT_OK
from minibt.settings import (
    BOOTSTRAP_ENV,
    Encryption,
    Mode,
    TorrentState,
    Transport,
    default_state_dir,
    to_transports,
    valid_transports,
)
from minibt.urls import Addr, parse_host_port, parse_tracker_url

TYPE_CHECKING = False
if TYPE_CHECKING:  # the commands that move data import the client and its parts when they run
    from typing import Any, TextIO

    from minibt.magnetfetch import MagnetFetch
    from minibt.torrent import Torrent

log = logging.getLogger("minibt")

EXIT_USAGE = 2


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def parse_transports(text: str) -> tuple[Transport, ...]:
    names = tuple(t.strip().lower() for t in text.split(",") if t.strip())
    if not valid_transports(names):
        raise argparse.ArgumentTypeError(f"expected a list of tcp and utp, e.g. utp,tcp; got {text!r}")
    return to_transports(names)


def human_duration(s: float) -> str:
    if s != s or s == float("inf") or s > 99 * 3600:
        return "--:--:--"
    s = int(s)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def parse_peer(text: str) -> Addr:
    """``--peer HOST:PORT`` (urls.parse_host_port: port 1..65535, IPv6 in brackets)."""
    try:
        return parse_host_port(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text[:80]!r}: {e}") from None


def parse_size(text: str) -> int:
    """``--cache``, ``--piece-size``: config.parse_size (bounded by MAX_SIZE_BYTES)."""
    from minibt.units import parse_size as size

    try:
        return size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_rate(text: str) -> float | None:
    """A rate limit in bytes/s: ``500KiB``, ``2MiB``, ``1.5M``, ``300kB/s``, ``1000``; ``0`` = unlimited (None)."""
    from minibt.units import parse_rate as rate

    try:
        return rate(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e} (examples: 500KiB, 2MiB, 0 = unlimited)") from None


def _int_arg(lo: int, hi: int, what: str) -> Any:
    def parse(text: str) -> int:
        t = text.strip()
        if not t or len(t) > 10 or not t.isascii() or not (t.isdigit() or (t[0] == "-" and t[1:].isdigit())):
            raise argparse.ArgumentTypeError(f"expected {what} {lo}..{hi}, got {text[:40]!r}")
        v = int(t)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"expected {what} {lo}..{hi}, got {v}")
        return v

    return parse


parse_port = _int_arg(0, 65535, "a port number")


def parse_bind(text: str) -> str:
    """``--bind ADDRESS``: an IP address (a name would leave the source of each connection to chance)."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an IP address, got {text[:80]!r}") from None


def parse_interface(text: str) -> str:
    """``--interface NAME``: a Linux interface name (it need not exist yet: minibt waits for it)."""
    if not valid_interface_name(text):
        raise argparse.ArgumentTypeError(f"bad interface name {text[:40]!r}: expected a name such as wg0")
    return text
parse_max_peers = _int_arg(1, 1000, "a number of connections")


def parse_tracker(text: str) -> str:
    """``create --tracker URL``: an http, https or udp URL that urls.parse_tracker_url accepts."""
    try:
        parse_tracker_url(text.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"bad tracker URL {text[:80]!r}: {e}") from None
    return text.strip()


class Progress:
    """A one-line progress bar on a terminal; periodic plain lines otherwise."""

    def __init__(self, torrent: Torrent, out: TextIO, *, interval_s: float | None = None) -> None:
        self.t = torrent
        self.out = out
        self.tty = out.isatty()
        self.interval = interval_s if interval_s is not None else (0.5 if self.tty else 10.0)
        self._next = 0.0

    def __call__(self, now: float) -> None:
        if now < self._next:
            return
        self._next = now + self.interval
        st = self.t.status(now)
        frac = float(st["progress"])  # type: ignore[arg-type]
        down = float(st["rate_down"])  # type: ignore[arg-type]
        up = float(st["rate_up"])  # type: ignore[arg-type]
        left = int(st["bytes_left"])  # type: ignore[call-overload]
        eta = left / down if down > 1 else float("inf")
        state = str(st["state"])
        if state == "checking":
            frac = int(st["checked"]) / max(1, int(st["num_pieces"]))  # type: ignore[call-overload]
        line = (
            f"{state:11s} {frac * 100:5.1f}%  down {human_bytes(down)}/s  up {human_bytes(up)}/s  "
            f"peers {st['peers']}  ETA {human_duration(eta) if left else '00:00:00'}"
        )
        if self.tty:
            width = 20
            filled = int(frac * width)
            bar = "#" * filled + "-" * (width - filled)
            self.out.write(f"\r[{bar}] {line}\x1b[K")
        else:
            self.out.write(f"{self.t.meta.name}: {line}\n")
        self.out.flush()

    def finish(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, with the terminal width read here: argparse's own way imports shutil
    (and with it bz2 and lzma) for every add_argument, ~0.6 MiB that no command otherwise needs."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:  # as shutil.get_terminal_size: $COLUMNS, else the terminal, else 80; minus 2
            try:
                width = int(os.environ.get("COLUMNS", "0")) or os.get_terminal_size(sys.stdout.fileno()).columns
            except (AttributeError, ValueError, OSError):  # no fileno (a StringIO), not a terminal
                width = 80
            width -= 2
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser using _Formatter (sub-commands' parsers are of this class too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="minibt", description="A small BitTorrent client for Raspberry-Pi-class machines.")
    p.add_argument("--version", action="version", version=f"minibt {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    common = _Parser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="more logging (-vv for debug)")

    def net_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("torrent", help=".torrent file (download: or a magnet:? URI)")
        sp.add_argument("--dir", required=True, help="download directory (the torrent's files go below it)")
        sp.add_argument("--port", type=parse_port, default=6881, help="listen port (0 = any free one; default 6881)")
        sp.add_argument("--bind", type=parse_bind, default="0.0.0.0",
                        help="listen and source address of every connection (default 0.0.0.0; '::' for IPv6)")
        sp.add_argument("--interface", type=parse_interface, default=None, metavar="NAME",
                        help="send and receive only through this interface (e.g. wg0); pause while it is down")
        sp.add_argument("--peer", action="append", type=parse_peer, default=[], metavar="HOST:PORT",
                        help="dial this peer directly (repeatable)")
        sp.add_argument("--state-dir", default=None, help=f"resume data directory (default {default_state_dir()})")
        sp.add_argument("--max-peers", type=parse_max_peers, default=50, help="connections per torrent (default 50)")
        sp.add_argument("--cache", type=parse_size, default=None,
                        help="write cache size (default 1MiB, or 3 pieces when that is more, up to 64MiB)")
        sp.add_argument("--quiet", action="store_true", help="no progress output")
        sp.add_argument("--transport", type=parse_transports, default=None, metavar="LIST",
                        help="peer transports in outgoing preference order, e.g. utp,tcp or utp "
                        "(incoming: all listed; default tcp,utp)")
        sp.add_argument("--up-limit", type=parse_rate, default=None, metavar="RATE",
                        help="upload limit, payload bytes/s (e.g. 500KiB, 2MiB; default 0 = unlimited)")
        sp.add_argument("--down-limit", type=parse_rate, default=None, metavar="RATE",
                        help="download limit, payload bytes/s (e.g. 500KiB, 2MiB; default 0 = unlimited)")
        sp.add_argument("--encryption", choices=[e.value for e in Encryption], default=Encryption.PREFERRED.value,
                        help="MSE/PE: none, preferred (default: try RC4, accept both) or required (RC4 only)")
        sp.add_argument("--no-dht", action="store_true", help="do not use the Mainline DHT (BEP 5)")
        sp.add_argument("--no-pex", action="store_true", help="no peer exchange (BEP 11): neither offer nor use it")
        sp.add_argument("--no-holepunch", action="store_true",
                        help="no BEP 55 holepunching (neither relay for others nor ask relays; needs uTP anyway)")
        sp.add_argument("--dht-read-only", action="store_true",
                        help="BEP 43: search the DHT but answer no queries (metered links)")
        sp.add_argument("--dht-bootstrap", action="append", type=parse_peer, default=None, metavar="HOST:PORT",
                        help="DHT node to join through (repeatable; replaces the public routers and "
                        f"${BOOTSTRAP_ENV})")

    d = sub.add_parser("download", parents=[common], help="download a torrent; exit 0 once every piece is verified on disk")
    net_args(d)
    d.add_argument("--seed", action="store_true", help="keep seeding after the download completes")
    d.add_argument("--timeout", type=parse_duration_arg, default=None, metavar="DURATION",
                   help="give up after this long, e.g. 600, 90s, 2h (exit 1)")
    d.add_argument("--save-torrent", default=None, metavar="FILE",
                   help="magnet links: write the fetched metadata as a .torrent file")

    s = sub.add_parser("seed", parents=[common], help="verify (or trust resume data) and seed until stopped")
    net_args(s)
    s.add_argument("--super-seed", action="store_true",
                   help="BEP 16 super-seeding: reveal pieces one at a time (for an initial seeder)")

    c = sub.add_parser("create", parents=[common], help="make a .torrent from a file or directory")
    c.add_argument("path")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--tracker", action="append", type=parse_tracker, default=[], metavar="URL")
    c.add_argument("--piece-size", type=parse_size, default=None, help="bytes (power of two, >= 16KiB)")
    c.add_argument("--private", action="store_true")
    c.add_argument("--comment", default=None)

    i = sub.add_parser("info", parents=[common], help="print what a .torrent contains")
    i.add_argument("torrent")

    v = sub.add_parser("verify", parents=[common], help="re-check the data on disk against the piece hashes")
    v.add_argument("torrent")
    v.add_argument("--dir", required=True)

    r = sub.add_parser("run", parents=[common], help="run from a config file: a seeding daemon, or --once for cron")
    r.add_argument("-c", "--config", required=True, metavar="FILE", help="TOML config (see config/minibt.toml)")
    r.add_argument("--once", action="store_true",
                   help="download the download entries, then exit (0 complete, 3 time up, 75 locked, 2 bad config)")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--max-time", type=parse_duration_arg, default=None, metavar="DURATION",
                   help="with --once: stop after this long (e.g. 90s, 45m, 2h)")
    g.add_argument("--until", type=parse_until_arg, default=None, metavar="HH:MM",
                   help="with --once: stop at this local time")
    r.add_argument("--port", type=parse_port, default=None, help="override client.listen_port")

    st = sub.add_parser("status", parents=[common], help="show what a running `minibt run` is doing")
    st.add_argument("-c", "--config", default=None, metavar="FILE", help="its config (default: the built-in one)")
    st.add_argument("--json", action="store_true", help="print the status JSON as written by the runner")
    return p


def parse_duration_arg(text: str) -> float:
    from minibt.units import parse_duration

    try:
        v = parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"duration must be positive, got {text!r}")
    return v


def parse_until_arg(text: str) -> int:
    from minibt.units import parse_hhmm

    try:
        return parse_hhmm(text) % 1440
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _error(msg: str) -> None:
    """Print ``minibt: msg`` as exactly one line (a path given to us may contain newlines)."""
    print("minibt: " + msg.replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd == "run" and not args.once and (args.max_time is not None or args.until is not None):
        parser.error("--max-time and --until need --once")
    # The parser (every command's arguments: a few hundred objects, in reference cycles) is not needed any
    # more: collected now, its memory is reused by the set-up instead of the heap growing (issue 15: peak RSS
    # of a 1 GiB download 20.8-21.1 -> 20.5 MiB in 3 alternating pairs).
    del parser
    gc.collect()
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.cmd == "create":
            return cmd_create(args)
        if args.cmd == "info":
            return cmd_info(args)
        if args.cmd == "verify":
            return cmd_verify(args)
        if args.cmd == "run":
            return cmd_run(args)
        if args.cmd == "status":
            return cmd_status(args)
        return cmd_transfer(args)
    except (MetainfoError, ConfigError, MagnetError) as e:
        _error(str(e))
        return EXIT_USAGE
    except StorageError as e:
        _error(str(e))
        return EXIT_FAIL
    except MinibtError as e:
        _error(str(e))
        return EXIT_FAIL
    except OSError as e:
        _error(str(e))
        return EXIT_FAIL
    except Exception as e:
        # A fault in minibt's own bookkeeping (STYLE.md section 13): a transfer's `finally` has closed
        # the client, which saved resume data; say so in one line, with the traceback in the log.
        logging.getLogger("minibt").critical("internal error", exc_info=True)
        saved = "; verified data and resume state were saved" if args.cmd in ("download", "seed", "run") else ""
        _error(f"internal error: {type(e).__name__}: {e}{saved}")
        return EXIT_FAIL


def cmd_create(args: argparse.Namespace) -> int:
    from minibt.clock import MonotonicClock

    data = create_torrent(
        args.path,
        trackers=args.tracker,
        piece_length=args.piece_size,
        private=args.private,
        comment=args.comment,
        creation_date=int(MonotonicClock().wall()),
    )
    tmp = args.output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, args.output)
    meta = load_metainfo(args.output)
    print(f"wrote {args.output}: {meta.name}, {meta.num_pieces} pieces, info hash {meta.info_hash.hex()}")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    print(describe(load_metainfo(args.torrent)))
    return EXIT_OK


def verify_pieces(meta: Metainfo, download_dir: str, *, threads: int = 2) -> list[int]:
    """Hash every piece on disk; returns the indexes that fail."""
    from minibt.storage import Storage
    from minibt.workers import Hasher, HashJob, HashResult

    storage = Storage(meta, download_dir, cache_bytes=0, fsync=False)
    hasher = Hasher(threads=threads)
    bad: list[int] = []
    try:
        nxt = 0
        done = 0
        while done < meta.num_pieces:
            while nxt < meta.num_pieces and hasher.pending < 2 * threads:
                hasher.submit(
                    HashJob(
                        piece=nxt,
                        generation=0,
                        expected=meta.piece_hash(nxt),
                        data=None,
                        spans=tuple(storage.read_piece_spans(nxt)),
                    )
                )
                nxt += 1
            for r in hasher.wait_results(1.0):
                if isinstance(r, HashResult):
                    done += 1
                    if not r.ok:
                        bad.append(r.piece)
    finally:
        hasher.close()
    return sorted(bad)


def cmd_verify(args: argparse.Namespace) -> int:
    meta = load_metainfo(args.torrent)
    bad = verify_pieces(meta, os.path.abspath(args.dir))
    good = meta.num_pieces - len(bad)
    print(f"{meta.name}: {good}/{meta.num_pieces} pieces OK")
    if bad:
        shown = ", ".join(str(i) for i in bad[:20]) + (" ..." if len(bad) > 20 else "")
        print(f"bad pieces: {shown}")
        return EXIT_FAIL
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from minibt.daemon import run_main

    return run_main(args.config, once=args.once, max_time_s=args.max_time, until_min=args.until,
                    verbose=getattr(args, "verbose", 0), port=args.port)


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from minibt.clock import MonotonicClock
    from minibt.statusfile import (
        STATUS_NAME,
        StatusUnreadable,
        format_status,
        pid_alive,
        read_status,
        status_state_dir,
    )

    state_dir, warning = status_state_dir(args.config, cwd=os.getcwd())  # ConfigError: exit 2
    if warning is not None:
        _error(warning)
    path = os.path.join(state_dir, STATUS_NAME)
    try:
        st = read_status(path)
    except StatusUnreadable as e:
        _error(str(e))
        return EXIT_FAIL
    if st is None:
        _error(f"no status in {path} (is `minibt run` running with this config?)")
        return EXIT_FAIL
    if args.json:
        print(json.dumps(st, indent=1, sort_keys=True))
        return EXIT_OK
    alive = pid_alive(st.get("pid"))
    try:
        touched_at = os.stat(path).st_mtime
    except OSError:
        touched_at = 0.0
    for line in format_status(st, now_wall=MonotonicClock().wall(), pid_alive=alive, touched_at=touched_at):
        print(line)
    return EXIT_OK


def _write_torrent(path: str, meta: Metainfo) -> None:
    """Write fetched metadata as a .torrent, atomically (never a half-written file)."""
    from minibt.durable import write_atomic
    from minibt.magnetfetch import torrent_file_bytes

    write_atomic(path, torrent_file_bytes(meta))


def cmd_transfer(args: argparse.Namespace) -> int:  # noqa: C901
    from minibt.admission import usable_policy
    from minibt.client import Client
    from minibt.settings import SessionConfig, TorrentConfig

    mode = Mode.SEED if args.cmd == "seed" else Mode.DOWNLOAD
    magnet: Magnet | None = None
    meta: Metainfo | None = None
    if args.torrent[: len(MAGNET_PREFIX)].lower() == MAGNET_PREFIX:
        if mode is not Mode.DOWNLOAD:
            _error("seeding needs a .torrent file and its data, not a magnet link")
            return EXIT_USAGE
        magnet = parse_magnet(args.torrent)
        name, info_hex = magnet.name or magnet.info_hash_hex, magnet.info_hash_hex
    else:
        if getattr(args, "save_torrent", None):
            _error("--save-torrent is for magnet links")
            return EXIT_USAGE
        meta = load_metainfo(args.torrent)
        name, info_hex = meta.name, meta.info_hash.hex()
    if mode is Mode.DOWNLOAD:
        os.makedirs(args.dir, exist_ok=True)
    elif not os.path.isdir(args.dir):
        print(f"minibt: {args.dir}: no such directory", file=sys.stderr)
        return EXIT_USAGE
    boot: tuple[Addr, ...] = ()
    if not args.no_dht:  # the DHT's modules load only for a DHT that runs (issue 15)
        from minibt.dhtservice import bootstrap_nodes

        try:
            boot = bootstrap_nodes(tuple(args.dht_bootstrap) if args.dht_bootstrap else None,
                                   os.environ.get(BOOTSTRAP_ENV))
        except ValueError as e:
            print(f"minibt: {e}", file=sys.stderr)
            return EXIT_USAGE
    config = SessionConfig(
        torrent=TorrentConfig(max_peers=args.max_peers, cache_bytes=args.cache),
        upload_limit_bps=args.up_limit,
        download_limit_bps=args.down_limit,
        dht=not args.no_dht,
        dht_bootstrap=boot,
        dht_read_only=args.dht_read_only,
        encryption=Encryption(args.encryption),
        holepunch=not args.no_holepunch,
        pex=not args.no_pex,
    )
    if args.transport is not None:
        config = dataclasses.replace(config, transports=args.transport)
    state_dir = args.state_dir or default_state_dir()
    try:
        usable_policy(config.encryption)
    except EncryptionUnavailable as e:
        print(f"minibt: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        client = Client(bind=args.bind, port=args.port, state_dir=state_dir, config=config, interface=args.interface)
    except OSError as e:
        print(f"minibt: cannot listen on {args.bind}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return EXIT_FAIL
    stop_reason: list[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        stop_reason.append(signal.Signals(signum).name)
        client.stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    fetch: MagnetFetch | None = None
    t: Torrent | None = None
    save_error: list[str] = []
    try:
        if magnet is not None:
            fetch = client.add_magnet(magnet, args.dir, peers=args.peer)
        else:
            assert meta is not None
            t = client.add(meta, args.dir, mode=mode, peers=args.peer, super_seed=getattr(args, "super_seed", False))
        print(f"{name}: {info_hex} listening on port {client.port}", file=sys.stderr, flush=True)
        progress: list[Progress] = []
        deadline = client.clock.now() + args.timeout if getattr(args, "timeout", None) else None
        timed_out: list[bool] = []

        def current() -> Torrent | None:
            nonlocal t
            if t is None and fetch is not None and fetch.torrent is not None:
                t = client.session.torrents.get(fetch.info_hash)
                assert fetch.meta is not None
                print(f"{name}: metadata received: {fetch.meta.name}, {fetch.meta.num_pieces} pieces",
                      file=sys.stderr, flush=True)
                if args.save_torrent:
                    try:
                        _write_torrent(args.save_torrent, fetch.meta)
                    except OSError as e:
                        save_error.append(f"{args.save_torrent}: {e.strerror or e}")
                        return t
            if t is not None and not progress and not args.quiet:
                progress.append(Progress(t, sys.stderr))
            return t

        def done() -> bool:
            cur = current()
            if save_error:
                return True
            if fetch is not None and fetch.failed:
                return True
            if deadline is not None and client.clock.now() >= deadline:
                timed_out.append(True)
                return True
            if cur is None:
                return False
            if cur.state is TorrentState.ERROR:
                return True
            return mode is Mode.DOWNLOAD and not args.seed and cur.state is TorrentState.SEEDING and cur.complete

        def tick(now: float) -> None:
            current()
            if progress:
                progress[0](now)

        client.run(until=done, on_tick=tick)
        if progress:
            progress[0](client.clock.now() + 1e9)
            progress[0].finish()
    finally:
        client.close()
        for s, h in old.items():
            signal.signal(s, h)
    bans = client.session.reputation.banned()
    if bans:
        # Bans are session-wide and end with the process; say who and why.
        print(f"{name}: {len(bans)} peer(s) banned this session:", file=sys.stderr)
        for ip, why in sorted(bans.items()):
            print(f"  banned {ip}: {why}", file=sys.stderr)
    if save_error:
        _error(f"cannot write the .torrent: {save_error[0]}")
        return EXIT_FAIL
    why = "timed out" if timed_out else (f"interrupted by {stop_reason[0]}" if stop_reason else "stopped")
    if t is None:
        assert fetch is not None
        if fetch.error:
            _error(f"{name}: {fetch.error}")
        else:
            _error(f"{name}: {why} before the metadata arrived (BEP 9) from {len(fetch.served_by)} peer(s)")
        return EXIT_FAIL
    tname = t.meta.name
    if t.state is TorrentState.ERROR:
        print(f"minibt: {tname}: {t.error}", file=sys.stderr)
        return EXIT_FAIL
    if mode is Mode.DOWNLOAD:
        if t.complete:
            print(f"{tname}: complete, {t.meta.num_pieces} pieces verified", file=sys.stderr)
            return EXIT_OK
        print(
            f"minibt: {tname}: {why} at {t.have.count()}/{t.meta.num_pieces} pieces; progress saved",
            file=sys.stderr,
        )
        return EXIT_FAIL
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
