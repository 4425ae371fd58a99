"""BEP 16 offer logic (minibt/superseed.py)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibt.superseed import Offer, SuperSeeder


def bitfield(n: int, pieces: set[int]) -> bytes:
    buf = bytearray((n + 7) // 8)
    for i in pieces:
        buf[i >> 3] |= 0x80 >> (i & 7)
    return bytes(buf)


def only(offers: list[Offer], peer: object) -> list[int]:
    return [o.index for o in offers if o.peer == peer]


def test_each_peer_gets_one_distinct_piece(rng: random.Random) -> None:
    ss = SuperSeeder(20, rng)
    got = [only(ss.add_peer(p), p) for p in "abc"]
    assert all(len(g) == 1 for g in got)
    assert len({g[0] for g in got}) == 3
    for p, g in zip("abc", got, strict=True):
        assert ss.offers(p) == tuple(g)
        assert ss.revealed(p) == frozenset(g)


def test_offers_per_peer_is_respected(rng: random.Random) -> None:
    ss = SuperSeeder(20, rng, offers_per_peer=2)
    offers = ss.add_peer("a")
    assert len(offers) == 2 and len({o.index for o in offers}) == 2


def test_no_next_piece_until_seen_on_another_peer(rng: random.Random) -> None:
    ss = SuperSeeder(20, rng)
    (pa,) = only(ss.add_peer("a"), "a")
    ss.add_peer("b")
    # a completing its own piece is not enough while another peer could take it from a
    assert ss.peer_have("a", pa) == []
    assert ss.offers("a") == (pa,)
    # b got it (from a): now a may have its next piece
    out = ss.peer_have("b", pa)
    (pa2,) = only(out, "a")
    assert pa2 != pa
    assert ss.offers("a") == (pa2,)
    assert ss.revealed("a") == frozenset({pa, pa2})


def test_seen_elsewhere_before_the_peer_finished_also_moves_on(rng: random.Random) -> None:
    ss = SuperSeeder(10, rng)
    (pa,) = only(ss.add_peer("a"), "a")
    ss.add_peer("b")
    assert only(ss.peer_have("b", pa), "a") != []


def test_lone_peer_moves_on_with_its_own_have(rng: random.Random) -> None:
    ss = SuperSeeder(10, rng)
    (pa,) = only(ss.add_peer("a"), "a")
    (pa2,) = only(ss.peer_have("a", pa), "a")
    assert pa2 != pa


def test_peer_left_alone_moves_on(rng: random.Random) -> None:
    ss = SuperSeeder(10, rng)
    (pa,) = only(ss.add_peer("a"), "a")
    ss.add_peer("b")
    assert ss.peer_have("a", pa) == []
    out = ss.remove_peer("b")
    assert len(only(out, "a")) == 1


def test_requests_only_for_revealed_pieces(rng: random.Random) -> None:
    ss = SuperSeeder(10, rng)
    (pa,) = only(ss.add_peer("a"), "a")
    ss.add_peer("b")
    assert ss.may_request("a", pa)
    assert not any(ss.may_request("a", i) for i in range(10) if i != pa)
    assert not ss.may_request("nobody", pa)
    # a revealed piece stays requestable after the offer moved on
    ss.peer_have("b", pa)
    assert ss.may_request("a", pa)


def test_never_offers_a_piece_a_connected_peer_has(rng: random.Random) -> None:
    n = 16
    ss = SuperSeeder(n, rng)
    ss.add_peer("b")
    held = set(range(0, n, 2)) - set(ss.offers("b"))
    ss.peer_bitfield("b", bitfield(n, held))
    for k in range(5):
        p = f"x{k}"
        for i in only(ss.add_peer(p), p):
            assert i not in held


def test_offer_the_peer_already_holds_is_replaced(rng: random.Random) -> None:
    n = 8
    ss = SuperSeeder(n, rng)
    (pa,) = only(ss.add_peer("a"), "a")
    ss.add_peer("b")
    out = ss.peer_bitfield("a", bitfield(n, {pa}))
    (new,) = only(out, "a")
    assert new != pa and ss.offers("a") == (new,)
    assert ss.stats()["voided"] == 1


def test_have_all_peer_ends_super_seeding(rng: random.Random) -> None:
    ss = SuperSeeder(8, rng)
    ss.add_peer("a")
    assert not ss.finished
    ss.add_peer("s")
    ss.peer_have_all("s")
    assert ss.finished
    assert ss.may_request("a", 7)


def test_ends_when_every_piece_is_on_two_peers(rng: random.Random) -> None:
    n = 6
    ss = SuperSeeder(n, rng)
    for p in "abc":
        ss.add_peer(p)
    ss.peer_bitfield("a", bitfield(n, {0, 1, 2, 3}))
    ss.peer_bitfield("b", bitfield(n, {2, 3, 4, 5}))
    assert not ss.finished
    ss.peer_bitfield("c", bitfield(n, {0, 1}))
    assert not ss.finished  # 4 and 5 are only on b
    ss.peer_have("c", 4)
    assert not ss.finished
    ss.peer_have("c", 5)
    assert ss.finished
    assert all(not p for p in (ss.offers("a"), ss.offers("b"), ss.offers("c"))) or ss.finished


def test_prefers_never_offered_pieces_then_pieces_whose_holder_left(rng: random.Random) -> None:
    n = 3
    ss = SuperSeeder(n, rng)
    (pa,) = only(ss.add_peer("a"), "a")
    ss.peer_have("a", pa)  # alone: moves on
    ss.remove_peer("a")
    # pa was sent but is nowhere now; the two never-offered pieces come first
    firsts = [only(ss.add_peer(p), p)[0] for p in ("b", "c")]
    assert pa not in firsts
    (last,) = only(ss.add_peer("d"), "d")
    assert last == pa


def test_departure_reoffers_its_unique_pieces_to_waiting_peers(rng: random.Random) -> None:
    n = 2
    ss = SuperSeeder(n, rng)
    (pa,) = only(ss.add_peer("a"), "a")
    (pb,) = only(ss.add_peer("b"), "b")
    assert ss.add_peer("c") == []  # every piece is offered: c waits (it can fetch from a and b)
    ss.peer_have("a", pa)
    out = ss.remove_peer("a")
    assert Offer("c", pa) in out or Offer("b", pa) in out
    assert ss.availability(pa) == 0 and pb != pa


def test_piece_offered_to_someone_is_not_offered_again(rng: random.Random) -> None:
    ss = SuperSeeder(1, rng)
    assert only(ss.add_peer("a"), "a") == [0]
    assert ss.add_peer("b") == []  # b will get piece 0 from a
    ss.peer_have("a", 0)
    ss.peer_have("b", 0)
    assert ss.finished


def test_exempt_peer_counts_but_gets_no_offers(rng: random.Random) -> None:
    n = 4
    ss = SuperSeeder(n, rng)
    assert ss.add_peer("old", exempt=True, have=[0, 1]) == []
    assert ss.may_request("old", 3) and ss.is_exempt("old")
    assert ss.availability(0) == 1
    (pn,) = only(ss.add_peer("new"), "new")
    assert pn in (2, 3)
    assert ss.unrevealed_missing("old") == []


def test_unrevealed_missing(rng: random.Random) -> None:
    n = 5
    ss = SuperSeeder(n, rng)
    (pa,) = only(ss.add_peer("a"), "a")
    ss.add_peer("b")
    ss.peer_have("a", 4 if pa != 4 else 3)
    held = 4 if pa != 4 else 3
    assert sorted(ss.unrevealed_missing("a")) == sorted(set(range(n)) - {pa, held})


def test_bad_calls_raise_value_error(rng: random.Random) -> None:
    ss = SuperSeeder(4, rng)
    ss.add_peer("a")
    with pytest.raises(ValueError):
        ss.add_peer("a")
    with pytest.raises(ValueError):
        ss.peer_have("a", 4)
    with pytest.raises(ValueError):
        ss.peer_have("zz", 0)
    with pytest.raises(ValueError):
        ss.peer_bitfield("a", b"\x00\x00")
    with pytest.raises(ValueError):
        SuperSeeder(0, rng)
    assert ss.remove_peer("zz") == []


def _swarm(n: int, npeers: int, seed: int, per_peer: int) -> tuple[int, int, SuperSeeder]:
    """Leechers all connected to each other; one piece moves per step from a random source.

    Returns (pieces the seed uploaded while super-seeding, after, the machine).
    """
    rng = random.Random(seed)
    ss = SuperSeeder(n, random.Random(seed + 1), offers_per_peer=per_peer)
    have: dict[int, set[int]] = {}
    revealed: dict[int, set[int]] = {}

    def deliver(offers: list[Offer]) -> None:
        for o in offers:
            assert isinstance(o.peer, int)
            # an offer is a piece no connected peer has
            assert all(o.index not in h for h in have.values())
            revealed[o.peer].add(o.index)
            assert len(ss.offers(o.peer)) <= per_peer

    during = after = 0
    for p in range(npeers):
        have[p], revealed[p] = set(), set()
        deliver(ss.add_peer(p))
    for _ in range(50 * n * npeers):
        todo = [p for p in have if len(have[p]) < n]
        if not todo:
            break
        x = rng.choice(todo)
        opts = []
        for i in range(n):
            if i in have[x]:
                continue
            opts += [(i, q) for q in have if q != x and i in have[q]]
            if ss.finished or i in revealed[x]:
                opts.append((i, -1))
        if not opts:
            continue
        i, src = rng.choice(opts)
        if src == -1:
            assert ss.may_request(x, i)
            if ss.finished:
                after += 1
            else:
                during += 1
        have[x].add(i)
        if not ss.finished:
            deliver(ss.peer_have(x, i))
    assert all(len(h) == n for h in have.values()), ss.stats()
    return during, after, ss


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    npeers=st.integers(1, 5),
    seed=st.integers(0, 2**32),
    per_peer=st.integers(1, 2),
)
def test_swarm_completes_and_seed_sends_about_one_copy(n: int, npeers: int, seed: int, per_peer: int) -> None:
    during, after, ss = _swarm(n, npeers, seed, per_peer)
    assert ss.finished
    # Each upload while super-seeding was an offer, and without departures every piece is offered once.
    assert during <= ss.stats()["offers_made"] <= n


def test_swarm_of_three_uploads_far_less_than_three_copies() -> None:
    total = 0
    for seed in range(10):
        during, after, _ = _swarm(64, 3, seed, 1)
        total += during + after
    assert total / (10 * 64) < 1.5


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 24),
    ops=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 5), st.integers(0, 23)), max_size=80),
    seed=st.integers(0, 2**32),
)
def test_random_joins_leaves_and_haves_keep_the_invariants(
    n: int, ops: list[tuple[int, int, int]], seed: int
) -> None:
    ss = SuperSeeder(n, random.Random(seed))
    have: dict[int, set[int]] = {}
    offered: dict[int, set[int]] = {}

    def apply(offers: list[Offer]) -> None:
        for o in offers:
            assert isinstance(o.peer, int)
            others = [q for q in have if q != o.peer]
            assert all(o.index not in have[q] for q in have), "offered a piece someone has"
            assert all(o.index not in ss.offers(q) for q in others), "offered a piece twice"
            offered[o.peer].add(o.index)

    for op, peer, idx in ops:
        i = idx % n
        if op == 0 and peer not in have:
            have[peer], offered[peer] = set(), set()
            apply(ss.add_peer(peer))
        elif op == 1 and peer in have:
            del have[peer]
            apply(ss.remove_peer(peer))
        elif op == 2 and peer in have:
            have[peer].add(i)
            apply(ss.peer_have(peer, i))
        elif op == 3 and peer in have:
            bits = set(range(i, n, 3))
            have[peer] |= bits
            apply(ss.peer_bitfield(peer, bitfield(n, bits)))
        elif op == 4 and peer in have:
            # a request is allowed exactly for what we announced to it (or once super-seeding ended)
            assert ss.may_request(peer, i) == (ss.finished or i in offered[peer])
        for q in have:
            assert len(ss.offers(q)) <= 1
            assert set(ss.offers(q)) <= offered[q]
            assert ss.revealed(q) == frozenset(offered[q])
        for j in range(n):
            assert ss.availability(j) == sum(j in h for h in have.values())
        if any(len(h) == n for h in have.values()):
            assert ss.finished


def test_cli_seed_has_super_seed_option_and_download_does_not() -> None:
    from minibt.cli import build_parser

    p = build_parser()
    assert p.parse_args(["seed", "x.torrent", "--dir", "d", "--super-seed"]).super_seed is True
    assert p.parse_args(["seed", "x.torrent", "--dir", "d"]).super_seed is False
    with pytest.raises(SystemExit):
        p.parse_args(["download", "x.torrent", "--dir", "d", "--super-seed"])
