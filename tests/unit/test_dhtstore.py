"""dhtstore.py: announce tokens, the announced-peer store and the per-IP query limiter (BEP 5, issue 12).

Time only moves by passing a later ``now``; randomness is a seeded random.Random.  The memory tests
measure the store with tracemalloc (the object kept alive) and check memory_bytes() against it, as
test_budget_accounting.py does for the budget terms.
"""

from __future__ import annotations

import gc
import ipaddress
import random
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minibt.dhtstore import (
    MAX_INFO_HASHES,
    MAX_PEERS_PER_HASH,
    PEER_TTL_S,
    TOKEN_ROTATE_S,
    TOKEN_VALID_S,
    PeerStore,
    QueryLimiter,
    TokenMint,
)
from minibt.urls import Addr

T0 = 1000.0
IH = bytes(range(20))
IH2 = bytes(range(1, 21))
IP = "198.51.100.7"
TOLERANCE = 3.0  # memory_bytes() may overstate (a worst case) but not by more than this


def v4(i: int, port: int = 6881) -> Addr:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", port


# ---------------------------------------------------------------------- TokenMint


def test_token_valid_right_away_and_after_one_rotation() -> None:
    mint = TokenMint(random.Random(1), now=T0)
    tok = mint.token(IP, IH, now=T0)
    assert len(tok) == 8
    assert mint.valid(tok, IP, IH, now=T0)
    assert mint.valid(tok, IP, IH, now=T0 + TOKEN_ROTATE_S + 1)  # one rotation: the previous secret
    assert mint.token(IP, IH, now=T0 + TOKEN_ROTATE_S + 1) != tok  # ... and a new one is handed out


@pytest.mark.parametrize("minted_after", [0.0, 1.0, 150.0, 299.0, 299.999, 300.0, 451.5, 1234.5])
def test_token_valid_at_least_a_rotation_and_refused_from_valid_s(minted_after: float) -> None:
    mint = TokenMint(random.Random(2), now=T0)
    minted = T0 + minted_after
    tok = mint.token(IP, IH, now=minted)
    for dt in (0.0, TOKEN_ROTATE_S / 2, TOKEN_ROTATE_S):
        assert mint.valid(tok, IP, IH, now=minted + dt)
    assert not mint.valid(tok, IP, IH, now=minted + TOKEN_VALID_S)
    assert not mint.valid(tok, IP, IH, now=minted + TOKEN_VALID_S + 1)


def test_token_refused_after_a_long_gap() -> None:
    mint = TokenMint(random.Random(3), now=T0)
    tok = mint.token(IP, IH, now=T0 + 10.0)
    assert not mint.valid(tok, IP, IH, now=T0 + 10 * TOKEN_ROTATE_S)  # both secrets replaced in one step


def test_token_bound_to_ip_and_info_hash() -> None:
    mint = TokenMint(random.Random(4), now=T0)
    tok = mint.token(IP, IH, now=T0)
    assert not mint.valid(tok, "198.51.100.8", IH, now=T0)
    assert not mint.valid(tok, IP, IH2, now=T0)
    assert not mint.valid(tok, "2001:db8::7", IH, now=T0)
    assert mint.token("198.51.100.8", IH, now=T0) != tok
    assert mint.token(IP, IH2, now=T0) != tok
    assert mint.token(IP, IH, now=T0) == tok  # the same within a period


def test_token_depends_on_the_secret() -> None:
    a = TokenMint(random.Random(5), now=T0).token(IP, IH, now=T0)
    b = TokenMint(random.Random(6), now=T0).token(IP, IH, now=T0)
    assert a != b


@pytest.mark.parametrize("bad", [b"", b"x", b"\0" * 7, b"\0" * 8, b"\0" * 9, b"\xff" * 20, b"\0" * 64])
def test_token_garbage_or_wrong_length_refused(bad: bytes) -> None:
    mint = TokenMint(random.Random(7), now=T0)
    tok = mint.token(IP, IH, now=T0)
    assert not mint.valid(bad, IP, IH, now=T0)
    assert not mint.valid(tok + b"\0", IP, IH, now=T0)
    assert not mint.valid(tok[:-1], IP, IH, now=T0)


def test_token_valid_refuses_non_bytes() -> None:
    mint = TokenMint(random.Random(8), now=T0)
    tok = mint.token(IP, IH, now=T0)
    assert not mint.valid(bytearray(tok), IP, IH, now=T0)  # type: ignore[arg-type]
    assert not mint.valid(tok.hex(), IP, IH, now=T0)  # type: ignore[arg-type]


def test_token_deterministic_with_seeded_rng() -> None:
    def run() -> list[bytes]:
        mint = TokenMint(random.Random(9), now=T0)
        return [mint.token(IP, IH, now=T0 + k * TOKEN_ROTATE_S) for k in range(4)]

    first = run()
    assert first == run()
    assert len(set(first)) == 4


# ---------------------------------------------------------------------- PeerStore


def test_store_add_get_roundtrip_ipv4_and_ipv6() -> None:
    store = PeerStore()
    peers: list[Addr] = [("192.0.2.1", 6881), ("2001:db8::1", 51413), ("::ffff:192.0.2.9", 1)]
    for p in peers:
        store.add(IH, p, now=T0)
    got = store.get(IH, random.Random(1), now=T0)
    # canonical text: an IPv4-mapped address comes back as IPv4
    assert sorted(got) == sorted([("192.0.2.1", 6881), ("2001:db8::1", 51413), ("192.0.2.9", 1)])
    assert store.stats() == {"info_hashes": 1, "peers": 3}
    assert store.get(IH2, random.Random(1), now=T0) == []


@pytest.mark.parametrize("addr", [("example.org", 6881), ("192.0.2.1", 0), ("192.0.2.1", 65536),
                                  ("192.0.2.1", -1), ("", 6881), ("1.2.3.4.5", 1)])
def test_store_ignores_addresses_without_compact_form(addr: Addr) -> None:
    store = PeerStore()
    store.add(IH, addr, now=T0)
    assert len(store) == 0
    assert store.stats() == {"info_hashes": 0, "peers": 0}


def test_store_reannounce_refreshes_without_duplicate() -> None:
    store = PeerStore()
    store.add(IH, v4(1), now=T0)
    store.add(IH, v4(1), now=T0 + PEER_TTL_S - 1)
    assert store.stats()["peers"] == 1
    assert store.get(IH, random.Random(1), now=T0 + PEER_TTL_S + 10) == [v4(1)]  # live from the re-announce


def test_store_per_hash_cap_drops_oldest_peer() -> None:
    store = PeerStore(max_peers=3)
    for i in range(3):
        store.add(IH, v4(i), now=T0 + i)
    store.add(IH, v4(0), now=T0 + 10)  # a re-announce: peer 0 is now the newest
    store.add(IH, v4(3), now=T0 + 11)  # full: the oldest (peer 1) goes
    assert sorted(store.get(IH, random.Random(1), now=T0 + 12)) == sorted([v4(0), v4(2), v4(3)])
    assert store.stats() == {"info_hashes": 1, "peers": 3}


def test_store_default_per_hash_cap() -> None:
    store = PeerStore()
    for i in range(MAX_PEERS_PER_HASH + 50):
        store.add(IH, v4(i), now=T0 + i)
    got = store.get(IH, random.Random(1), n=1000, now=T0 + 1000)
    assert sorted(got) == sorted(v4(i) for i in range(50, MAX_PEERS_PER_HASH + 50))


def test_store_hash_cap_drops_least_recently_announced() -> None:
    store = PeerStore(max_info_hashes=3)
    hashes = [bytes([i]) * 20 for i in range(4)]
    for i in range(3):
        store.add(hashes[i], v4(i), now=T0 + i)
    store.add(hashes[0], v4(9), now=T0 + 5)  # hash 0 announced again: hash 1 is now the least recent
    store.add(hashes[3], v4(3), now=T0 + 6)
    assert len(store) == 3
    assert store.get(hashes[1], random.Random(1), now=T0 + 7) == []
    assert sorted(store.get(hashes[0], random.Random(1), now=T0 + 7)) == [v4(0), v4(9)]
    assert store.stats() == {"info_hashes": 3, "peers": 4}


def test_store_100000_info_hashes_stay_at_the_cap() -> None:
    rng = random.Random(10)
    store = PeerStore()
    for i in range(100_000):
        store.add(rng.randbytes(20), v4(i), now=T0 + i * 0.001)
    assert len(store) == MAX_INFO_HASHES
    assert store.stats() == {"info_hashes": MAX_INFO_HASHES, "peers": MAX_INFO_HASHES}
    assert store.memory_bytes() < 2 * 1024 * 1024  # ~1.2 MB: a peer each


def test_store_memory_bytes_stops_growing_at_the_caps() -> None:
    store = PeerStore(max_info_hashes=20, max_peers=10)
    assert store.memory_bytes() < 4096
    sizes = []
    for i in range(4500):
        store.add(bytes([i // 15 % 37]) * 20, v4(i), now=T0 + i)  # 15 peers a hash, then the next
        sizes.append(store.memory_bytes())
    assert store.stats() == {"info_hashes": 20, "peers": 200}
    assert max(sizes) == sizes[-1] == sizes[1000]


def test_store_expire_drops_old_peers_and_empty_hashes() -> None:
    store = PeerStore()
    store.add(IH, v4(1), now=T0)
    store.add(IH, v4(2), now=T0 + 100)
    store.add(IH2, v4(3), now=T0 + 50)
    store.expire(T0 + PEER_TTL_S - 1)
    assert store.stats() == {"info_hashes": 2, "peers": 3}
    store.expire(T0 + PEER_TTL_S)  # exactly PEER_TTL_S after its announce: gone
    assert store.stats() == {"info_hashes": 2, "peers": 2}
    store.expire(T0 + 50 + PEER_TTL_S)
    assert len(store) == 1
    assert store.get(IH, random.Random(1), now=T0 + 50 + PEER_TTL_S) == [v4(2)]
    store.expire(T0 + 100 + PEER_TTL_S)
    assert len(store) == 0
    assert store.stats() == {"info_hashes": 0, "peers": 0}
    store.add(IH, v4(1), now=T0 + 10_000)  # usable after emptying
    assert store.stats() == {"info_hashes": 1, "peers": 1}


def test_store_get_returns_live_peers_only() -> None:
    store = PeerStore()
    for i in range(10):
        store.add(IH, v4(i), now=T0 + i * 100)
    now = T0 + PEER_TTL_S + 450  # peers 0..4 announced PEER_TTL_S or more ago
    got = store.get(IH, random.Random(1), now=now)
    assert sorted(got) == sorted(v4(i) for i in range(5, 10))
    assert store.stats()["peers"] == 10  # get() reads; expire() drops


def test_store_get_sample_size_and_randomness() -> None:
    store = PeerStore()
    for i in range(MAX_PEERS_PER_HASH):
        store.add(IH, v4(i), now=T0)
    rng = random.Random(11)
    a = store.get(IH, rng, n=50, now=T0 + 1)
    b = store.get(IH, rng, n=50, now=T0 + 1)
    assert len(a) == len(set(a)) == 50
    assert set(a) <= {v4(i) for i in range(MAX_PEERS_PER_HASH)}
    assert a != b  # a fresh sample each time
    assert store.get(IH, random.Random(11), n=50, now=T0 + 1) == a  # seeded: reproducible
    assert len(store.get(IH, rng, n=7, now=T0 + 1)) == 7
    assert len(store.get(IH, rng, n=500, now=T0 + 1)) == MAX_PEERS_PER_HASH
    assert store.get(IH, rng, n=0, now=T0 + 1) == []
    assert len(store.get(IH, rng, now=T0 + 1)) == 50  # the default n


def test_store_matches_a_brute_force_model() -> None:
    """Random announces and expiries against a reference that evicts by scanning times."""
    rng = random.Random(13)
    store = PeerStore(max_info_hashes=5, max_peers=4)
    model: dict[bytes, dict[Addr, float]] = {}
    hash_at: dict[bytes, float] = {}  # info-hash -> its last announce
    now = T0
    for _ in range(3000):
        now += rng.choice([0.5, 1.0, 60.0, 400.0])
        if rng.random() < 0.05:
            store.expire(now)
            for ih in list(model):
                model[ih] = {a: t for a, t in model[ih].items() if now - t < PEER_TTL_S}
                if not model[ih]:
                    del model[ih], hash_at[ih]
        else:
            ih, addr = bytes([rng.randrange(8)]) * 20, v4(rng.randrange(10))
            store.add(ih, addr, now=now)
            if ih not in model and len(model) == 5:
                lru = min(hash_at, key=hash_at.__getitem__)
                del model[lru], hash_at[lru]
            peers = model.setdefault(ih, {})
            if addr not in peers and len(peers) == 4:
                del peers[min(peers, key=peers.__getitem__)]
            peers[addr] = hash_at[ih] = now
        assert store.stats() == {"info_hashes": len(model), "peers": sum(map(len, model.values()))}
        for ih, peers in model.items():
            live = {a for a, t in peers.items() if now - t < PEER_TTL_S}
            assert set(store.get(ih, rng, n=100, now=now)) == live


def test_store_rejects_bad_caps() -> None:
    with pytest.raises(ValueError):
        PeerStore(max_info_hashes=0)
    with pytest.raises(ValueError):
        PeerStore(max_peers=0)


# ---------------------------------------------------------------------- PeerStore memory, measured


def traced(build: Callable[[], PeerStore]) -> tuple[int, PeerStore]:
    """Bytes allocated by ``build()`` and still held by the store it returns."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before, kept
    finally:
        tracemalloc.stop()


def fill(hashes: int, peers: int, addrs: list[Addr], *, rounds: int = 1) -> Callable[[], PeerStore]:
    """A store of ``hashes`` x ``peers`` (its per-hash cap); rounds > 1 announces fresh peers (the tables churn).

    The addresses are made before tracing (the store keeps them packed, not the tuples), each
    announce has its own ``now`` float (as each loop iteration does), and each info-hash is a bytes
    object of its own (as decoded from a datagram).
    """

    def build() -> PeerStore:
        store = PeerStore(max_info_hashes=hashes, max_peers=peers)
        k = 0
        for h in range(hashes):
            ih = h.to_bytes(20, "big")
            for _ in range(peers * rounds):
                store.add(ih, addrs[k % len(addrs)], now=T0 + k * 0.001)
                k += 1
        return store

    return build


def within(measured: int, estimate: int) -> None:
    assert measured <= estimate, f"measured {measured} B > memory_bytes() {estimate} B"
    assert estimate <= TOLERANCE * measured, f"memory_bytes() {estimate} B > {TOLERANCE} x measured {measured} B"


def test_memory_bytes_covers_1000_hashes_of_100_peers() -> None:
    addrs = [v4(i) for i in range(100_000)]
    measured, store = traced(fill(1000, 100, addrs))
    assert store.stats() == {"info_hashes": 1000, "peers": 100_000}
    within(measured, store.memory_bytes())


@pytest.mark.parametrize(("hashes", "peers", "rounds"), [
    (10, 100, 3),  # full tables churned by new peers: the worst case per peer
    (50, 11, 4),  # small tables, churned: the most slack per entry
    (2000, 1, 1),  # one peer per hash: the per-hash term dominates
])
def test_memory_bytes_covers_churned_ipv6_tables(hashes: int, peers: int, rounds: int) -> None:
    rng = random.Random(12)
    addrs: list[Addr] = [(str(ipaddress.IPv6Address(rng.getrandbits(128))), rng.randrange(1, 65536))
                         for _ in range(hashes * peers * rounds)]
    measured, store = traced(fill(hashes, peers, addrs, rounds=rounds))
    assert store.stats() == {"info_hashes": hashes, "peers": hashes * peers}
    within(measured, store.memory_bytes())


# ---------------------------------------------------------------------- QueryLimiter


def test_limiter_allows_a_burst_then_throttles() -> None:
    lim = QueryLimiter(rate_per_s=10.0, burst=50)
    assert all(lim.allow(IP, now=T0) for _ in range(50))
    assert not lim.allow(IP, now=T0)
    assert not lim.allow(IP, now=T0 + 0.05)  # half a token
    assert lim.allow("198.51.100.8", now=T0)  # per IP
    assert lim.stats() == {"ips": 2, "allowed": 51, "refused": 2}


def test_limiter_refills_with_time() -> None:
    lim = QueryLimiter(rate_per_s=10.0, burst=50)
    for _ in range(50):
        lim.allow(IP, now=T0)
    assert lim.allow(IP, now=T0 + 0.1)  # one token back
    assert not lim.allow(IP, now=T0 + 0.1)
    # steady state: rate_per_s queries a second
    allowed = sum(lim.allow(IP, now=T0 + 1 + i * 0.01) for i in range(1000))  # 10 s at 100 queries/s
    assert 100 <= allowed <= 110
    # idle long enough: the full burst again, never more
    assert sum(lim.allow(IP, now=T0 + 1000) for _ in range(80)) == 50


@given(st.lists(st.tuples(st.floats(0.0, 2.0), st.integers(1, 5)), max_size=200),
       st.floats(0.5, 20.0), st.integers(1, 10))
def test_limiter_never_exceeds_burst_plus_rate(steps: list[tuple[float, int]], rate: float, burst: int) -> None:
    # in any window [a, b] of the queries, at most burst + rate * (b - a) are allowed
    lim = QueryLimiter(rate_per_s=rate, burst=burst)
    now, times = T0, []
    for dt, count in steps:
        now += dt
        times += [now] * sum(lim.allow(IP, now=now) for _ in range(count))
    for i, a in enumerate(times):
        for j in range(i, len(times)):
            assert j - i + 1 <= burst + rate * (times[j] - a) + 1e-6


def test_limiter_clock_step_back_refills_nothing() -> None:
    lim = QueryLimiter(rate_per_s=1.0, burst=1)
    assert lim.allow(IP, now=T0)
    assert not lim.allow(IP, now=T0 - 100)
    assert not lim.allow(IP, now=T0 + 0.5)
    assert lim.allow(IP, now=T0 + 1.0)


def test_limiter_table_bounded_least_recent_forgotten() -> None:
    lim = QueryLimiter(rate_per_s=1.0, burst=2, max_ips=100)
    for ip in ("203.0.113.1", "203.0.113.2", "203.0.113.1", "203.0.113.2"):
        assert lim.allow(ip, now=T0)
    for i in range(98):
        lim.allow(f"10.0.0.{i}", now=T0)
        assert not lim.allow("203.0.113.1", now=T0)  # touched (even refused): the most recent, throttled
    assert len(lim) == 100
    lim.allow("10.0.1.0", now=T0)  # one more: .2, the least recently seen, is pushed out
    assert len(lim) == 100
    assert not lim.allow("203.0.113.1", now=T0)
    assert lim.allow("203.0.113.2", now=T0)  # forgotten: back with a full bucket (documented)
    for i in range(10_000):
        lim.allow(f"fd00::{i:x}", now=T0 + i)
    assert len(lim) == 100
    assert lim.stats()["ips"] == 100


def test_limiter_rejects_bad_parameters() -> None:
    for kwargs in ({"rate_per_s": 0.0}, {"rate_per_s": -1.0}, {"rate_per_s": float("inf")},
                   {"rate_per_s": float("nan")}, {"burst": 0}, {"max_ips": 0}):
        with pytest.raises(ValueError):
            QueryLimiter(**kwargs)
