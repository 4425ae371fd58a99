"""ut_pex (BEP 11) and magnet links (BEP 9) wired into the session, on the simulated network.

No tracker: peers only know what the test or PEX tells them.  Time is a FakeClock (simnet), so
the one-message-per-minute rule is asserted on exact send times.
"""

from __future__ import annotations

import random
from pathlib import Path

import bencode2
import pytest
from helpers import FakeClock
from simnet import SIM_TRACKER, KiB, LinkSpec, SimNet, SimPeer, make_payload, make_torrent, same_files

from minibt.errors import CloseReason, MetainfoError
from minibt.events import EventName
from minibt.extension import LOCAL_UT_PEX_ID
from minibt.magnet import Magnet
from minibt.magnetfetch import FetchState
from minibt.metainfo import Metainfo, create_torrent, metainfo_from_info, parse_metainfo
from minibt.peer import PeerSource
from minibt.pex import PEX_MIN_INTERVAL_S, PexMessage, PexPeer, encode_pex
from minibt.settings import TorrentState

PIECE_LEN = 32 * KiB
LAYOUT = {"a.bin": 300 * KiB + 17, "b/c.bin": 200 * KiB}


@pytest.fixture
def net(clock: FakeClock, rng: random.Random) -> SimNet:
    return SimNet(clock, rng, tracker=False)


@pytest.fixture
def meta(tmp_path: Path) -> Metainfo:
    make_payload(tmp_path / "src" / "payload", LAYOUT, seed=3)
    return make_torrent(tmp_path / "src" / "payload", PIECE_LEN, trackers=())


def seeder(net: SimNet, meta: Metainfo, tmp: Path, name: str, ip: str, up_Bps: float | None = None) -> SimPeer:
    p = net.add_peer(name, ip, link=None if up_Bps is None else LinkSpec(up_Bps=up_Bps))
    t = net.add_torrent(p, meta, tmp / "src", mode="seed")
    assert net.run_until(lambda: t.state is TorrentState.SEEDING, 1.0)
    return p


def leecher(net: SimNet, meta: Metainfo, tmp: Path, name: str, ip: str) -> SimPeer:
    p = net.add_peer(name, ip)
    net.add_torrent(p, meta, tmp / name, mode="download")
    return p


def connected_to(p: SimPeer, ip: str) -> bool:
    return any(c.ip == ip and c.wire is not None for c in p.session.conns.values())


def test_peer_learned_by_pex_is_dialled_with_source_and_flags(net: SimNet, meta: Metainfo, tmp_path: Path) -> None:
    a = seeder(net, meta, tmp_path, "a", "10.0.0.1", up_Bps=20 * KiB)  # slow: b stays a leecher for a while
    b = leecher(net, meta, tmp_path, "b", "10.1.0.2")
    c = leecher(net, meta, tmp_path, "c", "10.2.0.3")
    net.add_peers(b, [a.addr])
    assert net.run_until(lambda: connected_to(b, "10.0.0.1"), 5)
    net.add_peers(c, [b.addr])  # c is told of b only
    net.must_run_until(lambda: connected_to(c, "10.0.0.1"), 30)
    cand = c.torrent.candidates.get(a.addr)
    assert cand is not None and cand.source is PeerSource.PEX and cand.via == b.addr
    # a is a seed, b dialled it, over RC4, and a speaks ut_holepunch: b advertised it with the
    # encryption, seed, holepunch and reachable flags
    assert cand.flags == 0x01 | 0x02 | 0x08 | 0x10
    (conn,) = [x for x in c.session.conns.values() if x.ip == "10.0.0.1"]
    assert conn.outgoing and conn.source is PeerSource.PEX
    assert net.run_until(lambda: c.torrent.complete, 120)
    assert same_files(meta, tmp_path / "src", tmp_path / "c")


def test_pex_sent_at_most_once_a_minute_and_drops_follow_disconnects(
    net: SimNet, meta: Metainfo, tmp_path: Path
) -> None:
    hub = leecher(net, meta, tmp_path, "hub", "10.0.0.1")
    peers = [leecher(net, meta, tmp_path, f"p{i}", f"10.{i}.0.2") for i in range(1, 4)]
    sends: dict[tuple[str, int], list[float]] = {}

    def record() -> None:
        for cid, conn in hub.session.conns.items():
            s = hub.torrent.extensions.sender(cid)
            if s is None:
                continue
            times = sends.setdefault((conn.ip, cid), [])
            n = s.stats()["messages_sent"]
            while len(times) < n:
                times.append(net.now)

    net.checks.append(record)
    net.add_peers(hub, [p.addr for p in peers[:2]])
    net.run_for(5)
    net.add_peers(hub, [peers[2].addr])  # joins later: the others hear of it in their next message
    net.run_for(30)
    net.kill(peers[0])  # leaves: the others must hear 'dropped'
    net.run_for(100)  # < 180 s in all: no idle disconnects (nobody has data, nobody is interested)
    assert all(len(t) >= 2 for k, t in sends.items() if k[0] != "10.1.0.2"), sends
    for times in sends.values():
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert all(g >= PEX_MIN_INTERVAL_S for g in gaps), (times, gaps)
    # p2 learned p1 and p3 from the hub, then p1 was dropped
    (to_hub,) = [x for x in peers[1].session.conns.values() if x.ip == "10.0.0.1"]
    r = peers[1].torrent.extensions.receiver(to_hub.cid)
    assert r is not None and set(r.learned()) == {peers[2].addr} and r.stats()["dropped"] == 1
    assert not any(reason is CloseReason.PROTOCOL_VIOLATION for _, reason in peers[1].close_reasons())


def test_no_pex_for_private_torrents(net: SimNet, tmp_path: Path) -> None:
    make_payload(tmp_path / "src" / "payload", LAYOUT, seed=4)
    meta = parse_metainfo(create_torrent(str(tmp_path / "src" / "payload"), piece_length=PIECE_LEN, private=True))
    a = seeder(net, meta, tmp_path, "a", "10.0.0.1")
    b = leecher(net, meta, tmp_path, "b", "10.1.0.2")
    c = leecher(net, meta, tmp_path, "c", "10.2.0.3")
    net.add_peers(b, [a.addr])
    net.add_peers(c, [b.addr])
    net.run_for(120)
    assert not connected_to(c, "10.0.0.1")  # c never heard of a
    for p in (a, b, c):
        for conn in p.session.conns.values():
            # minibt peers do not offer ut_pex for a private torrent, so no PEX state exists
            assert "ut_pex" not in conn.ext_ids and p.torrent.extensions.sender(conn.cid) is None


def test_pex_flood_is_disconnected_and_penalised(net: SimNet, meta: Metainfo, tmp_path: Path) -> None:
    a = seeder(net, meta, tmp_path, "a", "10.0.0.1")
    b = leecher(net, meta, tmp_path, "b", "10.1.0.2")
    events: list[str] = []
    a.session.events.enabled = True
    net.add_peers(b, [a.addr])
    assert net.run_until(lambda: connected_to(b, "10.0.0.1") and any(
        a.torrent.extensions.receiver(cid) for cid in a.session.conns), 5)
    (conn,) = [x for x in b.session.conns.values() if x.ip == "10.0.0.1"]
    assert conn.ext_ids["ut_pex"] == LOCAL_UT_PEX_ID and conn.wire is not None
    # b misbehaves: two ut_pex messages back to back (its sender would never do that).
    for i in range(2):
        payload = encode_pex(PexMessage(added=(PexPeer(f"10.9.0.{i + 1}", 7000),)))
        conn.wire.extended(conn.ext_ids["ut_pex"], payload)
    b.session.mark_dirty(conn.cid)
    net.run_for(2)
    reasons = [r for ip, r in a.close_reasons() if ip == "10.1.0.2"]
    assert reasons == [CloseReason.PROTOCOL_VIOLATION]
    assert a.session.reputation.score("10.1.0.2") < 100
    events = [r.name for r in a.session.events.take()]
    assert events.count(EventName.PEX) == 1  # the first message was accepted, the second closed it
    assert a.torrent.candidates.get(("10.9.0.1", 7000)) is not None


def test_magnet_fetches_metadata_from_x_pe_and_downloads(net: SimNet, meta: Metainfo, tmp_path: Path) -> None:
    a = seeder(net, meta, tmp_path, "a", "10.0.0.1")
    b = seeder(net, meta, tmp_path, "b", "10.1.0.1")
    m = net.add_peer("m", "10.2.0.3")
    f = m.session.add_magnet(Magnet(meta.info_hash, "payload", (), (a.addr, b.addr)), str(tmp_path / "m"), now=net.now)
    assert f.state is FetchState.FETCHING and f.torrent is None
    net.must_run_until(lambda: f.torrent is not None, 20)
    assert f.meta is not None and f.meta.info_bytes == meta.info_bytes and f.meta.name == "payload"
    served = sum(p.torrent.extensions.stats()["metadata_served"] for p in (a, b))
    assert served >= 1
    net.must_run_until(lambda: f.complete, 30)
    assert same_files(meta, tmp_path / "src", tmp_path / "m")
    assert m.session.fetches == {}
    # The metadata connections were handed over to the download, not closed and redialled.
    assert not [d for *_, d in m.session.closed_log if "redialled" in d]
    for p in (a, b):
        assert len([c for c in p.seen.values() if c.ip == "10.2.0.3"]) == 1
    assert f.torrent is not None and f.torrent.stats.downloaded == meta.total_length


@pytest.mark.parametrize("name", [b"../../etc", b"/abs", b"a/b", b"..", b"ok\x00name"])
def test_magnet_name_is_sanitised_like_a_torrent(tmp_path: Path, name: bytes) -> None:
    make_payload(tmp_path / "src" / "payload", {"x.bin": 40 * KiB}, seed=5)
    good = make_torrent(tmp_path / "src" / "payload", PIECE_LEN, trackers=())
    info = bencode2.bdecode(good.info_bytes)
    info[b"name"] = name
    evil = bencode2.bencode(info)
    # magnetfetch.py parses fetched metadata with metainfo_from_info: same verdict as a .torrent.
    with pytest.raises(MetainfoError) as from_magnet:
        metainfo_from_info(evil)
    with pytest.raises(MetainfoError) as from_torrent:
        parse_metainfo(b"d4:info" + evil + b"e")
    assert str(from_magnet.value) == str(from_torrent.value)


def test_magnet_without_peers_finds_the_seed_through_its_tr_tracker(
    clock: FakeClock, rng: random.Random, tmp_path: Path
) -> None:
    net = SimNet(clock, rng)  # with the in-memory tracker at SIM_TRACKER
    make_payload(tmp_path / "src" / "payload", LAYOUT, seed=6)
    meta = make_torrent(tmp_path / "src" / "payload", PIECE_LEN)  # announces to SIM_TRACKER
    seeder(net, meta, tmp_path, "a", "10.0.0.1")
    net.run_for(2)  # the seed's 'started' announce
    m = net.add_peer("m", "10.2.0.3")
    f = m.session.add_magnet(Magnet(meta.info_hash, None, (SIM_TRACKER,), ()), str(tmp_path / "m"), now=net.now)
    net.must_run_until(lambda: f.complete, 60)
    assert f.meta is not None and [list(t) for t in f.meta.announce_tiers] == [[SIM_TRACKER]]
    assert same_files(meta, tmp_path / "src", tmp_path / "m")


def test_pex_api_events_and_controls(net: SimNet, meta: Metainfo, tmp_path: Path) -> None:
    from minibt.errors import LocalProtocolError
    from minibt.events import Event
    from minibt.handles import Dispatcher, Peer

    hub = leecher(net, meta, tmp_path, "hub", "10.0.0.1")
    x = leecher(net, meta, tmp_path, "x", "10.1.0.2")
    y = leecher(net, meta, tmp_path, "y", "10.2.0.2")
    seen: list[Event] = []  # what x hears from the hub (y, told of x by the hub, also dials x)
    d = Dispatcher(x.session)
    for name in (EventName.PEX, EventName.PEX_PEER, EventName.PEX_DROPPED):
        d.listeners.on(name, lambda ev: seen.append(ev) if ev.peer is not None and ev.peer.ip == "10.0.0.1" else None)
    net.checks.append(lambda: [d.dispatch()] and None)  # deliver events as the Client does
    net.add_peers(hub, [x.addr, y.addr])
    net.must_run_until(lambda: any(e.name is EventName.PEX_PEER for e in seen), 20)
    assert [(e.addr, e.flags) for e in seen if e.name is EventName.PEX_PEER] == [("10.2.0.2:6881", 0x01 | 0x08 | 0x10)]
    (pex_ev,) = [e for e in seen if e.name is EventName.PEX]
    assert pex_ev.peer is not None and pex_ev.peer.ip == "10.0.0.1" and [p.addr for p in pex_ev.added] == [y.addr]
    # the hub's side of its connection to x, through the public facade
    (to_x,) = [c for c in hub.session.conns.values() if c.ip == "10.1.0.2"]
    px = Peer.of(to_x, hub.session)
    with pytest.raises(LocalProtocolError, match="at most one per minute"):
        px.send_pex(added=["10.7.0.1:1"])  # the automatic message just went out
    px.pex.stop()
    net.kill(y)
    net.run_for(PEX_MIN_INTERVAL_S + 10)
    assert not any(e.name is EventName.PEX_DROPPED for e in seen)  # stopped: nothing sent
    px.pex.add_peer("10.8.0.1:6881")
    px.pex.start()  # sends at once (the minute is over): y dropped, 10.8.0.1 added
    net.run_for(1)
    assert [e.addr for e in seen if e.name is EventName.PEX_DROPPED] == ["10.2.0.2:6881"]
    assert "10.8.0.1:6881" in [e.addr for e in seen if e.name is EventName.PEX_PEER]
    assert px.pex.stats()["sent_messages_sent"] == 2
    px.pex.drop_peer("10.8.0.1:6881")
    net.run_for(PEX_MIN_INTERVAL_S + 10)
    assert [e.addr for e in seen if e.name is EventName.PEX_DROPPED][-1] == "10.8.0.1:6881"


def test_magnet_closes_a_peer_that_offers_no_metadata(net: SimNet, meta: Metainfo, tmp_path: Path) -> None:
    from minibt.magnetfetch import FETCH_USELESS_AFTER_S

    # a minibt peer fetching the same magnet has no metadata to offer (no metadata_size)
    p1 = net.add_peer("p1", "10.0.0.1")
    f1 = p1.session.add_magnet(Magnet(meta.info_hash, None, (), ()), str(tmp_path / "p1"), now=net.now)
    m = net.add_peer("m", "10.2.0.3")
    f = m.session.add_magnet(Magnet(meta.info_hash, None, (), ()), str(tmp_path / "m"), now=net.now)
    f.add_peers([p1.addr], PeerSource.USER)
    assert net.run_until(lambda: bool(f.links), 5)
    t0 = net.now
    assert net.run_until(lambda: not f.links, FETCH_USELESS_AFTER_S + 5)
    assert net.now - t0 >= FETCH_USELESS_AFTER_S - 1
    assert CloseReason.IDLE in [r for _, r in m.close_reasons()]
    assert f.state is FetchState.FETCHING and f1.state is FetchState.FETCHING


def test_magnet_takes_metadata_from_a_peer_that_dials_it(net: SimNet, meta: Metainfo, tmp_path: Path) -> None:
    a = seeder(net, meta, tmp_path, "a", "10.0.0.1")
    m = net.add_peer("m", "10.2.0.3")
    f = m.session.add_magnet(Magnet(meta.info_hash, None, (), ()), str(tmp_path / "m"), now=net.now)
    net.add_peers(a, [m.addr])  # m knows nobody; the seed dials it
    net.must_run_until(lambda: f.torrent is not None, 20)
    assert a.addr in f.served_by  # its BEP 10 listen port, not the ephemeral one
    net.must_run_until(lambda: f.complete, 30)
    assert same_files(meta, tmp_path / "src", tmp_path / "m")
    # the seed's own connection was handed over: no second connection between them
    assert len([c for c in a.seen.values() if c.ip == "10.2.0.3"]) == 1


def test_magnet_onto_existing_data_checks_it_then_redials(net: SimNet, meta: Metainfo, tmp_path: Path) -> None:
    from simnet import copy_payload

    a = seeder(net, meta, tmp_path, "a", "10.0.0.1")
    m = net.add_peer("m", "10.2.0.3")
    copy_payload(meta, tmp_path / "src", tmp_path / "m")  # the data is already there: a hash check first
    f = m.session.add_magnet(Magnet(meta.info_hash, None, (), (a.addr,)), str(tmp_path / "m"), now=net.now)
    net.must_run_until(lambda: f.torrent is not None, 20)
    # while the new torrent checks its files the connection cannot carry on: closed, redialled later
    assert [d for *_, d in m.session.closed_log if "redialled" in d]
    net.must_run_until(lambda: f.complete, 30)
    assert f.torrent is not None and f.torrent.stats.downloaded == 0  # all of it passed the check


def test_metadata_requests_are_rejected_while_we_lack_the_metadata(
    net: SimNet, meta: Metainfo, tmp_path: Path
) -> None:
    from minibt.metadata import MSG_REQUEST, encode_metadata_msg

    p1 = net.add_peer("p1", "10.0.0.1")
    f1 = p1.session.add_magnet(Magnet(meta.info_hash, None, (), ()), str(tmp_path / "p1"), now=net.now)
    p2 = net.add_peer("p2", "10.2.0.3")
    f2 = p2.session.add_magnet(Magnet(meta.info_hash, None, (), ()), str(tmp_path / "p2"), now=net.now)
    f2.add_peers([p1.addr], PeerSource.USER)
    assert net.run_until(lambda: any(c.ext_ids.get("ut_metadata") for c in f2.links.values()), 5)
    (conn,) = f2.links.values()
    assert conn.fetch_link is not None and b"metadata_size" not in conn.ext  # p1 has none to offer
    conn.fetch_link.extended(conn.ext_ids["ut_metadata"], encode_metadata_msg(MSG_REQUEST, 0), now=net.now)
    p2.session.mark_dirty(conn.cid)
    assert net.run_until(lambda: f1.server.stats()["rejected_no_metadata"] == 1, 2)
    assert f1.server.stats()["served"] == 0


def test_pex_switched_off_is_neither_offered_nor_used(net: SimNet, meta: Metainfo, tmp_path: Path) -> None:
    from minibt.settings import SessionConfig, TorrentConfig

    a = seeder(net, meta, tmp_path, "a", "10.0.0.1", up_Bps=20 * KiB)
    b = leecher(net, meta, tmp_path, "b", "10.1.0.2")
    c = net.add_peer("c", "10.2.0.3", config=SessionConfig(torrent=TorrentConfig(fsync=False), pex=False))
    net.add_torrent(c, meta, tmp_path / "c", mode="download")
    net.add_peers(b, [a.addr])
    assert net.run_until(lambda: connected_to(b, "10.0.0.1"), 5)
    net.add_peers(c, [b.addr])  # c is told of b only; b knows a
    net.run_for(2 * PEX_MIN_INTERVAL_S)
    assert not connected_to(c, "10.0.0.1") and c.torrent.candidates.get(a.addr) is None
    (to_b,) = [x for x in c.session.conns.values() if x.wire is not None]
    (to_c,) = [x for x in b.session.conns.values() if x.ip == "10.2.0.3" and x.wire is not None]
    assert "ut_pex" in to_b.ext_ids and "ut_pex" not in to_c.ext_ids  # b offers it; c does not
