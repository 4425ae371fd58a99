"""RarityOrder: the availability-bucketed order of fresh pieces, and its rarest/random choices."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from minibt.rarity import RarityOrder

MAX_AVAIL = 4


def make_order(avail: list[int], *, seed: int = 0, started: str = "") -> RarityOrder:
    """One entry per piece: its availability; ``started``: "s" = piece not fresh."""
    ro = RarityOrder(len(avail), random.Random(seed))
    ro.reserve(max(avail, default=0))
    for k in range(max(avail, default=0)):
        ro.inc_many(p for p, a in enumerate(avail) if a > k)
    for p, c in enumerate(started):
        if c == "s":
            ro.remove(p)
    return ro


def assert_consistent(ro: RarityOrder) -> None:
    order = ro.order
    assert len(set(order)) == len(order)
    assert set(order) == {p for p, f in enumerate(ro.fresh) if f}
    avails = [ro.avail[p] for p in order]
    assert avails == sorted(avails), "fresh pieces out of availability order"


def test_new_order_holds_every_piece_at_availability_zero() -> None:
    ro = RarityOrder(5, random.Random(0))
    assert sorted(ro.order) == [0, 1, 2, 3, 4]
    assert list(ro.avail) == [0] * 5
    assert ro.fresh == bytearray(b"\x01") * 5


def test_order_sorted_by_availability_after_increments() -> None:
    ro = make_order([3, 0, 2, 1, 4, 1])
    assert [ro.avail[p] for p in ro.order] == [0, 1, 1, 2, 3, 4]
    assert ro.order[0] == 1 and ro.order[-1] == 4 and ro.order[-2] == 0
    assert_consistent(ro)


def test_decrements_move_pieces_back_down() -> None:
    ro = make_order([3, 0, 2])
    ro.dec_many([0, 0, 0, 2])
    assert list(ro.avail) == [0, 0, 1]
    assert ro.order[-1] == 2
    assert_consistent(ro)


def test_removed_piece_keeps_its_availability_and_reinserts_in_its_bucket() -> None:
    ro = make_order([1, 2, 3, 1])
    ro.remove(2)
    assert 2 not in ro.order and ro.fresh[2] == 0
    ro.inc_many([2])  # availability is tracked for pieces outside the order too
    ro.dec_many([2, 2, 2])
    assert ro.avail[2] == 1
    ro.insert(2)
    assert ro.fresh[2] == 1
    assert sorted(ro.order[:3]) == [0, 2, 3] and ro.order[3] == 1
    assert_consistent(ro)


def test_reserve_adds_buckets_for_higher_availability() -> None:
    ro = RarityOrder(3, random.Random(0))
    ro.reserve(1)
    ro.inc_many([0, 1])
    ro.reserve(2)
    ro.inc_many([0])
    assert [ro.avail[p] for p in ro.order] == [0, 1, 2]
    assert list(ro.order) == [2, 1, 0]


@given(
    st.lists(
        st.tuples(st.sampled_from(["inc", "dec", "insert", "remove"]), st.integers(0, 7)),
        max_size=80,
    )
)
@settings(max_examples=200, deadline=None)
def test_order_stays_sorted_and_matches_fresh_under_any_operations(ops: list[tuple[str, int]]) -> None:
    ro = RarityOrder(8, random.Random(0))
    ro.reserve(MAX_AVAIL)
    avail = [0] * 8
    fresh = set(range(8))
    for op, p in ops:
        if op == "inc" and avail[p] < MAX_AVAIL:
            ro.inc_many([p])
            avail[p] += 1
        elif op == "dec" and avail[p] > 0:
            ro.dec_many([p])
            avail[p] -= 1
        elif op == "insert" and p not in fresh:
            ro.insert(p)
            fresh.add(p)
        elif op == "remove" and p in fresh:
            ro.remove(p)
            fresh.discard(p)
        assert list(ro.avail) == avail
        assert set(ro.order) == fresh
        assert_consistent(ro)


def test_choose_any_takes_from_the_rarest_bucket() -> None:
    ro = make_order([2, 1, 3, 1, 2])
    seen = {ro.choose_any(False) for _ in range(50)}
    assert seen == {1, 3}


def test_choose_any_skips_started_pieces() -> None:
    ro = make_order([2, 1, 3, 1], started=" s s")
    assert {ro.choose_any(False) for _ in range(20)} == {0}


def test_choose_any_random_phase_reaches_every_fresh_piece() -> None:
    ro = make_order([2, 1, 3, 1], started="s   ")
    assert {ro.choose_any(True) for _ in range(200)} == {1, 2, 3}


def test_choose_returns_none_when_nothing_is_fresh() -> None:
    ro = make_order([1, 1], started="ss")
    assert ro.choose_any(False) is None
    assert ro.choose_any(True) is None
    assert ro.choose_in(bytearray(b"\x01\x01"), False) is None
    assert ro.choose_in(bytearray(b"\x01\x01"), True) is None


def test_choose_in_takes_the_rarest_piece_the_bits_have() -> None:
    ro = make_order([1, 2, 3, 2, 3])
    bits = bytearray([0, 1, 1, 1, 1])  # this peer's own pieces are counted in avail
    assert {ro.choose_in(bits, False) for _ in range(50)} == {1, 3}


def test_choose_in_skips_started_pieces_and_pieces_without_a_bit() -> None:
    ro = make_order([1, 2, 3, 2, 3], started="   s ")
    bits = bytearray([0, 0, 1, 1, 1])
    assert {ro.choose_in(bits, False) for _ in range(50)} == {2, 4}
    assert ro.choose_in(bytearray(5), False) is None


def test_choose_in_random_phase_ignores_availability() -> None:
    ro = make_order([1, 2, 3, 2, 3])
    bits = bytearray([1, 0, 1, 0, 1])
    assert {ro.choose_in(bits, True) for _ in range(200)} == {0, 2, 4}


def test_choose_among_takes_the_least_available_candidate() -> None:
    ro = make_order([3, 1, 2, 1, 2])
    assert {ro.choose_among([0, 2, 4], False) for _ in range(50)} == {2, 4}
    assert ro.choose_among([], False) is None
    assert {ro.choose_among([0, 1, 2], True) for _ in range(200)} == {0, 1, 2}


def test_same_seed_same_choices() -> None:
    picks = []
    for _ in range(2):
        ro = make_order([1, 1, 1, 1, 2, 2, 2, 2], seed=7)
        picks.append([ro.choose_in(bytearray(b"\x01") * 8, False) for _ in range(10)])
    assert picks[0] == picks[1]


def test_two_bytes_a_piece_while_they_fit_and_four_beyond() -> None:
    """Issue 15 (flat memory): 65536 pieces (16 GiB in 256 KiB pieces) fit 2-byte arrays; 65537 do not."""
    small = RarityOrder(0x10000, random.Random(0))
    assert (small.avail.typecode, small.order.typecode) == ("B", "H")  # availability: one byte to 255 peers
    assert small.avail.itemsize == 1 and small.order.itemsize == 2
    big = RarityOrder(0x10001, random.Random(0))
    assert big.order.itemsize >= 4 and big.order[-1] == 0x10000
    big.remove(0x10000)
    big.insert(0x10000)
    assert_consistent(big)
    top = 0xFFFF  # the last piece, its position the last one: both at the top of the 2-byte range
    small.reserve(1)
    small.inc_many([top, 0])
    small.remove(top)
    small.dec_many([top, 0])  # no longer fresh: only its availability changes
    assert small.avail[top] == 0 and small.avail[0] == 0
    small.insert(top)
    assert_consistent(small)


def test_availability_widens_past_255_peers_keeping_the_counts() -> None:
    ro = RarityOrder(3, random.Random(0))
    ro.reserve(0xFF)
    for _ in range(0xFF):
        ro.inc_many([2])
    ro.inc_many([0])
    assert ro.avail.itemsize == 1 and ro.avail[2] == 0xFF
    ro.reserve(0x100)  # the 256th non-seed peer
    assert ro.avail.itemsize == 2 and list(ro.avail) == [1, 0, 0xFF]
    ro.inc_many([2])
    assert ro.avail[2] == 0x100 and ro.order[-1] == 2
    assert_consistent(ro)


def test_availability_widens_past_65535_peers() -> None:
    ro = RarityOrder(3, random.Random(0))
    ro.reserve(0x10000)
    assert ro.avail.itemsize >= 4
    for _ in range(0x10000):
        ro.inc_many([1])
    assert ro.avail[1] == 0x10000 and ro.order[-1] == 1
    assert_consistent(ro)
