from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Any

import bencode2
import pytest
from helpers import FakeClock, pump
from hypothesis import given, settings
from hypothesis import strategies as st

from minibt.errors import CloseReason, LocalProtocolError, WireError
from minibt.wire import PeerWire, WireConfig
from minibt.wire_codec import (
    MAX_EXT_LEN,
    AllowedFast,
    BitfieldMsg,
    Cancel,
    Choke,
    Extended,
    ExtHandshake,
    Have,
    HaveAll,
    HaveNone,
    Interested,
    KeepAlive,
    Message,
    NotInterested,
    Piece,
    Port,
    Reject,
    Request,
    Suggest,
    Unchoke,
    decode,
    encode,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "bep3"

# 10 pieces of 32 KiB, the last one shorter (20000 bytes): BEP 3 last-piece rule.
N = 10
PLEN = 32768
LAST = 20000
TOTAL = (N - 1) * PLEN + LAST
MIB = 1024 * 1024


def load_vector(name: str) -> bytes:
    lines = (VECTORS / f"{name}.hex").read_text().splitlines()
    assert lines[0].startswith("#"), "first line must name the source"
    return bytes.fromhex("".join(line for line in lines if not line.startswith("#")).replace(" ", ""))


def make_wire(
    *, fast: bool = True, extension: bool = True, now: float = 0.0, config: WireConfig | None = None
) -> PeerWire:
    return PeerWire(
        num_pieces=N,
        piece_length=PLEN,
        total_length=TOTAL,
        fast=fast,
        extension=extension,
        now=now,
        config=config or WireConfig(),
    )


def frame(mid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">IB", 1 + len(payload), mid) + payload


def feed(wire: PeerWire, data: bytes, cuts: list[int]) -> list[Any]:
    events: list[Any] = []
    prev = 0
    for cut in [*cuts, len(data)]:
        events += wire.receive_data(data[prev:cut], now=0.0)
        prev = cut
    return events


def expect_error(wire: PeerWire, data: bytes, reason: CloseReason, *, now: float = 0.0) -> WireError:
    with pytest.raises(WireError) as ei:
        wire.receive_data(data, now=now)
    assert ei.value.reason is reason, ei.value
    assert ei.value.detail
    return ei.value


BEP10_EXAMPLE = {
    b"m": {b"LT_metadata": 1, b"ut_pex": 2},
    b"p": 6881,
    b"v": "µTorrent 1.2".encode(),
}

VECTOR_MESSAGES: dict[str, Message] = {
    "keepalive": KeepAlive(),
    "choke": Choke(),
    "unchoke": Unchoke(),
    "interested": Interested(),
    "not_interested": NotInterested(),
    "have": Have(7),
    "bitfield": BitfieldMsg(b"\xc1\x80"),
    "request": Request(1, 16384, 16384),
    "piece": Piece(2, 0, b"\xde\xad\xbe\xef"),
    "cancel": Cancel(1, 16384, 16384),
    "port": Port(6881),
    "suggest": Suggest(3),
    "have_all": HaveAll(),
    "have_none": HaveNone(),
    "reject": Reject(1, 16384, 16384),
    "allowed_fast": AllowedFast(4),
    "extended": Extended(3, b"hi"),
    "ext_handshake": ExtHandshake(BEP10_EXAMPLE),
}


# -- codec ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(VECTOR_MESSAGES))
def test_vector_decodes_and_reencodes(name: str) -> None:
    vec = load_vector(name)
    msg = VECTOR_MESSAGES[name]
    assert decode(vec) == msg
    assert encode(msg) == vec


@pytest.mark.parametrize("name", sorted(VECTOR_MESSAGES))
def test_vector_through_peer_wire(name: str) -> None:
    wire = make_wire()
    assert wire.receive_data(load_vector(name), now=0.0) == [VECTOR_MESSAGES[name]]


def test_vector_files_all_used() -> None:
    names = {p.stem for p in VECTORS.glob("*.hex")} - {"handshake"}
    assert names == set(VECTOR_MESSAGES)


u32 = st.integers(min_value=0, max_value=2**32 - 1)
bencode_value = st.recursive(
    st.integers(min_value=-(2**70), max_value=2**70) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=8), inner, max_size=4),
    max_leaves=10,
)
messages = st.one_of(
    st.just(KeepAlive()),
    st.sampled_from([Choke(), Unchoke(), Interested(), NotInterested(), HaveAll(), HaveNone()]),
    st.builds(Have, u32),
    st.builds(Suggest, u32),
    st.builds(AllowedFast, u32),
    st.builds(BitfieldMsg, st.binary(max_size=64)),
    st.builds(Request, u32, u32, u32),
    st.builds(Cancel, u32, u32, u32),
    st.builds(Reject, u32, u32, u32),
    st.builds(Piece, u32, u32, st.binary(min_size=1, max_size=16384)),
    st.builds(Port, st.integers(min_value=0, max_value=65535)),
    st.builds(Extended, st.integers(min_value=1, max_value=255), st.binary(max_size=100)),
    st.builds(ExtHandshake, st.dictionaries(st.binary(max_size=8), bencode_value, max_size=5)),
)


@settings(max_examples=300, deadline=None)
@given(msg=messages)
def test_round_trip(msg: Message) -> None:
    data = encode(msg)
    assert decode(data) == msg
    assert encode(decode(data)) == data  # type: ignore[arg-type]


def test_extended_id_zero_decodes_as_ext_handshake() -> None:
    assert decode(encode(Extended(0, b"de"))) == ExtHandshake({})


def test_encode_out_of_range_is_value_error() -> None:
    with pytest.raises(ValueError):
        encode(Have(2**32))
    with pytest.raises(ValueError):
        encode(Port(70000))
    with pytest.raises(ValueError):
        encode(ExtHandshake({b"x": 1.5}))


def test_decode_unknown_id_returns_none() -> None:
    assert decode(frame(21, b"\x01" * 50)) is None


@pytest.mark.parametrize("data", [b"", b"\x00\x00\x00", b"\x00\x00\x00\x05\x04\x00", b"\x00\x00\x00\x00\x00"])
def test_decode_truncated_or_trailing_is_malformed(data: bytes) -> None:
    with pytest.raises(WireError) as ei:
        decode(data)
    assert ei.value.reason is CloseReason.MALFORMED_MESSAGE


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=64))
def test_decode_garbage_only_wire_error(data: bytes) -> None:
    try:
        decode(data)
    except WireError:
        pass


# -- split invariance ----------------------------------------------------------------------
def sample_stream(rng: random.Random) -> tuple[bytes, list[Message]]:
    msgs: list[Message] = [BitfieldMsg(b"\xff\xc0"), ExtHandshake(BEP10_EXAMPLE), Unchoke()]
    for _ in range(60):
        kind = rng.randrange(8)
        index = rng.randrange(N - 1)
        if kind == 0:
            msgs.append(Piece(index, rng.randrange(2) * 16384, rng.randbytes(rng.randint(1, 16384))))
        elif kind == 1:
            msgs.append(Have(rng.randrange(N)))
        elif kind == 2:
            msgs.append(Request(index, 16384, 16384))
        elif kind == 3:
            msgs.append(KeepAlive())
        elif kind == 4:
            msgs.append(Extended(rng.randint(1, 255), rng.randbytes(rng.randint(0, 300))))
        elif kind == 5:
            msgs.append(Reject(N - 1, 16384, LAST - 16384))
        elif kind == 6:
            toggles: list[Message] = [Choke(), Unchoke(), Interested(), NotInterested()]
            msgs.append(rng.choice(toggles))
        else:
            msgs.append(AllowedFast(index))
    return b"".join(encode(m) for m in msgs), msgs


def test_split_invariance_whole_bytewise_random(rng: random.Random) -> None:
    data, msgs = sample_stream(rng)
    assert make_wire().receive_data(data, now=0.0) == msgs
    assert feed(make_wire(), data, list(range(1, len(data)))) == msgs
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 200)))
        assert feed(make_wire(), data, cuts) == msgs


def test_split_invariance_with_unknown_ids(rng: random.Random) -> None:
    data = encode(HaveNone()) + frame(21, b"x" * 5000) + encode(Have(1)) + frame(99) + encode(Have(2))
    expected = [HaveNone(), Have(1), Have(2)]
    for cuts in ([], list(range(1, len(data))), sorted(rng.sample(range(1, len(data)), 20))):
        wire = make_wire()
        assert feed(wire, data, cuts) == expected
        assert wire.stats()["in_unknown"] == 2


def test_memoryview_input_blocks_are_views_of_it() -> None:
    """A block whole in one read is a view of the caller's buffer (not copied)."""
    buf = bytearray(encode(HaveAll()) + encode(Piece(0, 0, b"abc")))
    events = make_wire().receive_data(memoryview(buf), now=0.0)
    assert events == [HaveAll(), Piece(0, 0, b"abc")]
    piece = events[1]
    assert isinstance(piece, Piece) and isinstance(piece.data, memoryview) and piece.data.obj is buf
    buf[-1] = ord("z")  # the caller reuses its buffer: the view shows it (consumers copy first)
    assert bytes(piece.data) == b"abz"


def test_block_split_across_reads_is_bytes() -> None:
    data = encode(HaveAll()) + encode(Piece(0, 0, b"abcdef"))
    for cut in range(1, len(data)):
        wire = make_wire()
        first = bytearray(data[:cut])
        events = wire.receive_data(memoryview(first), now=0.0)
        first[:] = bytes(len(first))  # reused before the rest arrives: nothing of it may be kept by reference
        events += wire.receive_data(memoryview(bytearray(data[cut:])), now=0.0)
        assert events == [HaveAll(), Piece(0, 0, b"abcdef")]
        assert wire.stats()["rx_buffered"] == 0


# -- receive validation ---------------------------------------------------------------------
def test_length_prefix_over_max_frame_rejected_from_prefix_alone() -> None:
    expect_error(make_wire(), b"\x00\x20\x00\x00", CloseReason.MESSAGE_TOO_LARGE)


def test_oversized_piece_rejected_from_header_alone() -> None:
    header = struct.pack(">IBII", 9 + 16385, 7, 0, 0)
    expect_error(make_wire(), header, CloseReason.MESSAGE_TOO_LARGE)


def test_piece_at_block_limit_accepted_but_buffered_until_complete() -> None:
    wire = make_wire()
    data = encode(Piece(0, 0, b"\x01" * 16384))
    assert wire.receive_data(data[:-1], now=0.0) == []
    assert wire.stats()["rx_buffered"] == len(data) - 1
    assert wire.receive_data(data[-1:], now=0.0) == [Piece(0, 0, b"\x01" * 16384)]
    assert wire.stats()["rx_buffered"] == 0


def test_piece_without_data_is_malformed() -> None:
    expect_error(make_wire(), struct.pack(">IBII", 9, 7, 0, 0), CloseReason.MALFORMED_MESSAGE)


@pytest.mark.parametrize(
    ("index", "begin", "length"),
    [(N, 0, 10), (0, PLEN - 10, 11), (N - 1, LAST - 16384 + 1, 16384), (N - 1, LAST, 1)],
)
def test_piece_beyond_torrent_or_piece_is_violation(index: int, begin: int, length: int) -> None:
    expect_error(make_wire(), encode(Piece(index, begin, b"\x00" * length)), CloseReason.PROTOCOL_VIOLATION)


@pytest.mark.parametrize("cls", [Request, Cancel, Reject])
@pytest.mark.parametrize(
    ("index", "begin", "length"),
    [
        (N, 0, 16384),  # index out of range
        (0, 0, 0),  # zero length
        (0, 0, 16385),  # BEP 3: larger than 2^14
        (0, PLEN - 16383, 16384),  # beyond a full piece
        (N - 1, LAST - 16383, 16384),  # beyond the shorter last piece
        (0, 2**32 - 1, 16384),  # begin overflow
    ],
)
def test_block_messages_validated(cls: type[Request], index: int, begin: int, length: int) -> None:
    expect_error(make_wire(), encode(cls(index, begin, length)), CloseReason.PROTOCOL_VIOLATION)


def test_request_valid_on_full_piece_but_not_on_last() -> None:
    ok = Request(N - 2, PLEN - 16384, 16384)
    assert make_wire().receive_data(encode(ok), now=0.0) == [ok]
    last_ok = Request(N - 1, LAST - 16384, 16384)
    assert make_wire().receive_data(encode(last_ok), now=0.0) == [last_ok]


@pytest.mark.parametrize("msg", [Have(N), Suggest(N), AllowedFast(2**32 - 1)])
def test_index_messages_out_of_range(msg: Message) -> None:
    expect_error(make_wire(), encode(msg), CloseReason.PROTOCOL_VIOLATION)


@pytest.mark.parametrize(
    ("mid", "size"),
    [
        (0, 1),
        (1, 4),
        (2, 2),
        (3, 1),
        (4, 3),
        (4, 5),
        (6, 11),
        (8, 14),
        (9, 1),
        (13, 8),
        (14, 4),
        (15, 1),
        (16, 1),
        (17, 3),
    ],
)
def test_fixed_size_mismatch_is_malformed_from_header(mid: int, size: int) -> None:
    header = struct.pack(">IB", 1 + size, mid)
    expect_error(make_wire(), header, CloseReason.MALFORMED_MESSAGE)


def test_bitfield_wrong_length() -> None:
    expect_error(make_wire(), frame(5, b"\xff\xc0\x00"), CloseReason.MESSAGE_TOO_LARGE)
    expect_error(make_wire(), frame(5, b"\xff"), CloseReason.MALFORMED_MESSAGE)


def test_bitfield_spare_bits_must_be_zero() -> None:
    expect_error(make_wire(), frame(5, b"\xff\xe0"), CloseReason.MALFORMED_MESSAGE)


@pytest.mark.parametrize(
    "first", [Have(1), Interested(), Request(0, 0, 16384), Piece(0, 0, b"x"), AllowedFast(1)]
)
def test_have_none_not_first_is_violation(first: Message) -> None:
    wire = make_wire()
    assert wire.receive_data(encode(first), now=0.0) == [first]
    expect_error(wire, encode(HaveNone()), CloseReason.PROTOCOL_VIOLATION)


@pytest.mark.parametrize(
    "first", [Have(1), Interested(), Request(0, 0, 16384), Piece(0, 0, b"x"), AllowedFast(1)]
)
@pytest.mark.parametrize("late", [BitfieldMsg(b"\x80\x00"), HaveAll()])
def test_late_bitfield_or_have_all_is_accepted(first: Message, late: Message) -> None:
    # aria2 1.36 sends Bitfield / Have All mid-connection instead of Have messages (libtorrent accepts it).
    wire = make_wire()
    assert wire.receive_data(encode(first), now=0.0) == [first]
    assert wire.receive_data(encode(late), now=0.0) == [late]


@pytest.mark.parametrize("second", [BitfieldMsg(b"\x00\x00"), HaveAll()])
def test_second_bitfield_or_have_all_is_accepted(second: Message) -> None:
    wire = make_wire()
    wire.receive_data(encode(HaveNone()), now=0.0)
    assert wire.receive_data(encode(second), now=0.0) == [second]


def test_later_bitfields_and_have_alls_are_not_rate_limited() -> None:
    """aria2 sends a Bitfield whenever 20 pieces came in since its last message: many a second on a fast link."""
    wire = make_wire()
    wire.receive_data(encode(HaveNone()), now=0.0)
    late = [BitfieldMsg(b"\x80\x00"), BitfieldMsg(b"\xc0\x00"), HaveAll()] * 100
    assert wire.receive_data(b"".join(encode(m) for m in late), now=0.0) == late


def test_choke_and_interest_toggles_are_rate_limited() -> None:
    """Each toggle makes us work over every peer or every outstanding request: TOGGLE_BURST at once, then
    TOGGLE_PER_S a second; a flood closes the peer."""
    from minibt.wire import TOGGLE_BURST, TOGGLE_PER_S

    wire = make_wire()
    pair = encode(Unchoke()) + encode(Choke())
    assert len(wire.receive_data(pair * (TOGGLE_BURST // 2), now=0.0)) == TOGGLE_BURST
    assert wire.peer_choking
    now = 0.0
    for _ in range(50):  # TOGGLE_PER_S a second goes on for ever
        now += 1.0
        got = wire.receive_data((encode(Interested()) + encode(NotInterested())) * int(TOGGLE_PER_S // 2), now=now)
        assert len(got) == TOGGLE_PER_S and not wire.peer_interested
    expect_error(wire, pair * int(TOGGLE_PER_S), CloseReason.PROTOCOL_VIOLATION, now=now + 1.0)


def test_second_have_none_is_violation() -> None:
    wire = make_wire()
    wire.receive_data(encode(HaveAll()), now=0.0)
    expect_error(wire, encode(HaveNone()), CloseReason.PROTOCOL_VIOLATION)


def test_late_bitfield_spare_bits_still_checked() -> None:
    wire = make_wire()
    wire.receive_data(encode(Interested()), now=0.0)
    expect_error(wire, frame(5, b"\xff\xe0"), CloseReason.MALFORMED_MESSAGE)


def test_bitfield_after_ext_handshake_port_and_keepalive_is_allowed() -> None:
    # Transmission sends its BEP 10 handshake before the bitfield.
    msgs: list[Message] = [KeepAlive(), ExtHandshake({b"m": {}}), Port(6881), BitfieldMsg(b"\x80\x00")]
    assert make_wire().receive_data(b"".join(encode(m) for m in msgs), now=0.0) == msgs


@pytest.mark.parametrize(
    "msg",
    [Suggest(1), HaveAll(), HaveNone(), Reject(0, 0, 16384), AllowedFast(1)],
    ids=lambda m: type(m).__name__,
)
def test_fast_messages_without_fast_is_violation(msg: Message) -> None:
    expect_error(make_wire(fast=False), encode(msg)[:5], CloseReason.PROTOCOL_VIOLATION)


def test_extended_without_extension_is_violation() -> None:
    expect_error(make_wire(extension=False), encode(Extended(1, b"x"))[:5], CloseReason.PROTOCOL_VIOLATION)


def test_extended_size_limits() -> None:
    expect_error(make_wire(), frame(20), CloseReason.MALFORMED_MESSAGE)
    wire = make_wire(config=WireConfig(max_ext_len=1000))
    assert wire.receive_data(encode(Extended(1, b"x" * 1000)), now=0.0) == [Extended(1, b"x" * 1000)]
    expect_error(wire, struct.pack(">IBB", 2 + 1001, 20, 1), CloseReason.MESSAGE_TOO_LARGE)


@pytest.mark.parametrize("payload", [b"", b"d1:ai1e", b"li1ee", b"i3e", b"d1:bi1e1:ai2ee", b"de\x00"])
def test_ext_handshake_must_be_strict_bencoded_dict(payload: bytes) -> None:
    expect_error(make_wire(), encode(Extended(0, payload)), CloseReason.MALFORMED_MESSAGE)


def test_unknown_id_skipped_without_buffering() -> None:
    wire = make_wire()
    big = MAX_EXT_LEN
    assert wire.receive_data(struct.pack(">IB", 1 + big, 42) + b"\x00" * 100, now=0.0) == []
    assert wire.stats()["rx_buffered"] == 0
    for _ in range(9):
        assert wire.receive_data(b"\x00" * (big // 10), now=0.0) == []
        assert wire.stats()["rx_buffered"] == 0
    assert wire.receive_data(b"\x00" * (big - 100 - 9 * (big // 10)) + encode(Have(5)), now=0.0) == [Have(5)]
    assert wire.stats()["in_unknown"] == 1


def test_unknown_id_over_max_frame_rejected() -> None:
    expect_error(make_wire(), struct.pack(">IB", 2 + MAX_EXT_LEN + 1, 42), CloseReason.MESSAGE_TOO_LARGE)


def test_receive_buffer_holds_at_most_one_partial_frame(rng: random.Random) -> None:
    data, _ = sample_stream(rng)
    wire = make_wire()
    max_frame = 4 + 2 + MAX_EXT_LEN
    for off in range(0, len(data), 7000):
        wire.receive_data(data[off : off + 7000], now=0.0)
        assert wire.stats()["rx_buffered"] < min(max_frame, 4 + 9 + 16384)


def test_closed_after_remote_error() -> None:
    wire = make_wire()
    expect_error(wire, b"\xff\xff\xff\xff", CloseReason.MESSAGE_TOO_LARGE)
    assert wire.closed
    with pytest.raises(LocalProtocolError):
        wire.receive_data(encode(Have(1)), now=0.0)
    with pytest.raises(LocalProtocolError):
        wire.interested()
    with pytest.raises(LocalProtocolError):
        wire.data_to_send()
    with pytest.raises(LocalProtocolError):
        wire.handle_timeout(now=1.0)
    assert wire.next_deadline() is None


@settings(max_examples=400, deadline=None)
@given(
    data=st.binary(max_size=300),
    prefix=st.sampled_from([b"", encode(BitfieldMsg(b"\xff\xc0")), encode(HaveAll()) + encode(Unchoke())]),
    fast=st.booleans(),
    extension=st.booleans(),
    chunk=st.integers(min_value=1, max_value=50),
)
def test_garbage_only_events_or_wire_error(
    data: bytes, prefix: bytes, fast: bool, extension: bool, chunk: int
) -> None:
    wire = make_wire(fast=fast, extension=extension)
    stream = prefix + data
    try:
        for off in range(0, len(stream), chunk):
            wire.receive_data(stream[off : off + chunk], now=0.0)
    except WireError:
        assert wire.closed


@settings(max_examples=200, deadline=None)
@given(
    fields=st.lists(st.tuples(st.integers(min_value=0, max_value=25), st.binary(max_size=20)), max_size=20),
)
def test_framed_garbage_only_events_or_wire_error(fields: list[tuple[int, bytes]]) -> None:
    # Well-framed messages with random ids and payloads go deeper than raw bytes.
    stream = b"".join(frame(mid, payload) for mid, payload in fields)
    try:
        make_wire().receive_data(stream, now=0.0)
    except WireError:
        pass


# -- state and commands ---------------------------------------------------------------------
def pair(**kw: Any) -> tuple[PeerWire, PeerWire]:
    return make_wire(**kw), make_wire(**kw)


def test_initial_state() -> None:
    wire = make_wire()
    assert (wire.am_choking, wire.am_interested, wire.peer_choking, wire.peer_interested) == (
        True,
        False,
        True,
        False,
    )


def test_commands_arrive_as_messages() -> None:
    a, b = pair()
    a.send_have_none()
    a.ext_handshake({b"m": {b"ut_pex": 1}, b"reqq": 250})
    a.port(6881)
    a.allowed_fast(3)
    a.interested()
    a.unchoke()
    a.have(9)
    a.request(9, 0, LAST - 16384)
    a.cancel(9, 0, LAST - 16384)
    a.piece(1, 16384, memoryview(b"\x07" * 16384))
    a.reject(0, 0, 16384)
    a.suggest(2)
    a.extended(7, b"payload")
    a.keepalive()
    a.not_interested()
    a.choke()
    assert pump(a, b) == [
        HaveNone(),
        ExtHandshake({b"m": {b"ut_pex": 1}, b"reqq": 250}),
        Port(6881),
        AllowedFast(3),
        Interested(),
        Unchoke(),
        Have(9),
        Request(9, 0, LAST - 16384),
        Cancel(9, 0, LAST - 16384),
        Piece(1, 16384, b"\x07" * 16384),
        Reject(0, 0, 16384),
        Suggest(2),
        Extended(7, b"payload"),
        KeepAlive(),
        NotInterested(),
        Choke(),
    ]
    assert not b.peer_interested and b.peer_choking


def test_state_tracks_sent_and_received() -> None:
    a, b = pair()
    a.send_have_all()
    a.unchoke()
    a.interested()
    assert not a.am_choking and a.am_interested
    pump(a, b)
    assert not b.peer_choking and b.peer_interested
    a.choke()
    a.not_interested()
    pump(a, b)
    assert a.am_choking and not a.am_interested
    assert b.peer_choking and not b.peer_interested


def test_repeated_state_commands_send_nothing() -> None:
    wire = make_wire(fast=False)
    wire.choke()
    wire.not_interested()
    assert wire.data_to_send() == b""
    wire.unchoke()
    wire.unchoke()
    wire.interested()
    wire.interested()
    assert wire.data_to_send() == encode(Unchoke()) + encode(Interested())


def test_bitfield_command_rules() -> None:
    wire = make_wire()
    with pytest.raises(LocalProtocolError):
        wire.send_bitfield(b"\xff")  # wrong length
    with pytest.raises(LocalProtocolError):
        wire.send_bitfield(b"\xff\xe0")  # spare bits
    wire.ext_handshake({})  # may precede the bitfield
    wire.send_bitfield(b"\xff\xc0")
    with pytest.raises(LocalProtocolError):
        wire.send_bitfield(b"\xff\xc0")
    with pytest.raises(LocalProtocolError):
        wire.send_have_all()


def test_fast_requires_bitfield_like_first() -> None:
    with pytest.raises(LocalProtocolError):
        make_wire(fast=True).interested()
    wire = make_wire(fast=False)
    wire.interested()  # BEP 3: the bitfield may be skipped
    with pytest.raises(LocalProtocolError):
        wire.send_bitfield(b"\x00\x00")


@pytest.mark.parametrize("cmd", ["send_have_all", "send_have_none", "reject", "allowed_fast", "suggest"])
def test_fast_commands_need_fast(cmd: str) -> None:
    wire = make_wire(fast=False)
    args: dict[str, tuple[int, ...]] = {"reject": (0, 0, 16384), "allowed_fast": (1,), "suggest": (1,)}
    with pytest.raises(LocalProtocolError):
        getattr(wire, cmd)(*args.get(cmd, ()))


@pytest.mark.parametrize(
    ("cmd", "args"),
    [
        ("request", (0, 0, 16385)),
        ("request", (0, 0, 0)),
        ("request", (N, 0, 16384)),
        ("request", (N - 1, LAST - 100, 101)),
        ("request", (0, -1, 10)),
        ("cancel", (0, PLEN, 1)),
        ("reject", (-1, 0, 1)),
        ("piece", (0, 0, b"")),
        ("piece", (0, 0, b"x" * 16385)),
        ("have", (N,)),
        ("suggest", (N,)),
        ("allowed_fast", (-1,)),
        ("port", (65536,)),
        ("extended", (256, b"")),
    ],
)
def test_illegal_commands_raise_local_error(cmd: str, args: tuple[Any, ...]) -> None:
    wire = make_wire()
    wire.send_have_none()
    with pytest.raises(LocalProtocolError):
        getattr(wire, cmd)(*args)


def test_extension_commands_need_extension() -> None:
    wire = make_wire(extension=False, fast=False)
    with pytest.raises(LocalProtocolError):
        wire.ext_handshake({})
    with pytest.raises(LocalProtocolError):
        wire.extended(1, b"")


def test_ext_handshake_too_large_or_unencodable() -> None:
    wire = make_wire(config=WireConfig(max_ext_len=100))
    with pytest.raises(LocalProtocolError):
        wire.ext_handshake({b"v": b"x" * 200})
    with pytest.raises(LocalProtocolError):
        wire.ext_handshake({b"v": 1.5})


def test_data_to_send_limit_drains_in_order() -> None:
    wire = make_wire()
    wire.send_have_all()
    wire.piece(0, 0, b"\x01" * 16384)
    wire.have(3)
    whole = encode(HaveAll()) + encode(Piece(0, 0, b"\x01" * 16384)) + encode(Have(3))
    assert wire.outbox_len == len(whole) and wire.wants_write
    parts = []
    for limit in (3, 1, 100, 8000, 0, 20000):
        part = wire.data_to_send(limit)
        assert len(part) <= limit
        parts.append(part)
    assert b"".join(parts) == whole
    assert wire.outbox_len == 0 and not wire.wants_write
    assert wire.data_to_send() == b""


def test_can_send_soft_cap() -> None:
    wire = make_wire(config=WireConfig(max_outbox_bytes=40000))
    wire.send_have_all()
    wire.piece(0, 0, b"\x00" * 16384)
    assert wire.can_send()
    wire.piece(0, 16384, b"\x00" * 16384)
    wire.piece(1, 0, b"\x00" * 16384)  # soft cap: still queued
    assert not wire.can_send()
    wire.data_to_send(20000)
    assert wire.can_send()


def test_stats_count_messages_and_bytes() -> None:
    a, b = pair()
    a.send_have_all()
    a.have(1)
    a.have(2)
    a.keepalive()
    sent = a.data_to_send()
    b.receive_data(sent + frame(30, b"zz"), now=0.0)
    sa, sb = a.stats(), b.stats()
    assert (sa["out_have_all"], sa["out_have"], sa["out_keepalive"], sa["bytes_out"]) == (1, 2, 1, len(sent))
    assert (sb["in_have_all"], sb["in_have"], sb["in_keepalive"], sb["in_unknown"]) == (1, 2, 1, 1)
    assert sb["bytes_in"] == len(sent) + 7
    assert sa["in_have"] == 0 and sb["out_have"] == 0


# -- timers -----------------------------------------------------------------------------------
def test_keepalive_sent_after_silence(clock: FakeClock) -> None:
    cfg = WireConfig(keepalive_interval_s=120.0, idle_timeout_s=180.0)
    wire = make_wire(now=clock.now(), config=cfg)
    assert wire.next_deadline() == clock.now() + 120.0
    clock.advance(119.0)
    wire.receive_data(encode(KeepAlive()), now=clock.now())
    assert wire.handle_timeout(now=clock.now()) == []
    assert wire.data_to_send() == b""
    clock.advance(1.0)
    assert wire.handle_timeout(now=clock.now()) == []
    assert wire.data_to_send(now=clock.now()) == encode(KeepAlive())
    assert wire.next_deadline() == clock.now() + 120.0


def test_sending_restarts_keepalive_timer(clock: FakeClock) -> None:
    wire = make_wire(fast=False, now=clock.now())
    clock.advance(100.0)
    wire.interested()
    wire.data_to_send(now=clock.now())
    clock.advance(30.0)
    wire.receive_data(encode(KeepAlive()), now=clock.now())
    assert wire.handle_timeout(now=clock.now()) == []
    assert not wire.wants_write
    assert wire.next_deadline() == clock.now() - 30.0 + 120.0


def test_no_extra_keepalive_when_outbox_pending(clock: FakeClock) -> None:
    wire = make_wire(fast=False, now=clock.now())
    wire.interested()
    clock.advance(120.0)
    wire.receive_data(encode(KeepAlive()), now=clock.now())
    wire.handle_timeout(now=clock.now())
    assert wire.data_to_send() == encode(Interested())


def test_idle_timeout(clock: FakeClock) -> None:
    wire = make_wire(now=clock.now(), config=WireConfig(keepalive_interval_s=1000.0, idle_timeout_s=180.0))
    clock.advance(100.0)
    wire.receive_data(encode(HaveAll()), now=clock.now())
    assert wire.next_deadline() == clock.now() + 180.0
    clock.advance(179.0)
    assert wire.handle_timeout(now=clock.now()) == []
    clock.advance(1.0)
    with pytest.raises(WireError) as ei:
        wire.handle_timeout(now=clock.now())
    assert ei.value.reason is CloseReason.KEEPALIVE_TIMEOUT
    assert wire.closed


def test_constructor_validates_geometry() -> None:
    with pytest.raises(ValueError):
        PeerWire(num_pieces=3, piece_length=10, total_length=31, fast=True, extension=True, now=0.0)
    with pytest.raises(ValueError):
        PeerWire(num_pieces=0, piece_length=10, total_length=0, fast=True, extension=True, now=0.0)


def test_ext_handshake_vector_is_bep10_example() -> None:
    payload = load_vector("ext_handshake")[6:]
    assert bencode2.bdecode(payload) == BEP10_EXAMPLE


@pytest.mark.parametrize("payload", [b"xyz", b"d1:ai1e", b"i1e", b"l" * 5000])
def test_bad_ext_handshake_after_a_message_in_one_segment_is_wire_error(payload: bytes) -> None:
    # Issue 9: a complete message followed by an extended id 0 that is not bencode, in one read.
    # The error must stay a WireError: no view of the receive buffer may outlive the parse (a live
    # one turned `del buf[:pos]` into a BufferError that killed the process).
    wire = make_wire()
    data = frame(0x0E) + frame(20, b"\x00" + payload)  # Have All, then extended id 0
    expect_error(wire, data, CloseReason.MALFORMED_MESSAGE)


def test_issue9_attack_bytes_are_wire_error() -> None:
    expect_error(make_wire(), bytes.fromhex("00000001020000000514" + "00" + "78797a"), CloseReason.MALFORMED_MESSAGE)


def _opened() -> PeerWire:
    w = make_wire()
    w.send_have_all()
    w.interested()
    return w


@pytest.mark.parametrize(
    ("index", "begin", "length"),
    [(N, 0, 16384), (-1, 0, 16384), (0, -1, 16384), (0, 0, 0), (0, 0, 16385), (N - 1, LAST - 16383, 16384),
     (0, PLEN - 16383, 16384)],
)
def test_request_many_refuses_what_request_refuses(index: int, begin: int, length: int) -> None:
    with pytest.raises(LocalProtocolError) as one:
        _opened().request(index, begin, length)
    w = _opened()
    with pytest.raises(LocalProtocolError) as many:
        w.request_many([(0, 0, 16384), (index, begin, length)])
    assert many.value.detail == one.value.detail
    assert w.stats()["out_request"] == 0  # nothing of a refused batch is queued


def test_request_many_sends_what_requests_send() -> None:
    blocks = [(0, 0, 16384), (0, 16384, 16384), (N - 1, 0, 16384), (N - 1, 16384, LAST - 16384)]
    one, many = _opened(), _opened()
    for b in blocks:
        one.request(*b)
    many.request_many(blocks)
    assert many.data_to_send() == one.data_to_send()
    assert many.stats() == one.stats()


def test_unknown_message_split_in_two_reads_at_every_point() -> None:
    """The header of an unknown message completed by a read that also holds some of its body."""
    data = encode(HaveNone()) + frame(48, b"\x00" * 9) + encode(Have(3)) + frame(21, b"y" * 40) + encode(Have(4))
    for cut in range(1, len(data)):
        wire = make_wire()
        events = wire.receive_data(data[:cut], now=0.0) + wire.receive_data(data[cut:], now=0.0)
        assert events == [HaveNone(), Have(3), Have(4)], cut
        assert wire.stats()["in_unknown"] == 2
