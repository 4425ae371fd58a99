"""BEP 16 super-seeding end to end on the simulated network (tests/sim/simnet.py).

A real minibt super-seeder (Session/Torrent/PeerWire/Storage) against minibt leechers and a scripted
probe peer; FakeClock time, files in tmp_path.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import FakeClock
from simnet import KiB, LinkSpec, RawPeer, SimNet, SimPeer, make_payload, make_torrent, same_files

from minibt.handshake import HandshakeReceived, InfoHashReceived, supports_fast
from minibt.metainfo import Metainfo
from minibt.settings import SessionConfig, TorrentConfig, TorrentState
from minibt.wire import PeerWire
from minibt.wire_codec import Have, Piece, Reject, Unchoke

PIECE_LEN = 32 * KiB
LAYOUT = {"a.bin": 48 * PIECE_LEN + 1000}  # 49 pieces, the last one short
SEED_LINK = LinkSpec(up_Bps=512 * KiB)  # the initial seeder's upload is the scarce resource
LEECH_LINK = LinkSpec(up_Bps=512 * KiB)


@dataclass
class Run:
    net: SimNet
    meta: Metainfo
    src: Path
    tmp: Path
    seed: SimPeer
    leechers: list[SimPeer] = field(default_factory=list)

    def done(self) -> bool:
        return all(p.torrent.complete for p in self.leechers)


def start(tmp: Path, *, super_seed: bool, seed_fast: bool = True) -> Run:
    make_payload(tmp / "src" / "payload", LAYOUT, seed=3)
    meta = make_torrent(tmp / "src" / "payload", PIECE_LEN)
    net = SimNet(FakeClock(), random.Random(99))
    cfg = SessionConfig(torrent=TorrentConfig(fsync=False, super_seed=super_seed))
    seed = net.add_peer("seed", "127.0.0.2", link=SEED_LINK, config=cfg, fast=seed_fast)
    t = net.add_torrent(seed, meta, tmp / "src", mode="seed")
    net.must_run_until(lambda: t.state is TorrentState.SEEDING, 1.0)
    assert t.super_seeding == super_seed
    return Run(net, meta, tmp / "src", tmp, seed)


def add_leechers(run: Run, n: int) -> None:
    for i in range(n):
        p = run.net.add_peer(f"leech{i}", f"127.0.0.{10 + i}", link=LEECH_LINK)
        run.net.add_torrent(p, run.meta, run.tmp / p.name, mode="download")
        run.leechers.append(p)


def swarm_ratio(tmp: Path, *, super_seed: bool) -> float:
    run = start(tmp, super_seed=super_seed)
    add_leechers(run, 3)
    run.net.must_run_until(run.done, 300)
    for p in run.leechers:
        assert same_files(run.meta, run.src, run.tmp / p.name)
        assert p.torrent.stats.hash_failures == 0
    return run.seed.torrent.stats.uploaded / run.meta.total_length


def test_super_seeder_completes_three_leechers_with_about_one_copy(tmp_path: Path) -> None:
    ratio = swarm_ratio(tmp_path / "super", super_seed=True)
    normal = swarm_ratio(tmp_path / "normal", super_seed=False)
    print(f"\nseeder upload / payload: super-seeding {ratio:.2f}x, normal seeding {normal:.2f}x")
    assert 1.0 <= ratio < 1.3
    assert ratio < normal


def test_super_seeder_sends_no_bitfield_and_offers_one_piece_each(tmp_path: Path) -> None:
    run = start(tmp_path, super_seed=True)
    add_leechers(run, 3)
    net = run.net
    assert net.run_until(lambda: all(p.conn_to("127.0.0.2") is not None for p in run.leechers), 5)
    ws = run.seed.wire_stats()
    assert ws["out_bitfield"] == 0 and ws["out_have_all"] == 0
    assert ws["out_have_none"] == 3  # BEP 16 with BEP 6: "no data"
    assert run.seed.torrent.status(net.now)["super_seeding"] is True
    offered = []
    for p in run.leechers:
        conn = run.seed.conn_to(p.addr[0])
        assert conn is not None and run.seed.torrent.superseed is not None
        offers = run.seed.torrent.superseed.offers(conn.cid)
        assert len(offers) <= 1
        offered += offers
    assert len(offered) == len(set(offered)) >= 1


class Probe(RawPeer):
    """A leecher that announces nothing, and once unchoked asks for a piece it was offered and for
    one it was not; it records every message it gets."""

    def __init__(self, net: SimNet, name: str, ip: str, meta: Metainfo, *, fast: bool) -> None:
        peer_id = b"-PRB001-" + bytes(12)
        super().__init__(name, (ip, 6881), net.link, meta, mode="snub", peer_id=peer_id)
        self.fast = fast
        self.reserved = bytes(7) + (b"\x04" if fast else b"\x00")
        self.got: list[object] = []
        self.asked: tuple[int, int] | None = None  # (offered piece, not offered piece)
        net._register(self)  # simnet has no public hook for a custom endpoint class

    def haves(self) -> list[int]:
        return [m.index for m in self.got if isinstance(m, Have)]

    def _receive(self, cid: int, data: bytes, now: float) -> None:
        hs = self._hs.get(cid)
        if hs is not None:
            for ev in hs.receive_data(data, now=now):
                if isinstance(ev, InfoHashReceived):
                    hs.accept(ev.info_hash)
                elif isinstance(ev, HandshakeReceived):
                    self._out[cid] += hs.data_to_send()
                    m = self.meta
                    wire = PeerWire(num_pieces=m.num_pieces, piece_length=m.piece_length,
                                    total_length=m.total_length, fast=supports_fast(ev.reserved),
                                    extension=False, now=now)
                    self._wire[cid] = wire
                    if wire.fast:
                        wire.send_have_none()
                    wire.interested()
                    data = hs.leftover()
                    del self._hs[cid]
                    break
            else:
                self._out[cid] += hs.data_to_send()
                self._dirty.add(cid)
                return
        self._dirty.add(cid)
        wire = self._wire[cid]
        for msg in wire.receive_data(data, now=now):
            self.got.append(msg)
            if self.asked is None and self.haves() and any(isinstance(g, Unchoke) for g in self.got):
                offered = self.haves()[0]
                other = next(i for i in range(self.meta.num_pieces) if i not in self.haves())
                wire.request(offered, 0, 16 * KiB)
                wire.request(other, 0, 16 * KiB)
                self.asked = (offered, other)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "no-fast"])
def test_request_for_a_piece_not_offered_is_refused(tmp_path: Path, fast: bool) -> None:
    run = start(tmp_path, super_seed=True, seed_fast=fast)
    net = run.net
    probe = Probe(net, "probe", "127.0.0.50", run.meta, fast=fast)
    net.add_peers(run.seed, [probe.addr])
    net.must_run_until(lambda: any(isinstance(m, Piece) for m in probe.got), 10)
    net.run_for(1.0)
    assert probe.asked is not None
    offered, other = probe.asked
    served = {m.index for m in probe.got if isinstance(m, Piece)}
    rejected = {m.index for m in probe.got if isinstance(m, Reject)}
    assert served == {offered}
    assert rejected == ({other} if fast else set())  # without BEP 6 there is no reject: ignored
    assert probe.haves() == [offered]  # one piece revealed: the probe shared nothing yet
    assert run.seed.conn_to("127.0.0.50") is not None  # refused, not disconnected

    # Switched off at run time: every other piece is announced, one have each (no late bitfield).
    run.seed.torrent.set_super_seed(False, now=net.now)
    net.run_for(1.0)
    assert sorted(probe.haves()) == list(range(run.meta.num_pieces))
    assert not run.seed.torrent.super_seeding


def test_super_seeding_is_only_for_a_complete_torrent(tmp_path: Path) -> None:
    run = start(tmp_path, super_seed=False)
    add_leechers(run, 1)
    leech = run.leechers[0].torrent
    with pytest.raises(ValueError):
        leech.set_super_seed(True, now=run.net.now)
    with pytest.raises(ValueError):
        run.net.add_torrent(
            run.net.add_peer("x", "127.0.0.60", config=SessionConfig(torrent=TorrentConfig(super_seed=True))),
            run.meta, tmp_path / "x", mode="download",
        )
    # a seed can switch it on at run time; peers already connected are served as before
    assert run.net.run_until(lambda: run.seed.conn_to("127.0.0.10") is not None, 5)
    run.seed.torrent.set_super_seed(True, now=run.net.now)
    assert run.seed.torrent.super_seeding
    run.net.must_run_until(run.done, 60)
    assert same_files(run.meta, run.src, tmp_path / "leech0")


def test_super_seed_option_on_incomplete_data_is_an_error(tmp_path: Path) -> None:
    make_payload(tmp_path / "src" / "payload", LAYOUT, seed=3)
    meta = make_torrent(tmp_path / "src" / "payload", PIECE_LEN)
    with open(tmp_path / "src" / "payload" / "a.bin", "r+b") as f:
        f.seek(5 * PIECE_LEN)
        f.write(b"\x00" * 100)  # piece 5 no longer matches its hash
    net = SimNet(FakeClock(), random.Random(5))
    seed = net.add_peer("seed", "127.0.0.2", config=SessionConfig(torrent=TorrentConfig(fsync=False, super_seed=True)))
    t = net.add_torrent(seed, meta, tmp_path / "src", mode="seed")
    net.must_run_until(lambda: t.state is TorrentState.ERROR, 5.0)
    assert t.error is not None and "super-seeding" in t.error
    assert not t.super_seeding
