#!/usr/bin/env python3
"""minibt library example: two in-process clients on loopback, driven through the public API.

The seeding client runs without the built-in choker (auto_choke=False): library code unchokes at
most two interested peers itself.  The downloading client counts verified pieces with an event
callback and reports why its connection ended.  Run: python3 tools/api_example.py
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import threading

import minibt
from minibt.metainfo import create_torrent


def make_files(root: str) -> str:
    """A 4 MiB two-file payload and its .torrent; returns the .torrent's path."""
    payload = os.path.join(root, "seed", "example")
    os.makedirs(payload)
    rng = random.Random(7)
    for name, size in (("one.bin", 3 << 20), ("two.bin", (1 << 20) + 4321)):
        with open(os.path.join(payload, name), "wb") as f:
            f.write(rng.randbytes(size))
    torrent = os.path.join(root, "example.torrent")
    with open(torrent, "wb") as f:
        f.write(create_torrent(payload, piece_length=64 * 1024))
    return torrent


def main() -> int:
    work = tempfile.mkdtemp(prefix="minibt-api-")
    torrent = make_files(work)

    # --- the seeder: library code is the choker -------------------------------------------------
    seeder = minibt.Client(bind="127.0.0.1", port=0,
                           config=minibt.SessionConfig(torrent=minibt.TorrentConfig(auto_choke=False)))
    unchoked: set[minibt.Peer] = set()

    def on_interested(ev: minibt.Event[minibt.Torrent, minibt.Peer]) -> None:
        if ev.peer is not None and len(unchoked) < 2:
            ev.peer.unchoke()
            unchoked.add(ev.peer)

    def on_gone(ev: minibt.Event[minibt.Torrent, minibt.Peer]) -> None:
        if ev.peer is not None:
            unchoked.discard(ev.peer)

    seeder.on(minibt.EventName.PEER_INTERESTED, on_interested)
    seeder.on(minibt.EventName.PEER_DISCONNECTED, on_gone)
    st = seeder.add(torrent, os.path.join(work, "seed"), mode="seed")
    seeder.run(until=lambda: st.state is not minibt.TorrentState.CHECKING)  # hash-check the data first
    seeding = threading.Thread(target=seeder.run, name="seeder")  # one Client per thread
    seeding.start()

    # --- the downloader: counts verified pieces, reports disconnects ------------------------------
    verified = 0

    def on_verified(ev: minibt.Event[minibt.Torrent, minibt.Peer]) -> None:
        nonlocal verified
        verified += 1

    def on_disconnected(ev: minibt.Event[minibt.Torrent, minibt.Peer]) -> None:
        assert ev.peer is not None and ev.reason is not None
        print(f"disconnected from {ev.peer.ip}:{ev.peer.port} ({ev.peer.client}): "
              f"{ev.reason.name} ({ev.reason.value}) {ev.detail}")

    rc = 1
    try:
        with minibt.Client(bind="127.0.0.1", port=0) as leecher:
            leecher.on("piece_verified", on_verified)
            leecher.on("peer_disconnected", on_disconnected)
            leecher.on("handshake_done", lambda ev: print(ev.peer.describe() if ev.peer else ""))
            t = leecher.add(torrent, os.path.join(work, "leech"), peers=[("127.0.0.1", seeder.port)])
            deadline = leecher.clock.now() + 60
            leecher.run(until=lambda: t.complete or leecher.clock.now() > deadline)
            assert t.meta is not None  # a .torrent file: the metadata is there from the start
            print(f"verified {verified}/{t.meta.num_pieces} pieces; complete: {t.complete}")
            rc = 0 if t.complete and verified == t.meta.num_pieces else 1
    finally:
        seeder.stop()
        seeding.join(timeout=30)
        seeder.close()
        shutil.rmtree(work, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
