#!/usr/bin/env python3
"""Download benchmark: minibt vs libtorrent, same seeder, same run, loopback only.

    python3 tools/bench.py [--size-mib 1024] [--piece-kib 256] [--workdir DIR] [--runs 1] [--transport tcp|utp]

A libtorrent seeder (its own process, DHT/LSD/UPnP/NAT-PMP off, plaintext) serves a random payload
on 127.0.0.1.  Then, one after the other, a minibt leecher (`python -m minibt download`) and a
libtorrent leecher download it into fresh directories.  For each leecher this prints wall seconds,
MiB/s, CPU seconds per GiB (user+sys of the leecher process, from wait4), peak RSS (ru_maxrss)
and peak anonymous RSS (RssAnon sampled from /proc every 20 ms: libtorrent mmaps its files, so its
full RSS counts file pages; PROTOCOL.md 7.15).  Kernel page cache is not dropped; both leechers see
the same conditions.  Every process is stopped by its PID.

``--transport utp`` (BEP 29): the seeder and every leecher are uTP-only (TCP disabled; minibt with
``--transport utp``).  The seeder gets 4 MiB socket buffers so it is not the bottleneck; a third
leecher, "lt-bigbuf", is libtorrent with 4 MiB send/receive socket buffers (PROTOCOL.md 7.14).  Each row
also shows the kernel's UDP RcvbufErrors delta (/proc/net/snmp: datagrams dropped because a receive
buffer was full) during that download.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
settings.update(extra)
s = lt.session(settings)
p = lt.add_torrent_params()
p.ti = lt.torrent_info(torrent)
p.save_path = save
p.flags = lt.torrent_flags.default_flags & ~lt.torrent_flags.auto_managed & ~lt.torrent_flags.paused
h = s.add_torrent(p)
if peer != "-":
    host, port = peer.rsplit(":", 1)
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


@dataclass
class Result:
    name: str
    seconds: float
    cpu_s: float
    maxrss_kib: int
    peak_anon_kib: int
    rcvbuf_errors: int = -1  # kernel UDP RcvbufErrors during the run (-1: not measured)

    def row(self, size: int) -> str:
        gib = size / 2**30
        drops = f" {self.rcvbuf_errors:8d} UDP RcvbufErrors" if self.rcvbuf_errors >= 0 else ""
        return (
            f"{self.name:12s} {self.seconds:8.2f} s {size / self.seconds / 2**20:9.1f} MiB/s "
            f"{self.cpu_s / gib:8.2f} CPU s/GiB {self.maxrss_kib / 1024:8.1f} MiB peak RSS "
            f"{self.peak_anon_kib / 1024:8.1f} MiB peak anon RSS{drops}"
        )


def udp_rcvbuf_errors() -> int:
    """System-wide UDP RcvbufErrors from /proc/net/snmp (-1 if unavailable)."""
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        return int(rows[1][rows[0].index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return -1


def rss_anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(name: str, argv: list[str], *, done_marker: str | None, timeout_s: float) -> Result:
    """Run argv to completion (or until it prints done_marker, then ask it to quit) and measure it."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    peak = 0
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    buf = ""
    reaped = None
    # os.wait4 (never Popen.poll, which would reap the child and lose its rusage).
    while True:
        peak = max(peak, rss_anon_kib(proc.pid))
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            reaped = (status, ru)
            break
        try:
            chunk = proc.stdout.read()
        except (BlockingIOError, TypeError):
            chunk = None
        if chunk:
            buf += chunk
            if done_marker is not None and done_marker in buf:
                break
        if time.monotonic() - t0 > timeout_s:
            os.kill(proc.pid, 15)
            os.wait4(proc.pid, 0)
            raise RuntimeError(f"{name} did not finish in {timeout_s} s")
        time.sleep(0.02)
    seconds = time.monotonic() - t0
    if reaped is None:
        os.kill(proc.pid, 15)
        _, status, ru = os.wait4(proc.pid, 0)
    else:
        status, ru = reaped
    proc.returncode = os.waitstatus_to_exitcode(status)
    code = proc.returncode
    if done_marker is None and code != 0:
        raise RuntimeError(f"{name} exited with {code}")
    return Result(name, seconds, ru.ru_utime + ru.ru_stime, ru.ru_maxrss, peak)


def sha1_file(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--piece-kib", type=int, default=256)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--transport", choices=("tcp", "utp"), default="tcp")
    args = ap.parse_args()
    utp = args.transport == "utp"
    seed_settings = {**UTP_ONLY, **BIG_BUFFERS} if utp else {}
    leechers = ("minibt", "libtorrent", "lt-bigbuf") if utp else ("minibt", "libtorrent")
    size = args.size_mib << 20
    work = args.workdir or tempfile.mkdtemp(prefix="minibt-bench-")
    seed_dir = os.path.join(work, "seed")
    os.makedirs(seed_dir, exist_ok=True)
    payload = os.path.join(seed_dir, "payload.bin")
    if not os.path.exists(payload) or os.path.getsize(payload) != size:
        with open(payload, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
    torrent = os.path.join(work, "payload.torrent")
    subprocess.run(
        [sys.executable, "-m", "minibt", "create", payload, "-o", torrent, "--piece-size", str(args.piece_kib << 10)],
        check=True, cwd=REPO, stdout=subprocess.DEVNULL,
    )
    want = sha1_file(payload)
    seeder = subprocess.Popen(
        [sys.executable, "-c", LT_PEER, torrent, seed_dir, "seed", "-", json.dumps(seed_settings)],
        stdout=subprocess.PIPE, text=True,
    )
    results: list[Result] = []
    try:
        assert seeder.stdout is not None
        port = json.loads(seeder.stdout.readline())["port"]
        json.loads(seeder.stdout.readline())  # {"seeding": true} once its check is done
        peer = f"127.0.0.1:{port}"
        print(f"libtorrent seeder pid {seeder.pid} on {peer}; payload {args.size_mib} MiB, "
              f"{args.piece_kib} KiB pieces; transport {args.transport}", flush=True)
        for _run in range(args.runs):
            for name in leechers:
                dest = os.path.join(work, f"leech-{name}")
                shutil.rmtree(dest, ignore_errors=True)
                state = os.path.join(work, f"state-{name}")
                shutil.rmtree(state, ignore_errors=True)
                if name == "minibt":
                    argv = [sys.executable, "-m", "minibt", "download", torrent, "--dir", dest, "--port", "0", "--no-dht",
                            "--bind", "127.0.0.1", "--peer", peer, "--state-dir", state, "--quiet",
                            "--transport", args.transport]
                else:
                    os.makedirs(dest)
                    extra = {**UTP_ONLY} if utp else {}
                    if name == "lt-bigbuf":
                        extra.update(BIG_BUFFERS)
                    argv = [sys.executable, "-c", LT_PEER, torrent, dest, "leech", peer, json.dumps(extra)]
                drops0 = udp_rcvbuf_errors()
                r = run_measured(name, argv, done_marker=None, timeout_s=args.timeout)
                if utp and drops0 >= 0:
                    r.rcvbuf_errors = udp_rcvbuf_errors() - drops0
                got = sha1_file(os.path.join(dest, "payload.bin"))
                if got != want:
                    raise RuntimeError(f"{name}: downloaded data differs")
                results.append(r)
                print(r.row(size), flush=True)
                shutil.rmtree(dest, ignore_errors=True)
    finally:
        seeder.terminate()
        seeder.wait(timeout=30)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    mb = [r for r in results if r.name == "minibt"]
    lt = [r for r in results if r.name == "libtorrent"]
    if mb and lt:
        best_mb = min(r.seconds for r in mb)
        best_lt = min(r.seconds for r in lt)
        print(f"minibt throughput = {best_lt / best_mb * 100:.0f} % of libtorrent's (best of {args.runs})")
    big = [r for r in results if r.name == "lt-bigbuf"]
    if mb and big:
        best_big = min(r.seconds for r in big)
        print(f"minibt throughput = {best_big / best_mb * 100:.0f} % of libtorrent's with 4 MiB buffers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
