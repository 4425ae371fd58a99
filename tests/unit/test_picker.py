"""PiecePicker: rarest first, random first, partials, allowed-fast, end game, bookkeeping."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Hashable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibt.errors import RemoteProtocolError, WireError
from minibt.picker import Block, PiecePicker

BL = 16  # tiny blocks keep the DSL pictures small


def bitfield(has: Sequence[bool]) -> bytes:
    """BEP 3 bitfield: high bit of byte 0 is piece 0."""
    out = bytearray((len(has) + 7) // 8)
    for i, h in enumerate(has):
        if h:
            out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def make_picker(
    avail: str,
    have: str = "",
    *,
    blocks: int = 2,
    seed: int = 0,
    random_first: int = 0,
    dup: int = 2,
) -> PiecePicker:
    """One character per piece (libtorrent setup_picker style).

    ``avail``: digit = how many background peers ("bg0".."bg8") have the piece.
    ``have``: "x" = we have the piece.  Every piece has ``blocks`` blocks of BL bytes.
    """
    n = len(avail)
    pk = PiecePicker(
        n,
        blocks * BL,
        n * blocks * BL,
        random.Random(seed),
        block_len=BL,
        random_first=random_first,
        endgame_dup_limit=dup,
    )
    digits = [int(c) for c in avail]
    for k in range(max(digits, default=0)):
        pk.peer_bitfield(f"bg{k}", bitfield([d > k for d in digits]))
    for i, c in enumerate(have):
        if c == "x":
            pk.set_have(i)
    return pk


def pieces_of(blocks: Sequence[Block]) -> list[int]:
    """Piece indexes in first-seen order."""
    return list(dict.fromkeys(b.index for b in blocks))


def full_piece_order(pk: PiecePicker, peer: Hashable, blocks_per_piece: int) -> list[int]:
    """Start whole pieces one at a time until nothing is left for ``peer``."""
    order: list[int] = []
    while not pk.endgame:
        got = pk.pick(peer, blocks_per_piece)
        if not got:
            break
        assert len(pieces_of(got)) == 1
        order.append(got[0].index)
    return order


# ---------------------------------------------------------------- rarest first / random first


def test_rarest_first_order_for_a_seed_peer() -> None:
    pk = make_picker("3120413")
    pk.peer_have_all("me")
    order = full_piece_order(pk, "me", 2)
    assert sorted(order) == list(range(7))
    avails = [pk.availability(p) for p in order]
    assert avails == sorted(avails)
    assert order[0] == 3  # the only piece no background peer has


@given(
    avail=st.lists(st.integers(0, 5), min_size=1, max_size=80),
    mine=st.data(),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=150, deadline=None)
def test_rarest_first_order_for_any_peer(avail: list[int], mine: st.DataObject, seed: int) -> None:
    has = mine.draw(st.lists(st.booleans(), min_size=len(avail), max_size=len(avail)))
    pk = make_picker("".join(map(str, avail)), seed=seed)
    pk.peer_bitfield("me", bitfield(has))
    order = full_piece_order(pk, "me", 2)
    assert sorted(order) == [i for i, h in enumerate(has) if h]
    avails = [pk.availability(p) for p in order]
    assert avails == sorted(avails)


def test_rarest_first_ties_are_broken_at_random() -> None:
    firsts = set()
    for seed in range(40):
        pk = make_picker("11111111", seed=seed)
        pk.peer_have_all("me")
        firsts.add(pk.pick("me", 1)[0].index)
    assert len(firsts) >= 5


def test_different_peers_start_different_rarest_pieces() -> None:
    pk = make_picker("2222222222222222", seed=3)
    starts = []
    for peer in ("p1", "p2", "p3", "p4"):
        pk.peer_have_all(peer)
        starts.append(pk.pick(peer, 2)[0].index)  # whole piece: no partial left to share
    assert len(set(starts)) == 4


def test_random_first_phase_ignores_rarity_then_rarest_first() -> None:
    firsts: Counter[int] = Counter()
    for seed in range(60):
        pk = make_picker("1" + "5" * 15, seed=seed, random_first=4)
        pk.peer_have_all("me")
        firsts[pk.pick("me", 1)[0].index] += 1
    assert len(firsts) >= 8
    assert firsts[0] < 20  # piece 0 is the rarest but only ~1/16 likely in the random phase

    for seed in range(20):
        pk = make_picker("1" + "5" * 15, "    xxxx", seed=seed, random_first=4)
        pk.peer_have_all("me")
        assert pk.pick("me", 1)[0].index == 0


def test_random_first_phase_for_a_sparse_peer_picks_only_its_pieces() -> None:
    seen = set()
    for seed in range(30):
        pk = make_picker("3" * 40, seed=seed, random_first=4)
        pk.peer_bitfield("me", bitfield([i in (5, 17, 33) for i in range(40)]))
        seen.add(pk.pick("me", 1)[0].index)
    assert seen == {5, 17, 33}


# ---------------------------------------------------------------- partial pieces


def test_partial_piece_of_another_peer_is_preferred_over_a_rarer_new_piece() -> None:
    pk = make_picker("5551", blocks=4)
    pk.peer_bitfield("a", bitfield([True, False, False, False]))
    first = pk.pick("a", 1)
    assert first == [Block(0, 0, BL)]
    pk.peer_have_all("b")
    got = pk.pick("b", 3)
    assert got == [Block(0, BL, BL), Block(0, 2 * BL, BL), Block(0, 3 * BL, BL)]
    assert pk.pick("b", 1)[0].index == 3  # the rarest new piece only after piece 0 is fully requested


def test_own_partial_piece_is_preferred_over_an_older_one() -> None:
    pk = make_picker("1111", blocks=4)
    pk.peer_have_all("a")
    pk.peer_have_all("b")
    mine = pk.pick("b", 4)
    x = mine[0].index
    other = pk.pick("a", 1)
    z = other[0].index
    assert z != x
    pk.request_failed("b", mine[0])  # piece x has a free block again, and is newer than z
    assert pk.pick("b", 1) == [mine[0]]
    assert pk.pick("b", 1)[0].index == z  # then other partials


# ---------------------------------------------------------------- allowed fast / can_start


def test_allowed_fast_restricts_pieces() -> None:
    pk = make_picker("1111", blocks=2)
    pk.peer_have_all("a")
    pk.peer_have_all("b")
    pk.pick("a", 1)  # leaves an open partial piece that b must not touch while choked
    got = pk.pick("b", 10, allowed={2})
    assert got == [Block(2, 0, BL), Block(2, BL, BL)]
    assert pk.pick("b", 10, allowed={2}) == []
    assert pk.pick("b", 10, allowed=set()) == []


def test_allowed_fast_ignores_pieces_the_peer_lacks_or_we_have() -> None:
    pk = make_picker("2222", "x   ")
    pk.peer_bitfield("a", bitfield([True, True, False, False]))
    assert pk.pick("a", 10, allowed=[0, 2, 3, 99, -1]) == []
    assert pieces_of(pk.pick("a", 10, allowed=[0, 1, 2])) == [1]


def test_can_start_refusal_serves_only_partial_pieces() -> None:
    pk = make_picker("1111", blocks=4)
    pk.peer_have_all("a")
    pk.peer_have_all("b")
    started = pk.pick("a", 1)
    asked: list[int] = []

    def refuse(i: int) -> bool:
        asked.append(i)
        return False

    got = pk.pick("b", 10, can_start=refuse)
    assert pieces_of(got) == [started[0].index]
    assert len(got) == 3
    assert len(asked) == 1 and asked[0] != started[0].index
    pk.peer_have_all("c")
    assert pk.pick("c", 10, can_start=refuse) == []
    assert len(pk.pick("c", 4, can_start=lambda i: True)) == 4


# ---------------------------------------------------------------- end game


def test_endgame_duplicates_blocks_up_to_the_limit() -> None:
    pk = make_picker("11", blocks=2)
    for p in "abc":
        pk.peer_have_all(p)
    assert not pk.endgame
    all_blocks = pk.pick("a", 10)
    assert len(all_blocks) == 4
    assert pk.endgame
    assert pk.pick("a", 10) == []  # never the same block twice to one peer
    assert sorted(pk.pick("b", 10), key=lambda b: (b.index, b.begin)) == sorted(
        all_blocks, key=lambda b: (b.index, b.begin)
    )
    assert pk.pick("c", 10) == []  # every block already has 2 requesters
    assert pk.stats()["endgame_requests"] == 4


def test_endgame_received_block_lists_other_requesters_to_cancel() -> None:
    pk = make_picker("1", blocks=2, dup=3)
    for p in "abc":
        pk.peer_have_all(p)
    blocks = pk.pick("a", 2)
    pk.pick("b", 2)
    pk.pick("c", 2)
    expected, cancel = pk.block_received("b", blocks[0])
    assert expected is True
    assert sorted(map(str, cancel)) == ["a", "c"]
    for p in "abc":
        assert blocks[0] not in pk.outstanding(p)
        assert pk.num_outstanding(p) == 1
    assert pk.block_received("a", blocks[0]) == (False, [])  # the late duplicate


def test_endgame_prefers_blocks_with_fewest_requesters() -> None:
    pk = make_picker("1", blocks=4, dup=3)
    for p in "abc":
        pk.peer_have_all(p)
    blocks = pk.pick("a", 4)
    first_dups = pk.pick("b", 2)
    assert len(first_dups) == 2
    assert set(pk.pick("c", 2)) == set(blocks) - set(first_dups)


def test_endgame_entered_in_the_middle_of_a_pick() -> None:
    pk = make_picker("1", blocks=4)
    pk.peer_have_all("a")
    pk.peer_have_all("b")
    a_blocks = pk.pick("a", 3)
    got = pk.pick("b", 2)
    assert len(got) == 2
    assert got[0] not in a_blocks  # the last free block first
    assert got[1] in a_blocks  # then a duplicate


def test_no_endgame_while_a_block_is_unrequested() -> None:
    pk = make_picker("10", blocks=2)  # nobody has piece 1 yet
    pk.peer_bitfield("a", bitfield([True, False]))
    pk.peer_bitfield("b", bitfield([True, False]))
    assert len(pk.pick("a", 10)) == 2
    assert not pk.endgame
    assert pk.pick("b", 10) == []


def test_endgame_ends_when_a_failed_piece_returns() -> None:
    pk = make_picker("11", blocks=1)
    pk.peer_have_all("a")
    b0, b1 = pk.pick("a", 2)
    pk.block_received("a", b0)
    pk.piece_hashing(b0.index)
    assert pk.endgame
    pk.piece_failed(b0.index)
    assert not pk.endgame
    pk.peer_have_all("b")
    assert pk.pick("b", 1) == [b0]


# ---------------------------------------------------------------- returning blocks


def test_peer_gone_returns_blocks_and_availability() -> None:
    pk = make_picker("0000", blocks=4)
    pk.peer_bitfield("a", bitfield([True, True, False, False]))
    pk.peer_bitfield("b", bitfield([True, True, False, False]))
    got = pk.pick("a", 3)
    assert pk.peer_gone("a") == got
    assert pk.outstanding("a") == [] and not pk.is_interesting("a")
    assert [pk.availability(i) for i in range(4)] == [1, 1, 0, 0]
    assert pk.pick("b", 3) == got
    assert pk.peer_gone("never-seen") == []


def test_peer_choked_and_request_failed_return_blocks() -> None:
    pk = make_picker("1", blocks=4)
    pk.peer_have_all("a")
    got = pk.pick("a", 4)
    assert pk.outstanding("a") == got
    assert pk.is_requested("a", got[1]) and not pk.is_requested("b", got[1])
    pk.request_failed("a", got[1])
    assert not pk.is_requested("a", got[1])
    pk.request_failed("a", got[1])  # already gone: no-op
    assert pk.outstanding("a") == [got[0], got[2], got[3]]
    assert pk.peer_choked("a") == [got[0], got[2], got[3]]
    assert pk.num_outstanding("a") == 0
    assert sorted(pk.pick("a", 4), key=lambda b: b.begin) == got


def test_piece_failed_returns_all_blocks() -> None:
    pk = make_picker("1", blocks=3)
    pk.peer_have_all("a")
    got = pk.pick("a", 3)
    for b in got:
        assert not pk.piece_complete(0)
        assert pk.block_received("a", b) == (True, [])
    assert pk.piece_complete(0)
    pk.piece_hashing(0)
    assert not pk.piece_complete(0)
    assert pk.pick("a", 3) == [] and not pk.endgame  # hashing: not pickable
    assert pk.block_received("a", got[0]) == (False, [])
    pk.piece_failed(0)
    assert pk.pick("a", 3) == got
    for b in got:
        pk.block_received("a", b)
    pk.piece_hashing(0)
    pk.piece_passed(0)
    assert pk.have(0) and pk.complete and pk.missing() == 0


# ---------------------------------------------------------------- geometry and received blocks


def test_last_block_of_last_piece_is_short() -> None:
    piece_len = 40000
    total = 2 * piece_len + 20000
    pk = PiecePicker(3, piece_len, total, random.Random(1))
    pk.peer_have_all("s")
    got = pk.pick("s", 100)
    assert len(got) == 3 + 3 + 2  # 40000 = 16384 + 16384 + 7232; 20000 = 16384 + 3616
    by_piece: dict[int, list[Block]] = {}
    for b in got:
        by_piece.setdefault(b.index, []).append(b)
    for i, bl in by_piece.items():
        bl.sort(key=lambda b: b.begin)
        assert all(b.length == 16384 for b in bl[:-1])
        assert bl[0].begin == 0
        assert all(x.begin + x.length == y.begin for x, y in zip(bl, bl[1:], strict=False))
        assert bl[-1].begin + bl[-1].length == pk.piece_size(i)
    assert by_piece[2][-1] == Block(2, 16384, 20000 - 16384)
    assert pk.piece_size(2) == 20000 and pk.blocks_in_piece(2) == 2


def test_unsolicited_block_is_recorded_but_not_expected() -> None:
    pk = make_picker("11", blocks=2)
    pk.peer_have_all("a")
    assert pk.block_received("a", Block(1, BL, BL)) == (False, [])
    assert pk.pick("a", 1) == [Block(1, 0, BL)]  # piece 1 is partial now, and preferred
    assert pk.block_received("a", Block(1, 0, BL)) == (True, [])
    assert pk.piece_complete(1)
    assert pk.stats()["blocks_unexpected"] == 1


def test_a_late_block_is_taken_only_while_its_piece_is_started_and_the_block_missing() -> None:
    pk = make_picker("111", blocks=2)
    pk.peer_have_all("a")
    pk.peer_have_all("b")
    first = pk.pick("a", 2)
    assert len(first) == 2 and first[0].index == first[1].index  # one piece, both blocks
    p = first[0].index
    for b in first:
        pk.request_failed("a", b)  # cancelled at a
    assert pk.pick("b", 1) == [first[0]]  # given to b
    assert pk.take_late("a", first[0]) == ["b"]  # a's copy came first: b's request is to be cancelled
    assert pk.num_outstanding("b") == 0
    assert pk.take_late("a", first[0]) is None  # a second copy
    assert pk.take_late("a", first[1]) == []  # free, nobody asked again
    assert pk.piece_complete(p)
    pk.piece_hashing(p)
    assert pk.take_late("a", first[1]) is None  # hashing
    fresh = next(i for i in range(3) if i != p)
    assert pk.take_late("a", Block(fresh, 0, BL)) is None  # a piece never started is not started for it
    assert pk.take_late("a", Block(p, 3, BL)) is None  # malformed
    assert pk.stats()["partial"] == 0


@pytest.mark.parametrize(
    "block",
    [
        Block(5, 0, BL),
        Block(-1, 0, BL),
        Block(0, 3, BL),
        Block(0, 0, BL - 1),
        Block(0, 2 * BL, BL),
        Block(0, -BL, BL),
    ],
)
def test_malformed_block_is_not_recorded(block: Block) -> None:
    pk = make_picker("11", blocks=2)
    pk.peer_have_all("a")
    assert pk.block_received("a", block) == (False, [])
    pk.request_failed("a", block)
    assert len(pk.pick("a", 1)) == 1 and pk.stats()["partial"] == 1


def test_set_wanted_excludes_pieces() -> None:
    pk = make_picker("1111")
    pk.peer_have_all("a")
    pk.set_wanted(bytes([0, 1, 0, 1]))
    assert pk.missing() == 2
    assert sorted(pieces_of(pk.pick("a", 100))) == [1, 3]
    with pytest.raises(ValueError):
        pk.set_wanted(b"\x01")
    pk.set_wanted(None)
    assert pk.missing() == 4
    assert sorted(pieces_of(pk.pick("a", 100))) == [0, 2]


def test_complete_means_every_wanted_piece() -> None:
    pk = make_picker("0000")
    pk.set_wanted(bytes([1, 1, 0, 0]))
    pk.set_have(0)
    assert not pk.complete
    pk.set_have(1)
    assert pk.complete and pk.num_have == 2


# ---------------------------------------------------------------- availability bookkeeping


def test_have_all_peers_are_a_counter() -> None:
    pk = make_picker("0" * 1000)
    pk.peer_have_all("s1")
    pk.peer_have_all("s2")
    assert {pk.availability(i) for i in range(1000)} == {2}
    assert pk.stats()["seeds"] == 2
    pk.peer_bitfield("s3", bitfield([True] * 1000))  # a full bitfield is a seed too
    assert pk.stats()["seeds"] == 3
    pk.peer_gone("s1")
    assert pk.availability(500) == 2
    pk.peer_have_none("s2")
    assert pk.stats()["seeds"] == 1 and pk.availability(0) == 1 and not pk.peer_has("s2", 0)


def test_peer_becomes_seed_by_have_messages() -> None:
    pk = make_picker("000")
    for i in range(3):
        assert pk.stats()["seeds"] == 0 and not pk.peer_is_seed("p")
        pk.peer_have("p", i)
    assert pk.stats()["seeds"] == 1 and pk.peer_is_seed("p")
    assert [pk.availability(i) for i in range(3)] == [1, 1, 1]
    pk.peer_have("p", 1)  # idempotent
    assert pk.availability(1) == 1


@pytest.mark.parametrize("bits", [b"", b"\xff", b"\xff\xff\xff", b"\xff\x40", b"\x00\x01"])
def test_bad_bitfield_raises_wire_error(bits: bytes) -> None:
    pk = make_picker("0" * 9)  # 2 bytes, 7 spare bits
    with pytest.raises(WireError):
        pk.peer_bitfield("p", bits)


@given(st.binary(max_size=4), st.integers(-5, 40))
def test_remote_input_raises_only_remote_protocol_errors(bits: bytes, have: int) -> None:
    pk = make_picker("0" * 20)
    try:
        pk.peer_bitfield("p", bits)
    except RemoteProtocolError:
        pass
    try:
        pk.peer_have("p", have)
    except RemoteProtocolError:
        pass
    assert pk.peer_has("p", have) == (0 <= have < 20 and (pk.peer_has("p", have)))


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("bitfield"), st.integers(0, 3), st.lists(st.booleans(), min_size=13, max_size=13)),
        st.tuples(st.just("have"), st.integers(0, 3), st.integers(0, 12)),
        st.tuples(st.just("have_all"), st.integers(0, 3), st.none()),
        st.tuples(st.just("have_none"), st.integers(0, 3), st.none()),
        st.tuples(st.just("gone"), st.integers(0, 3), st.none()),
        st.tuples(st.just("set_have"), st.none(), st.integers(0, 12)),
        st.tuples(st.just("wanted"), st.none(), st.lists(st.booleans(), min_size=13, max_size=13)),
        st.tuples(st.just("pick"), st.integers(0, 3), st.integers(1, 5)),
        st.tuples(st.just("choke"), st.integers(0, 3), st.none()),
    ),
    max_size=40,
)


@given(OPS)
@settings(max_examples=200, deadline=None)
def test_is_interesting_and_availability_match_brute_force(ops: list[tuple[str, object, object]]) -> None:
    n = 13
    pk = PiecePicker(n, 2 * BL, n * 2 * BL, random.Random(0), block_len=BL)
    peers: dict[int, set[int]] = {}
    ours: set[int] = set()
    wanted = set(range(n))
    for op, peer, arg in ops:
        if op == "bitfield":
            assert isinstance(arg, list) and isinstance(peer, int)
            pk.peer_bitfield(peer, bitfield(arg))
            peers[peer] = {i for i, b in enumerate(arg) if b}
        elif op == "have":
            assert isinstance(arg, int) and isinstance(peer, int)
            pk.peer_have(peer, arg)
            peers.setdefault(peer, set()).add(arg)
        elif op == "have_all":
            assert isinstance(peer, int)
            pk.peer_have_all(peer)
            peers[peer] = set(range(n))
        elif op == "have_none":
            assert isinstance(peer, int)
            pk.peer_have_none(peer)
            peers[peer] = set()
        elif op == "gone":
            pk.peer_gone(peer)
            peers.pop(peer, None)  # type: ignore[call-overload]
        elif op == "set_have":
            assert isinstance(arg, int)
            pk.set_have(arg)
            ours.add(arg)
        elif op == "wanted":
            assert isinstance(arg, list)
            pk.set_wanted(bytes(arg))
            wanted = {i for i, b in enumerate(arg) if b}
        elif op == "choke":
            pk.peer_choked(peer)
        else:
            assert isinstance(arg, int)
            for b in pk.pick(peer, arg):
                assert b.index in peers[peer] and b.index in wanted and b.index not in ours  # type: ignore[index]
        for p in range(4):
            assert pk.is_interesting(p) == bool(peers.get(p, set()) & (wanted - ours))
            assert pk.peer_is_seed(p) == (len(peers.get(p, ())) == n)
        assert pk.stats()["seeds"] == sum(len(s) == n for s in peers.values())
        for i in range(n):
            assert pk.availability(i) == sum(i in s for s in peers.values())
        assert pk.missing() == len(wanted - ours)


@pytest.mark.parametrize(
    "replace",
    [
        lambda pk: pk.peer_bitfield("p", bitfield([False] * 13)),
        lambda pk: pk.peer_bitfield("p", bitfield([i == 3 for i in range(13)])),
        lambda pk: pk.peer_have_none("p"),
    ],
    ids=["empty-bitfield", "other-bitfield", "have-none"],
)
def test_replaced_availability_stops_picks_from_a_started_piece(
    replace: Callable[[PiecePicker], None],
) -> None:
    # Regression (found by the brute-force test): requests outstanding from a peer survive a new
    # bitfield / Have None, and the pieces they belong to used to be served first to that peer
    # without checking that it still has them.
    pk = make_picker("0" * 13, blocks=2)
    pk.peer_bitfield("p", bitfield([i == 12 for i in range(13)]))
    first = pk.pick("p", 1)
    assert first == [Block(12, 0, BL)]
    replace(pk)
    assert not pk.peer_has("p", 12) and pk.availability(12) == 0
    got = pk.pick("p", 5)
    assert all(pk.peer_has("p", b.index) for b in got)
    assert pieces_of(got) == ([3] if pk.peer_has("p", 3) else [])
    assert pk.outstanding("p") == first + got  # the old request is still the peer's to answer
    pk.peer_bitfield("q", bitfield([i == 12 for i in range(13)]))
    assert pk.pick("q", 5) == [Block(12, BL, BL)]  # the rest of piece 12 goes to a peer that has it


def test_have_all_transitions_keep_the_seed_counter_and_availability() -> None:
    pk = make_picker("1" * 9)  # bg0 has every piece via a full bitfield: one seed already
    seeds = pk.stats()["seeds"]
    pk.peer_have_all("s")
    pk.peer_have_all("s")  # repeated: still one seed
    assert pk.stats()["seeds"] == seeds + 1 and pk.availability(0) == 2
    pk.peer_have("s", 4)  # have after have all: no-op
    assert pk.availability(4) == 2 and pk.peer_is_seed("s")
    pk.peer_bitfield("s", bitfield([i < 2 for i in range(9)]))  # bitfield after have all
    assert not pk.peer_is_seed("s") and pk.stats()["seeds"] == seeds
    assert [pk.availability(i) for i in range(9)] == [2, 2] + [1] * 7
    assert all(pk.pick("s", 1)[0].index < 2 for _ in range(4))
    assert pk.pick("s", 1) == []
    pk.peer_have_none("s")  # have none after bitfield
    assert [pk.availability(i) for i in range(9)] == [1] * 9 and not pk.is_interesting("s")
    pk.peer_have_all("s")
    pk.peer_gone("s")  # gone after have all
    assert pk.stats()["seeds"] == seeds and [pk.availability(i) for i in range(9)] == [1] * 9
    for i in range(9):
        pk.peer_have("t", i)  # a seed by have messages, then replaced
    assert pk.stats()["seeds"] == seeds + 1
    pk.peer_have_none("t")
    assert pk.stats()["seeds"] == seeds and pk.availability(8) == 1


# ---------------------------------------------------------------- whole-download simulation


@pytest.mark.parametrize("seed", range(12))
def test_simulated_download_completes_with_consistent_bookkeeping(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randrange(1, 40)
    bpp = rng.randrange(1, 5)
    total = n * bpp * BL - rng.randrange(0, bpp * BL)
    total = max(total, (n - 1) * bpp * BL + 1)
    dup = rng.randrange(1, 4)
    pk = PiecePicker(
        n, bpp * BL, total, random.Random(seed), block_len=BL, random_first=2, endgame_dup_limit=dup
    )
    peers = list(range(6))
    for p in peers:
        if p == 0:
            pk.peer_have_all(p)
        else:
            pk.peer_bitfield(p, bitfield([rng.random() < 0.5 for _ in range(n)]))
    requested: dict[int, list[Block]] = {p: [] for p in peers}
    for _step in range(20000):
        if pk.complete:
            break
        p = rng.choice(peers)
        action = rng.random()
        if action < 0.5:
            got = pk.pick(p, rng.randrange(1, 6), allowed={0, 1} if rng.random() < 0.1 else None)
            for b in got:
                assert pk.peer_has(p, b.index) and not pk.have(b.index)
                assert b not in requested[p]
            requested[p].extend(got)
        elif action < 0.85 and requested[p]:
            b = requested[p].pop(rng.randrange(len(requested[p])))
            if b in pk.outstanding(p):
                expected, others = pk.block_received(p, b)
                assert expected
                for o in others:
                    assert isinstance(o, int)
                    requested[o].remove(b)
                if pk.piece_complete(b.index):
                    pk.piece_hashing(b.index)
                    if rng.random() < 0.1:
                        pk.piece_failed(b.index)
                    else:
                        pk.piece_passed(b.index)
        elif action < 0.9 and requested[p]:
            b = requested[p].pop()
            pk.request_failed(p, b)
        elif action < 0.92:
            released = pk.peer_choked(p)
            assert set(released) == set(requested[p])
            requested[p] = []
        elif action < 0.94:
            released = pk.peer_gone(p)
            assert set(released) == set(requested[p])
            requested[p] = []
            assert not pk.is_interesting(p)
            if p == 0:
                pk.peer_have_all(p)
            else:
                pk.peer_bitfield(p, bitfield([rng.random() < 0.5 for _ in range(n)]))
        for q in peers:
            out = pk.outstanding(q)
            assert len(out) == len(set(out)) == pk.num_outstanding(q)
            requested[q] = [b for b in requested[q] if b in out]  # blocks finished elsewhere
            assert set(out) == set(requested[q])
        counts = Counter(b for q in peers for b in pk.outstanding(q))
        assert all(c <= max(dup, 1) for c in counts.values())
    assert pk.complete
    assert pk.stats()["outstanding"] == 0


# ---------------------------------------------------------------- scale


def test_pick_serves_many_pieces_and_peers() -> None:
    n = 50_000
    rng = random.Random(7)
    pk = PiecePicker(n, 4 * 16384, n * 4 * 16384, random.Random(7))
    for k in range(50):
        if k % 5 == 0:
            pk.peer_have_all(k)
        else:
            pk.peer_bitfield(k, rng.randbytes((n + 7) // 8))
    pk.peer_bitfield("sparse", bitfield([i % 5000 == 1 for i in range(n)]))
    for i in range(10):
        pk.set_have(i)
    picked = 0
    for it in range(5000):
        peer: Hashable = "sparse" if it % 50 == 0 else it % 50
        for b in pk.pick(peer, 4):
            picked += 1
            pk.block_received(peer, b)
            if pk.piece_complete(b.index):
                pk.piece_hashing(b.index)
                pk.piece_passed(b.index)
    assert picked > 19_000


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 40)), max_size=60))
def test_take_blocks_is_is_requested_then_block_received(seed: int, steps: list[tuple[str, int]]) -> None:
    """The per-block fast path, a run of blocks at a time, leaves the picker exactly as the two-call path does
    block after block, in end game too, whatever the run holds (several pieces, repeats, bad blocks)."""
    rng = random.Random(seed)
    fast, slow = make_picker("12", blocks=3, dup=3), make_picker("12", blocks=3, dup=3)
    for pk in (fast, slow):
        for p in "abc":
            pk.peer_have_all(p)
    for peer, k in steps:
        if k < 10:  # ask for more blocks
            assert fast.pick(peer, 1 + k % 3) == slow.pick(peer, 1 + k % 3)
            continue
        out = slow.outstanding(peer)
        # blocks outstanding from this peer, or malformed / unrequested / received ones
        candidates = [*out, Block(0, 0, BL), Block(1, BL, BL), Block(0, 1, BL), Block(5, 0, BL), Block(1, 2 * BL, 7),
                      Block(-1, 0, BL), Block(0, -BL, BL)]
        run = [rng.choice(candidates) for _ in range(1 + k % 4)]
        got = fast.take_blocks(peer, [(b.index, b.begin, bytes(b.length)) for b in run])
        assert len(got) == len(run)
        for b, g in zip(run, got, strict=True):
            if slow.is_requested(peer, b):
                expected, others = slow.block_received(peer, b)
                assert expected and g is not None and sorted(g) == sorted(others)
            else:
                assert g is None
        for p in "abc":
            assert fast.outstanding(p) == slow.outstanding(p)
        assert fast.stats() == slow.stats()
        assert sorted(fast.partial_pieces()) == sorted(slow.partial_pieces())


def test_a_repeated_have_all_walks_no_piece() -> None:
    """A seed that says Have All again changes nothing: no availability pass over every piece (a flood of them
    cost 1.1 ms each at 65,536 pieces); its outstanding requests stay."""
    pk = make_picker("1111")
    pk.peer_have_all("s")
    out = pk.pick("s", 4)
    before = [pk.availability(i) for i in range(pk.num_pieces)]

    def walked(*_: object) -> None:
        raise AssertionError("a repeated Have All walked the pieces")

    pk._remove_availability = pk._reset_peer = walked  # type: ignore[method-assign,assignment]
    pk.peer_have_all("s")
    assert [pk.availability(i) for i in range(pk.num_pieces)] == before and pk.peer_is_seed("s")
    assert all(pk.is_requested("s", b) for b in out)
