"""Containment (STYLE.md section 13, issue 9): a fault while handling one peer's input closes that
peer alone; a fault in one torrent's own handling stops that torrent alone.  The faults are planted
by wrapping one method of the real Torrent so that it raises for one peer (a stand-in for any bug a
hostile input may reach); everything else is minibt's real code on the simulated network.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeClock
from simnet import KiB, MiB, SimNet, SimPeer, make_payload, make_torrent, same_files

from minibt.effects import Effect
from minibt.errors import CloseReason
from minibt.metainfo import Metainfo
from minibt.settings import TorrentState
from minibt.wire_codec import Interested
from minibt.workers import HashResult

PIECE_LEN = 32 * KiB
LAYOUT = {"a.bin": MiB + 5000, "b.bin": 300_000}
EVIL_IP = "127.0.0.3"


class PlantedBug(Exception):
    """Not a minibt error: what an unforeseen bug looks like to the boundary."""


def setup(tmp: Path, clock: FakeClock, rng: random.Random) -> tuple[SimNet, Metainfo, SimPeer]:
    make_payload(tmp / "src" / "payload", LAYOUT, seed=9)
    meta = make_torrent(tmp / "src" / "payload", PIECE_LEN)
    net = SimNet(clock, rng)
    seed = net.add_peer("seed", "127.0.0.2")
    t = net.add_torrent(seed, meta, tmp / "src", mode="seed")
    net.must_run_until(lambda: t.state is TorrentState.SEEDING, 1.0)
    return net, meta, seed


def leecher(net: SimNet, meta: Metainfo, tmp: Path, name: str, ip: str) -> SimPeer:
    p = net.add_peer(name, ip)
    net.add_torrent(p, meta, tmp / name, mode="download")
    return p


def test_fault_on_one_peers_message_closes_only_that_peer(
    tmp_path: Path, clock: FakeClock, rng: random.Random, caplog: pytest.LogCaptureFixture
) -> None:
    net, meta, seed = setup(tmp_path, clock, rng)
    st = seed.torrent
    real = st.on_message

    def buggy(conn: Any, msg: Any, *, now: float) -> list[Effect]:
        if conn.ip == EVIL_IP and isinstance(msg, Interested):
            raise PlantedBug("planted")
        return real(conn, msg, now=now)

    st.on_message = buggy  # type: ignore[method-assign]
    caplog.set_level(logging.ERROR, logger="minibt.faults")
    evil = leecher(net, meta, tmp_path, "evil", EVIL_IP)
    honest = leecher(net, meta, tmp_path, "honest", "127.0.0.4")
    net.must_run_until(lambda: honest.torrent.complete, 30)
    assert same_files(meta, tmp_path / "src", tmp_path / "honest")
    reasons = seed.close_reasons()
    assert (EVIL_IP, CloseReason.INTERNAL_ERROR) in reasons
    assert all(r is not CloseReason.INTERNAL_ERROR for ip, r in reasons if ip != EVIL_IP)
    faults = seed.session.faults.stats()
    assert faults["peer"] >= 1 and faults["total"] == faults["peer"]
    # The traceback is logged once; repeats (the evil leecher redials) are counted, not re-logged.
    tracebacks = [r for r in caplog.records if "Traceback" in r.getMessage()]
    assert len(tracebacks) == 1 and "PlantedBug: planted" in tracebacks[0].getMessage()
    assert not evil.torrent.complete
    assert seed.torrent.state is TorrentState.SEEDING
    # No reputation penalty for our own bug.
    assert seed.session.reputation.score(EVIL_IP) == seed.session.reputation.score("127.0.0.4")


def test_fault_in_one_torrents_hash_result_stops_that_torrent_only(
    tmp_path: Path, clock: FakeClock, rng: random.Random
) -> None:
    net, meta, seed = setup(tmp_path, clock, rng)
    victim = leecher(net, meta, tmp_path, "victim", "127.0.0.5")
    vt = victim.torrent
    real = vt.on_hash_result
    calls = []

    def buggy(res: HashResult, *, now: float) -> list[Effect]:
        calls.append(res.piece)
        if len(calls) == 3:
            raise PlantedBug("planted in a hash result")
        return real(res, now=now)

    vt.on_hash_result = buggy  # type: ignore[method-assign]
    other = leecher(net, meta, tmp_path, "other", "127.0.0.6")
    net.must_run_until(lambda: other.torrent.complete and vt.state is TorrentState.ERROR, 30)
    assert vt.error is not None and "internal error: PlantedBug" in vt.error
    assert victim.session.faults.stats()["worker"] == 1
    assert not victim.session.conns  # the failed torrent closed its peers
    assert same_files(meta, tmp_path / "src", tmp_path / "other")
    assert seed.torrent.state is TorrentState.SEEDING and seed.session.faults.stats()["total"] == 0
