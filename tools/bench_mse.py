#!/usr/bin/env python3
"""MSE/PE cost on this machine (run it on the Pi): handshake time and RC4 throughput.

    PYTHONPATH=. python3 tools/bench_mse.py [--handshakes 200] [--mib 256]

One handshake = both sides in memory (MseInitiator + MseResponder): two DH key generations, two
shared-secret exponentiations, the SHA-1s and four RC4 set-ups with their 1024-byte discard.
Throughput is Rc4Stream.encrypt on 16 KiB blocks (a wire block).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from minibt.mse import MseInitiator, MseResponder, Rc4Stream, req2_hash


def one_handshake(seed: int) -> float:
    ih = random.Random(seed).randbytes(20)
    t0 = time.perf_counter()
    a = MseInitiator(ih, ia=bytes(68), rng=random.Random(seed), now=0.0)
    b = MseResponder({req2_hash(ih): ih}.get, rng=random.Random(~seed), now=0.0)
    b.receive_data(a.data_to_send(), now=0.0)
    a.receive_data(b.data_to_send(), now=0.0)
    b.receive_data(a.data_to_send(), now=0.0)
    a.receive_data(b.data_to_send(), now=0.0)
    dt = time.perf_counter() - t0
    assert a.done and b.done
    return dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--handshakes", type=int, default=200)
    p.add_argument("--mib", type=int, default=256)
    ns = p.parse_args()
    times = [one_handshake(i) for i in range(ns.handshakes)]
    print(f"handshake (both sides): median {statistics.median(times) * 1e3:.2f} ms, "
          f"p95 {sorted(times)[int(len(times) * 0.95)] * 1e3:.2f} ms over {ns.handshakes}")
    s = Rc4Stream(bytes(20), b"\x01" * 20)
    block = bytes(16384)
    n = ns.mib * 64
    t0 = time.perf_counter()
    for _ in range(n):
        s.encrypt(block)
    dt = time.perf_counter() - t0
    print(f"RC4 through Rc4Stream.encrypt, 16 KiB blocks: {n * 16384 / dt / 2**20:.0f} MiB/s")


if __name__ == "__main__":
    main()
