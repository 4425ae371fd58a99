#!/usr/bin/env python3
"""MSE/PE cost on this machine (run it on the Pi too): handshake CPU time per side and RC4 throughput.

    PYTHONPATH=. python3 tools/bench_mse.py [--handshakes 200] [--mib 256]

One handshake = an MseInitiator and an MseResponder (minibt/mse.py) driven against each other in
memory, the way tests/unit/test_mse.py does, with random pads.  The time of every call on a machine is
charged to its side: the initiator's DH key generation, its shared secret, step 3 and two RC4 set-ups;
the responder's key generation, its shared secret, the torrent lookup and two RC4 set-ups.  A bare
``pow()`` key generation and shared-secret exponentiation are timed alone to show the DH share.
"Handshakes/s per core" is 1 / (mean CPU time of one side): what one core spends only on handshakes
sustains.  RC4 throughput is Rc4Stream.encrypt on 16 KiB blocks (a wire block).  Times are CPU
(process_time), so a busy machine slows the figures less than wall time would.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import dataclass

from minibt.mse import (
    DH_GENERATOR,
    DH_PRIME,
    DH_SECRET_BITS,
    MseInitiator,
    MseResponder,
    Rc4Stream,
    req2_hash,
)


@dataclass(frozen=True)
class MseFigures:
    initiator_ms: float  # median CPU ms of one handshake, initiator side
    responder_ms: float
    dh_keygen_ms: float  # median pow(g, x, P) alone
    dh_shared_ms: float  # median pow(y, x, P) alone
    initiator_per_s: float  # handshakes/s one core sustains as initiator (1 / mean)
    responder_per_s: float
    pairs_per_s: float  # both sides in one process
    rc4_mib_s: float


def one_handshake(seed: int) -> tuple[float, float]:
    """(initiator, responder) CPU seconds of one complete handshake."""
    clock = time.process_time
    rng = random.Random(seed)
    ih = rng.randbytes(20)
    lookup = {req2_hash(ih): ih}.get
    t0 = clock()
    a = MseInitiator(ih, ia=bytes(68), rng=rng, now=0.0)  # DH keygen; Ya | PadA queued
    step1 = a.data_to_send()
    t1 = clock()
    b = MseResponder(lookup, rng=random.Random(~seed), now=0.0)  # DH keygen
    b.receive_data(step1, now=0.0)  # shared secret; Yb | PadB queued
    step2 = b.data_to_send()
    t2 = clock()
    a.receive_data(step2, now=0.0)  # shared secret, keys, step 3
    step3 = a.data_to_send()
    t3 = clock()
    b.receive_data(step3, now=0.0)  # lookup, RC4, IA; step 4
    step4 = b.data_to_send()
    t4 = clock()
    a.receive_data(step4, now=0.0)  # VC sync, crypto_select
    t5 = clock()
    if not (a.done and b.done):
        raise RuntimeError("MSE handshake did not complete")
    return (t1 - t0) + (t3 - t2) + (t5 - t4), (t2 - t1) + (t4 - t3)


def dh_times(n: int) -> tuple[float, float]:
    """Median CPU seconds of a bare DH key generation and of a bare shared-secret exponentiation."""
    rng = random.Random(0)
    keygen, shared = [], []
    for _ in range(n):
        x = rng.getrandbits(DH_SECRET_BITS) | (1 << (DH_SECRET_BITS - 1))
        t0 = time.process_time()
        y = pow(DH_GENERATOR, x, DH_PRIME)
        t1 = time.process_time()
        pow(y, x, DH_PRIME)
        t2 = time.process_time()
        keygen.append(t1 - t0)
        shared.append(t2 - t1)
    return statistics.median(keygen), statistics.median(shared)


def rc4_throughput(mib: float) -> float:
    """MiB/s of Rc4Stream.encrypt over 16 KiB blocks."""
    s = Rc4Stream(bytes(20), b"\x01" * 20)
    block = bytes(16384)
    n = max(1, int(mib * 64))
    t0 = time.process_time()
    for _ in range(n):
        s.encrypt(block)
    dt = max(time.process_time() - t0, 1e-9)
    return n * 16384 / dt / 2**20


def measure(handshakes: int = 200, mib: float = 256) -> MseFigures:
    one_handshake(-1)  # warm-up: the first one also imports cryptography (mse.py loads it on first use)
    pairs = [one_handshake(i) for i in range(handshakes)]
    ini = [p[0] for p in pairs]
    resp = [p[1] for p in pairs]
    keygen, shared = dh_times(handshakes)
    return MseFigures(
        initiator_ms=statistics.median(ini) * 1e3,
        responder_ms=statistics.median(resp) * 1e3,
        dh_keygen_ms=keygen * 1e3,
        dh_shared_ms=shared * 1e3,
        initiator_per_s=len(ini) / max(sum(ini), 1e-9),
        responder_per_s=len(resp) / max(sum(resp), 1e-9),
        pairs_per_s=len(pairs) / max(sum(ini) + sum(resp), 1e-9),
        rc4_mib_s=rc4_throughput(mib),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--handshakes", type=int, default=200)
    p.add_argument("--mib", type=int, default=256)
    ns = p.parse_args()
    f = measure(ns.handshakes, ns.mib)
    print(f"MSE handshake CPU, median of {ns.handshakes}: initiator {f.initiator_ms:.3f} ms, "
          f"responder {f.responder_ms:.3f} ms")
    print(f"  of which DH (each side): keygen pow(g,x,P) {f.dh_keygen_ms:.3f} ms + "
          f"shared secret pow(y,x,P) {f.dh_shared_ms:.3f} ms = {f.dh_keygen_ms + f.dh_shared_ms:.3f} ms")
    print(f"handshakes/s on one core: {f.initiator_per_s:.0f} as initiator, {f.responder_per_s:.0f} as responder, "
          f"{f.pairs_per_s:.0f} complete pairs (both sides in one process)")
    print(f"RC4 through Rc4Stream.encrypt, 16 KiB blocks, {ns.mib} MiB: {f.rc4_mib_s:.0f} MiB/s")


if __name__ == "__main__":
    main()
