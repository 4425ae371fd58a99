#!/usr/bin/env python3
"""Memory benchmark: peak VmHWM / RssAnon of ``minibt run`` with a memory budget in loopback swarms.

    python3 tools/memswarm.py [--budget 40MiB] [--case idle|download|seed|all]
        [--seeders 16] [--size-mib 256] [--torrents 20] [--leechers 40] [--seed-size-mib 8] [--workdir DIR]

Each libtorrent peer is its own process on its own loopback address (DHT/LSD/UPnP/NAT-PMP off; the
harness in tests/integration/clients.py).  ``download``: minibt downloads one torrent from N seeders.
``seed``: minibt seeds T torrents to L leechers.  ``idle``: the interpreter's fixed base.  Prints the
minibt process's kernel peak (VmHWM), largest anonymous RSS sample (RssAnon), the peak its status
file reported, and the budget.  Exit status 1 if a VmHWM is at or above the budget.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))

import memswarm  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", default="40MiB")
    ap.add_argument("--case", choices=("idle", "download", "seed", "all"), default="all")
    ap.add_argument("--seeders", type=int, default=16)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--seeder-rate", type=int, default=0, help="bytes/s upload limit per seeder (0: none)")
    ap.add_argument("--torrents", type=int, default=20)
    ap.add_argument("--leechers", type=int, default=40)
    ap.add_argument("--seed-size-mib", type=int, default=8)
    ap.add_argument("--workdir", default=None)
    ns = ap.parse_args()
    work = Path(ns.workdir or tempfile.mkdtemp(prefix="minibt-memswarm-"))
    results = []
    try:
        if ns.case in ("idle", "all"):
            results.append(memswarm.idle_base(work / "idle", budget=ns.budget))
            print(results[-1].line(), flush=True)
        if ns.case in ("download", "all"):
            results.append(memswarm.download_swarm(work / "download", seeders=ns.seeders, size=ns.size_mib << 20,
                                                   budget=ns.budget, seeder_rate=ns.seeder_rate))
            print(results[-1].line(), flush=True)
        if ns.case in ("seed", "all"):
            results.append(memswarm.seed_swarm(work / "seed", torrents=ns.torrents, leechers=ns.leechers,
                                               size=ns.seed_size_mib << 20, budget=ns.budget))
            print(results[-1].line(), flush=True)
    finally:
        if ns.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    over = [r for r in results if r.vm_hwm >= r.budget_bytes]
    for r in over:
        print(f"OVER BUDGET: {r.case}", file=sys.stderr)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
