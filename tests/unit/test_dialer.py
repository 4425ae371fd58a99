from __future__ import annotations

import pytest

from minibt.dialer import DIAL_HOLD_S, MAX_FAILS, RETRY_S, USER_RETRY_S, Dialer
from minibt.effects import DialPeer, Effect
from minibt.handshake import Handshake
from minibt.peer import PeerConnection, PeerSource
from minibt.reputation import Reputation
from minibt.settings import DEFAULT_MAX_CANDIDATES
from minibt.urls import Addr


class Host:
    """Records dials; refuses once ``capacity`` connections were handed out (like Session.dial)."""

    def __init__(self, capacity: int = 1000) -> None:
        self.dials: list[tuple[Addr, PeerSource]] = []
        self.capacity = capacity

    def dial(self, addr: Addr, source: PeerSource, *, now: float) -> int | None:
        if len(self.dials) >= self.capacity:
            return None
        self.dials.append((addr, source))
        return 100 + len(self.dials)


def dial(d: Dialer, host: Host, now: float, *, seeding: bool, dialing: set[Addr]) -> None:
    """What the session does with the dialer's effects: open each connection inside its budget."""
    out: list[Effect] = []
    d.connect_more(now, seeding=seeding, dialing=dialing, slots=host.capacity - len(host.dials), out=out)
    for e in out:
        assert isinstance(e, DialPeer)
        cid = host.dial(e.addr, e.source, now=now)
        assert cid is not None
        d.dial_started(cid)


def addrs(n: int, port: int = 6881) -> list[Addr]:
    return [(f"198.51.100.{i}", port) for i in range(1, n + 1)]


def peer(cid: int, addr: Addr) -> PeerConnection:
    hs = Handshake(peer_id=bytes(20), reserved=bytes(8), info_hash=None, now=0.0)
    return PeerConnection(cid, addr, outgoing=False, source=PeerSource.INCOMING, handshake=hs, now=0.0)


def make(
    *, max_peers: int = 50, max_half_open: int = 8, capacity: int = 1000
) -> tuple[Dialer, Host, dict[int, PeerConnection], set[int], Reputation]:
    host, rep = Host(capacity), Reputation()
    peers: dict[int, PeerConnection] = {}
    half_open: set[int] = set()
    d = Dialer(peers=peers, half_open=half_open, reputation=rep, max_peers=max_peers, max_half_open=max_half_open)
    return d, host, peers, half_open, rep


def test_dials_stop_at_the_half_open_budget() -> None:
    d, host, _, half_open, _ = make(max_half_open=3)
    d.add(addrs(10), PeerSource.TRACKER, own=set())
    dial(d, host, 0.0, seeding=False, dialing=set())
    # BEP 40 order now (dialer.py): any 3 of the 10, each once
    assert len({a for a, _ in host.dials}) == 3 and set(a for a, _ in host.dials) <= set(addrs(10))
    assert len(half_open) == 3
    dial(d, host, 1.0, seeding=False, dialing=set())
    assert len(host.dials) == 3


def test_dials_stop_at_the_peer_budget_counting_connected_and_half_open() -> None:
    d, host, peers, half_open, _ = make(max_peers=5)
    peers.update({i: peer(i, ("203.0.113.1", 7000 + i)) for i in range(3)})
    half_open.add(99)
    d.add(addrs(10), PeerSource.TRACKER, own=set())
    assert d.wants_more()
    dial(d, host, 0.0, seeding=False, dialing=set())
    assert len(host.dials) == 1 and not d.wants_more()


def test_dialing_stops_when_the_session_refuses() -> None:
    d, host, _, half_open, _ = make(capacity=2)
    d.add(addrs(5), PeerSource.TRACKER, own=set())
    dial(d, host, 0.0, seeding=False, dialing=set())
    assert len(host.dials) == 2 and len(half_open) == 2
    host.capacity = 10
    dial(d, host, 1.0, seeding=False, dialing=set())  # the 3 not tried carry no dial hold
    assert len({a for a, _ in host.dials}) == 5


def test_pex_candidates_keep_flags_and_a_seed_skips_pex_seeds() -> None:
    from minibt.pex import PexFlag, PexPeer, PexReceived

    d, host, _, _, _ = make()
    seed, leech = ("203.0.113.5", 6881), ("198.18.0.7", 6881)
    got = PexReceived((PexPeer(*seed, PexFlag.SEED), PexPeer(*leech, 0)), (), (), ())
    assert d.add_pex(got, via=("192.0.2.1", 1), own=set()) == 2
    c = d.candidates.get(seed)
    assert c is not None and c.source is PeerSource.PEX and c.flags == PexFlag.SEED and c.via == ("192.0.2.1", 1)
    dial(d, host, 0.0, seeding=True, dialing=set())
    assert [a for a, _ in host.dials] == [leech]


def test_no_redial_while_an_attempt_may_last() -> None:
    d, host, _, half_open, _ = make()
    d.add(addrs(1), PeerSource.TRACKER, own=set())
    dial(d, host, 0.0, seeding=False, dialing=set())
    half_open.clear()  # the attempt ended without a verdict (e.g. the connection was closed)
    dial(d, host, DIAL_HOLD_S - 1, seeding=False, dialing=set())
    assert len(host.dials) == 1
    dial(d, host, DIAL_HOLD_S, seeding=False, dialing=set())
    assert len(host.dials) == 2


def test_connected_dialing_and_listen_addresses_are_skipped() -> None:
    d, host, peers, _, _ = make()
    a, b, c, e = addrs(4)
    incoming = peer(1, (c[0], 50000))
    incoming.listen_port = c[1]  # BEP 10 'p': its listen address is c
    peers.update({0: peer(0, a), 1: incoming})
    d.add([a, b, c, e], PeerSource.TRACKER, own=set())
    dial(d, host, 0.0, seeding=False, dialing={b})
    assert [x for x, _ in host.dials] == [e]


def test_add_skips_own_banned_port_zero_duplicates() -> None:
    d, _, _, _, rep = make()
    rep.ban("198.51.100.2", "test")
    own = {("198.51.100.1", 6881)}
    d.add([*addrs(3), ("198.51.100.4", 0), addrs(3)[2]], PeerSource.TRACKER, own=own)
    assert ("198.51.100.3", 6881) in d.candidates and len(d.candidates) == 1


def test_candidates_are_capped() -> None:
    d, *_ = make()
    addrs = [(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1) for i in range(DEFAULT_MAX_CANDIDATES + 10)]
    d.add(addrs, PeerSource.TRACKER, own=set())
    assert len(d.candidates) == DEFAULT_MAX_CANDIDATES


def test_failed_dials_back_off_then_are_forgotten() -> None:
    d, host, _, half_open, _ = make()
    (a,) = addrs(1)
    d.add([a], PeerSource.TRACKER, own=set())
    now = 0.0
    for fails in range(1, MAX_FAILS):
        d.connect_failed(a, now)
        c = d.candidates.get(a)
        assert c is not None and c.fails == fails
        assert d.candidates.retry_at(a) == now + RETRY_S * 2 ** (fails - 1)
    d.connect_failed(a, now)
    assert a not in d.candidates
    dial(d, host, 10_000.0, seeding=False, dialing=set())
    assert host.dials == [] and not half_open


def test_user_candidates_retry_soon_and_stay() -> None:
    d, host, _, _, _ = make()
    (a,) = addrs(1)
    d.add([a], PeerSource.USER, own=set())
    for _ in range(MAX_FAILS + 3):
        d.connect_failed(a, 0.0)
    c = d.candidates.get(a)
    assert c is not None and c.fails == MAX_FAILS + 3
    d.connect_failed(a, 0.0)
    assert (d.candidates.retry_at(a) or 0.0) <= 1800.0
    d.connected(a)
    c = d.candidates.get(a)
    assert c is not None and c.fails == 0
    d.connect_failed(a, 0.0)
    assert d.candidates.retry_at(a) == USER_RETRY_S


@pytest.mark.parametrize("seeding", [False, True])
def test_a_seed_does_not_retry_failed_tracker_peers(seeding: bool) -> None:
    d, host, _, _, _ = make()
    t, u = addrs(2)
    d.add([t], PeerSource.TRACKER, own=set())
    d.add([u], PeerSource.USER, own=set())
    d.connect_failed(t, 0.0)
    d.connect_failed(u, 0.0)
    dial(d, host, 10_000.0, seeding=seeding, dialing=set())
    assert sorted(a for a, _ in host.dials) == ([u] if seeding else [t, u])


def test_forget_ip_drops_every_port() -> None:
    d, *_ = make()
    d.add([("192.0.2.9", 1), ("192.0.2.9", 2), ("192.0.2.10", 1)], PeerSource.PEX, own=set())
    d.forget_ip("192.0.2.9")
    assert len(d.candidates) == 1 and ("192.0.2.10", 1) in d.candidates


def test_bep40_priority_uses_our_address_once_known() -> None:
    from minibt.dialer import peer_priority

    d, *_ = make()
    a = ("198.51.100.7", 6881)
    d.add([a], PeerSource.TRACKER, own=set())
    d.peer_saw_us_as("203.0.113.9", 6881)  # BEP 10 'yourip'
    c = d.candidates.get(a)
    assert c is not None and c.priority == peer_priority(("203.0.113.9", 6881), a)
    d.peer_saw_us_as("192.0.2.1", 6881)  # the first one wins
    c = d.candidates.get(a)
    assert c is not None and c.priority == peer_priority(("203.0.113.9", 6881), a)
