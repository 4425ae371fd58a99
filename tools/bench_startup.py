#!/usr/bin/env python3
"""Restart of a seeded torrent with resume data: time to "seeding", and whether the data was read.

    python3 tools/bench_startup.py [--size-gib 10] [--runs 3] [--workdir DIR]

Makes a sparse payload of ``--size-gib`` GiB (``truncate``: no disk space used) and its torrent
(``python -m minibt create``; hashing 10 GiB of zeros takes a while: both are kept in ``--workdir``
and reused), and a config file seeding it (DHT off, no trackers, 127.0.0.1).  A first ``minibt run``
checks the data and, stopped by SIGTERM, saves the resume file.  Then ``--runs`` restarts, each
timed from the process start until its status file says "seeding" (polled every 5 ms), with
``/proc/PID/io`` read at that moment: ``rchar`` counts every byte read through read()/pread()
(the Python modules included, a few MiB), so a restart that read the payload shows ``rchar`` of at
least the payload size (the holes of a sparse file are read as zeros without touching the disk,
which is why ``read_bytes`` alone would not tell).  Medians are printed; each process is stopped by
its PID with SIGTERM, and the time from SIGTERM to its exit (the resume file saved) is shown too.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
from benchlib import fresh_bytecode  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20


def prepare(work: str, size: int) -> str:
    data = os.path.join(work, "data")
    os.makedirs(data, exist_ok=True)
    payload = os.path.join(data, "big.bin")
    tpath = os.path.join(work, "big.torrent")
    if not os.path.exists(payload) or os.path.getsize(payload) != size:
        with open(payload, "wb") as f:
            f.truncate(size)  # sparse: all zeros, no blocks
        if os.path.exists(tpath):
            os.unlink(tpath)
    if not os.path.exists(tpath):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "minibt", "create", payload, "-o", tpath], check=True, env=env())
        print(f"created {tpath} in {time.monotonic() - t0:.1f} s", flush=True)
    conf = os.path.join(work, "minibt.toml")
    with open(conf, "w") as f:
        f.write(f'[client]\nstate_dir = "{work}/state"\nlisten_port = 0\nbind = "127.0.0.1"\ndht = false\n'
                f'[[torrent]]\nsource = "{tpath}"\ndir = "{data}"\nmode = "seed"\n')
    return conf


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=REPO, MINIBT_DHT_BOOTSTRAP="")


def status_state(work: str) -> str | None:
    try:
        with open(os.path.join(work, "state", "status.json")) as f:
            st = json.load(f)
    except (OSError, ValueError):
        return None
    ts = st.get("torrents") or []
    return ts[0].get("state") if ts and st.get("pid") else None


def proc_io(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/io") as f:
        return {k: int(v) for k, v in (line.split(":") for line in f)}


def run_until_seeding(work: str, conf: str, timeout_s: float) -> tuple[float, dict[str, int], float]:
    """Start `minibt run`, wait for "seeding" in a status file written by this process; stop it."""
    status = os.path.join(work, "state", "status.json")
    if os.path.exists(status):
        os.unlink(status)
    log = open(os.path.join(work, "minibt.log"), "a")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "minibt", "run", "-c", conf], env=env(),
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        while status_state(work) != "seeding":
            if proc.poll() is not None or time.monotonic() - t0 > timeout_s:
                raise SystemExit(f"minibt did not reach seeding (see {work}/minibt.log)")
            time.sleep(0.005)
        took = time.monotonic() - t0
        io = proc_io(proc.pid)
    finally:
        t1 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stop_s = time.monotonic() - t1
        log.close()
    return took, io, stop_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ns = ap.parse_args()
    work = ns.workdir or tempfile.mkdtemp(prefix="minibt-startup-")
    os.makedirs(work, exist_ok=True)
    size = int(ns.size_gib * GIB)
    print(fresh_bytecode(os.path.join(REPO, "minibt")), flush=True)
    conf = prepare(work, size)
    resumes = [n for n in os.listdir(os.path.join(work, "state"))] if os.path.isdir(os.path.join(work, "state")) else []
    if not any(n.endswith(".resume") for n in resumes):
        took, io, _ = run_until_seeding(work, conf, timeout_s=3600)
        print(f"first run (full check, no resume data): seeding after {took:.2f} s, "
              f"rchar {io['rchar'] / MIB:.0f} MiB", flush=True)
    times, rchars, stops = [], [], []
    for i in range(ns.runs):
        took, io, stop_s = run_until_seeding(work, conf, timeout_s=600)
        times.append(took)
        rchars.append(io["rchar"])
        stops.append(stop_s)
        print(f"restart {i + 1}: seeding after {took:.3f} s, rchar {io['rchar'] / MIB:.1f} MiB, "
              f"read_bytes {io['read_bytes'] / MIB:.1f} MiB; SIGTERM to exit {stop_s:.3f} s", flush=True)
    imports = []
    for _ in range(ns.runs):  # the part of it that is the interpreter and the imports of `minibt run`
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", "import minibt.cli, minibt.daemon"], check=True, env=env())
        imports.append(time.monotonic() - t0)
    print(f"python -c 'import minibt.cli, minibt.daemon': {statistics.median(imports):.3f} s (median)")
    print(f"restart of a seeded {ns.size_gib:g} GiB torrent with resume data, median of {ns.runs}: "
          f"{statistics.median(times):.3f} s to seeding, rchar {statistics.median(rchars) / MIB:.1f} MiB "
          f"(payload {size / MIB:.0f} MiB: {'NOT read' if max(rchars) < size // 2 else 'READ'}); "
          f"stop (SIGTERM to exit) {statistics.median(stops):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
