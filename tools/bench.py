#!/usr/bin/env python3
"""Download and seeding benchmark: minibt vs libtorrent vs aria2, same seeder, same run, loopback only.

    python3 tools/bench.py [--size-mib 1024[,16384...]] [--piece-kib 256] [--workdir DIR] [--runs 1]
                           [--transport tcp|utp] [--encryption none|required] [--clients minibt,aria2,...]
                           [--files N] [--sparse] [--seed-leechers N] [--seed-rate MIB[,MIB...]] [--rtt-ms MS[,MS...]]
                           [--minibt-arg ARG ...] [--minibt-repo DIR]

A libtorrent seeder (its own process, DHT/LSD/UPnP/NAT-PMP off, plaintext) serves a random payload
on 127.0.0.1.  Then, one after the other, a minibt leecher (`python -m minibt download`), a
libtorrent leecher and an aria2 leecher download it into fresh directories; ``--runs`` repeats the
round, alternating the clients.  For each leecher this prints wall seconds, MiB/s, CPU seconds per GiB
(user+sys of the leecher process, from wait4), peak RSS (the leecher's VmHWM, sampled: wait4's ru_maxrss
would count this script's own RSS, see benchlib.Watched) and peak anonymous RSS (RssAnon
sampled from /proc every 20 ms: libtorrent mmaps its files, so its full RSS counts file pages;
PROTOCOL.md 7.15), write calls per GiB and MiB written per GiB (the flash-wear figures: ``syscw`` from
/proc/PID/io and ``ru_oublock`` from wait4; benchlib.py's docstring says exactly what they count), the
seeder's CPU seconds per GiB during that download (/proc/PID/stat) and "other CPU": the seconds the
rest of the machine was busy meanwhile (/proc/stat busy time minus leecher and seeder: other
processes, interrupts), a sign of a disturbed row.  Kernel page cache is not dropped; every leecher
sees the same conditions.  Every downloaded file is compared with the seed by SHA-1.  Every process is
stopped by its PID.  ``--clients`` picks the rows (default: all that apply).  Per payload a line gives
the issue-15 ratios: minibt's CPU s/GiB and throughput against libtorrent's and its peak RSS against
aria2's, each side's best of ``--runs``.

aria2 ("aria2" row, TCP only) runs with its default settings except: DHT, LPD and PEX off, sockets on
127.0.0.1 (--interface), the torrent's trackers excluded, exit when complete (--seed-time=0).  It has no
option to dial a given peer, so bench.py runs a loopback HTTP tracker (a thread) that answers every
announce with the seeder's address.  File allocation is aria2's default ("prealloc"), what a new user
gets (here it allocates without writing: its MiB written per GiB is ~1024).  Every row's wall time
includes the client's start-up and exit; aria2 runs on a 1-second timer, so about 1 s passes before its
first announce, 1 s before it dials the seeder and 1 s for its "stopped" announce at the end (seen in its
log): its MiB/s understates its transfer rate, the more so the smaller the payload.

``--files N``: the payload is a directory of N files (varied sizes, fixed seed, summing to the size),
made into a torrent by ``python -m minibt create DIR``; every file is compared.

``--sparse``: the payload is made of sparse files of zeros (ftruncate, nothing written), so a 16 GiB
seed costs no disk and no time to make.  Zeros leave the wire, hashing and leecher writes exactly as
costly as random data (nothing on the path compresses), only the seeder's reads come from holes.
Several sizes (``--size-mib 32,16384``) run one after the other and end with minibt's peak RSS at the
largest as a percentage of the smallest (issue 15: within +10 %).

``--seed-leechers N``: instead of leecher rows, measure the SEEDER.  Per run, first a fresh
``minibt seed`` (defaults, DHT off, on 127.0.0.1; ready once its hash check wrote resume data), then a
fresh libtorrent seeder (ready once it reports seeding) serves N libtorrent leechers started at once
(each its own process, told the seeder's address, PEX off so they never trade among themselves).  Rows:
wall time from starting the leechers until the last one exited, aggregate MiB/s (N x size / wall),
the seeder's CPU s per GiB uploaded (N x size) over that time, its peak RSS (VmHWM) and peak anon RSS
(sampled), the leechers' CPU per GiB and "other CPU".  Every leecher's data is compared.

``--transport utp`` (BEP 29): the seeder and every leecher are uTP-only (TCP disabled; minibt with
``--transport utp``; no aria2, which has no uTP).  The seeder gets 4 MiB socket buffers so it is not the
bottleneck; "lt-bigbuf" is libtorrent with 4 MiB send/receive socket buffers (PROTOCOL.md 7.14).  Each
row also shows the kernel's UDP RcvbufErrors delta (/proc/net/snmp: datagrams dropped because a receive
buffer was full) during that download.

``--encryption required`` (MSE/PE, issue 13): the plaintext rows, then "minibt-rc4" (``--encryption
required``), "lt-rc4" (out/in_enc_policy pe_forced, allowed_enc_level rc4, prefer_rc4) and "aria2-rc4"
(--bt-require-crypto, --bt-min-crypto-level=arc4).  Two libtorrent seeders serve the same file from the
same directory (so the same page cache): the plaintext one is exactly the seeder of an ``--encryption
none`` run (out pe_disabled, in pe_enabled; the plaintext leechers do not encrypt), the other forces
RC4 both ways like the RC4 leechers, so an encrypted row can never be plaintext in disguise.  Both
seeders are started (and hash-checked) before the first download; the idle one only sleeps.  A summary
line gives minibt's RC4 throughput as a percentage of its plaintext throughput (target >= 80 %) and its
RC4 CPU s/GiB as a multiple of the plaintext one (target <= 1.5x), best of ``--runs`` each, and the same
two figures for libtorrent.  Two more lines tell how much of the machine each mode took (medians): the
leecher's plus the seeder's CPU s/GiB, and how many cores were busy (leecher + seeder + other CPU per
wall second).  Both ends pay for RC4 out of the same cores, so where an RC4 row keeps about every core
busy its throughput follows the leecher + seeder CPU per GiB, not the leecher alone.

``--seeders N``: N libtorrent seeders (each its own process) serve every download at once; the leechers
are given every address (minibt: one ``--peer`` each; libtorrent: connect_peer to each; aria2: the
loopback tracker answers with all).  A real swarm has many peers: this shows what each extra peer
costs.  The seeder CPU column is their sum.

``--seed-rate N``: every libtorrent seeder uploads at most N MiB/s (``upload_rate_limit``, with loopback
put in libtorrent's global peer class, since its local class has no limits).  The downloads are then
bound by that "link", as a Pi's usually are by its network, and the CPU s/GiB columns show what a
client spends per GiB while it waits for data instead of racing the seeder.  A list gives each seeder
its own rate, the last one for the rest: ``--seeders 13 --seed-rate 4,0.0625`` is one 4 MiB/s seeder
among twelve at 64 KiB/s, a swarm of mostly slow peers.

``--rtt-ms N``: every leecher reaches each seeder through ``tools/delayrelay.py``, a relay process on
loopback that holds every chunk (with ``--transport utp``: every datagram) N/2 ms each way, so a
request's answer comes N ms later at the least, as over a long path (this kernel has no ``netem``).
With ``--seed-rate`` it is a link of that rate and round-trip time: the case where the requests a
client keeps in flight, not its CPU, set its throughput.  With ``--seed-leechers`` the leechers reach
the measured seeder through it.  The relay's CPU is its own process's, in no column.  A list gives each
seeder its own round trip, the last one for the rest, 0 for none: ``--seeders 10 --rtt-ms 20,20,20,20,20,300``
is five seeders 20 ms away and five 300 ms away.

``--minibt-arg ARG`` (repeatable): passed to the minibt leecher after its other arguments (for example
``--minibt-arg=--cache=8MiB``).

``--minibt-repo DIR``: the minibt rows (and a minibt seeder) run ``python -m minibt`` in DIR, so they
use that source tree's minibt (another checkout, for an A/B of two trees in alternating runs).  Without
it they use this script's own tree whatever the current directory is: running this script from another
tree's directory does not select that tree.

``--warmup-mib N``: before each leecher row, write N MiB to a scratch file in the work directory and
delete it.  On a VM whose kernel reports free pages to the hypervisor (virtio-balloon free page
reporting: /sys/module/page_reporting exists), a page that stayed free for a few seconds costs a host
fault at its next use, and a client's first writes into the page cache then run 10-20x slower, in its
own system time (README "Benchmarks on this VM").  The scratch file leaves freshly freed pages for
the row that starts right after.  Default: twice the payload, at most 2048 MiB, on such a kernel; 0
elsewhere.  Not counted in any row.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchlib, also when loaded by path
from benchlib import (  # noqa: E402
    BIG_BUFFERS,
    GIB,
    LT_PEER,
    MIB,
    NO_PEX,
    RC4_FORCED,
    REPO,
    SAMPLE_S,
    UTP_ONLY,
    LoopbackTracker,
    Result,
    SeedResult,
    Watched,
    aria2_argv,
    busy_cpu_s,
    child_env,
    default_warmup_mib,
    free_port,
    fresh_bytecode,
    make_payload,
    payload_layout,
    proc_cpu_s,
    run_measured,
    status_kib,
    tree_sha1,
    udp_rcvbuf_errors,
    warm_up,
)

# Every leecher row: (name, seeder it downloads from: "plain" or "rc4"), in run order.
LEECHERS = [("minibt", "plain"), ("libtorrent", "plain"), ("aria2", "plain"), ("lt-bigbuf", "plain"),
            ("minibt-rc4", "rc4"), ("lt-rc4", "rc4"), ("aria2-rc4", "rc4")]
SEEDERS = ("minibt", "libtorrent")


def sizes_mib(text: str) -> list[int]:
    """--size-mib: one size or a comma-separated list, each a positive number of MiB."""
    try:
        sizes = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size list: {text!r}") from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=sizes_mib, default=[1024],
                    help="payload size; a comma-separated list runs each size in turn")
    ap.add_argument("--piece-kib", type=int, default=256)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--transport", choices=("tcp", "utp"), default="tcp")
    ap.add_argument("--encryption", choices=("none", "required"), default="none",
                    help="required: also download over forced MSE/PE RC4 (plaintext rows of the same run too)")
    ap.add_argument("--clients", default=None,
                    help="comma-separated rows to run (leechers: " + ", ".join(n for n, _ in LEECHERS)
                    + "; with --seed-leechers, seeders: minibt, libtorrent); default all that apply")
    ap.add_argument("--seeders", type=int, default=1,
                    help="libtorrent seeders serving each download at once (the leecher is told every address)")
    ap.add_argument("--seed-rate", type=parse_rates, default=(),
                    help="MiB/s (e.g. 0.25): each libtorrent seeder uploads at most this fast (a link-bound download); "
                         "a list (4,0.0625) gives one rate per seeder, the last for the rest")
    ap.add_argument("--rtt-ms", type=parse_rtts, default=(),
                    help="reach each seeder through a relay adding this round-trip time (tools/delayrelay.py); "
                         "a list (20,300) gives one per seeder, the last for the rest (0: no relay)")
    ap.add_argument("--minibt-repo", default=REPO, metavar="DIR",
                    help="source tree whose minibt the minibt rows run (default: this one), for A/B runs")
    ap.add_argument("--minibt-arg", action="append", default=[],
                    help="an argument for the minibt leecher (repeatable), e.g. --minibt-arg=--cache=8MiB")
    ap.add_argument("--warmup-mib", type=int, default=None,
                    help="MiB written to a scratch file and deleted before each leecher row (default: 2x the "
                         "payload up to 2048 where the kernel reports free pages to a hypervisor, else 0)")
    ap.add_argument("--files", type=int, default=0, help="payload of N files in a directory (0: one file)")
    ap.add_argument("--sparse", action="store_true", help="payload of sparse zero files (fast to make at 16 GiB)")
    ap.add_argument("--seed-leechers", type=int, default=0,
                    help="measure seeding to N libtorrent leechers at once instead of downloading")
    return ap


def leecher_rows(transport: str, encryption: str, clients: list[str] | None) -> list[tuple[str, str]]:
    """The (row, seeder) pairs that apply to this transport and encryption, filtered by --clients.

    ValueError for a name that is no leecher, or one that does not apply (aria2 over uTP, ...).
    """
    def applies(name: str, mode: str) -> bool:
        if mode == "rc4" and encryption != "required":
            return False
        if name.startswith("aria2") and transport == "utp":
            return False
        return name != "lt-bigbuf" or transport == "utp"

    known = {n for n, _ in LEECHERS}
    for name in clients or ():
        if name not in known:
            raise ValueError(f"unknown client {name!r} (known: {', '.join(sorted(known))})")
    rows = [(n, m) for n, m in LEECHERS if applies(n, m)]
    if clients is None:
        return rows
    for name in clients:
        if name not in {n for n, _ in rows}:
            raise ValueError(f"{name} does not apply with --transport {transport} --encryption {encryption}")
    return [(n, m) for n, m in rows if n in clients]


def seeder_rows(clients: list[str] | None) -> list[str]:
    for name in clients or ():
        if name not in SEEDERS:
            raise ValueError(f"{name} cannot be measured seeding (seeders: {', '.join(SEEDERS)})")
    return [n for n in SEEDERS if clients is None or n in clients]


def best(results: list[Result], name: str) -> tuple[float, float] | None:
    """(fewest seconds, fewest CPU seconds) over the rows of ``name``; None without any."""
    rs = [r for r in results if r.name == name]
    return (min(r.seconds for r in rs), min(r.cpu_s for r in rs)) if rs else None


def lowest_rss(results: list[Result], name: str) -> int | None:
    rs = [r.maxrss_kib for r in results if r.name == name]
    return min(rs) if rs else None


def verify(dest: str, top: str, want: dict[str, str], who: str) -> None:
    got = tree_sha1(os.path.join(dest, top))
    if got != want:
        bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        raise RuntimeError(f"{who}: downloaded data differs ({len(bad)} files, e.g. {bad[:3]})")


def start_lt_seeder(torrent: str, seed_dir: str, settings: dict[str, object]) -> tuple[Watched, str]:
    w = Watched([sys.executable, "-c", LT_PEER, torrent, seed_dir, "seed", "-", json.dumps(settings)],
                stdout=subprocess.PIPE)
    assert w.proc.stdout is not None
    port = json.loads(w.proc.stdout.readline())["port"]
    json.loads(w.proc.stdout.readline())  # {"seeding": true} once its check is done
    return w, f"127.0.0.1:{port}"


def start_minibt_seeder(torrent: str, seed_dir: str, state: str, timeout_s: float,
                        repo: str = REPO) -> tuple[Watched, str]:
    """``minibt seed`` with its defaults (DHT off, on 127.0.0.1); returns once its hash check is done
    (the check writes the first resume file into the fresh state directory)."""
    shutil.rmtree(state, ignore_errors=True)
    port = free_port()
    w = Watched([sys.executable, "-m", "minibt", "seed", torrent, "--dir", seed_dir, "--port", str(port),
                 "--no-dht", "--bind", "127.0.0.1", "--state-dir", state, "--quiet"], cwd=repo)
    t0 = time.monotonic()
    while not glob.glob(os.path.join(state, "*.resume")):
        if w.exited() or time.monotonic() - t0 > timeout_s:
            w.close()
            raise RuntimeError("minibt seed did not finish its check")
        w.sample()
        time.sleep(SAMPLE_S)
    return w, f"127.0.0.1:{port}"


def _numbers(text: str, *, zero_ok: bool) -> tuple[float, ...]:
    """One number or a comma-separated list, each positive (or >= 0 with ``zero_ok``)."""
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or a list of numbers: {text!r}") from None
    if not all(v > 0 or zero_ok and v == 0 for v in values):
        raise argparse.ArgumentTypeError(f"{'negative' if zero_ok else 'not positive'}: {text!r}")
    return values


def parse_rates(text: str) -> tuple[float, ...]:
    """``--seed-rate``: MiB/s, one or a comma-separated list of positive numbers."""
    return _numbers(text, zero_ok=False)


def parse_rtts(text: str) -> tuple[float, ...]:
    """``--rtt-ms``: milliseconds, one or a comma-separated list of numbers >= 0; () when all are 0."""
    rtts = _numbers(text, zero_ok=True)
    return rtts if any(rtts) else ()


def per_seeder(values: tuple[float, ...], i: int) -> float:
    """Seeder ``i``'s value of a per-seeder list (the last one for the rest); 0 for an empty list."""
    return values[min(i, len(values) - 1)] if values else 0.0


def seeder_rtt(args: argparse.Namespace, i: int = 0) -> float:
    """The round trip ``--rtt-ms`` adds to seeder ``i`` (0: none)."""
    return per_seeder(args.rtt_ms, i)


def seeder_settings(args: argparse.Namespace, i: int = 0) -> dict[str, object]:
    """libtorrent settings of a download case's seeder ``i`` (LT_PEER's extra argument)."""
    out: dict[str, object] = {**UTP_ONLY, **BIG_BUFFERS} if args.transport == "utp" else {}
    if args.seed_rate:  # a link-bound download: libtorrent exempts local peers from limits unless told
        out.update({"upload_rate_limit": int(per_seeder(args.seed_rate, i) * MIB), "limit_local": True})
    return out


def start_relay(target: str, rtt_ms: float, *, udp: bool = False) -> tuple[Watched, str]:
    """tools/delayrelay.py to ``target`` (TCP, or UDP for uTP), adding ``rtt_ms``; returns it and the
    address to dial instead."""
    relay = os.path.join(os.path.dirname(os.path.abspath(__file__)), "delayrelay.py")
    w = Watched([sys.executable, relay, target, str(rtt_ms), *(["--udp"] if udp else [])], stdout=subprocess.PIPE)
    assert w.proc.stdout is not None
    return w, f"127.0.0.1:{json.loads(w.proc.stdout.readline())['port']}"


def download_case(args: argparse.Namespace, rows: list[tuple[str, str]], torrent: str, seed_dir: str,
                  top: str, want: dict[str, str], size: int, work: str) -> list[Result]:
    seeders: dict[str, list[Watched]] = {}
    relays: list[Watched] = []
    peers: dict[str, list[str]] = {}
    results: list[Result] = []
    try:
        for mode in sorted({m for _, m in rows}, reverse=True):  # "plain" first
            seeders[mode], peers[mode] = [], []
            for i in range(args.seeders):
                w, addr = start_lt_seeder(torrent, seed_dir, {**seeder_settings(args, i),
                                                              **(RC4_FORCED if mode == "rc4" else {})})
                seeders[mode].append(w)
                rtt = seeder_rtt(args, i)
                if rtt:
                    relay, addr = start_relay(addr, rtt, udp=args.transport == "utp")
                    relays.append(relay)
                peers[mode].append(addr)
            rates = ",".join(f"{r:g}" for r in args.seed_rate)
            rtts = ",".join(f"{r:g}" for r in args.rtt_ms)
            print(f"libtorrent seeder{'s' if args.seeders > 1 else ''} ({'forced RC4' if mode == 'rc4' else 'plaintext'}) "
                  f"pid {', '.join(str(w.pid) for w in seeders[mode])} on {', '.join(peers[mode])}; payload "
                  f"{size >> 20} MiB in {len(want)} file(s), {args.piece_kib} KiB pieces"
                  f"{', sparse' if args.sparse else ''}; transport {args.transport}"
                  f"{f'; upload limited to {rates} MiB/s' if args.seed_rate else ''}"
                  f"{f'; through relays adding {rtts} ms RTT' if args.rtt_ms else ''}", flush=True)
        for _run in range(args.runs):
            for name, mode in rows:
                r = download_one(args, name, mode, peers[mode], [w.pid for w in seeders[mode]], torrent, work,
                                 warmup_mib(args, size >> 20))
                verify(os.path.join(work, f"leech-{name}"), top, want, name)
                results.append(r)
                print(r.row(size), flush=True)
                shutil.rmtree(os.path.join(work, f"leech-{name}"), ignore_errors=True)
    finally:
        for w in relays:
            w.close()
        for group in seeders.values():
            for seeder in group:
                seeder.close()
    return results


def warmup_mib(args: argparse.Namespace, payload_mib: int) -> int:
    """MiB of scratch write before each leecher row: ``--warmup-mib``, else benchlib's default."""
    return default_warmup_mib(payload_mib) if args.warmup_mib is None else args.warmup_mib


def download_one(args: argparse.Namespace, name: str, mode: str, addrs: list[str], seeder_pids: list[int],
                 torrent: str, work: str, warmup: int) -> Result:
    utp = args.transport == "utp"
    dest = os.path.join(work, f"leech-{name}")
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    state = os.path.join(work, f"state-{name}")
    shutil.rmtree(state, ignore_errors=True)
    env = None
    stack = contextlib.ExitStack()  # holds aria2's loopback tracker while it downloads
    if name.startswith("minibt"):
        argv = [sys.executable, "-m", "minibt", "download", torrent, "--dir", dest, "--port", "0", "--no-dht",
                "--bind", "127.0.0.1", *(a for addr in addrs for a in ("--peer", addr)), "--state-dir", state, "--quiet",
                "--transport", args.transport, "--encryption", "required" if mode == "rc4" else "none",
                *args.minibt_arg]
    elif name.startswith("aria2"):
        exe = shutil.which("aria2c")
        if exe is None:
            raise RuntimeError("aria2c is not installed")
        tracker = stack.enter_context(LoopbackTracker([(h, int(p)) for h, p in (a.rsplit(":", 1) for a in addrs)]))
        argv = aria2_argv(exe, torrent, dest, tracker_url=tracker.url, listen_port=free_port(), rc4=mode == "rc4")
        env = child_env()
    else:
        extra: dict[str, object] = {**UTP_ONLY} if utp else {}
        if name == "lt-bigbuf":
            extra.update(BIG_BUFFERS)
        if mode == "rc4":
            extra.update(RC4_FORCED)
        argv = [sys.executable, "-c", LT_PEER, torrent, dest, "leech", ",".join(addrs), json.dumps(extra)]
    drops0 = udp_rcvbuf_errors()
    warm_up(work, warmup)
    seed0, busy0 = sum(map(proc_cpu_s, seeder_pids)), busy_cpu_s()
    with stack:
        r = run_measured(name, argv, timeout_s=args.timeout, env=env,
                         cwd=args.minibt_repo if name.startswith("minibt") else REPO)
    if utp and drops0 >= 0:
        r.rcvbuf_errors = udp_rcvbuf_errors() - drops0
    r.seeder_cpu_s = sum(map(proc_cpu_s, seeder_pids)) - seed0
    r.other_cpu_s = max(0.0, busy_cpu_s() - busy0 - r.seeder_cpu_s - r.cpu_s)
    return r


def seed_case(args: argparse.Namespace, seeders: list[str], torrent: str, seed_dir: str, top: str,
              want: dict[str, str], size: int, work: str) -> list[SeedResult]:
    n, rtt = args.seed_leechers, seeder_rtt(args)  # the leechers reach the seeder through one relay
    print(f"seeding to {n} libtorrent leechers at once; payload {size >> 20} MiB in {len(want)} file(s), "
          f"{args.piece_kib} KiB pieces{', sparse' if args.sparse else ''}"
          f"{f'; through a relay adding {rtt:g} ms RTT' if rtt else ''}", flush=True)
    results: list[SeedResult] = []
    for _run in range(args.runs):
        for name in seeders:
            if name == "minibt":
                seeder, peer = start_minibt_seeder(torrent, seed_dir, os.path.join(work, "state-seed"), args.timeout,
                                                   args.minibt_repo)
            else:
                seeder, peer = start_lt_seeder(torrent, seed_dir, {})
            relay = None
            try:
                if rtt:  # the list's first
                    relay, peer = start_relay(peer, rtt)
                r = serve(name, seeder, peer, torrent, n, work, args.timeout)
            finally:
                if relay is not None:
                    relay.close()
                seeder.close()
            for i in range(n):
                verify(os.path.join(work, f"sleech-{i}"), top, want, f"leecher {i} of the {name} seeder")
                shutil.rmtree(os.path.join(work, f"sleech-{i}"), ignore_errors=True)
            results.append(r)
            print(r.row(size), flush=True)
    return results


def serve(name: str, seeder: Watched, peer: str, torrent: str, n: int, work: str, timeout_s: float) -> SeedResult:
    """Start n libtorrent leechers of ``peer`` at once; measure the seeder until the last one is done."""
    dests = [os.path.join(work, f"sleech-{i}") for i in range(n)]
    for d in dests:
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    seed0, busy0 = proc_cpu_s(seeder.pid), busy_cpu_s()
    t0 = time.monotonic()
    leechers = [Watched([sys.executable, "-c", LT_PEER, torrent, d, "leech", peer, json.dumps(NO_PEX)])
                for d in dests]
    leecher_cpu = 0.0
    try:
        while not all(w.exited() for w in leechers):
            seeder.sample()
            if seeder.exited():
                raise RuntimeError(f"the {name} seeder exited")
            if time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"{n} leechers did not finish in {timeout_s} s")
            time.sleep(SAMPLE_S)
        seconds = time.monotonic() - t0
        seeder_cpu = proc_cpu_s(seeder.pid) - seed0
        hwm = status_kib(seeder.pid, "VmHWM")
        busy = busy_cpu_s() - busy0
    finally:
        for w in leechers:
            reaped = w.close()
            if reaped is not None:
                leecher_cpu += reaped[1].ru_utime + reaped[1].ru_stime
    return SeedResult(name, n, seconds, seeder_cpu, hwm, seeder.peak_anon_kib, leecher_cpu,
                      max(0.0, busy - seeder_cpu - leecher_cpu))


def ratio_lines(results: list[Result], runs: int, files: int, utp: bool = False, size: int = 0) -> list[str]:
    """The issue-15 ratios of one payload: minibt vs libtorrent (CPU, throughput) and vs aria2 (RSS); with
    RC4 rows the issue-13 ones, and (given the payload ``size``) how busy the machine was."""
    out: list[str] = []
    mb, lt, big = best(results, "minibt"), best(results, "libtorrent"), best(results, "lt-bigbuf")
    if mb and lt:
        tput, cpu = lt[0] / mb[0], mb[1] / lt[1]
        line = (f"issue 15: minibt CPU s/GiB = {cpu:.2f}x libtorrent's{' uTP' if utp else ''} (target <= 1.00x: "
                f"{'met' if cpu <= 1.0 else 'NOT met'}); minibt throughput = {tput:.2f}x libtorrent's")
        if not utp:  # uTP's throughput target is "no lower than before", not a ratio to libtorrent
            target = 1.0 if files else 0.85
            line += f" (target >= {target:.2f}x: {'met' if tput >= target else 'NOT met'})"
        out.append(f"{line} (best of {runs})")
    mb_rss, aria_rss = lowest_rss(results, "minibt"), lowest_rss(results, "aria2")
    if mb_rss and aria_rss:
        rss = mb_rss / aria_rss
        out.append(f"issue 15: minibt peak RSS = {mb_rss / 1024:.1f} MiB = {rss:.2f}x aria2's {aria_rss / 1024:.1f} "
                   f"MiB (target <= 1.00x: {'met' if rss <= 1.0 else 'NOT met'}) (lowest of {runs})")
    ar = best(results, "aria2")
    if mb and ar:
        out.append(f"minibt vs aria2: throughput {ar[0] / mb[0]:.2f}x, CPU s/GiB {mb[1] / ar[1]:.2f}x")
    if mb and big:
        out.append(f"minibt throughput = {big[0] / mb[0] * 100:.0f} % of libtorrent's with 4 MiB buffers")
    mb_rc4, lt_rc4 = best(results, "minibt-rc4"), best(results, "lt-rc4")
    if mb and mb_rc4:
        tput, cpu = mb[0] / mb_rc4[0] * 100, mb_rc4[1] / mb[1]
        out.append(f"minibt RC4 throughput = {tput:.0f} % of minibt plaintext (target >= 80 %: "
                   f"{'met' if tput >= 80 else 'NOT met'}); RC4 CPU s/GiB = {cpu:.2f}x plaintext (target <= 1.5x: "
                   f"{'met' if cpu <= 1.5 else 'NOT met'}) (best of {runs})")
    if lt and lt_rc4:
        out.append(f"libtorrent RC4 throughput = {lt[0] / lt_rc4[0] * 100:.0f} % of libtorrent plaintext; "
                   f"RC4 CPU s/GiB = {lt_rc4[1] / lt[1]:.2f}x plaintext")
    if mb_rc4 and lt_rc4:
        out.append(f"minibt RC4 throughput = {lt_rc4[0] / mb_rc4[0] * 100:.0f} % of libtorrent RC4's")
    for name in ("minibt", "minibt-rc4") if mb_rc4 and size else ():
        load = machine_load(results, name, size)
        if load is not None:
            out.append(f"{name} rows: leecher + seeder = {load[0]:.2f} CPU s/GiB; the machine was {load[1]:.2f} "
                       f"of {os.cpu_count()} cores busy (median of {runs})")
    return out


def machine_load(results: list[Result], name: str, size: int) -> tuple[float, float] | None:
    """(leecher + seeder CPU s/GiB, cores busy: leecher + seeder + other CPU per wall second), medians
    over the rows of ``name``; None without rows or seeder figures.  Where an encrypted row keeps the
    machine about as busy as the cores it has, both ends pay for RC4 out of the same CPUs, and the
    throughput can only follow the leecher + seeder CPU per GiB."""
    rs = [r for r in results if r.name == name and r.seeder_cpu_s >= 0]
    if not rs:
        return None
    cpu = statistics.median((r.cpu_s + r.seeder_cpu_s) / (size / GIB) for r in rs)
    busy = statistics.median((r.cpu_s + r.seeder_cpu_s + max(0.0, r.other_cpu_s)) / r.seconds for r in rs)
    return cpu, busy


def seed_ratio_lines(results: list[SeedResult], runs: int) -> list[str]:
    mb = [r for r in results if r.name == "minibt"]
    lt = [r for r in results if r.name == "libtorrent"]
    if not (mb and lt):
        return []
    cpu = min(r.seeder_cpu_s for r in mb) / min(r.seeder_cpu_s for r in lt)
    wall = min(r.seconds for r in lt) / min(r.seconds for r in mb)
    return [f"issue 15: minibt seeding CPU s/GiB = {cpu:.2f}x libtorrent's (target <= 1.00x: "
            f"{'met' if cpu <= 1.0 else 'NOT met'}); aggregate throughput {wall:.2f}x libtorrent's (best of {runs})"]


def prepare(args: argparse.Namespace, size_mib: int, work: str) -> tuple[str, str, str, dict[str, str]]:
    """Make (or reuse) the payload and its torrent: (torrent, seed_dir, top name, {file: SHA-1})."""
    layout = payload_layout(size_mib << 20, args.files)
    seed_dir = os.path.join(work, "seed")
    top = layout[0][0].split("/", 1)[0]
    stamp = os.path.join(work, "payload.json")
    key = json.dumps({"layout": layout, "sparse": args.sparse, "piece_kib": args.piece_kib})
    torrent = os.path.join(work, "payload.torrent")
    if not (os.path.exists(stamp) and open(stamp).read() == key and os.path.exists(torrent)):
        shutil.rmtree(seed_dir, ignore_errors=True)
        make_payload(seed_dir, layout, sparse=args.sparse)
        subprocess.run([sys.executable, "-m", "minibt", "create", os.path.join(seed_dir, top), "-o", torrent,
                        "--piece-size", str(args.piece_kib << 10)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        with open(stamp, "w") as f:
            f.write(key)
    return torrent, seed_dir, top, tree_sha1(os.path.join(seed_dir, top))


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    clients = [c.strip() for c in args.clients.split(",") if c.strip()] if args.clients else None
    try:
        rows = leecher_rows(args.transport, args.encryption, clients) if not args.seed_leechers else []
        seeders = seeder_rows(clients) if args.seed_leechers else []
    except ValueError as e:
        ap.error(str(e))
    if args.seeders < 1 or (args.seeders > 1 and args.seed_leechers):
        ap.error("--seeders N: N >= 1, for download rows (not with --seed-leechers)")
    if args.seed_leechers and (args.transport != "tcp" or args.encryption != "none"):
        ap.error("--seed-leechers measures plaintext TCP seeding")
    work = args.workdir or tempfile.mkdtemp(prefix="minibt-bench-")
    print(fresh_bytecode(os.path.join(args.minibt_repo, "minibt")), flush=True)
    peak_rss: dict[int, int] = {}
    try:
        for size_mib in args.size_mib:
            torrent, seed_dir, top, want = prepare(args, size_mib, work)
            size = size_mib << 20
            if warmup_mib(args, size_mib) and not args.seed_leechers:
                print(f"before each row: {warmup_mib(args, size_mib)} MiB written and deleted (--warmup-mib)", flush=True)
            if args.seed_leechers:
                lines = seed_ratio_lines(seed_case(args, seeders, torrent, seed_dir, top, want, size, work), args.runs)
            else:
                results = download_case(args, rows, torrent, seed_dir, top, want, size, work)
                lines = ratio_lines(results, args.runs, args.files, args.transport == "utp", size)
                rss = lowest_rss(results, "minibt")
                if rss:
                    peak_rss[size_mib] = rss
            for line in lines:
                print(line, flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if len(peak_rss) > 1:
        lo, hi = min(peak_rss), max(peak_rss)
        pct = peak_rss[hi] / peak_rss[lo] * 100
        print(f"issue 15: minibt peak RSS at {hi} MiB = {peak_rss[hi] / 1024:.1f} MiB = {pct:.0f} % of "
              f"{peak_rss[lo] / 1024:.1f} MiB at {lo} MiB (target <= 110 %: {'met' if pct <= 110 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
