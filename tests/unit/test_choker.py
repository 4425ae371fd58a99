"""Choker (BEP 3 choking, optimistic unchoke) and the BEP 6 allowed-fast set."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Hashable

import pytest
from helpers import FakeClock

from minibt.choker import Choker, PeerSnapshot, allowed_fast_set


def snap(
    key: Hashable,
    rate: float = 0.0,
    *,
    interested: bool = True,
    snubbed: bool = False,
    connected_at: float = 0.0,
    unchoked: bool = False,
) -> PeerSnapshot:
    return PeerSnapshot(key, interested, rate, snubbed, connected_at, unchoked)


def test_four_best_interested_peers_by_rate_get_regular_slots(clock: FakeClock, rng: random.Random) -> None:
    peers = [snap(i, rate=float(r)) for i, r in enumerate([50, 10, 90, 70, 30, 80, 20, 60])]
    peers.append(snap("idle", rate=1000.0, interested=False))
    ch = Choker(rng)
    unchoked = ch.rechoke(peers, now=clock.now())
    regular = {2, 5, 3, 7}  # rates 90, 80, 70, 60
    assert regular < unchoked
    assert len(unchoked) == 5
    assert ch.optimistic in unchoked - regular
    assert "idle" not in unchoked  # uninterested peers are never unchoked (documented choice)


def test_snubbed_peers_get_no_regular_slot(clock: FakeClock, rng: random.Random) -> None:
    peers = [snap(i, rate=100.0 - i, snubbed=i < 2) for i in range(6)]
    ch = Choker(rng, regular_slots=4)
    unchoked = ch.rechoke(peers, now=clock.now())
    assert {2, 3, 4, 5} <= unchoked
    assert ch.optimistic in (0, 1)  # the optimistic slot may still try a snubbed peer


def test_few_interested_peers_are_all_unchoked_without_optimistic(
    clock: FakeClock, rng: random.Random
) -> None:
    ch = Choker(rng)
    assert ch.rechoke([snap("a", 5.0), snap("b", 1.0), snap("c", interested=False)], now=clock.now()) == {
        "a",
        "b",
    }
    assert ch.optimistic is None
    assert ch.rechoke([], now=clock.now()) == set()


def test_optimistic_unchoke_rotates_every_30_s(clock: FakeClock, rng: random.Random) -> None:
    peers = [snap(i, rate=100.0 - i, connected_at=clock.now() - 500) for i in range(8)]
    ch = Choker(rng)
    assert ch.due(clock.now()) and ch.next_deadline() is None
    ch.rechoke(peers, now=clock.now())
    first = ch.optimistic
    assert first in range(4, 8)
    seen = [first]
    for _ in range(9):
        assert not ch.due(clock.now() + 9.9)
        deadline = ch.next_deadline()
        assert deadline is not None
        clock.jump_to(deadline)
        assert ch.due(clock.now())
        unchoked = ch.rechoke(peers, now=clock.now())
        assert ch.optimistic in unchoked
        seen.append(ch.optimistic)
    # 10 s rechokes; the optimistic peer changes exactly at 30, 60 and 90 s
    changes = [i for i in range(1, len(seen)) if seen[i] != seen[i - 1]]
    assert changes == [3, 6, 9]
    assert ch.stats()["optimistic_rotations"] == 4


def test_early_rechoke_keeps_the_schedule(clock: FakeClock, rng: random.Random) -> None:
    ch = Choker(rng, rechoke_interval_s=10.0)
    t0 = clock.now()
    ch.rechoke([snap("a")], now=t0)
    assert ch.next_deadline() == t0 + 10.0
    clock.advance(4)
    ch.rechoke([snap("a"), snap("b")], now=clock.now(), scheduled=False)
    assert ch.next_deadline() == t0 + 10.0
    clock.advance(6)
    assert ch.due(clock.now())
    ch.rechoke([snap("a"), snap("b")], now=clock.now())
    assert ch.next_deadline() == clock.now() + 10.0


def test_optimistic_replaced_when_it_leaves_or_loses_interest(clock: FakeClock, rng: random.Random) -> None:
    peers = {i: snap(i, rate=100.0 - i) for i in range(7)}
    ch = Choker(rng)
    ch.rechoke(list(peers.values()), now=clock.now())
    opt = ch.optimistic
    assert opt in (4, 5, 6)
    clock.advance(10)
    peers[opt] = snap(opt, rate=100.0 - opt, interested=False)  # type: ignore[index]
    unchoked = ch.rechoke(list(peers.values()), now=clock.now(), scheduled=False)
    assert ch.optimistic not in (None, opt) and opt not in unchoked
    opt2 = ch.optimistic
    del peers[opt2]  # type: ignore[arg-type]
    ch.rechoke(list(peers.values()), now=clock.now(), scheduled=False)
    assert ch.optimistic not in (None, opt, opt2)


def test_optimistic_promoted_to_regular_frees_the_slot(clock: FakeClock, rng: random.Random) -> None:
    peers = [snap(i, rate=100.0 - i) for i in range(6)]
    ch = Choker(rng)
    ch.rechoke(peers, now=clock.now())
    opt = ch.optimistic
    assert opt in (4, 5)
    peers[opt] = snap(opt, rate=1000.0)  # type: ignore[index]
    unchoked = ch.rechoke(peers, now=clock.now() + 1, scheduled=False)
    assert opt in unchoked and ch.optimistic not in (None, opt)
    assert len(unchoked) == 5


def test_new_peers_are_three_times_as_likely_to_be_optimistic() -> None:
    now = 10_000.0
    peers = [snap("new", connected_at=now - 5)] + [snap(f"old{i}", connected_at=now - 600) for i in range(3)]
    runs = 3000
    wins: Counter[Hashable] = Counter()
    for seed in range(runs):
        ch = Choker(random.Random(seed), regular_slots=0)
        ch.rechoke(peers, now=now)
        wins[ch.optimistic] += 1
    # weights 3:1:1:1 -> new 1/2, each old 1/6 (tolerance about 5 standard deviations)
    assert 0.45 < wins["new"] / runs < 0.55
    for i in range(3):
        assert 0.12 < wins[f"old{i}"] / runs < 0.215


def test_rate_ties_are_broken_at_random_and_deterministically() -> None:
    peers = [snap(i, rate=5.0) for i in range(10)]

    def run(seed: int) -> list[set[Hashable]]:
        ch = Choker(random.Random(seed))
        return [ch.rechoke(peers, now=float(t)) for t in range(0, 100, 10)]

    assert run(42) == run(42)
    regular_sets = {frozenset(run(s)[0]) for s in range(20)}
    assert len(regular_sets) > 5


# ---------------------------------------------------------------- BEP 6 allowed fast


BEP6_HASH = b"\xaa" * 20


def test_allowed_fast_set_matches_bep6_vectors() -> None:
    # BEP 6 "Allowed Fast" example: 1313 pieces, info-hash 0xaa * 20, peer 80.4.4.200
    assert allowed_fast_set("80.4.4.200", BEP6_HASH, 1313, 7) == [1059, 431, 808, 1217, 287, 376, 1188]
    assert allowed_fast_set("80.4.4.200", BEP6_HASH, 1313, 9) == [
        1059,
        431,
        808,
        1217,
        287,
        376,
        1188,
        353,
        508,
    ]


def test_allowed_fast_set_depends_on_the_slash_24_only() -> None:
    base = allowed_fast_set("80.4.4.200", BEP6_HASH, 1313)
    assert len(base) == 10 == len(set(base))
    assert allowed_fast_set("80.4.4.1", BEP6_HASH, 1313) == base
    assert allowed_fast_set("::ffff:80.4.4.7", BEP6_HASH, 1313) == base
    assert allowed_fast_set("80.4.5.200", BEP6_HASH, 1313) != base


def test_allowed_fast_set_edge_cases() -> None:
    assert allowed_fast_set("2001:db8::1", BEP6_HASH, 1313) == []
    assert sorted(allowed_fast_set("10.0.0.1", BEP6_HASH, 3, 10)) == [0, 1, 2]
    assert allowed_fast_set("10.0.0.1", BEP6_HASH, 0) == []
    with pytest.raises(ValueError):
        allowed_fast_set("not-an-ip", BEP6_HASH, 10)
