"""The public Peer API and events on simulated sessions: user-driven choking and requesting.

Two real Sessions on the in-memory SimNet; a :class:`minibt.handles.Dispatcher` per session delivers
events after every simulated event (as the Client does after every loop iteration), and the
callbacks drive choke/unchoke/request through :class:`minibt.handles.Peer`.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import FakeClock
from simnet import KiB, SimNet, SimPeer, make_payload, make_torrent, same_files

from minibt.effects import Emit, PiecePassed
from minibt.errors import CloseReason, LocalProtocolError
from minibt.events import Event, EventName
from minibt.handles import Dispatcher, Peer, PeerFlags
from minibt.metainfo import Metainfo
from minibt.peer import PeerSource
from minibt.reputation import REPUTATION_START
from minibt.settings import SessionConfig, TorrentConfig, TorrentState
from minibt.wire_codec import BLOCK_LEN

PIECE_LEN = 32 * KiB
LAYOUT = {"a.bin": 300 * KiB + 123, "b/c.bin": 200 * KiB}  # 16 pieces, the last one short
SEED_IP, LEECH_IP = "10.0.0.1", "10.0.0.2"
N = EventName


@dataclass
class Side:
    peer: SimPeer
    dispatcher: Dispatcher
    events: list[Event] = field(default_factory=list)

    def names(self, *only: EventName) -> list[EventName]:
        return [e.name for e in self.events if not only or e.name in only]

    def remote(self) -> Peer:
        """The facade of this side's (single) live connection."""
        (conn,) = self.peer.session.conns.values()
        return Peer.of(conn, self.peer.session)


@dataclass
class Pair:
    net: SimNet
    meta: Metainfo
    src: Path
    tmp: Path
    seed: Side
    leech: Side

    def connect(self) -> None:
        self.net.add_torrent(self.leech.peer, self.meta, self.tmp / "leech", mode="download")
        self.net.add_peers(self.leech.peer, [self.seed.peer.addr])


def add_side(net: SimNet, name: str, ip: str, tcfg: TorrentConfig) -> Side:
    """A session on the net whose events are all recorded (delivered after every simulated event)."""
    p = net.add_peer(name, ip, config=SessionConfig(torrent=tcfg))
    side = Side(p, Dispatcher(p.session))
    for n in EventName:
        side.dispatcher.listeners.on(n, side.events.append)
    net.checks.append(side.dispatcher.dispatch)
    return side


def make_pair(tmp: Path, clock: FakeClock, rng: random.Random, *, seed_cfg: TorrentConfig,
              leech_cfg: TorrentConfig) -> Pair:
    make_payload(tmp / "src" / "payload", LAYOUT, seed=3)
    meta = make_torrent(tmp / "src" / "payload", PIECE_LEN, trackers=())
    net = SimNet(clock, rng, tracker=False)
    sides = []
    for name, ip, tcfg in (("seed", SEED_IP, seed_cfg), ("leech", LEECH_IP, leech_cfg)):
        sides.append(add_side(net, name, ip, tcfg))
    pair = Pair(net, meta, tmp / "src", tmp, sides[0], sides[1])
    t = net.add_torrent(pair.seed.peer, meta, tmp / "src", mode="seed")
    pair.net.must_run_until(lambda: t.state is TorrentState.SEEDING, 1.0)
    return pair


def cfg(**kw: bool) -> TorrentConfig:
    return TorrentConfig(fsync=False, **kw)


class UserPicker:
    """Library code that requests by itself: whole pieces in order, ``depth`` pieces at a time."""

    def __init__(self, meta: Metainfo, depth: int = 2) -> None:
        self.meta = meta
        self.depth = depth
        self.asked: set[int] = set()

    def top_up(self, ev: Event) -> None:
        peer = ev.peer
        if peer is None or not peer.connected or peer.peer_choking or peer.torrent is None:
            return
        t = peer.torrent
        inflight = {i for i in self.asked if not t.have[i]}
        for i in range(self.meta.num_pieces):
            if len(inflight) >= self.depth:
                return
            if t.have[i] or i in inflight:
                continue
            size = self.meta.piece_size(i)
            for begin in range(0, size, BLOCK_LEN):
                peer.request(i, begin, min(BLOCK_LEN, size - begin))
            inflight.add(i)
            self.asked.add(i)


@pytest.fixture
def user_pair(tmp_path: Path, clock: FakeClock, rng: random.Random) -> Pair:
    return make_pair(tmp_path, clock, rng, seed_cfg=cfg(auto_choke=False),
                     leech_cfg=cfg(auto_choke=False, auto_request=False))


def in_order(names: list[EventName], *expected: EventName) -> bool:
    """``expected`` occurs in ``names`` as a subsequence."""
    it = iter(names)
    return all(any(n == e for n in it) for e in expected)


# ---------------------------------------------------------------------- user-driven mode


def test_user_driven_choker_and_requests_complete_the_download(user_pair: Pair) -> None:
    p = user_pair
    p.seed.dispatcher.listeners.on(N.PEER_INTERESTED, lambda ev: ev.peer.unchoke() if ev.peer else None)
    picker = UserPicker(p.meta)
    p.leech.dispatcher.listeners.on(N.PEER_UNCHOKED_US, picker.top_up)
    verified: list[int] = []

    def on_verified(ev: Event) -> None:
        assert ev.index is not None
        verified.append(ev.index)
        for peer in [Peer.of(c, p.leech.peer.session) for c in p.leech.peer.session.conns.values()]:
            picker.top_up(Event(ev.name, ev.torrent, peer))

    p.leech.dispatcher.listeners.on(N.PIECE_VERIFIED, on_verified)
    p.connect()
    lt = p.leech.peer.torrent
    p.net.must_run_until(lambda: lt.complete and not p.leech.peer.session.conns and not p.seed.peer.session.conns, 30)
    assert same_files(p.meta, p.src, p.tmp / "leech")
    assert sorted(verified) == list(range(p.meta.num_pieces))
    assert lt.stats.wasted == 0 and lt.stats.hash_failures == 0

    leech = p.leech.names()
    assert in_order(leech, N.PEER_CONNECTED, N.HANDSHAKE_DONE, N.BITFIELD, N.PEER_UNCHOKED_US,
                    N.PIECE_VERIFIED, N.TORRENT_COMPLETE, N.PEER_DISCONNECTED)
    assert leech.count(N.PIECE_VERIFIED) == p.meta.num_pieces
    credits = [(e.ip, e.new - e.old) for e in p.leech.events if e.name == N.REPUTATION_CHANGED]
    assert credits == [(SEED_IP, 1)] * p.meta.num_pieces  # a listener hears each verified piece's +1
    assert leech.index(N.TORRENT_COMPLETE) > max(i for i, n in enumerate(leech) if n == N.PIECE_VERIFIED)
    (gone,) = [e for e in p.leech.events if e.name == N.PEER_DISCONNECTED]
    assert gone.reason is CloseReason.BOTH_SEEDS and gone.peer is not None
    assert gone.peer.close_reason is CloseReason.BOTH_SEEDS and not gone.peer.connected

    seed = p.seed.names()
    assert in_order(seed, N.PEER_CONNECTED, N.HANDSHAKE_DONE, N.PEER_INTERESTED, N.WE_UNCHOKED_PEER,
                    N.PEER_DISCONNECTED)
    (sgone,) = [e for e in p.seed.events if e.name == N.PEER_DISCONNECTED]
    assert sgone.reason is CloseReason.CLOSED_BY_REMOTE
    # Same facade object for every event of one connection.
    assert len({id(e.peer) for e in p.seed.events if e.peer is not None}) == 1


def test_auto_request_off_requests_nothing_by_itself(tmp_path: Path, clock: FakeClock,
                                                     rng: random.Random) -> None:
    p = make_pair(tmp_path, clock, rng, seed_cfg=cfg(), leech_cfg=cfg(auto_request=False))
    p.connect()
    p.net.run_for(15.0)  # past a rechoke: the built-in choker of the seed unchokes it
    peer = p.leech.remote()
    assert peer.am_interested and not peer.peer_choking
    assert p.leech.peer.wire_stats()["out_request"] == 0
    assert p.leech.peer.torrent.have.count() == 0 and peer.blocks_inflight == 0
    # Library code asks for piece 5 only: it is written, hashed and verified like any other.
    for begin in range(0, PIECE_LEN, BLOCK_LEN):
        peer.request(5, begin, BLOCK_LEN)
    assert peer.blocks_inflight == PIECE_LEN // BLOCK_LEN
    p.net.run_for(2.0)
    assert [e.index for e in p.leech.events if e.name == N.PIECE_VERIFIED] == [5]
    assert list(p.leech.peer.torrent.have.indexes()) == [5]
    assert peer.blocks_inflight == 0 and peer.reputation == REPUTATION_START + 1


def test_auto_choke_off_never_unchokes_until_library_code_does(tmp_path: Path, clock: FakeClock,
                                                               rng: random.Random) -> None:
    p = make_pair(tmp_path, clock, rng, seed_cfg=cfg(auto_choke=False), leech_cfg=cfg())
    p.connect()
    p.net.run_for(35.0)  # three rechoke rounds and an optimistic unchoke would have happened
    peer = p.seed.remote()
    assert peer.am_choking and peer.peer_interested
    assert N.WE_UNCHOKED_PEER not in p.seed.names() and N.PEER_UNCHOKED_US not in p.leech.names()
    assert p.leech.peer.torrent.have.count() == 0
    peer.unchoke()
    lt = p.leech.peer.torrent
    p.net.must_run_until(lambda: lt.complete, 20)
    assert same_files(p.meta, p.src, p.tmp / "leech")
    assert p.seed.names(N.WE_UNCHOKED_PEER) == [N.WE_UNCHOKED_PEER]


# ---------------------------------------------------------------------- the facade


def test_peer_facade_state_after_handshake(user_pair: Pair) -> None:
    p = user_pair
    p.connect()
    p.net.run_for(1.0)
    to_seed, to_leech = p.leech.remote(), p.seed.remote()
    assert (to_seed.ip, to_seed.port) == p.seed.peer.addr and to_leech.ip == LEECH_IP
    assert not to_seed.incoming and to_leech.incoming
    assert to_seed.source is PeerSource.USER and to_leech.source is PeerSource.INCOMING
    assert to_seed.peer_id == p.seed.peer.session.peer_id
    assert to_seed.client.startswith("minibt") and to_seed.client_from_peer_id == "minibt 0.1.0"
    assert to_seed.transport == "tcp" and to_seed.is_encrypted  # the default policy: preferred, RC4 between minibts
    assert to_seed.reserved_bytes == p.seed.peer.session.reserved
    assert to_seed.torrent is p.leech.peer.torrent and to_leech.torrent is p.seed.peer.torrent
    assert to_seed.is_seeder and to_seed.bitfield_status == "all"
    assert to_seed.bitfield == b"\xff\xff" and p.meta.num_pieces == 16
    assert not to_leech.is_seeder and to_leech.bitfield_status == "none"
    assert to_seed.flags & PeerFlags.SEEDER and not to_seed.flags & PeerFlags.INCOMING
    assert to_leech.flags & PeerFlags.INCOMING and not to_leech.flags & PeerFlags.SEEDER
    both = PeerFlags.FAST | PeerFlags.EXTENSION | PeerFlags.HANDSHAKE_DONE
    assert to_seed.flags & both == both and to_seed.flags & PeerFlags.ENCRYPTED
    # Nobody unchoked anybody (auto_choke off on both sides); the leecher is interested.
    assert to_seed.peer_choking and to_seed.am_choking and to_seed.am_interested
    assert to_leech.peer_interested and to_leech.am_choking
    assert to_seed.reputation == to_leech.reputation == REPUTATION_START
    assert to_seed.blocks_inflight == 0 and to_seed.rate_down == 0.0
    assert Peer.of(p.leech.peer.session.conns[next(iter(p.leech.peer.session.conns))],
                   p.leech.peer.session) is to_seed
    text = to_seed.describe()
    assert SEED_IP in text and "minibt" in text and "reputation: 100" in text and "pieces: 16/16" in text
    assert repr(to_seed).startswith(f"<Peer {SEED_IP}:") and "connected" in repr(to_seed)


def test_have_event_and_peer_bitfield(user_pair: Pair) -> None:
    p = user_pair
    third = add_side(p.net, "third", "10.0.0.3", cfg(auto_request=False))
    p.net.add_torrent(third.peer, p.meta, p.tmp / "third", mode="download")
    p.seed.dispatcher.listeners.on(N.PEER_INTERESTED, lambda ev: ev.peer.unchoke() if ev.peer else None)

    def ask_piece_2(ev: Event) -> None:
        assert ev.peer is not None
        ev.peer.request(2, 0, BLOCK_LEN)
        ev.peer.request(2, BLOCK_LEN, BLOCK_LEN)

    p.leech.dispatcher.listeners.on(N.PEER_UNCHOKED_US, ask_piece_2)
    p.connect()
    p.net.add_peers(third.peer, [p.leech.peer.addr])
    p.net.run_for(3.0)
    assert [e.index for e in p.leech.events if e.name == N.PIECE_VERIFIED] == [2]
    haves = [e for e in third.events if e.name == N.HAVE]
    assert [e.index for e in haves] == [2]
    # third also learned the seed from the leech's ut_pex message and dialled it
    (conn,) = [c for c in third.peer.session.conns.values() if c.ip == LEECH_IP]
    to_leech = Peer.of(conn, third.peer.session)
    assert haves[0].peer is to_leech and to_leech.ip == LEECH_IP
    assert to_leech.bitfield == bytes([0b00100000, 0]) and to_leech.bitfield_status == to_leech.bitfield
    assert not to_leech.is_seeder and to_leech.am_interested


def test_request_refused_when_not_allowed(user_pair: Pair) -> None:
    p = user_pair
    p.connect()
    p.net.run_for(1.0)
    peer = p.leech.remote()
    with pytest.raises(LocalProtocolError, match="chokes us"):
        peer.request(0, 0, BLOCK_LEN)  # choked and not allowed fast
    p.seed.remote().unchoke()
    p.net.run_for(0.5)
    assert not peer.peer_choking
    last = p.meta.num_pieces - 1
    bad = [(0, 1, BLOCK_LEN), (0, 0, BLOCK_LEN + 1), (0, 0, 100), (p.meta.num_pieces, 0, BLOCK_LEN),
           (-1, 0, BLOCK_LEN), (last, 0, BLOCK_LEN * 2)]
    for index, begin, length in bad:
        with pytest.raises(LocalProtocolError):
            peer.request(index, begin, length)
    peer.request(0, 0, BLOCK_LEN)
    with pytest.raises(LocalProtocolError, match="already requested"):
        peer.request(0, 0, BLOCK_LEN)
    assert peer.blocks_inflight == 1
    with pytest.raises(LocalProtocolError, match="not downloading"):
        p.seed.remote().request(0, 0, BLOCK_LEN)  # the seed downloads nothing


def test_allowed_fast_and_suggest_from_library_code(user_pair: Pair) -> None:
    p = user_pair

    def grant(ev: Event) -> None:
        assert ev.peer is not None
        ev.peer.send_allowed_fast(3)
        ev.peer.send_allowed_fast(3)  # sent once only
        ev.peer.send_suggest(7)

    p.seed.dispatcher.listeners.on(N.HANDSHAKE_DONE, grant)
    p.connect()
    p.net.run_for(1.0)
    peer = p.leech.remote()
    assert peer.peer_choking and peer.is_allowed_fast(3) and not peer.is_allowed_fast(4)
    ws = p.leech.peer.wire_stats()
    assert ws["in_allowed_fast"] == 1 and ws["in_suggest"] == 1
    with pytest.raises(LocalProtocolError, match="do not have"):
        peer.send_allowed_fast(0)  # the leecher has nothing to allow
    with pytest.raises(LocalProtocolError, match="do not have"):
        peer.send_suggest(0)
    for begin in range(0, PIECE_LEN, BLOCK_LEN):
        peer.request(3, begin, BLOCK_LEN)  # allowed while choked (BEP 6)
    p.net.run_for(2.0)
    assert [e.index for e in p.leech.events if e.name == N.PIECE_VERIFIED] == [3]
    assert p.seed.remote().am_choking


def test_adjust_reputation_bans_and_refuses_the_ip_at_accept(user_pair: Pair) -> None:
    p = user_pair
    p.connect()
    p.net.run_for(1.0)
    peer = p.seed.remote()
    peer.adjust_reputation(-30)
    p.net.run_for(0.1)
    assert peer.connected and peer.reputation == 70
    peer.adjust_reputation(-20, "test says so")
    assert not peer.connected and peer.close_reason is CloseReason.REPUTATION_TOO_LOW
    p.net.run_for(0.3)
    assert not peer.connected and peer.close_reason is CloseReason.REPUTATION_TOO_LOW
    names = p.seed.names(N.REPUTATION_CHANGED, N.BANNED, N.PEER_DISCONNECTED)
    assert names == [N.REPUTATION_CHANGED, N.REPUTATION_CHANGED, N.BANNED, N.PEER_DISCONNECTED]
    changes = [(e.ip, e.old, e.new) for e in p.seed.events if e.name == N.REPUTATION_CHANGED]
    assert changes == [(LEECH_IP, 100, 70), (LEECH_IP, 70, 50)]
    (ban,) = [e for e in p.seed.events if e.name == N.BANNED]
    assert ban.ip == LEECH_IP and "test says so" in ban.detail and ban.peer is peer
    # The leecher redials the address it was given (a minute after the last dial); the seed refuses
    # it at accept, with an event.
    p.net.run_for(70.0)
    refused = [e for e in p.seed.events if e.name == N.PEER_DISCONNECTED and e.reason is CloseReason.BANNED]
    assert refused, p.seed.names()
    r = refused[0]
    assert r.peer is not None and r.peer.ip == LEECH_IP and r.peer.incoming and not r.peer.connected
    assert r.peer.close_reason is CloseReason.BANNED and r.torrent is None
    assert N.PEER_CONNECTED not in [e.name for e in p.seed.events if e.peer is r.peer]
    assert not p.seed.peer.session.conns


def test_disconnect_carries_the_reason_to_both_sides(user_pair: Pair) -> None:
    p = user_pair
    p.connect()
    p.net.run_for(1.0)
    peer = p.leech.remote()
    peer.disconnect(CloseReason.IDLE, "library code is bored")
    p.net.run_for(0.5)
    (mine,) = [e for e in p.leech.events if e.name == N.PEER_DISCONNECTED]
    assert (mine.reason, mine.detail) == (CloseReason.IDLE, "library code is bored")
    assert mine.peer is peer and peer.close_reason is CloseReason.IDLE and not peer.connected
    (theirs,) = [e for e in p.seed.events if e.name == N.PEER_DISCONNECTED]
    assert theirs.reason is CloseReason.CLOSED_BY_REMOTE
    for action in (peer.choke, peer.unchoke, peer.interested, peer.not_interested):
        with pytest.raises(LocalProtocolError, match="not connected"):
            action()
    with pytest.raises(LocalProtocolError):
        peer.request(0, 0, BLOCK_LEN)
    assert "closed: IDLE" in peer.describe()


def test_listeners_order_and_failing_callbacks(user_pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    p = user_pair
    calls: list[str] = []

    def boom(ev: Event) -> None:
        raise RuntimeError("user bug")

    def on_handshake(ev: Event) -> None:
        assert ev.peer is not None
        ev.peer.on(N.PEER_INTERESTED, lambda e: calls.append("peer"))
        ev.peer.on(N.PEER_INTERESTED, boom)

    p.seed.dispatcher.listeners.on(N.HANDSHAKE_DONE, on_handshake)
    p.seed.peer.torrent.on(N.PEER_INTERESTED, lambda e: calls.append("torrent"))
    p.seed.dispatcher.listeners.on(N.PEER_INTERESTED, lambda e: calls.append("client"))
    with caplog.at_level(logging.ERROR, logger="minibt.handles"):
        p.connect()
        p.net.run_for(1.0)
    assert calls == ["peer", "torrent", "client"]
    assert p.seed.dispatcher.counters["callback_errors"] == 1
    assert "user bug" in caplog.text
    with pytest.raises(ValueError, match="unknown event"):
        p.seed.peer.torrent.on("piece_verifyed", boom)


def test_events_are_not_queued_without_a_dispatcher(tmp_path: Path, clock: FakeClock, rng: random.Random) -> None:
    make_payload(tmp_path / "src" / "payload", {"x": 64 * KiB}, seed=1)
    meta = make_torrent(tmp_path / "src" / "payload", PIECE_LEN, trackers=())
    net = SimNet(clock, rng, tracker=False)
    a, b = net.add_peer("a", SEED_IP), net.add_peer("b", LEECH_IP)
    net.add_torrent(a, meta, tmp_path / "src", mode="seed")
    net.add_torrent(b, meta, tmp_path / "b", mode="download")
    applied: list[object] = []  # every effect the leecher's torrent hands its session
    apply = b.session._apply

    def recording_apply(owner: object, effects: list[object], now: float) -> None:
        applied.extend(effects)
        apply(owner, effects, now)  # type: ignore[arg-type]

    b.session._apply = recording_apply  # type: ignore[method-assign,assignment]
    net.add_peers(b, [a.addr])
    assert net.run_until(lambda: b.torrent.complete, 30)
    assert len(a.session.events) == len(b.session.events) == 0
    # Without a listener the per-piece event is not even built (4,096 of them for a GiB of 256 KiB pieces).
    assert meta.num_pieces == 2 and any(isinstance(e, PiecePassed) for e in applied)
    assert not [e for e in applied if isinstance(e, Emit) and e.name is N.PIECE_VERIFIED]
    assert b.session.reputation.score(SEED_IP) == 100 + meta.num_pieces  # credited all the same
