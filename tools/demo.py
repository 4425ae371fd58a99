#!/usr/bin/env python3
"""Built-in demo: a real local swarm on loopback.

Makes a 32 MiB two-file payload, creates a .torrent with `minibt create`, starts
`minibt seed` on it, then runs `minibt download` against that seeder and compares
the result byte for byte.  Everything lives in a temporary directory; the seeder is
stopped by its PID.  Exit status is the download's.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time


def main() -> int:
    work = tempfile.mkdtemp(prefix="minibt-demo-")
    seed_dir = os.path.join(work, "seed")
    leech_dir = os.path.join(work, "leech")
    payload = os.path.join(seed_dir, "demo")
    os.makedirs(payload)
    rng = random.Random(42)
    for name, size in (("big.bin", 24 << 20), ("small.bin", 8 << 20 | 12345)):
        with open(os.path.join(payload, name), "wb") as f:
            f.write(rng.randbytes(size))
    torrent = os.path.join(work, "demo.torrent")
    mb = [sys.executable, "-m", "minibt"]
    subprocess.run([*mb, "create", payload, "-o", torrent], check=True)
    subprocess.run([*mb, "info", torrent], check=True)
    seeder = subprocess.Popen(
        [*mb, "seed", torrent, "--dir", seed_dir, "--port", "0", "--bind", "127.0.0.1", "--no-dht",
         "--state-dir", os.path.join(work, "state-seed"), "--quiet"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert seeder.stderr is not None
        line = seeder.stderr.readline()  # "<name>: <hash> listening on port N"
        port = int(line.rsplit(" ", 1)[1])
        print(f"seeder pid {seeder.pid} on 127.0.0.1:{port}")
        t0 = time.monotonic()
        rc = subprocess.run(
            [*mb, "download", torrent, "--dir", leech_dir, "--port", "0", "--bind", "127.0.0.1", "--no-dht",
             "--peer", f"127.0.0.1:{port}", "--state-dir", os.path.join(work, "state-leech"), "--timeout", "300"],
        ).returncode
        dt = time.monotonic() - t0
    finally:
        seeder.terminate()
        seeder.wait(timeout=30)
    if rc != 0:
        print(f"demo: download failed with exit code {rc}")
        return rc
    for name in ("big.bin", "small.bin"):
        a = hashlib.sha1(open(os.path.join(payload, name), "rb").read()).hexdigest()
        b = hashlib.sha1(open(os.path.join(leech_dir, "demo", name), "rb").read()).hexdigest()
        if a != b:
            print(f"demo: {name} differs!")
            return 1
    size = 32 << 20
    print(f"demo: 32 MiB downloaded byte-exact in {dt:.1f} s ({size / dt / 2**20:.1f} MiB/s incl. start-up)")
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
