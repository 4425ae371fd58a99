"""BEP 11 ut_pex codec, sender and receiver (minibt/pex.py)."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence

import pytest
from helpers import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from minibt import bencode
from minibt.errors import CloseReason, LocalProtocolError, PexError
from minibt.pex import (
    PEX_FLOOD_MAX_MESSAGES,
    PEX_MAX_DELTA,
    PEX_MAX_INITIAL_ADDED,
    PEX_MAX_PAYLOAD_BYTES,
    PEX_MAX_PEERS_PER_SOURCE,
    PEX_MIN_GAP_S,
    PEX_MIN_INTERVAL_S,
    PexConfig,
    PexFlag,
    PexMessage,
    PexPeer,
    PexReceiver,
    PexSender,
    canonical_ip,
    decode_pex,
    encode_pex,
    parse_peer_addr,
)

# ------------------------------------------------------------------------------------------- codec

# BEP 11 payload written by hand: two IPv4 contacts with flags, one dropped, one IPv6 contact.
VECTOR = (
    b"d5:added12:\x01\x02\x03\x04\x1a\xe1\x0a\x00\x00\x01\x00\x50"
    b"7:added.f2:\x12\x01"
    b"6:added618:\x20\x01\x0d\xb8" + bytes(11) + b"\x01\x1a\xe2"
    b"8:added6.f1:\x04"
    b"7:dropped6:\xc0\xa8\x01\x01\x04\xd2"
    b"e"
)
VECTOR_MSG = PexMessage(
    added=(
        PexPeer("1.2.3.4", 6881, PexFlag.SEED | PexFlag.REACHABLE),
        PexPeer("10.0.0.1", 80, PexFlag.ENCRYPTION),
    ),
    dropped=(("192.168.1.1", 1234),),
    added6=(PexPeer("2001:db8::1", 6882, PexFlag.UTP),),
)


def test_decode_bep11_vector() -> None:
    assert decode_pex(VECTOR) == VECTOR_MSG


def test_encode_is_canonical_for_the_vector() -> None:
    assert encode_pex(VECTOR_MSG) == VECTOR
    assert encode_pex(decode_pex(VECTOR)) == VECTOR


def test_flag_constants_match_bep11() -> None:
    assert [int(f) for f in PexFlag] == [0x01, 0x02, 0x04, 0x08, 0x10]


def test_flags_ignored_when_count_differs() -> None:
    d = {b"added": bytes([1, 2, 3, 4, 0, 1]) * 2, b"added.f": b"\x02"}
    msg = decode_pex(bencode.encode(d))
    assert [p.flags for p in msg.added] == [0, 0]
    assert [p.addr for p in msg.added] == [("1.2.3.4", 1), ("1.2.3.4", 1)]


def test_flags_ignored_when_not_a_string() -> None:
    msg = decode_pex(bencode.encode({b"added": bytes([1, 2, 3, 4, 0, 1]), b"added.f": 7}))
    assert msg.added == (PexPeer("1.2.3.4", 1, 0),)


def test_empty_message_encodes_one_field() -> None:
    # BEP 11: "Messages must contain at least one of the following fields"
    payload = encode_pex(PexMessage())
    assert bencode.decode(payload) == {b"added": b""}
    assert decode_pex(payload).is_empty()


def test_unknown_keys_are_ignored() -> None:
    payload = bencode.encode({b"added": bytes([9, 9, 9, 9, 0, 9]), b"zz": [1, {b"a": b"b"}]})
    assert decode_pex(payload).added == (PexPeer("9.9.9.9", 9),)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"le",
        b"i3e",
        b"d5:added5:abcdee",  # not a multiple of 6
        b"d6:added67:abcdefge",  # not a multiple of 18
        b"d7:dropped1:xe",
        b"d8:dropped65:abcdee",
        b"d5:addedi1ee",  # not a string
        b"d5:added0:",  # truncated
        b"d5:added0:e trailing",
    ],
)
def test_malformed_payload_raises_pex_error(payload: bytes) -> None:
    with pytest.raises(PexError) as ei:
        decode_pex(payload)
    assert ei.value.reason is CloseReason.MALFORMED_MESSAGE


def test_size_cap_checked_before_decoding() -> None:
    # Valid bencode just over the cap: refused by size, not parsed.
    n = PEX_MAX_PAYLOAD_BYTES - 20
    big = b"d7:dropped" + str(n).encode() + b":" + bytes(n) + b"e"
    huge = big + b" " * (PEX_MAX_PAYLOAD_BYTES + 1 - len(big))
    with pytest.raises(PexError) as ei:
        decode_pex(huge)
    assert ei.value.reason is CloseReason.MESSAGE_TOO_LARGE
    with pytest.raises(PexError) as ei:
        decode_pex(b"d5:added0:e", max_payload_bytes=5)
    assert ei.value.reason is CloseReason.MESSAGE_TOO_LARGE


def test_max_entries_bounds_the_objects_made() -> None:
    blob = b"".join(bytes([10, 0, i // 256, i % 256, 0, 1]) for i in range(1000))
    flags = bytes([2]) * 1000
    msg = decode_pex(bencode.encode({b"added": blob, b"added.f": flags, b"dropped": blob}), max_entries=7)
    assert len(msg.added) == 7 and len(msg.dropped) == 7
    assert all(p.flags == 2 for p in msg.added)  # the flag count matched the full list


def test_encode_rejects_bad_entries() -> None:
    for msg in (
        PexMessage(added=(PexPeer("::1", 1),)),  # v6 in the v4 field
        PexMessage(added6=(PexPeer("1.2.3.4", 1),)),
        PexMessage(added=(PexPeer("1.2.3.4", 70000),)),
        PexMessage(added=(PexPeer("1.2.3.4", 1, 256),)),
        PexMessage(dropped=(("nonsense", 1),)),
    ):
        with pytest.raises(LocalProtocolError):
            encode_pex(msg)


ipv4 = st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)).map(
    lambda t: ".".join(map(str, t))
)
ipv6 = st.binary(min_size=16, max_size=16).map(lambda b: ipaddress.IPv6Address(b).compressed)

ports = st.integers(0, 65535)
flags = st.integers(0, 255)
messages = st.builds(
    PexMessage,
    added=st.lists(st.builds(PexPeer, ipv4, ports, flags), max_size=8).map(tuple),
    dropped=st.lists(st.tuples(ipv4, ports), max_size=8).map(tuple),
    added6=st.lists(st.builds(PexPeer, ipv6, ports, flags), max_size=8).map(tuple),
    dropped6=st.lists(st.tuples(ipv6, ports), max_size=8).map(tuple),
)


@given(messages)
@settings(max_examples=100, deadline=None)
def test_round_trip(msg: PexMessage) -> None:
    payload = encode_pex(msg)
    assert decode_pex(payload) == msg
    assert encode_pex(decode_pex(payload)) == payload


@given(st.binary(max_size=300))
@settings(max_examples=400, deadline=None)
def test_garbage_only_raises_pex_error(data: bytes) -> None:
    try:
        decode_pex(data)
    except PexError:
        pass


field_values = st.one_of(st.binary(max_size=40), st.integers(-5, 5), st.lists(st.integers(0, 3), max_size=3))


@given(st.dictionaries(st.sampled_from([b"added", b"added.f", b"added6", b"added6.f", b"dropped", b"dropped6", b"x"]), field_values))
@settings(max_examples=200, deadline=None)
def test_structured_garbage_only_raises_pex_error(d: dict[bytes, object]) -> None:
    try:
        msg = decode_pex(bencode.encode(d))
    except PexError:
        return
    for p in msg.added + msg.added6:
        assert 0 <= p.flags <= 255 and 0 <= p.port <= 65535


@given(messages, st.binary(max_size=20))
@settings(max_examples=100, deadline=None)
def test_mutated_payloads_only_raise_pex_error(msg: PexMessage, junk: bytes) -> None:
    payload = bytearray(encode_pex(msg))
    r = random.Random(len(junk))
    for b in junk:
        payload[r.randrange(len(payload))] = b
    try:
        decode_pex(bytes(payload))
    except PexError:
        pass


# ------------------------------------------------------------------------------------------- helpers


def test_parse_peer_addr_forms() -> None:
    assert parse_peer_addr("127.0.0.1:6889") == ("127.0.0.1", 6889)
    assert parse_peer_addr("[2001:DB8::1]:80") == ("2001:db8::1", 80)
    assert parse_peer_addr("[::ffff:1.2.3.4]:5") == ("1.2.3.4", 5)
    for bad in ("1.2.3.4", "1.2.3.4:0", "1.2.3.4:65536", "::1:80", "[::1]80", "host:80", "1.2.3.4:x"):
        with pytest.raises(ValueError):
            parse_peer_addr(bad)


def test_canonical_ip() -> None:
    assert canonical_ip("::FFFF:10.0.0.1") == "10.0.0.1"
    assert canonical_ip("2001:0db8:0000::0001") == "2001:db8::1"


# ------------------------------------------------------------------------------------------- sender


def addrs(n: int, base: int = 1) -> dict[tuple[str, int], int]:
    return {(f"10.{(base + i) // 250}.{(base + i) % 250}.1", 6881): 0 for i in range(n)}


def decoded(payload: bytes | None) -> PexMessage:
    assert payload is not None
    return decode_pex(payload)


def test_first_message_is_the_full_list_then_diffs(clock: FakeClock) -> None:
    s = PexSender()
    conn = addrs(3)
    first = decoded(s.poll(conn, now=clock.now()))
    assert {p.addr for p in first.added} == set(conn)
    assert first.dropped == ()
    # nothing new: nothing sent, even once allowed
    clock.advance(PEX_MIN_INTERVAL_S)
    assert s.poll(conn, now=clock.now()) is None
    gone = next(iter(conn))
    conn2 = {a: f for a, f in conn.items() if a != gone} | {("10.9.9.9", 1): PexFlag.SEED}
    clock.advance(PEX_MIN_INTERVAL_S)
    msg = decoded(s.poll(conn2, now=clock.now()))
    assert msg.added == (PexPeer("10.9.9.9", 1, PexFlag.SEED),)
    assert msg.dropped == (gone,)


def test_never_more_than_one_message_per_interval(clock: FakeClock) -> None:
    s = PexSender()
    assert s.poll(addrs(1), now=clock.now()) is not None
    t0 = clock.now()
    clock.advance(PEX_MIN_INTERVAL_S - 0.001)
    assert s.poll(addrs(5), now=clock.now()) is None
    assert s.next_deadline() == pytest.approx(t0 + PEX_MIN_INTERVAL_S)
    clock.jump_to(t0 + PEX_MIN_INTERVAL_S)
    assert s.poll(addrs(5), now=clock.now()) is not None


def test_idle_sender_rechecks_and_never_sends_empty(clock: FakeClock) -> None:
    s = PexSender()
    assert s.poll({}, now=clock.now()) is None
    deadline = s.next_deadline()
    assert deadline is not None and deadline > clock.now()
    for _ in range(20):
        clock.jump_to(max(clock.now(), s.next_deadline() or clock.now()))
        assert s.poll({}, now=clock.now()) is None
    assert s.stats()["messages_sent"] == 0


def test_deltas_capped_at_50_and_initial_at_cap(clock: FakeClock) -> None:
    s = PexSender()
    big = addrs(300)
    first = decoded(s.poll(big, now=clock.now()))
    assert len(first.added) == PEX_MAX_INITIAL_ADDED
    sent = {p.addr for p in first.added}
    while True:
        clock.advance(PEX_MIN_INTERVAL_S)
        payload = s.poll(big, now=clock.now())
        if payload is None:
            break
        msg = decode_pex(payload)
        assert len(msg.added) + len(msg.added6) <= PEX_MAX_DELTA
        sent |= {p.addr for p in msg.added}
    assert sent == set(big)
    # all of them disconnect: drops come 50 at a time, only for what was added
    dropped: set[tuple[str, int]] = set()
    while True:
        clock.advance(PEX_MIN_INTERVAL_S)
        payload = s.poll({}, now=clock.now())
        if payload is None:
            break
        msg = decode_pex(payload)
        assert len(msg.dropped) <= PEX_MAX_DELTA and not msg.added
        dropped |= set(msg.dropped)
    assert dropped == set(big)


def test_dropped_only_for_what_was_advertised(clock: FakeClock) -> None:
    s = PexSender()
    s.poll(addrs(2), now=clock.now())
    clock.advance(PEX_MIN_INTERVAL_S)
    # a peer that came and went between two messages is neither added nor dropped
    assert s.poll(addrs(2), now=clock.now()) is None
    s.drop_peer("99.9.9.9:1")  # never advertised
    clock.advance(PEX_MIN_INTERVAL_S)
    assert s.poll(addrs(2), now=clock.now()) is None


def test_never_added_and_dropped_in_one_message(clock: FakeClock) -> None:
    r = random.Random(7)
    s = PexSender()
    universe = list(addrs(120))
    advertised: set[tuple[str, int]] = set()
    for _ in range(40):
        conn = {a: 0 for a in universe if r.random() < 0.5}
        payload = s.poll(conn, now=clock.now())
        if payload is not None:
            msg = decode_pex(payload)
            added = {p.addr for p in msg.added}
            dropped = set(msg.dropped)
            assert not added & dropped
            assert dropped <= advertised
            assert not added & advertised  # no duplicates
            assert not msg.is_empty()
            advertised = (advertised | added) - dropped
        clock.advance(PEX_MIN_INTERVAL_S)


def test_peer_itself_is_never_advertised_to_it(clock: FakeClock) -> None:
    me = ("10.0.0.7", 6881)
    s = PexSender(peer_addr=me)
    msg = decoded(s.poll({me: 0, ("10.0.0.8", 1): 0}, now=clock.now()))
    assert [p.addr for p in msg.added] == [("10.0.0.8", 1)]


def test_ipv6_entries_go_in_added6(clock: FakeClock) -> None:
    s = PexSender()
    msg = decoded(s.poll({("2001:db8::5", 7): PexFlag.UTP, ("1.1.1.1", 8): 0}, now=clock.now()))
    assert msg.added6 == (PexPeer("2001:db8::5", 7, PexFlag.UTP),)
    assert msg.added == (PexPeer("1.1.1.1", 8, 0),)
    clock.advance(PEX_MIN_INTERVAL_S)
    msg = decoded(s.poll({("1.1.1.1", 8): 0}, now=clock.now()))
    assert msg.dropped6 == (("2001:db8::5", 7),) and msg.dropped == ()


def test_manual_add_and_drop_peer(clock: FakeClock) -> None:
    s = PexSender()
    s.add_peer("127.0.0.1:6889", PexFlag.SEED)
    s.add_peer(("2001:db8::9", 9))
    msg = decoded(s.poll({}, now=clock.now()))
    assert msg.added == (PexPeer("127.0.0.1", 6889, PexFlag.SEED),)
    assert msg.added6 == (PexPeer("2001:db8::9", 9),)
    # manual entries stay advertised although they are not connected
    clock.advance(PEX_MIN_INTERVAL_S)
    assert s.poll({}, now=clock.now()) is None
    s.drop_peer("127.0.0.1:6889")
    clock.advance(PEX_MIN_INTERVAL_S)
    msg = decoded(s.poll({("127.0.0.1", 6889): 0}, now=clock.now()))
    assert msg.dropped == (("127.0.0.1", 6889),) and msg.added == ()  # withheld although connected
    for bad in ("nope", "1.2.3.4:0", ("1.2.3.4", "80")):
        with pytest.raises(LocalProtocolError):
            s.add_peer(bad)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        s.add_peer("1.2.3.4:1", 300)


def test_stop_start_and_reset(clock: FakeClock) -> None:
    s = PexSender(started=False)
    assert s.poll(addrs(2), now=clock.now()) is None and s.next_deadline() is None
    s.start()
    assert s.poll(addrs(2), now=clock.now()) is not None
    s.stop()
    clock.advance(PEX_MIN_INTERVAL_S)
    assert s.poll(addrs(3), now=clock.now()) is None and s.next_deadline() is None
    s.start()
    msg = decoded(s.poll(addrs(3), now=clock.now()))
    assert len(msg.added) == 1  # stop() kept what was advertised


def test_reset_keeps_the_rate_limit_and_resends_the_full_list(clock: FakeClock) -> None:
    s = PexSender()
    s.poll(addrs(2), now=clock.now())
    s.reset()
    assert s.next_deadline() is None and s.stats()["advertised"] == 0
    s.start()
    clock.advance(1.0)
    assert s.poll(addrs(2), now=clock.now()) is None  # the peer's limit still applies
    clock.advance(PEX_MIN_INTERVAL_S)
    msg = decoded(s.poll(addrs(2), now=clock.now()))
    assert len(msg.added) == 2


def test_explicit_send_accepts_tuples_and_dicts(clock: FakeClock) -> None:
    s = PexSender()
    payload = s.send(
        [("1.2.3.4", 6881), {"ip": "5.6.7.8", "port": 6882, "flags": 2}],
        [],
        [("2001:db8::1", 1)],
        now=clock.now(),
    )
    msg = decode_pex(payload)
    assert msg.added == (PexPeer("1.2.3.4", 6881, 0), PexPeer("5.6.7.8", 6882, 2))
    assert msg.added6 == (PexPeer("2001:db8::1", 1, 0),)
    clock.advance(PEX_MIN_INTERVAL_S)
    msg = decode_pex(s.send(dropped=[{"ip": "5.6.7.8", "port": 6882}], now=clock.now()))
    assert msg.dropped == (("5.6.7.8", 6882),)


def test_explicit_send_respects_the_peer_limits(clock: FakeClock) -> None:
    s = PexSender()
    s.send([("1.2.3.4", 1)], now=clock.now())
    clock.advance(PEX_MIN_INTERVAL_S - 1)
    with pytest.raises(LocalProtocolError) as ei:
        s.send([("1.2.3.5", 1)], now=clock.now())
    assert "at most one" in str(ei.value)
    assert s.poll(addrs(4), now=clock.now()) is None  # automatic messages share the limit
    clock.advance(1)
    with pytest.raises(LocalProtocolError):
        s.send(now=clock.now())  # empty
    with pytest.raises(LocalProtocolError):
        s.send([("1.2.3.6", 1)], [("1.2.3.6", 1)], now=clock.now())
    with pytest.raises(LocalProtocolError):
        s.send(list(addrs(PEX_MAX_DELTA + 1)), now=clock.now())
    with pytest.raises(LocalProtocolError):
        s.send([("1.2.3.4", 1, 999)], now=clock.now())
    s.send(list(addrs(PEX_MAX_DELTA)), now=clock.now())


def test_explicit_send_counts_as_the_initial_message(clock: FakeClock) -> None:
    s = PexSender()
    s.send(list(addrs(PEX_MAX_INITIAL_ADDED)), now=clock.now())  # the initial list may be longer
    clock.advance(PEX_MIN_INTERVAL_S)
    assert s.poll(addrs(PEX_MAX_INITIAL_ADDED), now=clock.now()) is None  # already advertised
    clock.advance(PEX_MIN_INTERVAL_S)
    msg = decoded(s.poll(addrs(PEX_MAX_INITIAL_ADDED + 80), now=clock.now()))
    assert len(msg.added) == PEX_MAX_DELTA and msg.dropped == ()


def test_test_interval_is_configurable(clock: FakeClock) -> None:
    s = PexSender(config=PexConfig(interval_s=10.0))
    s.poll(addrs(1), now=clock.now())
    clock.advance(10.0)
    assert s.poll(addrs(2), now=clock.now()) is not None


# ------------------------------------------------------------------------------------------- receiver


def pex_payload(added: Sequence[tuple[str, int]] = (), dropped: Sequence[tuple[str, int]] = (), f: int = 0) -> bytes:
    return encode_pex(
        PexMessage(added=tuple(PexPeer(ip, port, f) for ip, port in added), dropped=tuple(dropped))
    )


def test_receiver_reports_new_addresses_with_flags(clock: FakeClock) -> None:
    r = PexReceiver()
    got = r.receive(encode_pex(VECTOR_MSG), now=clock.now())
    assert got.added == VECTOR_MSG.added and got.added6 == VECTOR_MSG.added6
    assert got.dropped == ()  # 192.168.1.1 was never learned from this peer
    clock.advance(PEX_MIN_INTERVAL_S)
    got = r.receive(pex_payload(dropped=[("1.2.3.4", 6881)]), now=clock.now())
    assert got.dropped == (("1.2.3.4", 6881),)
    assert set(r.learned()) == {("10.0.0.1", 80), ("2001:db8::1", 6882)}


def test_receiver_filters_port0_own_and_duplicates(clock: FakeClock) -> None:
    r = PexReceiver(own_addrs=[("::ffff:10.0.0.1", 6881)])
    got = r.receive(
        pex_payload([("10.0.0.1", 6881), ("10.0.0.2", 0), ("10.0.0.3", 1), ("10.0.0.3", 1)]), now=clock.now()
    )
    assert [p.addr for p in got.added] == [("10.0.0.3", 1)]
    clock.advance(PEX_MIN_INTERVAL_S)
    got = r.receive(pex_payload([("10.0.0.3", 1), ("10.0.0.4", 1)]), now=clock.now())
    assert [p.addr for p in got.added] == [("10.0.0.4", 1)]
    st_ = r.stats()
    assert st_["ignored_own"] == 1 and st_["ignored_port0"] == 1 and st_["ignored_duplicate"] == 2


def test_receiver_ignores_address_added_and_dropped_together(clock: FakeClock) -> None:
    r = PexReceiver()
    got = r.receive(pex_payload([("10.0.0.3", 1)], [("10.0.0.3", 1)]), now=clock.now())
    assert got.added == () and got.dropped == ()


def test_receiver_keeps_at_most_50_per_source(clock: FakeClock) -> None:
    r = PexReceiver()
    got = r.receive(pex_payload(list(addrs(80))), now=clock.now())
    assert len(got.added) == PEX_MAX_PEERS_PER_SOURCE
    assert r.stats()["ignored_cap"] == 80 - PEX_MAX_PEERS_PER_SOURCE
    # a drop frees a slot
    first = got.added[0].addr
    clock.advance(PEX_MIN_INTERVAL_S)
    got = r.receive(pex_payload([("10.99.0.1", 5)], [first]), now=clock.now())
    assert got.dropped == (first,) and [p.addr for p in got.added] == [("10.99.0.1", 5)]
    assert len(r.learned()) == PEX_MAX_PEERS_PER_SOURCE


def test_receiver_disconnects_on_two_messages_too_close(clock: FakeClock) -> None:
    r = PexReceiver()
    r.receive(pex_payload([("10.0.0.3", 1)]), now=clock.now())  # the first is always fine
    clock.advance(PEX_MIN_GAP_S - 0.1)
    with pytest.raises(PexError) as ei:
        r.receive(pex_payload([("10.0.0.4", 1)]), now=clock.now())
    assert ei.value.reason is CloseReason.PROTOCOL_VIOLATION
    assert r.closed
    clock.advance(3600)
    with pytest.raises(PexError):
        r.receive(pex_payload([("10.0.0.4", 1)]), now=clock.now())


def test_receiver_accepts_libtorrent_cadence(clock: FakeClock) -> None:
    # libtorrent: first message ~1 s after the handshake, then every 60 s (1 s tick jitter).
    r = PexReceiver()
    rng = random.Random(3)
    for i in range(30):
        r.receive(pex_payload([(f"10.1.0.{i + 1}", 1)]), now=clock.now())
        clock.advance(PEX_MIN_INTERVAL_S + rng.uniform(-3.0, 1.0))
    assert r.stats()["messages"] == 30


def test_receiver_flood_ring_of_six() -> None:
    cfg = PexConfig(min_gap_s=0.0)  # isolate libtorrent's 6-per-60-s rule
    r = PexReceiver(config=cfg)
    for i in range(PEX_FLOOD_MAX_MESSAGES):
        r.receive(pex_payload([(f"10.2.0.{i + 1}", 1)]), now=100.0 + i)
    with pytest.raises(PexError):
        r.receive(pex_payload([("10.2.1.1", 1)]), now=159.0)
    r2 = PexReceiver(config=cfg)
    for i in range(PEX_FLOOD_MAX_MESSAGES):
        r2.receive(pex_payload([(f"10.2.0.{i + 1}", 1)]), now=100.0 + i)
    r2.receive(pex_payload([("10.2.1.1", 1)]), now=160.0)  # the oldest left the window


def test_receiver_oversize_and_malformed_close_it(clock: FakeClock) -> None:
    r = PexReceiver(config=PexConfig(max_payload_bytes=64))
    with pytest.raises(PexError) as ei:
        r.receive(pex_payload(list(addrs(20))), now=clock.now())
    assert ei.value.reason is CloseReason.MESSAGE_TOO_LARGE and r.closed
    r2 = PexReceiver()
    with pytest.raises(PexError):
        r2.receive(b"d5:added1:xe", now=clock.now())
    assert r2.closed


@given(st.lists(st.binary(max_size=80), max_size=5))
@settings(max_examples=200, deadline=None)
def test_receiver_garbage_only_raises_pex_error(chunks: list[bytes]) -> None:
    r = PexReceiver()
    t = 0.0
    for c in chunks:
        t += PEX_MIN_INTERVAL_S
        try:
            r.receive(c, now=t)
        except PexError:
            assert r.closed
