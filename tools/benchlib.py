"""Helpers of tools/bench.py: watching a child process, /proc parsing, payload layouts, a loopback tracker.

Nothing here reaches beyond loopback.  Pure helpers (``parse_proc_io``, ``payload_layout``,
``tracker_reply``, ``aria2_argv``) are unit-tested in tests/unit/test_bench_tool.py.

How writes are counted (``Watched``): Linux task I/O accounting.  ``write_bytes`` in /proc/PID/io and
``ru_oublock`` from wait4 (the same counter in 512-byte units) are charged to the process that *dirties*
a page-cache page (write(), pwrite(), or a store through a shared mmap), at the moment it dirties it, not
when the kernel's flusher later writes it out; a page dirtied again after writeback counts again, a page
rewritten while still dirty does not.  So they measure the bytes a client hands to storage (the flash
wear), including the page writes of its own mmap'd files, but not bytes written by another process.
``syscw`` counts write-family system calls (write, pwrite64, writev, pwritev) on any descriptor: files,
pipes, and sockets written with write(); send()/sendmsg() on a socket do not count.  /proc/PID/io is
read from the zombie (waitid WNOWAIT) once the child has exited, so the figures are final; the last
live sample (every 20 ms) is the fallback.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import random
import resource
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30
MIB = 2**20
SAMPLE_S = 0.02

# A lean libtorrent peer: no status polling of peers, one status line when done.
LT_PEER = r"""
import sys, time, json, libtorrent as lt
torrent, save, mode, peer = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
extra = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
settings = {
    "listen_interfaces": "127.0.0.1:0", "enable_dht": False, "dht_bootstrap_nodes": "",
    "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
    "enable_outgoing_utp": False, "enable_incoming_utp": False,
    "out_enc_policy": lt.enc_policy.pe_disabled, "in_enc_policy": lt.enc_policy.pe_enabled,
    "allow_multiple_connections_per_ip": True, "alert_mask": 0,
}
if extra.pop("rc4_forced", False):  # MSE/PE, RC4 only, both directions (bench.py --encryption required)
    settings.update({"out_enc_policy": lt.enc_policy.pe_forced, "in_enc_policy": lt.enc_policy.pe_forced,
                     "allowed_enc_level": lt.enc_level.rc4, "prefer_rc4": True})
no_pex = extra.pop("no_pex", False)  # bench.py --seed-leechers: leechers must not find each other
limit_local = extra.pop("limit_local", False)  # bench.py --seed-rate: the rate limit holds on loopback too
settings.update(extra)
s = lt.session(settings)
if limit_local:  # every address in the global peer class (the local class, which has no limits, by default)
    f = lt.ip_filter()
    f.add_rule("0.0.0.0", "255.255.255.255", 1 << s.global_peer_class_id)
    f.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1 << s.global_peer_class_id)
    s.set_peer_class_filter(f)
p = lt.add_torrent_params()
p.ti = lt.torrent_info(torrent)
p.save_path = save
p.flags = lt.torrent_flags.default_flags & ~lt.torrent_flags.auto_managed & ~lt.torrent_flags.paused
if no_pex:
    p.flags |= lt.torrent_flags.disable_pex
h = s.add_torrent(p)
for addr in peer.split(",") if peer != "-" else ():  # a comma-separated list (bench.py --seeders)
    host, port = addr.rsplit(":", 1)
    h.connect_peer((host, int(port)))
print(json.dumps({"port": s.listen_port()}), flush=True)
while True:
    st = h.status()
    if mode == "seed" and st.is_seeding:
        print(json.dumps({"seeding": True}), flush=True)
        mode = "seeding"
    if mode == "leech" and st.is_seeding:
        break
    time.sleep(0.05)
del h
del s  # the session's destructor waits for the disk threads to flush
"""

UTP_ONLY = {"enable_outgoing_utp": True, "enable_incoming_utp": True,
            "enable_outgoing_tcp": False, "enable_incoming_tcp": False}
BIG_BUFFERS = {"send_socket_buffer_size": 4 << 20, "recv_socket_buffer_size": 4 << 20}
RC4_FORCED = {"rc4_forced": True}  # LT_PEER: pe_forced in and out, allowed_enc_level rc4, prefer_rc4
NO_PEX = {"no_pex": True}  # LT_PEER: torrent_flags.disable_pex


# ------------------------------------------------------------------------------------------ results


@dataclass
class Result:
    """One leecher row."""

    name: str
    seconds: float
    cpu_s: float
    maxrss_kib: int
    peak_anon_kib: int
    rcvbuf_errors: int = -1  # kernel UDP RcvbufErrors during the run (-1: not measured)
    seeder_cpu_s: float = -1.0  # the serving seeder's user+sys during the run (-1: not measured)
    other_cpu_s: float = -1.0  # the rest of the machine's busy CPU: other processes, interrupts
    oublock: int = -1  # ru_oublock: 512-byte blocks handed to storage (module docstring)
    syscw: int = -1  # write-family system calls (/proc/PID/io)
    write_bytes: int = -1  # /proc/PID/io write_bytes (= ru_oublock * 512 when both are final)

    def row(self, size: int) -> str:
        gib = size / GIB
        extra = f" {self.rcvbuf_errors:8d} UDP RcvbufErrors" if self.rcvbuf_errors >= 0 else ""
        if self.seeder_cpu_s >= 0:
            extra += f" {self.seeder_cpu_s / gib:6.2f} seeder CPU s/GiB {self.other_cpu_s:6.2f} s other CPU"
        return (
            f"{self.name:12s} {self.seconds:8.2f} s {size / self.seconds / MIB:9.1f} MiB/s "
            f"{self.cpu_s / gib:8.2f} CPU s/GiB {self.maxrss_kib / 1024:8.1f} MiB peak RSS "
            f"{self.peak_anon_kib / 1024:8.1f} MiB peak anon RSS "
            f"{self.syscw / gib:9.0f} write calls/GiB {self.oublock * 512 / MIB / gib:7.1f} MiB written/GiB{extra}"
        )


@dataclass
class SeedResult:
    """One seeder row of ``--seed-leechers``: the seeder serving ``leechers`` leechers at once."""

    name: str
    leechers: int
    seconds: float  # from starting the leechers until the last one exited
    seeder_cpu_s: float
    hwm_kib: int  # VmHWM: the seeder's peak RSS
    peak_anon_kib: int
    leecher_cpu_s: float
    other_cpu_s: float

    def row(self, size: int) -> str:
        up = self.leechers * size
        return (
            f"{self.name:12s} seeding to {self.leechers} {self.seconds:8.2f} s {up / self.seconds / MIB:9.1f} MiB/s "
            f"{self.seeder_cpu_s / (up / GIB):8.2f} seeder CPU s/GiB uploaded {self.hwm_kib / 1024:8.1f} MiB peak RSS "
            f"{self.peak_anon_kib / 1024:8.1f} MiB peak anon RSS {self.leecher_cpu_s / (up / GIB):6.2f} leecher CPU s/GiB "
            f"{self.other_cpu_s:6.2f} s other CPU"
        )


# -------------------------------------------------------------------------------------------- /proc


def busy_cpu_s() -> float:
    """CPU seconds the whole machine was busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """user+sys CPU seconds of a running process (/proc/PID/stat utime, stime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def udp_rcvbuf_errors() -> int:
    """System-wide UDP RcvbufErrors from /proc/net/snmp (-1 if unavailable)."""
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        return int(rows[1][rows[0].index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return -1


def status_kib(pid: int, key: str) -> int:
    """A kB field of /proc/PID/status (RssAnon, VmHWM, ...); 0 if gone or absent."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def parse_proc_io(text: str) -> dict[str, int]:
    """/proc/PID/io ("rchar: 123" lines) as {field: value}; malformed lines are skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip().isdigit():
            out[key.strip()] = int(value)
    return out


def read_proc_io(pid: int) -> dict[str, int]:
    try:
        with open(f"/proc/{pid}/io") as f:
            return parse_proc_io(f.read())
    except OSError:
        return {}


class Watched:
    """A child process sampled every ``sample()``: peak RSS (VmHWM), peak RssAnon, /proc/PID/io; reaped by
    wait4 for rusage.

    Peak RSS is the child's own VmHWM, read while it runs, not wait4's ``ru_maxrss``: Linux keeps the
    larger of the forked (or vforked) image's RSS and the exec'd program's in ``ru_maxrss``, so every
    child of this Python process would report at least this process's own RSS at the time it was
    started (about 28 MiB here, more than aria2 uses).  VmHWM belongs to the exec'd program's memory
    and is a high-water mark, so the last sample holds every earlier peak; only growth in the last
    SAMPLE_S before the exit is missed.

    ``exited()`` uses waitid(WNOWAIT), so the zombie's /proc/PID/io is read before ``reap()`` (never
    Popen.poll, which would reap the child and lose its rusage).
    """

    def __init__(self, argv: Sequence[str], *, stdout: int | None = subprocess.DEVNULL,
                 env: dict[str, str] | None = None, cwd: str = REPO) -> None:
        # cwd: ``python -m minibt`` imports the minibt package of this directory (sys.path[0]), ahead of
        # PYTHONPATH and of an installed one.
        self.proc = subprocess.Popen(list(argv), stdout=stdout, stderr=subprocess.DEVNULL, text=True, cwd=cwd,
                                     env=env)
        self.pid = self.proc.pid
        self.peak_anon_kib = 0
        self.peak_rss_kib = 0
        self.io: dict[str, int] = {}
        self.done = False

    def sample(self) -> None:
        if not self.done:
            self.peak_anon_kib = max(self.peak_anon_kib, status_kib(self.pid, "RssAnon"))
            self.peak_rss_kib = max(self.peak_rss_kib, status_kib(self.pid, "VmHWM"))
            self.io = read_proc_io(self.pid) or self.io

    def exited(self) -> bool:
        if not self.done and os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            self.io = read_proc_io(self.pid) or self.io  # the zombie's final counters
            self.done = True
        return self.done

    def reap(self) -> tuple[int, resource.struct_rusage]:
        """Wait for the exit; (exit code, rusage)."""
        _, status, ru = os.wait4(self.pid, 0)
        self.done = True
        self.proc.returncode = code = os.waitstatus_to_exitcode(status)
        return code, ru

    def close(self) -> tuple[int, resource.struct_rusage] | None:
        """SIGTERM it unless it has exited, and reap it; None if it was reaped already."""
        if self.proc.returncode is not None:
            return None
        if not self.done:
            os.kill(self.pid, signal.SIGTERM)
        return self.reap()


def run_measured(name: str, argv: list[str], *, timeout_s: float, env: dict[str, str] | None = None,
                 cwd: str = REPO) -> Result:
    """Run argv to completion (exit 0 required) in ``cwd`` and measure it."""
    t0 = time.monotonic()
    w = Watched(argv, env=env, cwd=cwd)
    while True:
        w.sample()
        if w.exited():
            break
        if time.monotonic() - t0 > timeout_s:
            w.close()
            raise RuntimeError(f"{name} did not finish in {timeout_s} s")
        time.sleep(SAMPLE_S)
    seconds = time.monotonic() - t0
    code, ru = w.reap()
    if code != 0:
        raise RuntimeError(f"{name} exited with {code}")
    return Result(name, seconds, ru.ru_utime + ru.ru_stime, w.peak_rss_kib or ru.ru_maxrss, w.peak_anon_kib,
                  oublock=ru.ru_oublock, syscw=w.io.get("syscw", -1), write_bytes=w.io.get("write_bytes", -1))


# ------------------------------------------------------------------------------------------ payload


def payload_layout(total: int, files: int) -> list[tuple[str, int]]:
    """(path below the seed directory, size) of every payload file; deterministic.

    files == 0: one file, "payload.bin".  Otherwise ``files`` files under "payload/" (50 per
    subdirectory) whose sizes vary (log-normal weights from a fixed seed: many small, a few large),
    each at least 1 byte, summing to exactly ``total``.
    """
    if files <= 0:
        return [("payload.bin", total)]
    if total < files:
        raise ValueError(f"{total} bytes cannot fill {files} files")
    rng = random.Random(f"minibt-bench {files}")
    weights = [rng.lognormvariate(0.0, 1.0) for _ in range(files)]
    spare = total - files  # every file gets 1 byte, the rest by weight
    scale = sum(weights)
    sizes = [1 + int(spare * w / scale) for w in weights]
    sizes[max(range(files), key=sizes.__getitem__)] += total - sum(sizes)
    return [(f"payload/d{i // 50:02d}/f{i:04d}.bin", n) for i, n in enumerate(sizes)]


def make_payload(seed_dir: str, layout: list[tuple[str, int]], *, sparse: bool) -> None:
    """Write the layout below seed_dir: random bytes, or sparse files of zeros (ftruncate only)."""
    for rel, size in layout:
        path = os.path.join(seed_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            if sparse:
                f.truncate(size)
                continue
            left = size
            while left:
                n = min(left, MIB)
                f.write(os.urandom(n))
                left -= n


def tree_sha1(root: str) -> dict[str, str]:
    """{path relative to root's parent: SHA-1} of a file, or of every file below a directory."""
    base = os.path.dirname(root)
    paths = [root] if os.path.isfile(root) else sorted(
        os.path.join(d, name) for d, _, names in os.walk(root) for name in names)
    out: dict[str, str] = {}
    for path in paths:
        h = hashlib.sha1()
        with open(path, "rb") as f:
            while chunk := f.read(MIB):
                h.update(chunk)
        out[os.path.relpath(path, base)] = h.hexdigest()
    return out


# ------------------------------------------------------------------------------------- loopback net


PAGE_REPORTING = "/sys/module/page_reporting"  # the guest kernel hands free memory back to its host


def default_warmup_mib(payload_mib: int) -> int:
    """Scratch MiB to write before each row: 2x the payload up to 2 GiB where the kernel reports free
    pages to a hypervisor (PAGE_REPORTING; README "Benchmarks on this VM"), else none."""
    return min(2 * payload_mib, 2048) if os.path.isdir(PAGE_REPORTING) else 0


def warm_up(directory: str, mib: int) -> None:
    """Write ``mib`` MiB to a scratch file in ``directory`` and delete it: the pages it freed are fresh
    in the guest for the row started right after, instead of pages the host took back (each of those
    costs a host fault at first use, seen as system time of whichever client touches it first)."""
    if mib <= 0:
        return
    path = os.path.join(directory, ".warmup")
    chunk = bytearray(4 * MIB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for i in range(-(-mib // 4)):
            os.pwrite(fd, chunk, i * len(chunk))
    finally:
        os.close(fd)
        os.unlink(path)


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tracker_reply(peers: Sequence[tuple[str, int]], interval_s: int = 60) -> bytes:
    """A bencoded HTTP tracker announce reply listing ``peers`` (IPv4) in compact form (BEP 23)."""
    compact = b"".join(socket.inet_aton(host) + struct.pack(">H", port) for host, port in peers)
    return b"d8:intervali%de12:min intervali%de5:peers%d:%se" % (interval_s, interval_s, len(compact), compact)


@dataclass
class LoopbackTracker:
    """An HTTP tracker on 127.0.0.1 in a thread of this process that answers every request with ``peers``.

    aria2 learns peers from trackers only (it has no "connect to this peer" option).
    """

    peers: list[tuple[str, int]]
    requests: int = 0
    _server: http.server.ThreadingHTTPServer | None = field(default=None, repr=False)

    def __enter__(self) -> LoopbackTracker:
        reply = tracker_reply(self.peers)
        tracker = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                tracker.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="bench-tracker").start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/announce"

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


def aria2_argv(exe: str, torrent: str, dest: str, *, tracker_url: str, listen_port: int, rc4: bool) -> list[str]:
    """aria2c downloading ``torrent`` into ``dest`` with its defaults, except: loopback only, no DHT, LPD
    or PEX, the torrent's own trackers excluded and ``tracker_url`` added, exit when done (--seed-time=0).
    File allocation stays aria2's default (prealloc); rc4 forces MSE/PE with RC4 both ways."""
    argv = [exe, "--no-conf=true", "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false",
            "--enable-peer-exchange=false", "--interface=127.0.0.1", "--disable-ipv6=true",
            f"--listen-port={listen_port}", "--bt-exclude-tracker=*", f"--bt-tracker={tracker_url}",
            "--seed-time=0", "--check-integrity=false", f"--stop-with-process={os.getpid()}",
            "--summary-interval=0", "--console-log-level=warn", f"--dir={dest}"]
    if rc4:
        argv += ["--bt-require-crypto=true", "--bt-min-crypto-level=arc4"]
    return argv + [torrent]


def fresh_bytecode(package_dir: str) -> str:
    """Compile ``package_dir``'s modules into __pycache__ where the bytecode is missing or stale.

    An installed minibt has its bytecode (pip compiles at install), but a source tree run with
    PYTHONDONTWRITEBYTECODE=1 (as on this project's VM) compiles every changed module again in every
    process: with all of them to compile, 2.5 MiB more peak RSS and 0.3 s more start-up than a user sees
    (measured on importing the download path).  Returns a line for the report.
    """
    import compileall

    ok = compileall.compile_dir(package_dir, quiet=1, force=False, workers=1)
    return f"bytecode of {package_dir}: {'up to date' if ok else 'COMPILE ERRORS'}"


def child_env() -> dict[str, str]:
    """This environment without proxy variables (aria2 would send the loopback announce to a proxy)."""
    proxies = {"http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy"}
    return {k: v for k, v in os.environ.items() if k.lower() not in proxies}
