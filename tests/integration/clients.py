"""Start and stop real reference BitTorrent clients on loopback for the interoperability tests.

One class per client, all of the same shape: ``start()``, ``stop()``, context manager, ``pid``, ``port``
(BitTorrent listen port), ``log_tail()``, ``status()``, ``wait_complete()``, ``wait_peers()``.

Rules kept here (PROTOCOL.md section 7): loopback only; DHT, LSD, UPnP, NAT-PMP and PEX off in every client
(libtorrent keeps ut_pex unless ``pex=False``); every process gets its own directory under the test's
tmp_path and free ports; processes are stopped by PID (terminate, wait, kill); nothing waits blindly:
``wait_until`` polls a condition against a deadline and fails with the clients' log tails.

How peers find each other:
- libtorrent dials anything: tracker peers, ``peers=[...]``, or ``connect(host, port)`` at run time.
- Transmission 3.00 never dials loopback peers (PROTOCOL.md 7.1) and its RPC has no "connect to peer"
  call, so the other side must dial ``TransmissionPeer.port``.
- aria2 has no option to add a peer; it learns peers from trackers only. ``Aria2Peer(peers=[...])``
  therefore points aria2 at a small in-process ``StaticTracker`` that answers with exactly those peers.

Quirks seen with Debian 12 packages + pip libtorrent 2.1.1 (see also PROTOCOL.md section 7):
- Transmission 3.00 unchoke waits for its 10 s rechoke timer: a new peer gets no data for up to ~10 s.
- Transmission with encryption=0 closes an incoming encrypted handshake; libtorrent (out_enc="enabled")
  then retries in plaintext about 1 s later. encryption=1 accepts RC4 at once.
- Transmission does not check existing data when a torrent is added; seeding needs torrent-verify.
- Whether a connection is encrypted: Transmission's torrent-get ``peers[].isEncrypted``; aria2's RPC does
  not say, its log does at --log-level=debug only ("peer provides ARC4." as MSE responder, "peer prefers
  ARC4" as initiator, "plaintext" instead of "ARC4" when plaintext was selected).
- opentracker (Debian) serves whitelisted hashes only, chroots + drops to nobody when root, reloads the
  whitelist on SIGHUP, and answers event=stopped before the whitelist check.
- Trackers hand each client its own address; libtorrent dials it and drops it ("connected to ourselves").
- libtorrent dials a connect_peer() address on its next tick (~0.5 s); it closes seed-to-seed links once
  done, so use ``status()["seen_peers"]`` (history with peer ids) rather than ``peers`` after completion.
- libtorrent 2.1 bindings: peer_info.client is bytes and peer_info.utp_socket is not exported.
- aria2, Transmission (libcurl) and urllib honour *_proxy variables: children get an environment without
  them, and the harness's own HTTP requests bypass proxies.
- If the test process is SIGKILLed: lt_peer.py exits on stdin EOF and aria2 on --stop-with-process;
  transmission-daemon and opentracker keep running (new session, so a terminal ^C does not reach them).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import http.server
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

LOOPBACK = "127.0.0.1"
LT_PEER_SCRIPT = Path(__file__).resolve().parent / "lt_peer.py"
POLL_INTERVAL_S = 0.05  # wait_until polling period (real processes: short sleeps are fine here)
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL_BYTES = 6000
PAYLOAD_CHUNK = 4 << 20  # make_payload writes in 4 MiB chunks, so large payloads don't need large RAM

# Every Popen this module created; tests/integration/conftest.py asserts they are all dead at the end.
STARTED: list[subprocess.Popen[bytes]] = []

# http(s)_proxy/all_proxy would send loopback tracker and RPC requests to a proxy: aria2 and Transmission
# (libcurl) honour them, and so does urllib.
_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy"}
_URL_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed (.ci/run installs it)")
    return path


# --------------------------------------------------------------------------------------------- waiting


class _HasLog:
    name: str

    def log_tail(self, n_bytes: int = LOG_TAIL_BYTES) -> str:
        raise NotImplementedError

    def returncode(self) -> int | None:
        raise NotImplementedError


# Clients between start() and stop(): their log tails go into every wait_until failure message.
_LIVE: list[_HasLog] = []


def wait_until(pred: Callable[[], object], timeout_s: float, what: str,
               clients: Iterable[_HasLog] = ()) -> None:
    """Poll ``pred`` until it is truthy, at most ``timeout_s`` seconds.

    Raises AssertionError when the deadline passes or one of ``clients`` exits; the message holds the log
    tails of ``clients`` and of every other running harness client.
    """
    watched = list(clients)
    deadline = time.monotonic() + timeout_s
    while True:
        if pred():
            return
        for c in watched:
            rc = c.returncode()
            if rc is not None:
                raise AssertionError(f"{c.name} exited with code {rc} while waiting for {what}\n"
                                     + _tails(watched))
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:.1f} s waiting for {what}\n" + _tails(watched))
        time.sleep(POLL_INTERVAL_S)


def _tails(clients: Iterable[_HasLog]) -> str:
    shown = list(clients)
    shown += [c for c in _LIVE if c not in shown]
    return "".join(f"----- {c.name} log tail -----\n{c.log_tail()}\n" for c in shown)


# --------------------------------------------------------------------------------------------- ports


def free_port(kind: str = "both") -> int:
    """A port on 127.0.0.1 that is free for TCP, UDP or both at the moment of the call."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port: int = s.getsockname()[1]
            if kind != "both":
                return port
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


def listening_ports(pid: int) -> set[tuple[str, int]]:
    """{("tcp"|"udp", port)} the process listens on (TCP LISTEN sockets and bound UDP sockets)."""
    try:
        proc = psutil.Process(pid)
        conns = proc.net_connections("inet") if hasattr(proc, "net_connections") else proc.connections("inet")
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return set()
    out: set[tuple[str, int]] = set()
    for c in conns:
        if c.type == socket.SOCK_STREAM and c.status == psutil.CONN_LISTEN:
            out.add(("tcp", c.laddr.port))
        elif c.type == socket.SOCK_DGRAM and c.laddr:
            out.add(("udp", c.laddr.port))
    return out


def listening_addresses(pid: int) -> set[str]:
    """IP addresses of the process's listening sockets (tests check they are all loopback)."""
    try:
        proc = psutil.Process(pid)
        conns = proc.net_connections("inet") if hasattr(proc, "net_connections") else proc.connections("inet")
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return set()
    return {c.laddr.ip for c in conns if c.laddr and (c.status == psutil.CONN_LISTEN or
                                                      c.type == socket.SOCK_DGRAM)}


def http_get(url: str, timeout_s: float = 3.0) -> bytes:
    with _URL_OPENER.open(url, timeout=timeout_s) as r:
        body: bytes = r.read()
        return body


# --------------------------------------------------------------------------------------------- payloads


@dataclass(frozen=True, slots=True)
class MadeTorrent:
    path: Path          # the .torrent file
    info_hash: str      # v1 info-hash, 40 lowercase hex digits
    name: str           # info["name"]: the file or top-level directory inside save_dir
    total_size: int
    piece_length: int
    num_pieces: int


def make_payload(root: Path, layout: Mapping[str, int], seed: int) -> Path:
    """Write deterministic pseudo-random files ``root/<relpath>`` of the given sizes; returns ``root``."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for rel in sorted(layout):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        left = layout[rel]
        with open(path, "wb") as f:
            while left > 0:
                n = min(left, PAYLOAD_CHUNK)
                f.write(rng.randbytes(n))
                left -= n
    return root


def make_torrent(path: Path, out: Path, trackers: Sequence[str] = (), piece_length: int = 256 * 1024,
                 *, private: bool = False) -> MadeTorrent:
    """A v1-only .torrent for a file or directory (libtorrent's creator; one tracker per tier)."""
    import libtorrent as lt

    # v1_only: no v2 tree and no pad files, which Transmission 3.00 and aria2 would not understand.
    if hasattr(lt, "list_files"):  # libtorrent >= 2.1
        files = lt.list_files(str(path))
        if len(files) == 0:
            raise ValueError(f"no files under {path}")
        ct = lt.create_torrent(files, piece_length, flags=lt.create_torrent.v1_only)
    else:  # 2.0.x
        fs = lt.file_storage()
        lt.add_files(fs, str(path))
        if fs.num_files() == 0:
            raise ValueError(f"no files under {path}")
        ct = lt.create_torrent(fs, piece_length, flags=lt.create_torrent.v1_only)
    for tier, url in enumerate(trackers):
        ct.add_tracker(url, tier)
    ct.set_creator("minibt test harness")
    ct.set_priv(private)
    lt.set_piece_hashes(ct, str(Path(path).parent))
    data: bytes = lt.bencode(ct.generate())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    ti = lt.torrent_info(str(out))
    return MadeTorrent(path=out, info_hash=str(ti.info_hash()), name=ti.name(), total_size=ti.total_size(),
                       piece_length=ti.piece_length(), num_pieces=ti.num_pieces())


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256 hex} of every regular file under root (a single file: {name: digest})."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    out: dict[str, str] = {}
    for p in files:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        out[p.name if p == root else p.relative_to(root).as_posix()] = h.hexdigest()
    return out


def assert_same_tree(a: Path, b: Path) -> None:
    """Both trees hold the same relative paths with byte-identical contents."""
    da, db = tree_digest(a), tree_digest(b)
    assert da, f"{a} holds no files"
    missing, extra = sorted(da.keys() - db.keys()), sorted(db.keys() - da.keys())
    differ = sorted(k for k in da.keys() & db.keys() if da[k] != db[k])
    assert not (missing or extra or differ), (
        f"trees differ: {a} vs {b}: missing={missing} extra={extra} content differs={differ}")


# --------------------------------------------------------------------------------------------- base


class Client(_HasLog):
    """A child process with its own working directory and log file, stopped by PID."""

    name = "client"
    stop_timeout_s = STOP_TIMEOUT_S

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # -- lifecycle
    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError(f"{self.name} already started")
        _LIVE.append(self)
        try:
            self._launch()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _launch(self) -> None:
        raise NotImplementedError

    def _wait_ready(self) -> None:
        raise NotImplementedError

    def _spawn(self, argv: Sequence[str], *, stdin: int | None = subprocess.DEVNULL,
               stdout: int | None = None) -> subprocess.Popen[bytes]:
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(("$ " + " ".join(argv) + "\n").encode())
        self._log_file.flush()
        # start_new_session: a Ctrl-C in the test terminal reaches pytest only; we stop children ourselves.
        proc = subprocess.Popen(list(argv), cwd=self.workdir, stdin=stdin,
                                stdout=self._log_file if stdout is None else stdout,
                                stderr=self._log_file, env=child_env(), start_new_session=True)
        STARTED.append(proc)
        self._proc = proc
        return proc

    def stop(self) -> None:
        """Terminate (SIGTERM), wait up to stop_timeout_s, then SIGKILL. Idempotent; removes no files."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=10)
        self._after_stop()
        if self in _LIVE:
            _LIVE.remove(self)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _after_stop(self) -> None:
        pass

    def __enter__(self) -> Client:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- introspection
    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.name} not started")
        return self._proc.pid

    @property
    def port(self) -> int:
        raise NotImplementedError

    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def log_text(self) -> str:
        """The whole log (log_tail() may cut off the first line)."""
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n_bytes: int = LOG_TAIL_BYTES) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - n_bytes))
                return f.read().decode("utf-8", "replace")
        except OSError as e:
            return f"<no log: {e}>"

    def wait_until(self, pred: Callable[[], object], timeout_s: float, what: str) -> None:
        wait_until(pred, timeout_s, f"{self.name}: {what}", [self])

    def wait_listening(self, proto: str, port: int, timeout_s: float = START_TIMEOUT_S) -> None:
        self.wait_until(lambda: (proto, port) in listening_ports(self.pid), timeout_s,
                        f"{proto} port {port} listening")


# --------------------------------------------------------------------------------------------- libtorrent


class LibtorrentPeer(Client):
    """``python tests/integration/lt_peer.py`` in a subprocess; status comes as JSON lines on its stdout.

    DHT (opt-in, only inside a sealed namespace: tests/integration/dhtnet.py): ``dht_bootstrap=[...]``
    enables the DHT with exactly those bootstrap nodes (``[]``: none, e.g. for the router node);
    ``info_hash=HEX`` instead of ``torrent_path`` adds the torrent by info-hash only; ``torrent_path=None``
    and ``info_hash=None`` with DHT on gives a DHT node without torrents. ``wrap_argv`` (e.g.
    ``DhtNet.exec_argv``) wraps the command line, e.g. to run it inside a network namespace.
    ``want_nothing``: every file priority 0 (has nothing, downloads nothing, still connects, does PEX and
    relays holepunches). ``alert_categories``: extra libtorrent alert categories to log, e.g. ["peer_log"].
    """

    name = "libtorrent"

    def __init__(self, workdir: Path, *, torrent_path: Path | None = None, save_dir: Path | None = None,
                 seed: bool = False, listen_port: int = 0,
                 peers: Sequence[tuple[str, int]] = (), enable_utp: bool = False, enable_tcp: bool = True,
                 extra_settings: Mapping[str, Any] | None = None, out_enc: str = "enabled",
                 in_enc: str = "enabled", pex: bool = True, listen_ip: str = LOOPBACK,
                 info_hash: str | None = None, dht_bootstrap: Sequence[tuple[str, int]] | None = None,
                 wrap_argv: Callable[[list[str]], list[str]] | None = None, want_nothing: bool = False,
                 alert_categories: Sequence[str] = ()) -> None:
        super().__init__(workdir)
        if torrent_path is not None and info_hash is not None:
            raise ValueError("give torrent_path or info_hash, not both")
        if torrent_path is None and info_hash is None and dht_bootstrap is None:
            raise ValueError("torrent_path or info_hash is required (only a DHT node may have neither)")
        if (torrent_path is not None or info_hash is not None) and save_dir is None:
            raise ValueError("save_dir is required with a torrent")
        self.torrent_path = None if torrent_path is None else Path(torrent_path)
        self.info_hash = info_hash
        self.dht_bootstrap = None if dht_bootstrap is None else list(dht_bootstrap)
        self.wrap_argv = wrap_argv
        self._has_torrent = torrent_path is not None or info_hash is not None
        self.save_dir = self.workdir / "data" if save_dir is None else Path(save_dir)  # unused without torrent
        self.seed = seed
        self.listen_port = listen_port
        self.listen_ip = listen_ip
        self.peers = list(peers)
        self.enable_utp = enable_utp
        self.enable_tcp = enable_tcp
        self.extra_settings = dict(extra_settings or {})
        self.out_enc = out_enc
        self.in_enc = in_enc
        self.pex = pex
        self.want_nothing = want_nothing
        self.alert_categories = list(alert_categories)
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {}
        self._stdout_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._reader: threading.Thread | None = None

    def _launch(self) -> None:
        import libtorrent  # noqa: F401  (fail here, clearly, when the bindings are missing)

        argv = [sys.executable, "-u", str(LT_PEER_SCRIPT)]
        if self.torrent_path is not None:
            argv += ["--torrent", str(self.torrent_path)]
        if self.info_hash is not None:
            argv += ["--info-hash", self.info_hash]
        if self._has_torrent:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            argv += ["--save-dir", str(self.save_dir)]
        argv += ["--listen-ip", self.listen_ip,
                 "--listen-port", str(self.listen_port), "--out-enc", self.out_enc, "--in-enc", self.in_enc,
                 "--settings", json.dumps(self.extra_settings)]
        if self.dht_bootstrap is not None:
            argv.append("--dht")
            for host, port in self.dht_bootstrap:
                argv += ["--dht-bootstrap", f"{host}:{port}"]
        if self.seed:
            argv.append("--seed")
        if self.enable_utp:
            argv.append("--utp")
        if not self.enable_tcp:
            argv.append("--no-tcp")
        if not self.pex:
            argv.append("--no-pex")
        if self.want_nothing:
            argv.append("--want-nothing")
        if self.alert_categories:
            argv += ["--alert-categories", ",".join(self.alert_categories)]
        for host, port in self.peers:
            argv += ["--peer", f"{host}:{port}"]
        if self.wrap_argv is not None:
            argv = self.wrap_argv(argv)
        proc = self._spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read_stdout, args=(proc,), daemon=True,
                                        name=f"lt_peer-{proc.pid}")
        self._reader.start()

    def _read_stdout(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            try:
                msg = json.loads(line)
            except ValueError:
                msg = None
            if isinstance(msg, dict) and msg.get("type") == "status":
                with self._lock:
                    self._status = msg
            else:
                with self._lock:
                    self._stdout_tail.append(line)

    def _wait_ready(self) -> None:
        self.wait_until(lambda: self.status().get("listen_port", 0) > 0, START_TIMEOUT_S,
                        "session listening")

    def _after_stop(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        proc = self._proc
        if proc is not None:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()

    @property
    def port(self) -> int:
        port = int(self.status().get("listen_port", 0))
        if port <= 0:
            raise RuntimeError("libtorrent is not listening yet")
        return port

    def status(self) -> dict[str, Any]:
        """The latest status line: state, progress, num_peers, total_download, total_upload, is_seeding,
        listen_port, errors, peers (ip, port, client, utp, rc4, outgoing, seed, ...)."""
        with self._lock:
            return dict(self._status)

    def log_tail(self, n_bytes: int = LOG_TAIL_BYTES) -> str:
        with self._lock:
            extra = "\n".join(self._stdout_tail)
        return super().log_tail(n_bytes) + (f"\n[stdout, non-status]\n{extra}" if extra else "")

    def send_command(self, line: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise RuntimeError("libtorrent not started")
        proc.stdin.write(line.encode() + b"\n")
        proc.stdin.flush()

    def connect(self, host: str, port: int) -> None:
        """Tell the running session to dial a peer (``handle.connect_peer``)."""
        self.send_command(f"connect {host} {port}")

    def reannounce(self) -> None:
        self.send_command("reannounce")

    def dht_announce(self) -> None:
        """``handle.force_dht_announce`` (lt_peer.py also does it once the DHT has bootstrapped)."""
        self.send_command("dht-announce")

    def dht_status(self) -> dict[str, Any]:
        """The "dht" object of the latest status line ({} when the DHT is off): running, bootstrapped,
        nodes, node_cache, counters, announces_received, get_peers_received, replies, reply_peers."""
        dht: dict[str, Any] = self.status().get("dht") or {}
        return dht

    def wait_complete(self, timeout_s: float = 60.0) -> None:
        """Wait until every piece is verified and the torrent is seeding (for a seeder: check finished)."""
        self.wait_until(lambda: self.status().get("is_seeding") is True, timeout_s, "seeding / complete")

    def wait_peers(self, n: int, timeout_s: float = 30.0) -> None:
        self.wait_until(lambda: self.status().get("num_peers", 0) >= n, timeout_s, f">= {n} peers")


# --------------------------------------------------------------------------------------------- Transmission


class TransmissionPeer(Client):
    """transmission-daemon -f with its own config dir; controlled over JSON-RPC on 127.0.0.1.

    Transmission 3.00 never dials loopback peers (PROTOCOL.md 7.1) and its RPC has no way to add a peer,
    so ``peers`` must be empty: the other side dials ``self.port``.
    """

    name = "transmission"
    stop_timeout_s = 15.0  # it sends "stopped" announces on SIGTERM
    # torrent-get "status" values (libtransmission/transmission.h tr_torrent_activity)
    STOPPED, CHECK_WAIT, CHECK, DOWNLOAD_WAIT, DOWNLOAD, SEED_WAIT, SEED = range(7)
    FIELDS = ["id", "hashString", "name", "status", "percentDone", "recheckProgress", "peersConnected",
              "error", "errorString", "rateDownload", "rateUpload", "downloadedEver", "uploadedEver",
              "haveValid", "sizeWhenDone", "leftUntilDone", "isFinished", "peers"]

    def __init__(self, workdir: Path, *, torrent_path: Path, save_dir: Path, seed: bool,
                 peers: Sequence[tuple[str, int]] = (), peer_port: int = 0, encryption: int = 0,
                 extra_settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(workdir)
        if peers:
            raise ValueError("Transmission 3.00 cannot be told to dial a peer (no RPC call; it ignores "
                             "loopback peers from trackers/PEX): let the other client dial .port")
        self.torrent_path = Path(torrent_path)
        self.save_dir = Path(save_dir)
        self.seed = seed
        self.peer_port = peer_port
        self.encryption = encryption
        self.extra_settings = dict(extra_settings or {})
        self.rpc_port = 0
        self.config_dir = self.workdir / "config"
        self._session_id = ""
        self._torrent_id: int | None = None

    def settings(self) -> dict[str, Any]:
        s: dict[str, Any] = {
            "bind-address-ipv4": LOOPBACK,
            "bind-address-ipv6": "::1",
            "peer-port": self.peer_port,
            "peer-port-random-on-start": False,
            "port-forwarding-enabled": False,
            "dht-enabled": False,
            "lpd-enabled": False,
            "pex-enabled": False,
            "utp-enabled": False,
            "encryption": self.encryption,  # 0 = prefer plaintext, accept both; 1 = prefer; 2 = require
            "rpc-enabled": True,
            "rpc-bind-address": LOOPBACK,
            "rpc-port": self.rpc_port,
            "rpc-whitelist": "127.0.0.1",
            "rpc-whitelist-enabled": True,
            "rpc-host-whitelist-enabled": False,
            "rpc-authentication-required": False,
            "speed-limit-down-enabled": False,
            "speed-limit-up-enabled": False,
            "alt-speed-enabled": False,
            "alt-speed-time-enabled": False,
            "ratio-limit-enabled": False,
            "idle-seeding-limit-enabled": False,
            "download-queue-enabled": False,
            "seed-queue-enabled": False,
            "queue-stalled-enabled": False,
            "download-dir": str(self.save_dir),
            "incomplete-dir-enabled": False,
            "rename-partial-files": False,  # no ".part" names: finished files appear under their own names
            "watch-dir-enabled": False,
            "blocklist-enabled": False,
            "start-added-torrents": True,
            "peer-limit-global": 200,
            "peer-limit-per-torrent": 100,
            "message-level": 2,
            "umask": 18,
        }
        s.update(self.extra_settings)
        return s

    def _launch(self) -> None:
        exe = require_binary("transmission-daemon")
        self.save_dir.mkdir(parents=True, exist_ok=True)
        self.config_dir.mkdir(parents=True, exist_ok=True)
        if self.peer_port == 0:
            self.peer_port = free_port("both")
        self.rpc_port = free_port("tcp")
        (self.config_dir / "settings.json").write_text(json.dumps(self.settings(), indent=1))
        self._spawn([exe, "-f", "-g", str(self.config_dir)])

    def _wait_ready(self) -> None:
        def rpc_up() -> bool:
            try:
                self.rpc("session-get")
            except (OSError, urllib.error.URLError):
                return False
            return True

        self.wait_until(rpc_up, START_TIMEOUT_S, "RPC answering")
        self.wait_listening("tcp", self.peer_port)
        added = self.rpc("torrent-add", {"filename": str(self.torrent_path.resolve()),
                                         "download-dir": str(self.save_dir), "paused": self.seed})
        info = added.get("torrent-added") or added.get("torrent-duplicate")
        if not info:
            raise AssertionError(f"torrent-add failed: {added}\n{self.log_tail()}")
        self._torrent_id = int(info["id"])
        if self.seed:
            # Transmission does not check existing data on add: verify explicitly, then start seeding.
            self.rpc("torrent-verify", {"ids": [self._torrent_id]})
            self.wait_until(lambda: (self.status()["status"] not in (self.CHECK_WAIT, self.CHECK)
                                     and self.status()["percentDone"] == 1.0), START_TIMEOUT_S,
                            "verify reports 100 %")
            self.rpc("torrent-start", {"ids": [self._torrent_id]})
            self.wait_until(lambda: self.status()["status"] == self.SEED, START_TIMEOUT_S, "seeding")

    @property
    def port(self) -> int:
        return self.peer_port

    def rpc(self, method: str, arguments: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One JSON-RPC call, doing the X-Transmission-Session-Id 409 dance; returns "arguments"."""
        body = json.dumps({"method": method, "arguments": dict(arguments or {})}).encode()
        url = f"http://{LOOPBACK}:{self.rpc_port}/transmission/rpc"
        for _ in range(3):
            req = urllib.request.Request(url, data=body, method="POST",
                                         headers={"X-Transmission-Session-Id": self._session_id,
                                                  "Content-Type": "application/json"})
            try:
                with _URL_OPENER.open(req, timeout=5) as r:
                    reply = json.loads(r.read())
            except urllib.error.HTTPError as e:
                if e.code == 409:
                    self._session_id = e.headers.get("X-Transmission-Session-Id", "")
                    continue
                raise
            if reply.get("result") != "success":
                raise AssertionError(f"transmission RPC {method} failed: {reply}")
            args: dict[str, Any] = reply.get("arguments", {})
            return args
        raise AssertionError(f"transmission RPC {method}: session id dance did not converge")

    def status(self) -> dict[str, Any]:
        """torrent-get for our torrent: status, percentDone, peersConnected, error, errorString, ..."""
        if self._torrent_id is None:
            return {}
        torrents = self.rpc("torrent-get", {"ids": [self._torrent_id], "fields": self.FIELDS})["torrents"]
        if not torrents:
            return {}
        st: dict[str, Any] = torrents[0]
        return st

    def wait_complete(self, timeout_s: float = 60.0) -> None:
        def done() -> bool:
            st = self.status()
            if st.get("error"):
                raise AssertionError(f"transmission torrent error: {st.get('errorString')}\n{self.log_tail()}")
            return st.get("percentDone") == 1.0 and st.get("leftUntilDone") == 0 and st.get("status") in (
                self.SEED_WAIT, self.SEED)

        self.wait_until(done, timeout_s, "download complete")

    def wait_peers(self, n: int, timeout_s: float = 30.0) -> None:
        self.wait_until(lambda: self.status().get("peersConnected", 0) >= n, timeout_s, f">= {n} peers")


# --------------------------------------------------------------------------------------------- aria2


class Aria2Peer(Client):
    """aria2c with a torrent, status via its JSON-RPC (aria2.tellStatus) on 127.0.0.1.

    aria2 has no option to add a peer directly. With ``peers=[...]`` it is given a ``StaticTracker`` that
    returns exactly those peers (and the torrent's own trackers are excluded); otherwise it uses the
    torrent's trackers.
    """

    name = "aria2"
    STATUS_KEYS = ["gid", "status", "totalLength", "completedLength", "verifiedLength",
                   "verifyIntegrityPending", "uploadLength", "connections", "numSeeders", "seeder",
                   "errorCode", "errorMessage", "downloadSpeed", "uploadSpeed"]

    def __init__(self, workdir: Path, *, torrent_path: Path, save_dir: Path, seed: bool,
                 peers: Sequence[tuple[str, int]] = (), listen_port: int = 0, require_crypto: bool = False,
                 extra_args: Sequence[str] = ()) -> None:
        super().__init__(workdir)
        self.torrent_path = Path(torrent_path)
        self.save_dir = Path(save_dir)
        self.seed = seed
        self.peers = list(peers)
        self.listen_port = listen_port
        self.require_crypto = require_crypto
        self.extra_args = list(extra_args)
        self.debug_log_path = self.workdir / "aria2-debug.log"  # --log-level=debug in extra_args: MSE too
        self.rpc_port = 0
        self._gid: str | None = None
        self._static_tracker: StaticTracker | None = None

    def _launch(self) -> None:
        exe = require_binary("aria2c")
        self.save_dir.mkdir(parents=True, exist_ok=True)
        if self.listen_port == 0:
            self.listen_port = free_port("tcp")
        self.rpc_port = free_port("tcp")
        argv = [exe,
                "--enable-dht=false", "--enable-dht6=false", f"--dht-listen-port={free_port('udp')}",
                "--bt-enable-lpd=false", "--enable-peer-exchange=false",
                f"--listen-port={self.listen_port}", "--interface=127.0.0.1", "--disable-ipv6=true",
                "--seed-ratio=0.0",            # with no --seed-time: seed until stopped
                "--bt-seed-unverified=false", "--bt-hash-check-seed=true",
                f"--check-integrity={'true' if self.seed else 'false'}",
                # require_crypto: MSE/PE handshakes only (no plain BT handshake either way), RC4 at least
                f"--bt-require-crypto={'true' if self.require_crypto else 'false'}",
                f"--bt-min-crypto-level={'arc4' if self.require_crypto else 'plain'}",
                "--bt-stop-timeout=0", "--file-allocation=none", "--auto-file-renaming=false",
                "--allow-overwrite=false", "--bt-max-peers=0",
                "--enable-rpc=true", "--rpc-listen-all=false", f"--rpc-listen-port={self.rpc_port}",
                f"--stop-with-process={os.getpid()}",
                f"--dir={self.save_dir}", "--summary-interval=0", "--console-log-level=notice",
                f"--log={self.debug_log_path}", "--log-level=info"]
        if self.peers:
            self._static_tracker = StaticTracker(self.peers)
            self._static_tracker.start()
            argv += ["--bt-exclude-tracker=*", f"--bt-tracker={self._static_tracker.announce_url}"]
        argv += self.extra_args
        argv.append(str(self.torrent_path))
        self._spawn(argv)

    def _wait_ready(self) -> None:
        self.wait_until(self._find_gid, START_TIMEOUT_S, "RPC answering with the download")
        if self.seed:
            self.wait_until(lambda: self.status().get("seeder") == "true", START_TIMEOUT_S,
                            "hash check done, seeding")
        self.wait_listening("tcp", self.listen_port)

    def _after_stop(self) -> None:
        if self._static_tracker is not None:
            self._static_tracker.stop()
            self._static_tracker = None

    def _find_gid(self) -> bool:
        try:
            for method, params in (("aria2.tellActive", [["gid"]]), ("aria2.tellWaiting", [0, 10, ["gid"]]),
                                   ("aria2.tellStopped", [0, 10, ["gid"]])):
                found = self.rpc(method, params)
                if found:
                    self._gid = str(found[0]["gid"])
                    return True
        except (OSError, urllib.error.URLError):
            return False
        return False

    @property
    def port(self) -> int:
        return self.listen_port

    def rpc(self, method: str, params: Sequence[Any] = ()) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": "h", "method": method, "params": list(params)}).encode()
        req = urllib.request.Request(f"http://{LOOPBACK}:{self.rpc_port}/jsonrpc", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with _URL_OPENER.open(req, timeout=5) as r:
            reply = json.loads(r.read())
        if "error" in reply:
            raise AssertionError(f"aria2 RPC {method} failed: {reply['error']}")
        return reply["result"]

    def status(self) -> dict[str, Any]:
        """aria2.tellStatus: status, totalLength, completedLength, connections, seeder, errorCode, ...
        (aria2 reports numbers as decimal strings)."""
        if self._gid is None:
            return {}
        st: dict[str, Any] = self.rpc("aria2.tellStatus", [self._gid, self.STATUS_KEYS])
        return st

    def wait_complete(self, timeout_s: float = 60.0) -> None:
        def done() -> bool:
            st = self.status()
            if st.get("status") == "error":
                raise AssertionError(f"aria2 error {st.get('errorCode')}: {st.get('errorMessage')}\n"
                                     + self.log_tail())
            total = int(st.get("totalLength", 0))
            return total > 0 and int(st.get("completedLength", -1)) == total and st.get("seeder") == "true"

        self.wait_until(done, timeout_s, "download complete")

    def wait_peers(self, n: int, timeout_s: float = 30.0) -> None:
        self.wait_until(lambda: int(self.status().get("connections", 0)) >= n, timeout_s, f">= {n} peers")


# --------------------------------------------------------------------------------------------- trackers


class Opentracker(Client):
    """Debian's opentracker on 127.0.0.1, one free port for both HTTP (TCP) and UDP (BEP 15).

    Debian builds it with WANT_ACCESSLIST_WHITE: only whitelisted info-hashes are served (PROTOCOL.md 7.2).
    Run as root it chroots to ``tracker.rootdir`` and drops to ``nobody``, so the whitelist is a relative
    path inside the (world-readable) work directory. ``whitelist()`` appends and sends SIGHUP, which makes
    it reload the file; the reload is confirmed with a probe announce (see ``is_whitelisted``).
    """

    name = "opentracker"

    def __init__(self, workdir: Path, *, info_hashes: Iterable[str] = ()) -> None:
        super().__init__(workdir)
        self._port = 0
        self._hashes: list[str] = [h.lower() for h in info_hashes]

    def _launch(self) -> None:
        exe = require_binary("opentracker")
        # After chroot + setuid(nobody) the directory and whitelist must be readable by anyone.
        self.workdir.chmod(0o755)
        wl = self.workdir / "whitelist.txt"
        wl.write_text("".join(h + "\n" for h in self._hashes))
        wl.chmod(0o644)
        conf = self.workdir / "opentracker.conf"
        conf.write_text(f"access.whitelist whitelist.txt\ntracker.rootdir {self.workdir}\n")
        self._port = free_port("both")
        self._spawn([exe, "-f", conf.name, "-i", LOOPBACK, "-p", str(self._port), "-P", str(self._port)])

    def _wait_ready(self) -> None:
        self.wait_listening("tcp", self._port)
        self.wait_listening("udp", self._port)

    @property
    def port(self) -> int:
        return self._port

    @property
    def announce_url_http(self) -> str:
        return f"http://{LOOPBACK}:{self._port}/announce"

    @property
    def announce_url_udp(self) -> str:
        return f"udp://{LOOPBACK}:{self._port}/announce"

    def is_whitelisted(self, info_hash: str) -> bool:
        """Probe with an announce from a fake leecher on port 1, removed again at once with event=stopped.

        opentracker answers event=stopped before checking the whitelist, so the probe must be a real
        announce; for the moment between the two requests a swarm may list 127.0.0.1:1 (refused at once).
        """
        def announce(event: str) -> bytes:
            q = urllib.parse.urlencode({"info_hash": bytes.fromhex(info_hash),
                                        "peer_id": b"-HARNESS-probe000000", "port": 1, "uploaded": 0,
                                        "downloaded": 0, "left": 1, "event": event, "numwant": 0,
                                        "compact": 1})
            return http_get(f"{self.announce_url_http}?{q}")

        try:
            body = announce("started")
            if b"failure reason" in body:
                return False
            announce("stopped")
        except (OSError, urllib.error.URLError):
            return False
        return True

    def scrape(self, info_hash: str) -> dict[str, int]:
        """HTTP scrape: {"complete": seeders, "incomplete": leechers, "downloaded": n} ({} if unknown)."""
        import bencode2

        q = urllib.parse.urlencode({"info_hash": bytes.fromhex(info_hash)})
        reply = bencode2.bdecode(http_get(f"http://{LOOPBACK}:{self._port}/scrape?{q}"))
        entry = reply.get(b"files", {}).get(bytes.fromhex(info_hash), {})
        return {k.decode(): int(v) for k, v in entry.items() if isinstance(v, int)}

    def wait_seeders(self, info_hash: str, n: int, timeout_s: float = 20.0) -> None:
        self.wait_until(lambda: self.scrape(info_hash).get("complete", 0) >= n, timeout_s,
                        f">= {n} seeders announced for {info_hash}")

    def whitelist(self, info_hash: str) -> None:
        """Allow one more info-hash (hex) and wait until opentracker has reloaded its whitelist."""
        info_hash = info_hash.lower()
        if len(bytes.fromhex(info_hash)) != 20:
            raise ValueError("info_hash must be 40 hex digits")
        self._hashes.append(info_hash)
        wl = self.workdir / "whitelist.txt"
        if self._proc is None:
            return  # written at start
        with open(wl, "a") as f:
            f.write(info_hash + "\n")
        os.kill(self.pid, signal.SIGHUP)
        self.wait_until(lambda: self.is_whitelisted(info_hash), 10.0, f"whitelist reload of {info_hash}")


class StaticTracker:
    """An HTTP tracker in this process that answers every announce with a fixed compact peer list.

    Used to hand peers to aria2, which has no other way to learn them. interval/min interval are 5 s.
    """

    def __init__(self, peers: Sequence[tuple[str, int]]) -> None:
        self.peers = list(peers)
        self.announces = 0
        compact = b"".join(socket.inet_aton(h) + struct.pack(">H", p) for h, p in self.peers)
        self._reply = (b"d8:intervali5e12:min intervali5e5:peers%d:" % len(compact)) + compact + b"e"
        tracker = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                tracker.announces += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(tracker._reply)))
                self.end_headers()
                self.wfile.write(tracker._reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="static-tracker")

    @property
    def announce_url(self) -> str:
        return f"http://{LOOPBACK}:{self._server.server_address[1]}/announce"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------------------------- misc


@contextlib.contextmanager
def running(*clients: Client) -> Iterator[None]:
    """Start clients in order, stop them in reverse order (also when a start fails)."""
    with contextlib.ExitStack() as stack:
        for c in clients:
            c.start()
            stack.callback(c.stop)
        yield


def leaked_processes() -> list[subprocess.Popen[bytes]]:
    """Processes started by this module that are still running."""
    return [p for p in STARTED if p.poll() is None]
