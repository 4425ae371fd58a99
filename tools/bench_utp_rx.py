#!/usr/bin/env python3
"""uTP receive path, in one process: microseconds of Python per received data datagram.

    python3 tools/bench_utp_rx.py [--datagrams 200000] [--runs 3] [--repo DIR ...]

Two ``UtpMux`` machines (utp_mux.py) talk through lists, no sockets: one sends a bulk stream, the other
receives it and sends its ACKs back, on a fake clock that moves between the two directions, so each data
packet carries a delay sample (the timestamp difference of BEP 29) as over a real link.  Timed: the receiver's handling of each batch of
datagrams the sender emits at once, as the loop hands it a read's datagrams (``receive_run`` until the
batch is done, as utp_peers.py; ``receive_datagram`` each in an older tree): decode, routing, ACK and
LEDBAT steps, in-order delivery into ``conn.received`` (or events in an older tree).  So the figure is
the Python cost a uTP download pays per datagram on top of the system calls (a 1 GiB download receives
about 742,000) and the loop's reading (``mmsg.BatchReader.drain``).
``--repo`` names source trees to compare (repeatable; default: this one); runs alternate between them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import random, sys, time
from minibt.utp_mux import UtpMux
a_addr, b_addr = ("127.0.0.1", 1000), ("127.0.0.1", 2000)
a, b = UtpMux(random.Random(2)), UtpMux(random.Random(3))
clock = [0.0]
timed = [0, 0.0]
batched = hasattr(UtpMux, "receive_run")
def pump(src, dst, src_addr, measure):
    now = clock[0]
    datas = [od.data for od in src.datagrams_to_send(now=now)]
    addrs = [src_addr] * len(datas)
    t0 = time.perf_counter()
    if batched:  # as utp_peers.UtpPeers.receive_batch: one read's datagrams, a connection's in-order run at once
        i, evs = 0, []
        while i < len(datas):
            i = dst.receive_run(datas, addrs, i, evs, now=now)
    else:  # a tree before: one call per datagram
        for d in datas:
            dst.receive_datagram(d, src_addr, now=now)
    if measure:
        timed[1] += time.perf_counter() - t0
        timed[0] += len(datas)
    dst.socket_drained(now=now)
    if getattr(conn, "received", None):  # utp_peers.py takes a batch's bytes after each batch
        conn.received = bytearray()
conn = a.connect(b_addr, now=0.0)
if hasattr(conn, "received"):  # in-order bytes collect there, as utp_peers.py asks (a tree before: events)
    conn.received = bytearray()
pump(a, b, a_addr, False)
pump(b, a, b_addr, False)
conn.send(b"hi")
pump(a, b, a_addr, False)
pump(b, a, b_addr, False)
sender = next(iter(b._conns.values()))
chunk = bytes(1 << 16)
want = int(sys.argv[1])
while timed[0] < want:
    sender.send(chunk)
    clock[0] += 0.0005
    pump(b, a, b_addr, True)
    clock[0] += 0.0005  # the ACKs arrive later than they were sent: the next data carries a delay sample each
    pump(a, b, a_addr, False)
got = conn.stats()["bytes_received"]
print(f"{timed[1] / timed[0] * 1e6:.2f} {timed[0]} {got:.0f}")
"""


def one_run(repo: str, datagrams: int) -> tuple[float, int, int]:
    env = dict(os.environ, PYTHONPATH=repo)
    out = subprocess.run([sys.executable, "-c", CHILD, str(datagrams)], env=env, cwd=repo, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1]), int(out[2])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datagrams", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--repo", action="append", help="minibt source tree (repeatable; default: this one)")
    args = ap.parse_args(argv)
    repos = [os.path.abspath(r) for r in (args.repo or [REPO])]
    best: dict[str, float] = {}
    for i in range(args.runs):
        for repo in repos:
            us, n, got = one_run(repo, args.datagrams)
            best[repo] = min(best.get(repo, us), us)
            print(f"run {i + 1} {repo}: {us:.2f} us per received datagram ({n} datagrams, {got} bytes delivered)",
                  flush=True)
    for repo in repos:
        print(f"best of {args.runs}, {repo}: {best[repo]:.2f} us per datagram")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
