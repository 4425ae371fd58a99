#!/usr/bin/env python3
"""uTP benchmark with minibt on both ends, and A/B of two source trees in one sitting (loopback only).

    python3 tools/bench_utp.py [--size-mib 512] [--runs 2] [--case mm,m-lt,lt-m] [--repo DIR ...]

Cases (every peer uTP-only; DHT/LSD/UPnP/NAT-PMP off; libtorrent with 4 MiB socket buffers):

* ``mm``: a minibt seeder serves a minibt leecher (GSO on the seeder's sends meets GRO on the leecher's
  receives when the kernel has them);
* ``m-lt``: a minibt seeder serves a libtorrent leecher (minibt's send path);
* ``lt-m``: a libtorrent seeder serves a minibt leecher (tools/bench.py's "minibt" row).

Each ``--repo`` is a minibt source tree (run with ``PYTHONPATH=DIR``, default: this one); for each run
and case the trees take turns (A, B, A, B ...), so two branches meet the same machine load.  A row
gives wall seconds, MiB/s, the leecher's and the seeder's CPU seconds per GiB (user+sys, wait4 for
the leecher, /proc/PID/stat for the seeder) and "other CPU": what the rest of the machine was busy
meanwhile (a sign of a disturbed row).  The data is SHA-1 checked after every download; every process
is stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (  # noqa: E402  (tools/ is not a package)
    BIG_BUFFERS,
    LT_PEER,
    UTP_ONLY,
    busy_cpu_s,
    fresh_bytecode,
    proc_cpu_s,
    run_measured,
    tree_sha1,
)


def sha1_file(path: str) -> str:
    return next(iter(tree_sha1(path).values()))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = ("mm", "m-lt", "lt-m")


def minibt_argv(repo: str, *args: str) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, PYTHONPATH=repo)
    return [sys.executable, "-m", "minibt", *args], env


def start_minibt_seeder(repo: str, torrent: str, seed_dir: str, state: str) -> tuple[subprocess.Popen[str], int]:
    """A minibt uTP seeder; returns it and its port once its piece check is over (CPU goes quiet)."""
    shutil.rmtree(state, ignore_errors=True)
    argv, env = minibt_argv(repo, "seed", torrent, "--dir", seed_dir, "--port", "0", "--bind", "127.0.0.1",
                            "--no-dht", "--state-dir", state, "--quiet", "--transport", "utp", "--encryption", "none")
    p = subprocess.Popen(argv, env=env, cwd=repo, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert p.stderr is not None
    line = p.stderr.readline()
    if "listening on port" not in line:
        p.kill()
        p.wait()
        raise RuntimeError(f"minibt seeder did not start: {line!r}")
    port = int(line.rsplit(" ", 1)[1])
    last = proc_cpu_s(p.pid)
    while True:  # the check hashes the payload; it is ready once the CPU stays quiet for 0.5 s
        time.sleep(0.5)
        cpu = proc_cpu_s(p.pid)
        if cpu - last < 0.05:
            return p, port
        last = cpu


def start_lt_seeder(torrent: str, seed_dir: str) -> tuple[subprocess.Popen[str], int]:
    settings = {**UTP_ONLY, **BIG_BUFFERS}
    p = subprocess.Popen([sys.executable, "-c", LT_PEER, torrent, seed_dir, "seed", "-", json.dumps(settings)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    port = json.loads(p.stdout.readline())["port"]
    json.loads(p.stdout.readline())  # {"seeding": true}
    return p, port


def stop(p: subprocess.Popen[str]) -> None:
    p.terminate()
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def one(case: str, repo: str, torrent: str, seed_dir: str, work: str, size: int, want: str,
        lt_seeder: tuple[subprocess.Popen[str], int] | None, timeout: float) -> str:
    dest = os.path.join(work, "leech")
    shutil.rmtree(dest, ignore_errors=True)
    state = os.path.join(work, "state-leech")
    shutil.rmtree(state, ignore_errors=True)
    own_seeder = None
    if case == "lt-m":
        assert lt_seeder is not None
        seeder, port = lt_seeder
    else:
        own_seeder = seeder_port = start_minibt_seeder(repo, torrent, seed_dir, os.path.join(work, "state-seed"))
        seeder, port = seeder_port
    try:
        peer = f"127.0.0.1:{port}"
        if case == "m-lt":
            os.makedirs(dest)
            argv = [sys.executable, "-c", LT_PEER, torrent, dest, "leech", peer, json.dumps({**UTP_ONLY, **BIG_BUFFERS})]
        else:
            argv, _ = minibt_argv(repo, "download", torrent, "--dir", dest, "--port", "0", "--no-dht", "--bind",
                                  "127.0.0.1", "--peer", peer, "--state-dir", state, "--quiet", "--transport", "utp",
                                  "--encryption", "none")
            argv = ["env", f"PYTHONPATH={repo}", *argv]
        seed0, busy0 = proc_cpu_s(seeder.pid), busy_cpu_s()
        r = run_measured(case, argv, timeout_s=timeout)
        seed_cpu = proc_cpu_s(seeder.pid) - seed0
        other = max(0.0, busy_cpu_s() - busy0 - seed_cpu - r.cpu_s)
        if sha1_file(os.path.join(dest, "payload.bin")) != want:
            raise RuntimeError(f"{case} {repo}: downloaded data differs")
    finally:
        if own_seeder is not None:
            stop(own_seeder[0])
        shutil.rmtree(dest, ignore_errors=True)
    gib = size / 2**30
    return (f"{case:5s} {os.path.basename(repo.rstrip('/')):14s} {r.seconds:7.2f} s {size / r.seconds / 2**20:7.1f} MiB/s "
            f"leecher {r.cpu_s / gib:6.2f} CPU s/GiB  seeder {seed_cpu / gib:6.2f} CPU s/GiB  "
            f"{other:5.2f} s other CPU")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--piece-kib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--case", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--repo", action="append", help="minibt source tree (repeatable; default: this one)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    cases = [c for c in args.case.split(",") if c]
    if any(c not in CASES for c in cases):
        ap.error(f"--case: choose from {', '.join(CASES)}")
    repos = [os.path.abspath(r) for r in (args.repo or [REPO])]
    for r in repos:
        print(fresh_bytecode(os.path.join(r, "minibt")), flush=True)
    size = args.size_mib << 20
    work = args.workdir or tempfile.mkdtemp(prefix="minibt-bench-utp-")
    seed_dir = os.path.join(work, "seed")
    os.makedirs(seed_dir, exist_ok=True)
    payload = os.path.join(seed_dir, "payload.bin")
    if not os.path.exists(payload) or os.path.getsize(payload) != size:
        with open(payload, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
    torrent = os.path.join(work, "payload.torrent")
    subprocess.run([sys.executable, "-m", "minibt", "create", payload, "-o", torrent, "--piece-size",
                    str(args.piece_kib << 10)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    want = sha1_file(payload)
    lt_seeder = start_lt_seeder(torrent, seed_dir) if "lt-m" in cases else None
    print(f"payload {args.size_mib} MiB, {args.piece_kib} KiB pieces; uTP only; repos: {', '.join(repos)}", flush=True)
    try:
        for _ in range(args.runs):
            for case in cases:
                for repo in repos:
                    print(one(case, repo, torrent, seed_dir, work, size, want, lt_seeder, args.timeout), flush=True)
    finally:
        if lt_seeder is not None:
            stop(lt_seeder[0])
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
