"""Issue 14: BEP 55 holepunching on the simulated network with home-router NATs (simnet.py).

All three roles are minibt: a leecher behind NAT A learns of a seed behind NAT B only through a
public relay's PEX; its dial fails; it asks the relay for a rendezvous; the relay sends a connect
to both; both open uTP at once through the holes their own dials punched; one connection is kept
and the download runs over it.  Then each role against what other peers may send: errors with
BEP 55's codes, peers without the extension, floods, connects into a LAN.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from helpers import FakeClock
from simnet import KiB, LinkSpec, MiB, Nat, SimNet, SimPeer, make_payload, make_torrent, same_files

from minibt.errors import CloseReason, LocalProtocolError
from minibt.events import EventName
from minibt.handles import Peer
from minibt.holepunch import (
    HP_CONNECT_PER_PEER,
    HP_RENDEZVOUS_PER_PEER,
    HpError,
    HpMessage,
    HpMsgType,
    encode_hp,
)
from minibt.metainfo import Metainfo
from minibt.peer import PeerSource
from minibt.pex import PexConfig
from minibt.settings import SessionConfig, TorrentConfig, TorrentState, Transport

A_PUB, B_PUB, RELAY_IP = "203.0.113.1", "198.51.100.1", "192.0.2.10"
LAN_IP = "192.168.1.2"
PEX_FAST = PexConfig(interval_s=5.0)  # the relay's PEX every 5 simulated seconds (minibt to minibt)
SLOW = LinkSpec(up_Bps=128 * KiB, latency_s=0.03)  # ~8 s for the payload: the connection can be looked at


@pytest.fixture
def meta(tmp_path: Path) -> Metainfo:
    make_payload(tmp_path / "src" / "p", {"a.bin": MiB + 333}, seed=7)
    return make_torrent(tmp_path / "src" / "p", 32 * KiB)


def cfg(*, holepunch: bool = True, request: bool = True) -> SessionConfig:
    return SessionConfig(torrent=TorrentConfig(fsync=False, pex=PEX_FAST, auto_request=request),
                         holepunch=holepunch, transports=(Transport.TCP, Transport.UTP))


class World:
    def __init__(self, tmp: Path, clock: FakeClock, meta: Metainfo, *, relay_holepunch: bool = True,
                 seed_holepunch: bool = True, link: LinkSpec | None = None) -> None:
        self.net = SimNet(clock, random.Random(2), tracker=False, link=link)
        self.nat_a: Nat = self.net.add_nat("A", A_PUB)
        self.nat_b: Nat = self.net.add_nat("B", B_PUB)
        net = self.net
        # the relay has no data and requests none: every byte the leecher gets is the seed's
        self.relay = net.add_peer("relay", RELAY_IP, config=cfg(holepunch=relay_holepunch, request=False))
        net.add_torrent(self.relay, meta, tmp / "relay", mode="download")
        self.seed = net.add_peer("seed", LAN_IP, config=cfg(holepunch=seed_holepunch), nat=self.nat_b)
        net.add_torrent(self.seed, meta, tmp / "src", mode="seed")
        self.leech = net.add_peer("leech", LAN_IP, config=cfg(), nat=self.nat_a)
        net.add_torrent(self.leech, meta, tmp / "dl", mode="download")
        for p in (self.relay, self.seed, self.leech):
            p.session.events.enabled = True
        self.events: dict[str, list[tuple[EventName, str | None, int | None]]] = {"relay": [], "seed": [], "leech": []}

    def join_relay(self, *who: SimPeer) -> None:
        for p in who:
            self.net.add_peers(p, [self.relay.addr])
        self.net.must_run_until(lambda: all(self.ready(p, self.relay) and self.ready(self.relay, p) for p in who), 10)

    def ready(self, a: SimPeer, b: SimPeer) -> bool:
        """a is connected to b and has b's BEP 10 handshake."""
        p = self.link(a, b)
        return p is not None and bool(p._conn.ext_ids)

    def link(self, a: SimPeer, b: SimPeer) -> Peer | None:
        """a's live, handshaken connection to b (by peer id), as a public Peer."""
        for c in a.session.conns.values():
            if c.wire is not None and not c.closing and c.peer_id == b.session.peer_id:
                return Peer.of(c, a.session)
        return None

    def hp_events(self, p: SimPeer) -> list[tuple[EventName, str | None, int | None]]:
        got = [(e.name, e.addr, e.code) for e in p.session.events.take()
               if e.name in (EventName.HP_RENDEZVOUS, EventName.HP_CONNECT, EventName.HP_ERROR)]
        self.events[p.name] += got
        return self.events[p.name]


def conns_between(a: SimPeer, b: SimPeer) -> list[int]:
    return [c.cid for c in a.session.conns.values() if c.peer_id == b.session.peer_id and not c.closing]


def test_initiator_relay_and_target_all_minibt(tmp_path: Path, clock: FakeClock, meta: Metainfo) -> None:
    w = World(tmp_path, clock, meta, link=SLOW)
    net, relay, seed, leech = w.net, w.relay, w.seed, w.leech
    w.join_relay(seed)
    to_seed = w.link(relay, seed)
    assert to_seed is not None
    net.must_run_until(lambda: relay.torrent.extensions.sender(to_seed._conn.cid) is not None, 5)
    to_seed.pex.stop()  # the seed never hears of the leecher: it cannot dial it by chance at the same time
    w.join_relay(leech)
    # the leecher hears of the seed only from the relay's PEX, with the holepunch flag
    seed_pub = (B_PUB, seed.addr[1])
    net.must_run_until(lambda: leech.torrent.candidates.get(seed_pub) is not None, 30)
    cand = leech.torrent.candidates.get(seed_pub)
    assert cand is not None and cand.source is PeerSource.PEX and cand.flags & 0x08
    # its direct dial fails (TCP dropped by NAT B, then uTP: no hole), so it asks the relay ...
    net.must_run_until(lambda: leech.torrent.extensions.holepunch.counts["hp_rendezvous_sent"] == 1, 60)
    t_rendezvous = net.now
    # ... which introduces both; both dial over uTP through the holes; one connection is kept
    net.must_run_until(lambda: w.link(leech, seed) is not None and leech.torrent.have.count() > 0, 30)
    t_first_piece = net.now
    # exactly one connection between them, over uTP, made by holepunching; the duplicate is gone
    net.run_for(1.0)
    assert len(conns_between(leech, seed)) == 1 and len(conns_between(seed, leech)) == 1
    lk = w.link(leech, seed)
    assert lk is not None and lk.transport == "utp"
    net.must_run_until(lambda: leech.torrent.state is TorrentState.SEEDING, 120)
    assert same_files(meta, tmp_path / "src", tmp_path / "dl")
    assert relay.torrent.extensions.holepunch.counts["hp_relayed"] == 1
    assert (EventName.HP_RENDEZVOUS, f"{B_PUB}:{seed.addr[1]}", None) in w.hp_events(relay)
    assert any(name is EventName.HP_CONNECT for name, _, _ in w.hp_events(leech))
    assert any(name is EventName.HP_CONNECT for name, _, _ in w.hp_events(seed))
    both = [c for p in (leech, seed) for c in p.seen.values() if c.source is PeerSource.HOLEPUNCH]
    assert both and all(c.transport == Transport.UTP for c in both)
    assert t_first_piece - t_rendezvous < 10.0, (t_rendezvous, t_first_piece)


def test_a_dead_candidate_is_not_asked_about_forever(tmp_path: Path, clock: FakeClock, meta: Metainfo) -> None:
    from minibt.holepunch import HP_MAX_RENDEZVOUS_PER_CANDIDATE

    w = World(tmp_path, clock, meta)
    net, seed, leech = w.net, w.seed, w.leech
    w.join_relay(seed, leech)
    seed_pub = (B_PUB, seed.addr[1])
    net.must_run_until(lambda: leech.torrent.candidates.get(seed_pub) is not None, 30)
    net.kill(seed)  # gone; the relay may still hold it for a while, the leecher keeps failing to reach it
    net.run_for(1200)
    assert leech.torrent.extensions.holepunch.counts["hp_rendezvous_sent"] == HP_MAX_RENDEZVOUS_PER_CANDIDATE


@pytest.mark.parametrize(("target", "code"), [
    ("unknown", HpError.NOT_CONNECTED),
    ("relay", HpError.NO_SELF),
    ("itself", HpError.NO_SUCH_PEER),
    ("no-support", HpError.NO_SUPPORT),
])
def test_relay_answers_with_beps_error_codes(tmp_path: Path, clock: FakeClock, meta: Metainfo, target: str,
                                             code: HpError) -> None:
    w = World(tmp_path, clock, meta, seed_holepunch=target != "no-support")
    net, relay, seed, leech = w.net, w.relay, w.seed, w.leech
    w.join_relay(seed, leech)
    to_relay = w.link(leech, relay)
    assert to_relay is not None
    addr = {"unknown": ("192.0.2.99", 6881), "relay": relay.addr, "itself": (A_PUB, leech.addr[1]),
            "no-support": (B_PUB, seed.addr[1])}[target]
    to_relay.send_hp_rendezvous(addr)
    net.run_for(1.0)
    assert (EventName.HP_ERROR, f"{addr[0]}:{addr[1]}", int(code)) in w.hp_events(leech)
    assert relay.torrent.extensions.holepunch.counts["hp_relayed"] == 0


def test_library_api(tmp_path: Path, clock: FakeClock, meta: Metainfo) -> None:
    w = World(tmp_path, clock, meta)
    net, relay, seed, leech = w.net, w.relay, w.seed, w.leech
    w.join_relay(seed, leech)
    to_relay, to_seed_at_relay = w.link(leech, relay), w.link(relay, seed)
    assert to_relay is not None and to_seed_at_relay is not None
    # a rendezvous naming a connected Peer uses its endpoint as the relay sees it
    to_relay.send_hp_rendezvous(to_relay)  # the relay itself, as the leecher sees it: NoSelf
    relay_to_leech = w.link(relay, leech)
    assert relay_to_leech is not None
    relay_to_leech.send_hp_error(HpError.NO_SUPPORT, "192.0.2.7", 51413)
    net.run_for(1.0)
    assert (EventName.HP_ERROR, "192.0.2.7:51413", 3) in w.hp_events(leech)
    assert (EventName.HP_RENDEZVOUS, f"{RELAY_IP}:{relay.addr[1]}", None) in w.hp_events(relay)
    with pytest.raises(LocalProtocolError):
        to_relay.send_hp_connect("not an ip", 1)
    # without the extension on the other side: LocalProtocolError, nothing sent
    w2 = World(tmp_path / "2", clock, meta, relay_holepunch=False)
    w2.join_relay(w2.leech)
    p = w2.link(w2.leech, w2.relay)
    assert p is not None
    with pytest.raises(LocalProtocolError, match="ut_holepunch"):
        p.send_hp_rendezvous(("192.0.2.1", 1))


def test_target_dials_a_connect_over_utp_but_not_into_a_lan_or_twice(tmp_path: Path, clock: FakeClock,
                                                                     meta: Metainfo) -> None:
    w = World(tmp_path, clock, meta)
    net, relay, leech = w.net, w.relay, w.leech
    w.join_relay(leech)
    to_leech = w.link(relay, leech)
    assert to_leech is not None
    before = len(leech.seen)
    to_leech.send_hp_connect("127.0.0.1", 6881)  # into the leecher's own machine, from a public peer
    to_leech.send_hp_connect("192.168.1.1", 80)  # into its LAN
    to_leech.send_hp_connect(RELAY_IP, relay.addr[1])  # already connected to it
    net.run_for(1.0)
    assert len(leech.seen) == before
    assert leech.torrent.extensions.holepunch.counts["hp_ignored"] == 3
    to_leech.send_hp_connect("192.0.2.55", 7000)  # a public endpoint: dialled at once, over uTP only
    net.run_for(1.0)
    new = [c for c in leech.seen.values() if c.addr == ("192.0.2.55", 7000)]
    assert len(new) == 1 and new[0].source is PeerSource.HOLEPUNCH and new[0].transport == Transport.UTP
    assert not new[0].fallbacks


def test_messages_from_a_peer_without_the_extension_are_ignored(tmp_path: Path, clock: FakeClock,
                                                               meta: Metainfo) -> None:
    w = World(tmp_path, clock, meta, seed_holepunch=False)
    net, relay, seed, leech = w.net, w.relay, w.seed, w.leech
    w.join_relay(seed, leech)
    conn = next(c for c in seed.session.conns.values() if c.peer_id == relay.session.peer_id)
    assert conn.wire is not None and "ut_holepunch" in conn.ext_ids  # the relay offers it; the seed did not
    conn.wire.extended(conn.ext_ids["ut_holepunch"], encode_hp(HpMessage(HpMsgType.RENDEZVOUS, (A_PUB, 6881))))
    seed.session.mark_dirty(conn.cid)
    net.run_for(1.0)
    assert relay.torrent.extensions.holepunch.counts["hp_ignored"] == 1
    assert not w.hp_events(relay) and w.link(relay, seed) is not None  # silently: no answer, no close


@pytest.mark.parametrize("kind", ["rendezvous", "connect"])
def test_a_flood_is_cut_off_and_penalised(tmp_path: Path, clock: FakeClock, meta: Metainfo, kind: str) -> None:
    w = World(tmp_path, clock, meta)
    net, relay, leech = w.net, w.relay, w.leech
    w.join_relay(leech)
    if kind == "rendezvous":
        sender, victim, limit = w.link(leech, relay), relay, HP_RENDEZVOUS_PER_PEER
    else:
        sender, victim, limit = w.link(relay, leech), leech, HP_CONNECT_PER_PEER
    assert sender is not None
    ip_seen = next(c.ip for c in victim.session.conns.values() if c.wire is not None)
    score = victim.session.reputation.score(ip_seen)
    for i in range(limit + 1):
        if kind == "rendezvous":
            sender.send_hp_rendezvous(("192.0.2.99", 1000 + i))
        else:
            sender.send_hp_connect("127.0.0.1", 1000 + i)  # ignored, but counted against the sender
    net.run_for(1.0)
    assert (ip_seen, CloseReason.PROTOCOL_VIOLATION) in victim.close_reasons()
    assert victim.session.reputation.score(ip_seen) < score


def test_holepunch_off_is_not_advertised(tmp_path: Path, clock: FakeClock, meta: Metainfo) -> None:
    w = World(tmp_path, clock, meta, relay_holepunch=False)
    w.join_relay(w.leech)
    conn = next(c for c in w.leech.session.conns.values() if c.peer_id == w.relay.session.peer_id)
    assert "ut_holepunch" not in conn.ext_ids
    back = next(c for c in w.relay.session.conns.values() if c.peer_id == w.leech.session.peer_id)
    assert "ut_holepunch" in back.ext_ids
    assert SessionConfig(transports=(Transport.TCP,)).holepunch  # asked for, but without uTP ...
    s = SimNet(FakeClock(), random.Random(1)).add_peer("x", "192.0.2.1", config=SessionConfig(transports=("tcp",)))
    assert not s.session.ctx.holepunch  # ... it cannot work, so it is off


def test_ipv6_endpoints(tmp_path: Path, clock: FakeClock, meta: Metainfo) -> None:
    net = SimNet(clock, random.Random(5), tracker=False, link=SLOW)
    relay = net.add_peer("relay", "2001:db8::10", config=cfg(request=False))
    net.add_torrent(relay, meta, tmp_path / "relay", mode="download")
    seed = net.add_peer("seed", "2001:db8::2", config=cfg())
    net.add_torrent(seed, meta, tmp_path / "src", mode="seed")
    leech = net.add_peer("leech", "2001:db8::1", config=cfg())
    net.add_torrent(leech, meta, tmp_path / "dl", mode="download")
    for p in (relay, seed, leech):
        p.session.events.enabled = True
    w = World.__new__(World)  # the helpers, on this network of public IPv6 peers
    w.net, w.relay, w.seed, w.leech = net, relay, seed, leech
    w.events = {"relay": [], "seed": [], "leech": []}
    w.join_relay(seed, leech)
    to_relay = w.link(leech, relay)
    assert to_relay is not None
    to_relay.send_hp_rendezvous(("2001:db8::2", seed.addr[1]))
    net.run_for(2.0)
    assert (EventName.HP_RENDEZVOUS, f"[2001:db8::2]:{seed.addr[1]}", None) in w.hp_events(relay)
    assert (EventName.HP_CONNECT, f"[2001:db8::2]:{seed.addr[1]}", None) in w.hp_events(leech)
    assert (EventName.HP_CONNECT, f"[2001:db8::1]:{leech.addr[1]}", None) in w.hp_events(seed)
    # each side dialled the other's IPv6 endpoint over uTP; one connection between them is left
    hp = [c for p in (leech, seed) for c in p.seen.values() if c.source is PeerSource.HOLEPUNCH]
    assert {c.addr[0] for c in hp} <= {"2001:db8::1", "2001:db8::2"} and all(c.transport == Transport.UTP for c in hp)
    assert w.link(leech, seed) is not None and len(conns_between(leech, seed)) == 1
