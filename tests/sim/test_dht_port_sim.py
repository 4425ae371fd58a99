"""BEP 5 PORT message in both directions, and private torrents, on the simulated network (issue 12).

Two sessions with the DHT on set the DHT reserved bit; once the BT handshake is done each sends a
PORT message with its DHT port, and each DHT pings the node the other announced.  A private torrent
(BEP 27) gets no PORT message and is never searched for.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from helpers import FakeClock
from simnet import KiB, MiB, SimNet, SimPeer, make_payload, make_torrent

from minibt import krpc
from minibt.actions import Action, Datagram
from minibt.handshake import supports_dht
from minibt.metainfo import Metainfo, create_torrent, parse_metainfo
from minibt.settings import TorrentState

DHT_PORT = 7777


SENT: dict[str, list[Datagram]] = {}


def dht_datagrams(p: SimPeer) -> list[tuple[krpc.Message, tuple[str, int]]]:
    """The DHT datagrams the session handed to the loop (the simulated network does not carry them)."""
    return [(krpc.decode(d.data), d.addr) for d in SENT[p.name]]


def record_datagrams(p: SimPeer) -> None:
    real = p.session.take_actions
    sent = SENT[p.name] = []

    def spy() -> list[Action]:
        acts = real()
        sent.extend(a for a in acts if isinstance(a, Datagram))
        return acts

    p.session.take_actions = spy  # type: ignore[method-assign]


def swarm(tmp: Path, clock: FakeClock, meta: Metainfo) -> tuple[SimNet, SimPeer, SimPeer]:
    net = SimNet(clock, random.Random(3))
    seed = net.add_peer("seed", "127.0.0.2")
    leech = net.add_peer("leech", "127.0.0.3")
    for p in (seed, leech):
        p.session.enable_dht(saved=None, now=clock.now(), port=DHT_PORT)
        record_datagrams(p)
    net.add_torrent(seed, meta, tmp / "src", mode="seed")
    net.add_torrent(leech, meta, tmp / "dl", mode="download")
    net.add_peers(leech, [seed.addr])
    return net, seed, leech


def test_both_sides_send_port_and_ping_the_other_dht(tmp_path: Path, clock: FakeClock) -> None:
    make_payload(tmp_path / "src" / "p", {"a.bin": MiB}, seed=4)
    meta = make_torrent(tmp_path / "src" / "p", 32 * KiB)
    net, seed, leech = swarm(tmp_path, clock, meta)
    net.must_run_until(lambda: leech.torrent.state is TorrentState.SEEDING, 30)
    assert all(supports_dht(c.reserved) for c in seed.seen.values())
    for p, other in ((seed, leech), (leech, seed)):
        pings = [a for m, a in dht_datagrams(p) if isinstance(m, krpc.Ping)]
        assert (other.addr[0], DHT_PORT) in pings, pings


@pytest.mark.parametrize("private", [True, False])
def test_a_private_torrent_never_touches_the_dht(tmp_path: Path, clock: FakeClock, private: bool) -> None:
    src = tmp_path / "src"
    make_payload(src / "p", {"a.bin": 256 * KiB}, seed=5)
    meta = parse_metainfo(create_torrent(str(src / "p"), piece_length=32 * KiB, private=private))
    net, seed, leech = swarm(tmp_path, clock, meta)
    net.must_run_until(lambda: leech.torrent.state is TorrentState.SEEDING, 30)
    assert seed.session.dht is not None and leech.session.dht is not None
    assert (leech.session.dht.status(meta.info_hash) is not None) is not private
    ports = [a for m, a in dht_datagrams(seed) if isinstance(m, krpc.Ping) and a[1] == DHT_PORT]
    assert bool(ports) is not private
