from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minibt.bitfield import Bitfield


def test_bit_order_high_bit_of_byte_zero_is_piece_zero() -> None:
    # BEP 3: "The high bit in the first byte corresponds to piece index 0."
    bf = Bitfield(10)
    bf.set(0)
    bf.set(9)
    assert bf.to_bytes() == b"\x80\x40"
    assert bf[0] and bf[9] and not bf[1]


def test_set_clear_count_all_none() -> None:
    bf = Bitfield(11)
    assert bf.none() and not bf.all() and bf.count() == 0 and len(bf) == 11
    for i in range(11):
        bf.set(i)
    assert bf.all() and not bf.none() and bf.count() == 11
    assert bf.to_bytes() == b"\xff\xe0"
    bf.clear(3)
    bf.clear(3)
    assert bf.count() == 10 and not bf[3] and not bf.all()


def test_from_bytes_rejects_spare_bits() -> None:
    with pytest.raises(ValueError, match="spare"):
        Bitfield.from_bytes(10, b"\xff\xe0")
    with pytest.raises(ValueError, match="spare"):
        Bitfield.from_bytes(9, b"\x00\x01")
    assert Bitfield.from_bytes(9, b"\x00\x80")[8]


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00\x00"])
def test_from_bytes_rejects_wrong_length(data: bytes) -> None:
    with pytest.raises(ValueError, match="bytes"):
        Bitfield.from_bytes(16, data)


def test_index_out_of_range_raises() -> None:
    bf = Bitfield(8)
    for bad in (-1, 8):
        with pytest.raises(IndexError):
            bf[bad]
        with pytest.raises(IndexError):
            bf.set(bad)


def test_empty_bitfield() -> None:
    bf = Bitfield(0)
    assert bf.to_bytes() == b"" and bf.all() and bf.none() and list(bf.indexes()) == []
    assert Bitfield.from_bytes(0, b"") == bf


def test_full_keeps_spare_bits_zero() -> None:
    bf = Bitfield.full(13)
    assert bf.all() and bf.count() == 13
    assert bf.to_bytes() == b"\xff\xf8"
    bf.clear_all()
    assert bf.none()


def test_copy_is_independent_and_eq() -> None:
    a = Bitfield(20)
    a.set(5)
    b = a.copy()
    assert a == b
    b.set(6)
    assert a != b and not a[6]
    assert Bitfield(8) != Bitfield(7)


@given(st.integers(0, 300), st.data())
def test_matches_a_set_of_ints(n: int, data: st.DataObject) -> None:
    members = data.draw(st.sets(st.integers(0, max(n - 1, 0))) if n else st.just(set()))
    bf = Bitfield(n)
    for i in members:
        bf.set(i)
    assert list(bf.indexes()) == sorted(members)
    assert list(bf.missing()) == [i for i in range(n) if i not in members]
    assert bf.count() == len(members)
    assert all(bf[i] == (i in members) for i in range(n))
    again = Bitfield.from_bytes(n, bf.to_bytes())
    assert again == bf


def test_indexes_on_large_field(rng: random.Random) -> None:
    n = 100_003
    members = sorted(rng.sample(range(n), 5000))
    bf = Bitfield(n)
    for i in members:
        bf.set(i)
    assert list(bf.indexes()) == members


@given(st.integers(1, 200), st.lists(st.tuples(st.sampled_from(["set", "clear", "set_all", "clear_all", "count",
                                                                "copy", "or", "and", "sub"]), st.integers(0, 10**6))))
def test_the_kept_count_follows_every_operation(n: int, ops: list[tuple[str, int]]) -> None:
    """count() is kept up to date by set() and clear() (Torrent.complete asks it per verified piece)."""
    bf, model = Bitfield(n), set()
    other = Bitfield(n, bytes(random.Random(n).randbytes((n + 7) // 8)[:-1]) + b"\x00")
    theirs = set(other.indexes())
    for op, x in ops:
        i = x % n
        if op == "set":
            bf.set(i)
            model.add(i)
        elif op == "clear":
            bf.clear(i)
            model.discard(i)
        elif op == "set_all":
            bf.set_all()
            model = set(range(n))
        elif op == "clear_all":
            bf.clear_all()
            model = set()
        elif op == "copy":
            bf = bf.copy()
        elif op == "or":
            bf, model = bf | other, model | theirs
        elif op == "and":
            bf, model = bf & other, model & theirs
        elif op == "sub":
            bf, model = bf - other, model - theirs
        assert bf.count() == len(model) == sum(1 for _ in bf.indexes())
        assert bf.all() == (len(model) == n)
