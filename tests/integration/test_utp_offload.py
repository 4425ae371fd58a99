"""uTP minibt -> minibt on loopback with UDP GSO on the seeder's sends and GRO on the leecher's reads.

On loopback the kernel delivers coalesced buffers only when the sender used GSO (minibt.udpio), so a
minibt pair is where both show: the seeder's runs of data packets leave in one ``sendmsg`` each and
reach the leecher as GRO buffers that it cuts back into datagrams.  The transfer is checked byte for
byte and the counters prove the offloads were used, not merely switched on.  Kernels without them
skip (the fallback is covered by tests/unit/test_udpio.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from clients import LOOPBACK, assert_same_tree, make_payload
from inproc import seeding_in_thread

import minibt
from minibt.metainfo import create_torrent

MIB = 1 << 20
DEADLINE_S = 40.0


def test_minibt_to_minibt_utp_uses_gso_and_gro(tmp_path: Path) -> None:
    src = make_payload(tmp_path / "seed" / "payload", {"a.bin": 12 * MIB + 321, "b.bin": 4321}, 41)
    torrent = tmp_path / "p.torrent"
    torrent.write_bytes(create_torrent(str(src), piece_length=256 * 1024))
    seeder_client = minibt.Client(bind=LOOPBACK, port=0, transports=("utp",))
    with seeding_in_thread(seeder_client, torrent, tmp_path / "seed", DEADLINE_S) as seeder, \
            minibt.Client(bind=LOOPBACK, port=0, transports=("utp",)) as leecher:
        sio, lio = seeder.loop._udpio, leecher.loop._udpio
        assert sio is not None and lio is not None
        if not (sio.gso and lio.gro):
            pytest.skip("this kernel has no UDP GSO/GRO")
        t = leecher.add(str(torrent), str(tmp_path / "leech"), peers=[(LOOPBACK, seeder.port)])
        deadline = leecher.clock.now() + DEADLINE_S
        leecher.run(until=lambda: t.complete or leecher.clock.now() > deadline)
        assert t.complete, t.status(leecher.clock.now())
        assert t.stats.hash_failures == 0 and t.stats.wasted == 0
        got = dict(leecher.loop.counters)
    sent = dict(seeder.loop.counters)  # the seeder's thread has stopped
    assert_same_tree(tmp_path / "seed" / "payload", tmp_path / "leech" / "payload")
    assert sent["udp_gso_sends"] > 0 and sent["udp_gso_datagrams"] >= 2 * sent["udp_gso_sends"], sent
    assert got["udp_gro_buffers"] > 0 and got["udp_gro_datagrams"] >= 2 * got["udp_gro_buffers"], got
    # most of the 12 MiB (~9000 data packets) arrived coalesced
    assert got["udp_gro_datagrams"] > 12 * MIB // 1400 // 2, got
