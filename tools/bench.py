#!/usr/bin/env python3
"""Download benchmark: minibt vs libtorrent, same seeder, same run, loopback only.

    python3 tools/bench.py [--size-mib 1024] [--piece-kib 256] [--workdir DIR] [--runs 1] [--transport tcp|utp]
                           [--encryption none|required]

A libtorrent seeder (its own process, DHT/LSD/UPnP/NAT-PMP off, plaintext) serves a random payload
on 127.0.0.1.  Then, one after the other, a minibt leecher (`python -m minibt download`) and a
libtorrent leecher download it into fresh directories.  For each leecher this prints wall seconds,
MiB/s, CPU seconds per GiB (user+sys of the leecher process, from wait4), peak RSS (ru_maxrss)
and peak anonymous RSS (RssAnon sampled from /proc every 20 ms: libtorrent mmaps its files, so its
full RSS counts file pages; PROTOCOL.md 7.15), the seeder's CPU seconds per GiB during that download
(/proc/PID/stat) and "other CPU": the seconds the rest of the machine was busy meanwhile (/proc/stat
busy time minus leecher and seeder: other processes, interrupts), a sign of a disturbed row.  Kernel
page cache is not dropped; both leechers see the same conditions.  Every process is stopped by its PID.

``--transport utp`` (BEP 29): the seeder and every leecher are uTP-only (TCP disabled; minibt with
``--transport utp``).  The seeder gets 4 MiB socket buffers so it is not the bottleneck; a third
leecher, "lt-bigbuf", is libtorrent with 4 MiB send/receive socket buffers (PROTOCOL.md 7.14).  Each row
also shows the kernel's UDP RcvbufErrors delta (/proc/net/snmp: datagrams dropped because a receive
buffer was full) during that download.

``--encryption required`` (MSE/PE, issue 13): each run downloads the payload four times, in this
order: "minibt" and "libtorrent" in plaintext, then "minibt-rc4" (``--encryption required``) and
"lt-rc4" (out/in_enc_policy pe_forced, allowed_enc_level rc4, prefer_rc4).  Two libtorrent seeders
serve the same file from the same directory (so the same page cache): the plaintext one is exactly the
seeder of an ``--encryption none`` run (out pe_disabled, in pe_enabled; the plaintext leechers do not
encrypt), the other forces RC4 both ways like the RC4 leechers, so an encrypted row can never be
plaintext in disguise.  Both seeders are started (and hash-checked) before the first download; the
idle one only sleeps.  A summary line gives minibt's RC4 throughput as a percentage of its plaintext
throughput (target >= 80 %) and its RC4 CPU s/GiB as a multiple of the plaintext one (target <= 1.5x),
best of ``--runs`` each, and the same two figures for libtorrent.
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
if extra.pop("rc4_forced", False):  # MSE/PE, RC4 only, both directions (bench.py --encryption required)
    settings.update({"out_enc_policy": lt.enc_policy.pe_forced, "in_enc_policy": lt.enc_policy.pe_forced,
                     "allowed_enc_level": lt.enc_level.rc4, "prefer_rc4": True})
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
RC4_FORCED = {"rc4_forced": True}  # LT_PEER: pe_forced in and out, allowed_enc_level rc4, prefer_rc4


@dataclass
class Result:
    name: str
    seconds: float
    cpu_s: float
    maxrss_kib: int
    peak_anon_kib: int
    rcvbuf_errors: int = -1  # kernel UDP RcvbufErrors during the run (-1: not measured)
    seeder_cpu_s: float = -1.0  # the serving seeder's user+sys during the run (-1: not measured)
    other_cpu_s: float = -1.0  # the rest of the machine's busy CPU: other processes, interrupts

    def row(self, size: int) -> str:
        gib = size / 2**30
        drops = f" {self.rcvbuf_errors:8d} UDP RcvbufErrors" if self.rcvbuf_errors >= 0 else ""
        if self.seeder_cpu_s >= 0:
            drops += f" {self.seeder_cpu_s / gib:6.2f} seeder CPU s/GiB {self.other_cpu_s:6.2f} s other CPU"
        return (
            f"{self.name:12s} {self.seconds:8.2f} s {size / self.seconds / 2**20:9.1f} MiB/s "
            f"{self.cpu_s / gib:8.2f} CPU s/GiB {self.maxrss_kib / 1024:8.1f} MiB peak RSS "
            f"{self.peak_anon_kib / 1024:8.1f} MiB peak anon RSS{drops}"
        )


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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--piece-kib", type=int, default=256)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--transport", choices=("tcp", "utp"), default="tcp")
    ap.add_argument("--encryption", choices=("none", "required"), default="none",
                    help="required: also download over forced MSE/PE RC4 (plaintext rows of the same run too)")
    return ap


def best(results: list[Result], name: str) -> tuple[float, float] | None:
    """(fewest seconds, fewest CPU seconds) over the rows of ``name``; None without any."""
    rs = [r for r in results if r.name == name]
    return (min(r.seconds for r in rs), min(r.cpu_s for r in rs)) if rs else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    utp = args.transport == "utp"
    encrypted = args.encryption == "required"
    base_seed = {**UTP_ONLY, **BIG_BUFFERS} if utp else {}
    # (row name, seeder): "plain" leechers do not encrypt, "rc4" ones force RC4 (module docstring)
    leechers = [("minibt", "plain"), ("libtorrent", "plain")]
    if utp:
        leechers.append(("lt-bigbuf", "plain"))
    if encrypted:
        leechers += [("minibt-rc4", "rc4"), ("lt-rc4", "rc4")]
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
    seeders: dict[str, subprocess.Popen[str]] = {}
    peers: dict[str, str] = {}
    results: list[Result] = []
    try:
        for mode in ("plain", "rc4") if encrypted else ("plain",):
            settings: dict[str, object] = {**base_seed, **(RC4_FORCED if mode == "rc4" else {})}
            seeders[mode] = subprocess.Popen(
                [sys.executable, "-c", LT_PEER, torrent, seed_dir, "seed", "-", json.dumps(settings)],
                stdout=subprocess.PIPE, text=True,
            )
        for mode, seeder in seeders.items():
            assert seeder.stdout is not None
            port = json.loads(seeder.stdout.readline())["port"]
            json.loads(seeder.stdout.readline())  # {"seeding": true} once its check is done
            peers[mode] = f"127.0.0.1:{port}"
            print(f"libtorrent seeder ({'forced RC4' if mode == 'rc4' else 'plaintext'}) pid {seeder.pid} on "
                  f"{peers[mode]}; payload {args.size_mib} MiB, {args.piece_kib} KiB pieces; "
                  f"transport {args.transport}", flush=True)
        for _run in range(args.runs):
            for name, mode in leechers:
                peer = peers[mode]
                dest = os.path.join(work, f"leech-{name}")
                shutil.rmtree(dest, ignore_errors=True)
                state = os.path.join(work, f"state-{name}")
                shutil.rmtree(state, ignore_errors=True)
                if name.startswith("minibt"):
                    argv = [sys.executable, "-m", "minibt", "download", torrent, "--dir", dest, "--port", "0", "--no-dht",
                            "--bind", "127.0.0.1", "--peer", peer, "--state-dir", state, "--quiet",
                            "--transport", args.transport, "--encryption", "required" if mode == "rc4" else "none"]
                else:
                    os.makedirs(dest)
                    extra: dict[str, object] = {**UTP_ONLY} if utp else {}
                    if name == "lt-bigbuf":
                        extra.update(BIG_BUFFERS)
                    if mode == "rc4":
                        extra.update(RC4_FORCED)
                    argv = [sys.executable, "-c", LT_PEER, torrent, dest, "leech", peer, json.dumps(extra)]
                drops0 = udp_rcvbuf_errors()
                seeder_pid = seeders[mode].pid
                seed0, busy0 = proc_cpu_s(seeder_pid), busy_cpu_s()
                r = run_measured(name, argv, done_marker=None, timeout_s=args.timeout)
                if utp and drops0 >= 0:
                    r.rcvbuf_errors = udp_rcvbuf_errors() - drops0
                r.seeder_cpu_s = proc_cpu_s(seeder_pid) - seed0
                r.other_cpu_s = max(0.0, busy_cpu_s() - busy0 - r.seeder_cpu_s - r.cpu_s)
                got = sha1_file(os.path.join(dest, "payload.bin"))
                if got != want:
                    raise RuntimeError(f"{name}: downloaded data differs")
                results.append(r)
                print(r.row(size), flush=True)
                shutil.rmtree(dest, ignore_errors=True)
    finally:
        for seeder in seeders.values():
            seeder.terminate()
            seeder.wait(timeout=30)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    mb, lt, big = best(results, "minibt"), best(results, "libtorrent"), best(results, "lt-bigbuf")
    if mb and lt:
        print(f"minibt throughput = {lt[0] / mb[0] * 100:.0f} % of libtorrent's (best of {args.runs})")
    if mb and big:
        print(f"minibt throughput = {big[0] / mb[0] * 100:.0f} % of libtorrent's with 4 MiB buffers")
    mb_rc4, lt_rc4 = best(results, "minibt-rc4"), best(results, "lt-rc4")
    if mb and mb_rc4:
        tput, cpu = mb[0] / mb_rc4[0] * 100, mb_rc4[1] / mb[1]
        print(f"minibt RC4 throughput = {tput:.0f} % of minibt plaintext (target >= 80 %: "
              f"{'met' if tput >= 80 else 'NOT met'}); RC4 CPU s/GiB = {cpu:.2f}x plaintext (target <= 1.5x: "
              f"{'met' if cpu <= 1.5 else 'NOT met'}) (best of {args.runs})")
    if lt and lt_rc4:
        print(f"libtorrent RC4 throughput = {lt[0] / lt_rc4[0] * 100:.0f} % of libtorrent plaintext; "
              f"RC4 CPU s/GiB = {lt_rc4[1] / lt[1]:.2f}x plaintext")
    if mb_rc4 and lt_rc4:
        print(f"minibt RC4 throughput = {lt_rc4[0] / mb_rc4[0] * 100:.0f} % of libtorrent RC4's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
