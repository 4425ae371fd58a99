"""BEP 40 priority and the dial-candidate pool (minibt/dialer.py)."""

from __future__ import annotations

import pytest
from helpers import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from minibt.dialer import CandidateConfig, CandidatePool, crc32c, peer_priority
from minibt.peer import PeerSource
from minibt.pex import PEX_MAX_PEERS_PER_SOURCE, PexFlag, PexPeer, PexReceived

# ------------------------------------------------------------------------------------------- BEP 40


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720 / CRC catalogue check value
    assert crc32c(b"") == 0


def test_bep40_example_different_16() -> None:
    # BEP 40: crc32-c(624C14007BD50000) = ec2d7224
    assert crc32c(bytes.fromhex("624C14007BD50000")) == 0xEC2D7224
    assert peer_priority(("123.213.32.10", 0), ("98.76.54.32", 0)) == 0xEC2D7224


def test_bep40_example_same_24() -> None:
    # BEP 40: crc32-c(7BD5200A7BD520EA) = 99568189
    assert crc32c(bytes.fromhex("7BD5200A7BD520EA")) == 0x99568189
    assert peer_priority(("123.213.32.10", 0), ("123.213.32.234", 0)) == 0x99568189


@pytest.mark.parametrize(
    ("a", "b", "hashed"),
    [
        # same IP: the two ports, sorted, 16-bit big-endian
        (("230.12.123.3", 0x4D2), ("230.12.123.3", 0x12C), "012c04d2"),
        # same /24: whole addresses
        (("230.12.123.1", 0x4D2), ("230.12.123.3", 0x12C), "e60c7b01e60c7b03"),
        # same /16: mask FF.FF.FF.55
        (("230.12.23.1", 0x4D2), ("230.12.123.3", 0x12C), "e60c1701e60c7b01"),
        # different /16: mask FF.FF.55.55
        (("230.120.23.1", 0x4D2), ("230.12.123.3", 0x12C), "e60c5101e6781501"),
    ],
)
def test_bep40_masks(a: tuple[str, int], b: tuple[str, int], hashed: str) -> None:
    assert peer_priority(a, b) == crc32c(bytes.fromhex(hashed))


def test_bep40_ipv6_masks_follow_the_bep_text() -> None:
    # different /48: FFFF:FFFF:FFFF:5555:5555:5555:5555:5555
    a, b = ("2001:db8:1::ffff", 1), ("2001:db8:2::ffff", 1)
    ma = bytes.fromhex("20010db80001" + "0000" * 4 + "5555")
    mb = bytes.fromhex("20010db80002" + "0000" * 4 + "5555")
    assert peer_priority(a, b) == crc32c(ma + mb)
    # same /48, differ in byte 6: FFFF:FFFF:FFFF:FF55:...
    a, b = ("2001:db8:1:ff00::ff", 1), ("2001:db8:1:ee00::ff", 1)
    ma = bytes.fromhex("20010db80001ff00" + "0000" * 3 + "0055")
    mb = bytes.fromhex("20010db80001ee00" + "0000" * 3 + "0055")
    assert peer_priority(a, b) == crc32c(mb + ma)


ips = st.one_of(
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.sampled_from(["::1", "2001:db8::1", "2001:db8:0:1::7", "fe80::1"]),
)


@given(ips, st.integers(1, 65535), ips, st.integers(1, 65535))
@settings(max_examples=200, deadline=None)
def test_priority_is_symmetric(ip1: str, p1: int, ip2: str, p2: int) -> None:
    assert peer_priority((ip1, p1), (ip2, p2)) == peer_priority((ip2, p2), (ip1, p1))
    assert 0 <= peer_priority((ip1, p1), (ip2, p2)) < 2**32


# ------------------------------------------------------------------------------------------- pool


def received(*addrs: tuple[str, int], flags: int = 0, dropped: tuple[tuple[str, int], ...] = ()) -> PexReceived:
    return PexReceived(tuple(PexPeer(ip, port, flags) for ip, port in addrs), dropped, (), ())


def test_dedupes_and_drops_own_address() -> None:
    pool = CandidatePool(own_addrs=[("10.0.0.1", 6881)])
    assert pool.add(("10.0.0.2", 1), source=PeerSource.TRACKER)
    assert not pool.add(("10.0.0.2", 1), source=PeerSource.DHT)
    assert not pool.add(("::ffff:10.0.0.1", 6881), source=PeerSource.TRACKER)
    assert not pool.add(("10.0.0.3", 0), source=PeerSource.TRACKER)
    assert len(pool) == 1 and ("10.0.0.2", 1) in pool
    pool.add_own_addr(("10.0.0.2", 1))
    assert len(pool) == 0
    assert pool.stats()["rejected_own"] == 1


def test_one_pex_source_cannot_fill_the_pool() -> None:
    pool = CandidatePool(config=CandidateConfig(max_candidates=40))
    cap = pool.stats()["max_per_pex_source"]
    assert cap == 10  # a quarter of the pool
    n = pool.add_pex(received(*[(f"10.{i}.0.1", 1) for i in range(30)]), via=("1.1.1.1", 1))
    assert n == cap
    n2 = pool.add_pex(received(*[(f"11.{i}.0.1", 1) for i in range(30)]), via=("2.2.2.2", 1))
    assert n2 == cap and len(pool) == 2 * cap
    assert pool.stats()["rejected_source_cap"] == 40


def test_default_per_source_cap_is_libtorrents_50() -> None:
    pool = CandidatePool()
    assert pool.stats()["max_per_pex_source"] == PEX_MAX_PEERS_PER_SOURCE


def test_pex_ignores_a_known_ip_with_another_port() -> None:
    pool = CandidatePool()
    pool.add(("8.8.8.8", 1), source=PeerSource.TRACKER)
    assert pool.add_pex(received(("8.8.8.8", 2), ("9.9.9.9", 1), ("9.9.9.9", 2)), via=("1.1.1.1", 1)) == 1
    assert pool.stats()["rejected_duplicate_ip"] == 2
    # loopback is exempt (local swarms), and the rule can be switched off
    assert pool.add_pex(received(("127.0.0.1", 7001), ("127.0.0.1", 7002)), via=("1.1.1.1", 1)) == 2
    loose = CandidatePool(config=CandidateConfig(one_port_per_ip=False))
    assert loose.add_pex(received(("9.9.9.9", 1), ("9.9.9.9", 2)), via=("1.1.1.1", 1)) == 2


def test_full_pool_evicts_from_the_largest_pex_source_for_other_sources() -> None:
    pool = CandidatePool(config=CandidateConfig(max_candidates=8, max_per_pex_source=5))
    pool.add_pex(received(*[(f"10.{i}.0.1", 1) for i in range(5)]), via=("1.1.1.1", 1))
    pool.add_pex(received(*[(f"11.{i}.0.1", 1) for i in range(3)]), via=("2.2.2.2", 1))
    assert len(pool) == 8
    assert not pool.add(("12.0.0.1", 1), source=PeerSource.PEX, via=("3.3.3.3", 1))
    assert pool.add(("13.0.0.1", 1), source=PeerSource.TRACKER)
    assert ("10.0.0.1", 1) not in pool  # oldest of the biggest source
    assert len(pool) == 8 and pool.stats()["evicted"] == 1


def test_pex_dropped_forgets_untried_candidates_of_that_source(clock: FakeClock) -> None:
    pool = CandidatePool()
    via = ("1.1.1.1", 1)
    pool.add_pex(received(("10.0.0.1", 1), ("10.0.0.2", 1)), via=via)
    pool.add(("10.0.0.3", 1), source=PeerSource.TRACKER)
    pool.add_pex(received(dropped=(("10.0.0.1", 1), ("10.0.0.3", 1))), via=("9.9.9.9", 9))
    assert len(pool) == 3  # another source cannot drop them
    pool.add_pex(received(dropped=(("10.0.0.1", 1), ("10.0.0.3", 1))), via=via)
    assert ("10.0.0.1", 1) not in pool and ("10.0.0.3", 1) in pool


def test_select_orders_by_bep40_priority(clock: FakeClock) -> None:
    me = ("123.213.32.10", 6881)
    pool = CandidatePool(client_addr=me)
    addrs = [(f"{a}.{b}.7.9", 6881) for a in (20, 60, 98, 140, 200) for b in (1, 76)]
    for a in addrs:
        pool.add(a, source=PeerSource.TRACKER)
    got = pool.select(len(addrs), now=clock.now())
    prios = [c.priority for c in got]
    assert prios == sorted(prios, reverse=True)
    assert prios == sorted((peer_priority(me, a) for a in addrs), reverse=True)


def test_select_puts_user_peers_first_and_holds_dialled_ones(clock: FakeClock) -> None:
    pool = CandidatePool()
    for i in range(5):
        pool.add((f"10.{i}.0.1", 1), source=PeerSource.TRACKER)
    pool.add(("10.9.0.1", 1), source=PeerSource.USER)
    first = pool.select(2, now=clock.now())
    assert first[0].addr == ("10.9.0.1", 1) and len(first) == 2
    rest = pool.select(10, now=clock.now())
    assert len(rest) == 4 and not {c.addr for c in rest} & {c.addr for c in first}
    assert pool.select(10, now=clock.now()) == []
    assert pool.next_retry_at() == pytest.approx(clock.now() + 60.0)


def test_select_spreads_a_batch_over_subnets(clock: FakeClock) -> None:
    pool = CandidatePool(config=CandidateConfig(one_port_per_ip=False))
    for i in range(6):
        pool.add((f"10.1.0.{i + 1}", 1), source=PeerSource.TRACKER)  # one /16
    pool.add(("10.2.0.1", 1), source=PeerSource.TRACKER)
    pool.add(("10.3.0.1", 1), source=PeerSource.TRACKER)
    batch = pool.select(3, now=clock.now())
    assert len({c.addr[0].rsplit(".", 2)[0] for c in batch}) == 3
    assert len(pool.select(10, now=clock.now())) == 5  # the rest still come out


def test_select_skips_seeds_when_we_seed_and_excluded(clock: FakeClock) -> None:
    pool = CandidatePool()
    pool.add_pex(received(("10.0.0.1", 1), flags=PexFlag.SEED), via=("1.1.1.1", 1))
    pool.add_pex(received(("10.1.0.1", 1), flags=PexFlag.UTP), via=("1.1.1.1", 1))
    pool.add(("10.2.0.1", 1), source=PeerSource.TRACKER)
    got = pool.select(10, now=clock.now(), we_are_seed=True, exclude={("10.2.0.1", 1)})
    assert [c.addr for c in got] == [("10.1.0.1", 1)]
    assert got[0].source is PeerSource.PEX and got[0].via == ("1.1.1.1", 1) and got[0].flags == PexFlag.UTP
    assert [c.addr for c in pool.select(10, now=clock.now())] != []  # not seeding: the seed is fine


def test_failed_dials_back_off_and_are_forgotten(clock: FakeClock) -> None:
    pool = CandidatePool()
    a, u = ("10.0.0.1", 1), ("10.0.0.2", 1)
    pool.add(a, source=PeerSource.TRACKER)
    pool.add(u, source=PeerSource.USER)
    for _ in range(5):
        pool.select(10, now=clock.now())
        pool.connect_failed(a, now=clock.now())
        pool.connect_failed(u, now=clock.now())
        clock.advance(10_000)
    assert a not in pool and u in pool  # user-given peers are never forgotten
    assert pool.stats()["forgotten"] == 1
    pool.connect_failed(u, now=clock.now())
    c = pool.get(u)
    assert c is not None and c.fails == 6
    pool.connect_succeeded(u)
    c = pool.get(u)
    assert c is not None and c.fails == 0


def test_backoff_grows(clock: FakeClock) -> None:
    pool = CandidatePool()
    a = ("10.0.0.1", 1)
    pool.add(a, source=PeerSource.TRACKER)
    pool.connect_failed(a, now=clock.now())
    assert pool.select(1, now=clock.now() + 29) == []
    assert len(pool.select(1, now=clock.now() + 30)) == 1
    pool.connect_failed(a, now=clock.now())
    assert pool.next_retry_at() == pytest.approx(clock.now() + 60)


def test_discard_ip_and_client_addr_change() -> None:
    pool = CandidatePool()
    pool.add(("10.0.0.1", 1), source=PeerSource.TRACKER)
    pool.add(("10.0.0.1", 2), source=PeerSource.TRACKER)
    pool.add(("10.0.0.2", 1), source=PeerSource.TRACKER)
    assert pool.discard_ip("10.0.0.1") == 2 and len(pool) == 1
    pool.set_client_addr(("10.0.0.9", 5))
    c = pool.get(("10.0.0.2", 1))
    assert c is not None and c.priority == peer_priority(("10.0.0.9", 5), ("10.0.0.2", 1))


def test_host_names_are_kept_without_priority(clock: FakeClock) -> None:
    pool = CandidatePool()
    assert pool.add(("Seed.Example", 6881), source=PeerSource.USER)
    (c,) = pool.select(1, now=clock.now())
    assert c.addr == ("seed.example", 6881) and c.priority == 0
