"""BEP 5 routing table (minibt/routing.py): buckets, splits, node states, replacement, persistence."""

from __future__ import annotations

import ipaddress
import random

import bencode2
import pytest
from helpers import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from minibt.routing import (
    GOOD_FOR_S,
    MAX_FAILS,
    REFRESH_S,
    REPLACEMENTS,
    K,
    Node,
    NodeState,
    RoutingTable,
    distance,
    random_id_in_bucket,
)

TOP = 1 << 160
OWN0 = bytes(20)  # our id 0: the bucket around it is always the lowest one


def nid(n: int) -> bytes:
    return n.to_bytes(20, "big")


def addr(i: int) -> tuple[str, int]:
    return (f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 6881)


def far(i: int) -> bytes:
    """An id in the upper half of the space (top bit set): far from OWN0."""
    return nid((1 << 159) | (i + 1))


def table(clock: FakeClock, own: bytes = OWN0, seed: int = 1) -> RoutingTable:
    return RoutingTable(own, random.Random(seed), now=clock.now())


# ------------------------------------------------------------------------------------ basics


def test_distance_is_xor_as_int() -> None:
    assert distance(nid(0b1100), nid(0b1010)) == 0b0110
    assert distance(b"\xff" * 20, bytes(20)) == TOP - 1
    assert distance(far(3), far(3)) == 0


def test_random_id_in_bucket_stays_in_range() -> None:
    rng = random.Random(5)
    for lo, hi in ((0, TOP), (1 << 159, TOP), (16, 32), (7, 8)):
        for _ in range(50):
            v = int.from_bytes(random_id_in_bucket(lo, hi, rng), "big")
            assert lo <= v < hi
    with pytest.raises(ValueError):
        random_id_in_bucket(5, 5, rng)


def test_node_state_good_questionable_bad(clock: FakeClock) -> None:
    n = Node(far(1), addr(1), last_seen=clock.now(), last_reply=clock.now())
    assert n.state(clock.now()) is NodeState.GOOD
    assert n.state(clock.now() + GOOD_FOR_S) is NodeState.QUESTIONABLE
    # Having answered once, a query from it within 15 minutes keeps it good.
    n.last_seen = clock.now() + GOOD_FOR_S
    assert n.state(clock.now() + GOOD_FOR_S + 60) is NodeState.GOOD
    never = Node(far(2), addr(2), last_seen=clock.now(), last_reply=None)
    assert never.state(clock.now()) is NodeState.QUESTIONABLE
    n.fails = 1
    assert n.state(clock.now()) is NodeState.QUESTIONABLE
    n.fails = MAX_FAILS
    assert n.state(clock.now()) is NodeState.BAD


def test_heard_from_inserts_and_refreshes(clock: FakeClock) -> None:
    t = table(clock)
    assert t.heard_from(far(1), addr(1), now=clock.now(), replied=False) is None
    node = t.get(far(1))
    assert node is not None and node.last_reply is None
    assert node.state(clock.now()) is NodeState.QUESTIONABLE
    clock.advance(10)
    t.heard_from(far(1), addr(1), now=clock.now(), replied=True)
    assert node.last_reply == node.last_seen == clock.now()
    assert node.state(clock.now()) is NodeState.GOOD
    assert len(t) == 1 and t.nodes() == [node]


@pytest.mark.parametrize(
    "node_id, where",
    [
        (OWN0, addr(1)),  # our own id
        (far(1)[:19], addr(1)),  # not 20 bytes
        (far(1), ("10.0.0.1", 0)),  # port 0
        (far(1), ("10.0.0.1", 65536)),
        (far(1), ("0.0.0.0", 6881)),
        (far(1), ("::", 6881)),
        (far(1), ("224.0.0.1", 6881)),
        (far(1), ("255.255.255.255", 6881)),
        (far(1), ("ff02::1", 6881)),
        (far(1), ("fe80::1%eth0", 6881)),
        (far(1), ("router.example", 6881)),  # names are not node addresses
    ],
)
def test_unusable_nodes_are_not_inserted(clock: FakeClock, node_id: bytes, where: tuple[str, int]) -> None:
    t = table(clock)
    assert t.heard_from(node_id, where, now=clock.now(), replied=True) is None
    assert len(t) == 0 and t.stats(clock.now())["replacements"] == 0


def test_addresses_are_canonical(clock: FakeClock) -> None:
    t = table(clock)
    t.heard_from(far(1), ("2001:DB8:0:0::1", 6881), now=clock.now(), replied=True)
    t.heard_from(far(2), ("::ffff:192.0.2.7", 6881), now=clock.now(), replied=True)
    assert t.get(far(1)).addr == ("2001:db8::1", 6881)  # type: ignore[union-attr]
    assert t.get(far(2)).addr == ("192.0.2.7", 6881)  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------ splits


def test_full_bucket_splits_around_own_id_only(clock: FakeClock) -> None:
    t = table(clock)
    for i in range(K):
        t.heard_from(far(i), addr(i), now=clock.now(), replied=True)
    assert t.bucket_ranges() == [(0, TOP)]
    # A ninth node: the only bucket holds our id, so it splits; the far half is still full of
    # good nodes and does not hold our id, so the ninth far node waits in its cache.
    assert t.heard_from(far(K), addr(K), now=clock.now(), replied=True) is None
    assert t.bucket_ranges() == [(0, 1 << 159), (1 << 159, TOP)]
    assert len(t) == K and t.get(far(K)) is None
    assert t.stats(clock.now())["replacements"] == 1
    # More far nodes never split the far bucket.
    for i in range(K + 1, 4 * K):
        t.heard_from(far(i), addr(i), now=clock.now(), replied=True)
    assert t.bucket_ranges() == [(0, 1 << 159), (1 << 159, TOP)]
    assert len(t) == K and t.stats(clock.now())["replacements"] == REPLACEMENTS
    # Near nodes (sharing more and more leading bits with our id 0) split the near bucket again and again.
    for shift in range(150, 158):
        for j in range(2):
            i = 100 + shift * 2 + j
            t.heard_from(nid((1 << shift) | j), addr(i), now=clock.now(), replied=True)
    ranges = t.bucket_ranges()
    assert ranges[0][0] == 0 and ranges[-1][1] == TOP
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # contiguous cover
    for lo, hi in ranges:
        size = hi - lo
        assert size & (size - 1) == 0 and lo % size == 0  # aligned powers of two
    # Shifts 150..153 fit in the bucket around our id, each higher shift got a bucket of its own.
    assert [hi.bit_length() - 1 for _, hi in ranges] == [154, 155, 156, 157, 158, 159, 160]
    assert len(t) == K + 16 and t.stats(clock.now())["replacements"] == REPLACEMENTS
    assert t.stats(clock.now())["buckets"] == len(ranges)


def test_split_refills_halves_from_cache(clock: FakeClock) -> None:
    t = table(clock)
    near = [nid(1 << 100 | i) for i in range(K)]
    for i, n in enumerate(near):
        t.heard_from(n, addr(i), now=clock.now(), replied=True)
    t.heard_from(far(0), addr(50), now=clock.now(), replied=True)  # split: far half gets far(0)
    assert t.get(far(0)) is not None
    assert len(t) == K + 1


# ---------------------------------------------------------------- replacement cache and failures


def fill_far_bucket(t: RoutingTable, clock: FakeClock) -> list[bytes]:
    """Split once so that the far half [2**159, 2**160) is full of K good nodes."""
    ids = [far(i) for i in range(K)]
    for i, n in enumerate(ids):
        t.heard_from(n, addr(i), now=clock.now(), replied=True)
        clock.advance(1)
    t.heard_from(nid(5), addr(99), now=clock.now(), replied=True)  # a near node forces the split
    assert t.bucket_ranges() == [(0, 1 << 159), (1 << 159, TOP)]
    return ids


def test_full_bucket_caches_new_node_and_returns_ping_candidate(clock: FakeClock) -> None:
    t = table(clock)
    ids = fill_far_bucket(t, clock)
    # All good: nothing to ping, the newcomer waits in the cache.
    assert t.heard_from(far(100), addr(100), now=clock.now(), replied=False) is None
    assert t.get(far(100)) is None and t.stats(clock.now())["replacements"] == 1
    clock.advance(GOOD_FOR_S + 1)  # everyone questionable now
    t.heard_from(ids[0], addr(0), now=clock.now(), replied=True)  # ids[0] good again, most recently seen
    cand = t.heard_from(far(101), addr(101), now=clock.now(), replied=True)
    assert cand is not None and cand.node_id == ids[1]  # least recently seen questionable
    assert cand.state(clock.now()) is NodeState.QUESTIONABLE
    # The pinged node answers: the next questionable one becomes the candidate.
    t.heard_from(ids[1], addr(1), now=clock.now(), replied=True)
    cand = t.heard_from(far(102), addr(102), now=clock.now(), replied=True)
    assert cand is not None and cand.node_id == ids[2]
    assert t.stats(clock.now())["replacements"] == 3
    # The cache is bounded and keeps the most recent nodes.
    for i in range(200, 200 + 3 * REPLACEMENTS):
        t.heard_from(far(i), addr(i), now=clock.now(), replied=False)
    assert t.stats(clock.now())["replacements"] == REPLACEMENTS


def test_failed_twice_makes_node_bad_and_cache_replaces_it(clock: FakeClock) -> None:
    t = table(clock)
    ids = fill_far_bucket(t, clock)
    clock.advance(GOOD_FOR_S + 1)
    t.heard_from(far(100), addr(100), now=clock.now(), replied=True)
    cand = t.heard_from(far(101), addr(101), now=clock.now(), replied=False)
    assert cand is not None and cand.node_id == ids[0]
    t.failed(ids[0], now=clock.now())
    assert t.get(ids[0]) is cand and cand.state(clock.now()) is NodeState.QUESTIONABLE  # one more try
    t.failed(ids[0], now=clock.now())
    assert t.get(ids[0]) is None  # bad, and replaced
    # The cache entry that has answered us wins over the more recent one that has not.
    new = t.get(far(100))
    assert new is not None and new.state(clock.now()) is NodeState.GOOD
    assert len(t) == K + 1 and t.stats(clock.now())["replacements"] == 1  # K far nodes + the near one
    # The replacement counts as a change of the bucket.
    (target,) = t.stale_buckets(clock.now())  # only the near bucket, unchanged since the split
    assert int.from_bytes(target, "big") < 1 << 159


def test_bad_node_without_cache_stays_until_a_newcomer_replaces_it(clock: FakeClock) -> None:
    t = table(clock)
    ids = fill_far_bucket(t, clock)
    for _ in range(MAX_FAILS):
        t.failed(ids[3], now=clock.now())
    bad = t.get(ids[3])
    assert bad is not None and bad.state(clock.now()) is NodeState.BAD
    assert t.stats(clock.now())["bad"] == 1
    assert ids[3] not in [n.node_id for n in t.closest(far(3), 3 * K)]
    assert t.heard_from(far(100), addr(100), now=clock.now(), replied=False) is None
    assert t.get(ids[3]) is None and t.get(far(100)) is not None
    assert t.stats(clock.now())["replacements"] == 0


def test_answer_resets_failures(clock: FakeClock) -> None:
    t = table(clock)
    t.heard_from(far(1), addr(1), now=clock.now(), replied=True)
    t.failed(far(1), now=clock.now())
    t.heard_from(far(1), addr(1), now=clock.now(), replied=False)  # a query does not reset
    assert t.get(far(1)).fails == 1  # type: ignore[union-attr]
    t.heard_from(far(1), addr(1), now=clock.now(), replied=True)
    assert t.get(far(1)).fails == 0  # type: ignore[union-attr]
    t.failed(far(77), now=clock.now())  # unknown ids are ignored
    t.failed(b"short", now=clock.now())


def test_cached_node_failing_is_dropped_from_cache(clock: FakeClock) -> None:
    t = table(clock)
    fill_far_bucket(t, clock)
    t.heard_from(far(100), addr(100), now=clock.now(), replied=False)
    for _ in range(MAX_FAILS):
        t.failed(far(100), now=clock.now())
    assert t.stats(clock.now())["replacements"] == 0


def test_id_from_other_address_is_not_repointed(clock: FakeClock) -> None:
    t = table(clock)
    t.heard_from(far(1), addr(1), now=clock.now(), replied=True)
    clock.advance(GOOD_FOR_S + 1)
    assert t.heard_from(far(1), ("203.0.113.9", 6881), now=clock.now(), replied=True) is None
    node = t.get(far(1))
    assert node is not None and node.addr == addr(1)
    assert node.state(clock.now()) is NodeState.QUESTIONABLE  # the impostor's answer did not count
    # Same for a node waiting in a replacement cache.
    t2 = table(clock)
    fill_far_bucket(t2, clock)
    t2.heard_from(far(100), addr(100), now=clock.now(), replied=False)
    t2.heard_from(far(100), ("203.0.113.9", 6881), now=clock.now(), replied=True)
    for _ in range(MAX_FAILS):
        t2.failed(far(0), now=clock.now())
    replaced = t2.get(far(100))
    assert replaced is not None and replaced.addr == addr(100) and replaced.last_reply is None


# ------------------------------------------------------------------------------------- closest

ids20 = st.binary(min_size=20, max_size=20)


@settings(max_examples=150, deadline=None)
@given(
    own=ids20,
    others=st.lists(st.tuples(ids20, st.integers(0, 3)), max_size=120),
    target=ids20,
    n=st.integers(0, 20),
    idle=st.sampled_from([0, GOOD_FOR_S + 1]),
)
def test_closest_matches_brute_force(
    own: bytes, others: list[tuple[bytes, int]], target: bytes, n: int, idle: int
) -> None:
    clock = FakeClock()
    t = RoutingTable(own, random.Random(0), now=clock.now())
    for i, (node_id, fails) in enumerate(others):
        t.heard_from(node_id, addr(i), now=clock.now(), replied=bool(i % 3))
        for _ in range(fails):
            t.failed(node_id, now=clock.now())
    clock.advance(idle)
    t.heard_from(own, addr(9999), now=clock.now(), replied=True)  # refused, but moves the table's clock
    usable = [x for x in t.nodes() if x.state(clock.now()) is not NodeState.BAD]
    want = sorted(usable, key=lambda x: distance(x.node_id, target))[:n]
    assert t.closest(target, n) == want
    good = [x for x in usable if x.state(clock.now()) is NodeState.GOOD]
    assert t.closest(target, n, good_only=True) == sorted(good, key=lambda x: distance(x.node_id, target))[:n]


def test_closest_rejects_bad_target(clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        table(clock).closest(b"x" * 19)


# -------------------------------------------------------------------------------------- refresh


def test_stale_bucket_targets_lie_inside_their_buckets(clock: FakeClock) -> None:
    t = table(clock, own=random.Random(3).randbytes(20), seed=3)
    rng = random.Random(4)
    for i in range(400):
        t.heard_from(rng.randbytes(20), addr(i), now=clock.now(), replied=True)
    ranges = t.bucket_ranges()
    assert len(ranges) > 3
    assert t.stale_buckets(clock.now() + REFRESH_S - 1) == []
    clock.advance(REFRESH_S)
    # A bucket that hears an answer is fresh again.
    fresh = t.nodes()[0]
    t.heard_from(fresh.node_id, fresh.addr, now=clock.now(), replied=True)
    targets = t.stale_buckets(clock.now())
    assert len(targets) == len(ranges) - 1
    hit = []
    for target in targets:
        v = int.from_bytes(target, "big")
        (i,) = [j for j, (lo, hi) in enumerate(ranges) if lo <= v < hi]
        hit.append(i)
    assert len(set(hit)) == len(targets)  # one per bucket
    fresh_v = int.from_bytes(fresh.node_id, "big")
    assert not any(lo <= fresh_v < hi for lo, hi in (ranges[i] for i in hit))
    # Handed-out targets restart the buckets' clocks: no storm of refreshes on the next call.
    assert t.stale_buckets(clock.now()) == []
    assert len(t.stale_buckets(clock.now() + REFRESH_S)) == len(ranges)


def test_new_table_refreshes_its_one_bucket_after_refresh_s(clock: FakeClock) -> None:
    t = table(clock)
    assert t.stale_buckets(clock.now()) == []
    assert len(t.stale_buckets(clock.now() + REFRESH_S)) == 1


# ------------------------------------------------------------------------------------- bounds


def test_bounded_under_100k_random_inserts(clock: FakeClock) -> None:
    rng = random.Random(42)
    own = rng.randbytes(20)
    own_int = int.from_bytes(own, "big")
    t = RoutingTable(own, random.Random(7), now=clock.now())
    for i in range(100_000):
        if i % 2:
            node_id = rng.randbytes(20)
        else:  # ids close to ours, at every depth, so the table splits as far as it can
            node_id = (own_int ^ (rng.getrandbits(160) >> rng.randrange(160))).to_bytes(20, "big")
        t.heard_from(node_id, addr(i), now=clock.now(), replied=bool(i % 3))
        if i % 7 == 0:
            t.failed(node_id, now=clock.now())
        if i % 1000 == 0:
            clock.advance(60)
    s = t.stats(clock.now())
    assert s["buckets"] <= 160
    assert s["nodes"] == len(t) <= 160 * K
    assert s["replacements"] <= 160 * REPLACEMENTS
    assert s["nodes"] == s["good"] + s["questionable"] + s["bad"]
    assert s["buckets"] > 100  # near ids did split deep
    assert len({n.node_id for n in t.nodes()}) == len(t)
    for lo, hi in t.bucket_ranges():
        inside = [n for n in t.nodes() if lo <= int.from_bytes(n.node_id, "big") < hi]
        assert len(inside) <= K


# --------------------------------------------------------------------------------- persistence


def test_persistence_round_trip_ipv4_and_ipv6(clock: FakeClock) -> None:
    own = random.Random(9).randbytes(20)
    t = table(clock, own=own)
    t.heard_from(far(1), ("192.0.2.1", 6881), now=clock.now(), replied=True)
    t.heard_from(far(2), ("2001:db8::2", 51413), now=clock.now(), replied=True)
    t.heard_from(far(3), ("198.51.100.3", 1), now=clock.now(), replied=False)
    t.heard_from(far(4), ("2001:db8::4", 65535), now=clock.now(), replied=False)
    t.heard_from(far(5), ("192.0.2.5", 6881), now=clock.now(), replied=True)
    for _ in range(MAX_FAILS):
        t.failed(far(5), now=clock.now())  # bad nodes are not saved
    data = t.to_bytes()
    d = bencode2.bdecode(data)
    assert set(d) == {b"id", b"nodes", b"nodes6"}
    assert len(d[b"nodes"]) == 2 * 26 and len(d[b"nodes6"]) == 2 * 38
    got_id, nodes = RoutingTable.from_bytes(data, random.Random(1), now=clock.now())
    assert got_id == own
    assert sorted(nodes) == sorted(
        [
            (far(1), ("192.0.2.1", 6881)),
            (far(2), ("2001:db8::2", 51413)),
            (far(3), ("198.51.100.3", 1)),
            (far(4), ("2001:db8::4", 65535)),
        ]
    )
    # Restoring: a new table from the saved id, fed the saved nodes, saves the same again.
    t2 = RoutingTable(got_id, random.Random(2), now=clock.now())
    for node_id, a in nodes:
        t2.heard_from(node_id, a, now=clock.now(), replied=False)
    assert sorted(RoutingTable.from_bytes(t2.to_bytes(), random.Random(3), now=0.0)[1]) == sorted(nodes)


def test_persistence_of_empty_table(clock: FakeClock) -> None:
    t = table(clock)
    assert RoutingTable.from_bytes(t.to_bytes(), random.Random(0), now=0.0) == (OWN0, [])
    # Missing node lists read as empty.
    assert RoutingTable.from_bytes(bencode2.bencode({b"id": OWN0}), random.Random(0), now=0.0) == (OWN0, [])


def test_unusable_saved_entries_are_skipped(clock: FakeClock) -> None:
    own = far(0)
    entries = [
        far(1) + bytes([192, 0, 2, 1]) + (0).to_bytes(2, "big"),  # port 0
        own + bytes([192, 0, 2, 2]) + (6881).to_bytes(2, "big"),  # our own id
        far(3) + bytes([224, 0, 0, 1]) + (6881).to_bytes(2, "big"),  # multicast
        far(4) + bytes([192, 0, 2, 4]) + (6881).to_bytes(2, "big"),
        far(4) + bytes([192, 0, 2, 5]) + (6881).to_bytes(2, "big"),  # repeated id
    ]
    data = bencode2.bencode({b"id": own, b"nodes": b"".join(entries), b"x-future": [1, 2]})
    assert RoutingTable.from_bytes(data, random.Random(0), now=0.0) == (own, [(far(4), ("192.0.2.4", 6881))])


def _dat(**fields: object) -> bytes:
    return bytes(bencode2.bencode({k.encode(): v for k, v in fields.items()}))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"le",
        b"i1e",
        b"d2:id20:" + bytes(20) + b"e" + b"x",  # trailing data
        _dat(nodes=b""),  # no id
        _dat(id=bytes(19)),
        _dat(id=bytes(21)),
        _dat(id=5),
        _dat(id=bytes(20), nodes=bytes(25)),
        _dat(id=bytes(20), nodes=bytes(27)),
        _dat(id=bytes(20), nodes6=bytes(37)),
        _dat(id=bytes(20), nodes6=bytes(26)),
        _dat(id=bytes(20), nodes=[b"x"]),
        _dat(id=bytes(20), nodes6=7),
        _dat(id=bytes(20), nodes=bytes(26 * (160 * (K + REPLACEMENTS) + 1))),
        b"d2:id20:" + bytes(20) + b"1:x" + b"l" * 20 + b"e" * 20 + b"e",  # too deep
        b"d2:id20:" + bytes(20) + b"1:xl" + b"i1e" * 100 + b"ee",  # too many tokens
        b"x" * (4 << 20),  # too big
    ],
)
def test_malformed_dat_raises_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        RoutingTable.from_bytes(data, random.Random(0), now=0.0)


def test_from_bytes_rejects_non_bytes() -> None:
    with pytest.raises(ValueError):
        RoutingTable.from_bytes("d2:ide", random.Random(0), now=0.0)  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_from_bytes_on_garbage_raises_only_value_error(data: bytes) -> None:
    try:
        RoutingTable.from_bytes(data, random.Random(0), now=0.0)
    except ValueError:
        pass


values = st.one_of(st.binary(max_size=80), st.integers(-3, 70000), st.lists(st.binary(max_size=4), max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([b"id", b"nodes", b"nodes6", b"v"]), values, max_size=4))
def test_from_bytes_on_near_valid_dicts_raises_only_value_error(d: dict[bytes, object]) -> None:
    try:
        own, nodes = RoutingTable.from_bytes(bencode2.bencode(d), random.Random(0), now=0.0)
    except ValueError:
        return
    assert len(own) == 20
    for node_id, (host, port) in nodes:
        assert len(node_id) == 20 and node_id != own and 0 < port < 65536
        ipaddress.ip_address(host)


def test_constructor_checks_own_id(clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        RoutingTable(bytes(19), random.Random(0), now=clock.now())
