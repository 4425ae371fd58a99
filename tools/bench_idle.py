#!/usr/bin/env python3
"""Idle cost of `minibt run`: N small torrents seeding, no peers, loopback only.

    python3 tools/bench_idle.py [--torrents 50] [--seconds 60] [--workdir DIR] [--strace 60] [--dht]

Builds N single-file torrents (64 KiB each), a config file seeding all of them (DHT off, no
trackers, listening on 127.0.0.1), starts `python -m minibt run -c FILE`, waits until its status
file lists every torrent as seeding and their resume files are saved (the check's result, 30 s
later), then samples the process with psutil for ``--seconds``: CPU
time used (user + system, % of one core), voluntary context switches per second (each one a
wake-up from select or a worker, over all threads), and RSS.  With ``--strace S`` it then attaches
strace for S more seconds (a separate window: tracing itself adds wake-ups) and reports the waits
(select/poll/epoll_wait calls, their timeouts), fsyncs per minute and file writes per minute, and
the gaps between consecutive waits.  The process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from minibt.metainfo import create_torrent  # noqa: E402

sys.path.insert(0, os.path.join(REPO, "tools"))
from benchlib import fresh_bytecode  # noqa: E402


def build(work: str, n: int, dht: bool = False) -> str:
    data = os.path.join(work, "data")
    os.makedirs(data, exist_ok=True)
    tables = []
    for i in range(n):
        path = os.path.join(data, f"f{i:03d}.bin")
        with open(path, "wb") as f:
            f.write(os.urandom(64 * 1024))
        tpath = os.path.join(work, f"t{i:03d}.torrent")
        with open(tpath, "wb") as f:
            f.write(create_torrent(path, piece_length=16 * 1024))
        tables.append(f'[[torrent]]\nsource = "{tpath}"\ndir = "{data}"\nmode = "seed"\n')
    conf = os.path.join(work, "minibt.toml")
    with open(conf, "w") as f:
        f.write(f'[client]\nstate_dir = "{work}/state"\nlisten_port = 0\nbind = "127.0.0.1"\ndht = {str(dht).lower()}\n'
                + "\n".join(tables))
    return conf


def resume_files(work: str) -> int:
    try:
        return sum(1 for n in os.listdir(os.path.join(work, "state")) if n.endswith(".resume"))
    except OSError:
        return 0


def seeding_count(work: str) -> int:
    try:
        with open(os.path.join(work, "state", "status.json")) as f:
            st = json.load(f)
    except (OSError, ValueError):
        return 0
    return sum(1 for t in st.get("torrents", []) if t.get("state") == "seeding")


WAIT_CALLS = ("select", "poll", "epoll_wait", "epoll_pwait", "epoll_pwait2", "pselect6", "ppoll")
_LINE = re.compile(r"^(\d+)\s+(\d+):(\d+):(\d+\.\d+) (\w+)\((.*)")


def strace_window(pid: int, seconds: float, out: str) -> str:
    """Trace ``pid`` (all threads) for ``seconds``; a one-line summary of its waits and disk syncs."""
    if shutil.which("strace") is None:
        return "strace: not installed"
    tr = subprocess.Popen(["strace", "-f", "-tt", "-o", out, "-e",
                           "trace=" + ",".join(WAIT_CALLS) + ",fsync,fdatasync,write,openat,futex", "-p", str(pid)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    tr.terminate()
    tr.wait(10)
    waits: list[float] = []
    timeouts: list[str] = []
    counts = {"fsync": 0, "write": 0, "openat": 0, "futex": 0}
    with open(out) as f:
        for line in f:
            m = _LINE.match(line)
            if m is None:
                continue
            t = int(m[2]) * 3600 + int(m[3]) * 60 + float(m[4])
            call, args = m[5], m[6]
            if call in WAIT_CALLS:
                waits.append(t)
                timeouts.append(args.rsplit(",", 1)[-1].split(")")[0].strip())
            elif call in ("fsync", "fdatasync"):
                counts["fsync"] += 1
            elif call in counts:
                counts[call] += 1
    gaps = [b - a for a, b in zip(waits, waits[1:], strict=False)]
    per_min = 60.0 / seconds
    common = statistics.multimode(timeouts)[:3] if timeouts else []
    return (f"strace {seconds:.0f} s: {len(waits) / seconds:.2f} waits/s (timeouts ms, most common: {common}), "
            f"median gap {statistics.median(gaps) if gaps else 0:.3f} s, min gap {min(gaps, default=0):.3f} s; "
            f"{counts['fsync'] * per_min:.1f} fsyncs/min, {counts['write'] * per_min:.1f} writes/min, "
            f"{counts['openat'] * per_min:.1f} opens/min, {counts['futex'] * per_min:.1f} futex calls/min")


def busy_s() -> float:
    """CPU seconds the whole machine spent busy so far (the "other CPU" figure: the noise of a shared box)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def thread_switches(p: psutil.Process) -> int:
    """Voluntary context switches summed over every thread (/proc/PID/task/*/status)."""
    total = 0
    for tid in os.listdir(f"/proc/{p.pid}/task"):
        try:
            with open(f"/proc/{p.pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except OSError:
            pass  # a thread that ended meanwhile
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--torrents", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--dht", action="store_true", help="DHT on (with no bootstrap nodes: MINIBT_DHT_BOOTSTRAP empty)")
    ap.add_argument("--strace", type=float, default=0.0, metavar="S",
                    help="then trace the process for S seconds and summarise its waits and fsyncs")
    ns = ap.parse_args()
    work = ns.workdir or tempfile.mkdtemp(prefix="minibt-idle-")
    print(fresh_bytecode(os.path.join(REPO, "minibt")), flush=True)
    conf = build(work, ns.torrents, ns.dht)
    env = dict(os.environ, PYTHONPATH=REPO, MINIBT_DHT_BOOTSTRAP="")
    proc = subprocess.Popen([sys.executable, "-m", "minibt", "run", "-c", conf], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "minibt.log"), "w"))
    try:
        deadline = time.monotonic() + 120
        while seeding_count(work) < ns.torrents:
            if proc.poll() is not None or time.monotonic() > deadline:
                print(f"minibt did not start seeding all torrents (see {work}/minibt.log)")
                return 1
            time.sleep(0.5)
        while resume_files(work) < ns.torrents:  # start-up work: the check, then the first resume save
            if proc.poll() is not None or time.monotonic() > deadline + 120:
                print(f"minibt did not save resume data for all torrents (see {work}/minibt.log)")
                return 1
            time.sleep(0.5)
        time.sleep(5)  # let start-up work (hash checks, first status and resume writes) settle
        p = psutil.Process(proc.pid)
        c0, s0, t0, m0 = p.cpu_times(), thread_switches(p), time.monotonic(), busy_s()
        rss0 = p.memory_info().rss / (1 << 20)
        time.sleep(ns.seconds)
        c1, s1, t1, m1 = p.cpu_times(), thread_switches(p), time.monotonic(), busy_s()
        rss = p.memory_info().rss / (1 << 20)
        cpu = (c1.user + c1.system) - (c0.user + c0.system)
        wakeups = (s1 - s0) / (t1 - t0)
        print(f"{ns.torrents} torrents seeding, no peers{', DHT on' if ns.dht else ''}, {t1 - t0:.0f} s: "
              f"CPU {100 * cpu / (t1 - t0):.3f} % of a core, {wakeups:.2f} voluntary wake-ups/s (all threads), "
              f"RSS {rss0:.1f} -> {rss:.1f} MiB; other CPU {(m1 - m0 - cpu) / (t1 - t0):.2f} cores", flush=True)
        if ns.strace > 0:
            print(strace_window(proc.pid, ns.strace, os.path.join(work, "strace.txt")))
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
