from __future__ import annotations

import random
from pathlib import Path

import pytest
from helpers import FakeClock, pump
from hypothesis import given, settings
from hypothesis import strategies as st

from minibt.errors import CloseReason, HandshakeError, LocalProtocolError
from minibt.handshake import (
    HANDSHAKE_LEN,
    MAX_LEFTOVER_BYTES,
    PSTR,
    Handshake,
    HandshakeReceived,
    InfoHashReceived,
    encode_handshake,
    make_reserved,
    supports_dht,
    supports_extension,
    supports_fast,
)
from minibt.wire import PeerWire
from minibt.wire_codec import BitfieldMsg, Have, encode

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "bep3"

INFO_HASH = b"\xaa" * 20
OTHER_HASH = b"\xbb" * 20
OUR_ID = b"-MB0001-ourpeeridxxx"
THEIR_ID = b"-MB0001-123456789012"


def load_vector(name: str) -> bytes:
    lines = (VECTORS / f"{name}.hex").read_text().splitlines()
    assert lines[0].startswith("#"), "first line must name the source"
    return bytes.fromhex("".join(line for line in lines if not line.startswith("#")).replace(" ", ""))


def outgoing(now: float = 0.0, timeout_s: float = 30.0) -> Handshake:
    return Handshake(
        peer_id=OUR_ID, reserved=make_reserved(), info_hash=INFO_HASH, now=now, timeout_s=timeout_s
    )


def incoming(now: float = 0.0) -> Handshake:
    return Handshake(peer_id=OUR_ID, reserved=make_reserved(), info_hash=None, now=now)


def feed_split(hs: Handshake, data: bytes, cuts: list[int], now: float = 0.0) -> list[object]:
    events: list[object] = []
    prev = 0
    for cut in [*cuts, len(data)]:
        events += hs.receive_data(data[prev:cut], now=now)
        prev = cut
    return events


def test_vector_matches_encoder_and_reserved_bits() -> None:
    vec = load_vector("handshake")
    assert len(vec) == HANDSHAKE_LEN
    reserved = make_reserved(fast=True, extension=True, dht=False)
    assert encode_handshake(reserved, INFO_HASH, THEIR_ID) == vec
    assert vec[1:20] == PSTR
    assert supports_fast(vec[20:28]) and supports_extension(vec[20:28]) and not supports_dht(vec[20:28])


@pytest.mark.parametrize(
    ("fast", "extension", "dht", "expected_hex"),
    [
        (False, False, False, "0000000000000000"),
        (True, False, False, "0000000000000004"),
        (False, True, False, "0000000000100000"),
        (False, False, True, "0000000000000001"),
        (True, True, True, "0000000000100005"),
    ],
)
def test_make_reserved_sets_bep_bits(fast: bool, extension: bool, dht: bool, expected_hex: str) -> None:
    reserved = make_reserved(fast=fast, extension=extension, dht=dht)
    assert reserved.hex() == expected_hex
    assert (supports_fast(reserved), supports_extension(reserved), supports_dht(reserved)) == (
        fast,
        extension,
        dht,
    )


def test_encode_handshake_rejects_wrong_lengths() -> None:
    with pytest.raises(ValueError):
        encode_handshake(b"\x00" * 7, INFO_HASH, OUR_ID)
    with pytest.raises(ValueError):
        encode_handshake(make_reserved(), INFO_HASH[:19], OUR_ID)
    with pytest.raises(ValueError):
        encode_handshake(make_reserved(), INFO_HASH, OUR_ID + b"x")


def test_outgoing_flow_sends_first_then_completes() -> None:
    hs = outgoing()
    assert hs.data_to_send() == b""
    hs.start()
    assert hs.data_to_send() == encode_handshake(make_reserved(), INFO_HASH, OUR_ID)
    assert hs.data_to_send() == b""
    assert not hs.done
    events = hs.receive_data(load_vector("handshake"), now=1.0)
    remote = HandshakeReceived(make_reserved(), INFO_HASH, THEIR_ID)
    assert events == [InfoHashReceived(INFO_HASH), remote]
    assert hs.done and hs.remote == remote


def test_outgoing_remote_complete_before_start_is_not_done() -> None:
    hs = outgoing()
    hs.receive_data(load_vector("handshake"), now=0.0)
    assert not hs.done
    hs.start()
    assert hs.done


def test_incoming_flow_answers_after_info_hash_before_peer_id() -> None:
    # BEP 3: the receiver may wait for the info-hash and answer before the peer id arrives.
    hs = incoming()
    vec = load_vector("handshake")
    assert hs.receive_data(vec[:47], now=0.0) == []
    assert hs.receive_data(vec[47:48], now=0.0) == [InfoHashReceived(INFO_HASH)]
    assert hs.info_hash is None
    hs.accept(INFO_HASH)
    assert hs.info_hash == INFO_HASH
    assert hs.data_to_send() == encode_handshake(make_reserved(), INFO_HASH, OUR_ID)
    assert not hs.done
    assert hs.receive_data(vec[48:], now=0.0) == [HandshakeReceived(make_reserved(), INFO_HASH, THEIR_ID)]
    assert hs.done


def test_incoming_accept_before_info_hash_is_local_error() -> None:
    hs = incoming()
    hs.receive_data(load_vector("handshake")[:40], now=0.0)
    with pytest.raises(LocalProtocolError):
        hs.accept(INFO_HASH)


def test_incoming_accept_with_other_hash_is_local_error() -> None:
    hs = incoming()
    hs.receive_data(load_vector("handshake"), now=0.0)
    with pytest.raises(LocalProtocolError) as ei:
        hs.accept(OTHER_HASH)
    assert ei.value.reason is CloseReason.INFO_HASH_MISMATCH


def test_wrong_direction_commands_are_local_errors() -> None:
    with pytest.raises(LocalProtocolError):
        incoming().start()
    hs = outgoing()
    hs.receive_data(load_vector("handshake"), now=0.0)
    with pytest.raises(LocalProtocolError):
        hs.accept(INFO_HASH)
    hs.start()
    with pytest.raises(LocalProtocolError):
        hs.start()


def test_outgoing_info_hash_mismatch_raised_at_byte_48() -> None:
    hs = outgoing()
    hs.start()
    wrong = encode_handshake(make_reserved(), OTHER_HASH, THEIR_ID)
    assert hs.receive_data(wrong[:47], now=0.0) == []
    with pytest.raises(HandshakeError) as ei:
        hs.receive_data(wrong[47:48], now=0.0)
    assert ei.value.reason is CloseReason.INFO_HASH_MISMATCH


def test_bad_pstrlen_fails_on_first_byte() -> None:
    hs = incoming()
    with pytest.raises(HandshakeError) as ei:
        hs.receive_data(b"\x14", now=0.0)
    assert ei.value.reason is CloseReason.BAD_HANDSHAKE


@pytest.mark.parametrize("pos", [1, 5, 19])
def test_bad_pstr_fails_at_first_wrong_byte(pos: int) -> None:
    vec = bytearray(load_vector("handshake"))
    vec[pos] ^= 0x20
    hs = incoming()
    assert hs.receive_data(bytes(vec[:pos]), now=0.0) == []
    with pytest.raises(HandshakeError) as ei:
        hs.receive_data(bytes(vec[pos:]), now=0.0)
    assert ei.value.reason is CloseReason.BAD_HANDSHAKE


def test_self_connection_detected() -> None:
    hs = outgoing()
    with pytest.raises(HandshakeError) as ei:
        hs.receive_data(encode_handshake(make_reserved(), INFO_HASH, OUR_ID), now=0.0)
    assert ei.value.reason is CloseReason.SELF_CONNECTION


def test_closed_after_error() -> None:
    hs = incoming()
    with pytest.raises(HandshakeError):
        hs.receive_data(b"\x00", now=0.0)
    with pytest.raises(LocalProtocolError):
        hs.receive_data(b"\x13", now=0.0)
    with pytest.raises(LocalProtocolError):
        hs.data_to_send()
    assert hs.next_deadline() is None


def test_timeout_with_fake_clock(clock: FakeClock) -> None:
    hs = outgoing(now=clock.now(), timeout_s=10.0)
    hs.start()
    assert hs.next_deadline() == clock.now() + 10.0
    clock.advance(9.5)
    hs.receive_data(load_vector("handshake")[:30], now=clock.now())
    assert hs.handle_timeout(now=clock.now()) == []
    clock.advance(0.5)
    with pytest.raises(HandshakeError) as ei:
        hs.handle_timeout(now=clock.now())
    assert ei.value.reason is CloseReason.HANDSHAKE_TIMEOUT
    assert hs.next_deadline() is None


def test_no_timeout_once_remote_handshake_complete(clock: FakeClock) -> None:
    hs = incoming(now=clock.now())
    hs.receive_data(load_vector("handshake"), now=clock.now())
    assert hs.next_deadline() is None
    clock.advance(1000.0)
    assert hs.handle_timeout(now=clock.now()) == []


def test_split_invariance(rng: random.Random) -> None:
    vec = load_vector("handshake") + b"\x00\x00\x00\x01\x02"
    whole = outgoing().receive_data(vec, now=0.0)
    splits = [list(range(1, len(vec)))]
    for _ in range(20):
        splits.append(sorted(rng.sample(range(1, len(vec)), rng.randint(1, 10))))
    for cuts in splits:
        hs = outgoing()
        assert feed_split(hs, vec, cuts) == whole
        assert hs.leftover() == b"\x00\x00\x00\x01\x02"


def test_leftover_is_handed_to_peer_wire() -> None:
    bits = BitfieldMsg(b"\xc1\x80")
    after = encode(bits) + encode(Have(3))
    hs = outgoing()
    hs.start()
    vec = load_vector("handshake")
    hs.receive_data(vec[:60], now=0.0)
    hs.receive_data(vec[60:] + after[:3], now=0.0)
    hs.receive_data(after[3:], now=0.0)
    assert hs.done
    assert hs.remote is not None
    wire = PeerWire(
        num_pieces=10,
        piece_length=16384,
        total_length=10 * 16384,
        fast=supports_fast(hs.remote.reserved),
        extension=supports_extension(hs.remote.reserved),
        now=0.0,
    )
    assert wire.receive_data(hs.leftover(), now=0.0) == [bits, Have(3)]
    assert hs.leftover() == b""


def test_leftover_cap() -> None:
    hs = outgoing()
    hs.receive_data(load_vector("handshake") + b"\x00" * (MAX_LEFTOVER_BYTES - 10), now=0.0)
    with pytest.raises(HandshakeError) as ei:
        hs.receive_data(b"\x00" * 11, now=0.0)
    assert ei.value.reason is CloseReason.MESSAGE_TOO_LARGE


def test_pair_completes_both_sides() -> None:
    a = outgoing()
    b = Handshake(peer_id=THEIR_ID, reserved=make_reserved(fast=False), info_hash=None, now=0.0)
    a.start()
    b_events = pump(a, b, now=0.0)
    assert b_events[0] == InfoHashReceived(INFO_HASH)
    b.accept(INFO_HASH)
    a_events = pump(b, a, now=0.0)
    assert a.done and b.done
    assert a_events[-1] == HandshakeReceived(make_reserved(fast=False), INFO_HASH, THEIR_ID)
    assert b_events[-1] == HandshakeReceived(make_reserved(), INFO_HASH, OUR_ID)


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=200), prefix=st.integers(min_value=0, max_value=68), incoming_side=st.booleans()
)
def test_garbage_raises_only_handshake_error(data: bytes, prefix: int, incoming_side: bool) -> None:
    hs = incoming() if incoming_side else outgoing()
    stream = load_vector("handshake")[:prefix] + data
    try:
        events = hs.receive_data(stream, now=0.0)
    except HandshakeError:
        return
    for ev in events:
        assert isinstance(ev, InfoHashReceived | HandshakeReceived)
